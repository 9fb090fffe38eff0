"""strategy="autotune" (ops/_autotune.py) and the calibrated cost model (kfc_jax.calibrate)."""

from __future__ import annotations

import dataclasses
import json
import logging
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import np_kron, random_factors

import kfc_jax
from kfc_jax import calibrate
from kfc_jax.ops import _autotune


def _case(rng, rows=64):
  factors = random_factors(rng, (4, 8), (8, 4), 2, np.float32)
  x = rng.standard_normal((rows, 32)).astype(np.float32)
  return x, factors


def test_autotune_is_exact_and_cached(rng, cache_dir, monkeypatch):
  x, factors = _case(rng)
  calls = []
  real = _autotune.time_strategies
  monkeypatch.setattr(
    _autotune,
    "time_strategies",
    lambda *a, **k: calls.append((k["objective"], a[3])) or real(*a, **k),
  )
  y = kfc_jax.kron_matmul(jnp.asarray(x), [jnp.asarray(f) for f in factors], strategy="autotune")
  np.testing.assert_allclose(y, x @ np_kron(factors), rtol=1e-4, atol=1e-4)
  # A plain call plans for training (fwd+bwd) and runs the inference (fwd)
  # pick: each objective times every order and (W is small here) forming W,
  # then its near ties once more.
  for objective in ("fwd+bwd", "fwd"):
    rounds = [s for o, s in calls if o == objective]
    assert set(rounds[0]) == {(0, 1), (1, 0), "materialize"} and len(rounds) <= 2
  assert {o for o, _ in calls} == {"fwd+bwd", "fwd"}
  timed = len(calls)
  # Cached: in memory, and on disk for later processes.
  kfc_jax.kron_matmul(jnp.asarray(x), [jnp.asarray(f) for f in factors], strategy="autotune")
  assert len(calls) == timed
  entries = json.loads((cache_dir / "autotune.json").read_text())
  assert sorted(e["objective"] for e in entries.values()) == ["fwd", "fwd+bwd"]
  entry = next(e for e in entries.values() if e["objective"] == "fwd+bwd")
  assert set(entry["seconds"]) == {"01", "10", "materialize"}
  finalists = entry["refined"] or list(entry["seconds"])
  assert min(finalists, key=entry["seconds"].get) == (
    "".join(map(str, entry["strategy"]))
    if isinstance(entry["strategy"], list)
    else entry["strategy"]
  )
  _autotune.clear_cache(memory=True)  # a new process: reads the disk cache
  plan = kfc_jax.kron_matmul_plan(x.shape, [f.shape for f in factors], strategy="autotune")
  assert len(calls) == timed
  expected = entry["strategy"]
  assert (
    plan.strategy == "materialize" if expected == "materialize" else plan.order == tuple(expected)
  )


def test_autotune_times_near_ties_again_and_longer(cache_dir, monkeypatch):
  # First round: order 10 leads, 01 is within 15%, materialize is not. The
  # second, longer round (01 and 10 only) reverses the near tie.
  rounds = [
    {(0, 1): 1.10, (1, 0): 1.00, "materialize": 2.0},
    {(0, 1): 0.90, (1, 0): 1.00},
  ]
  calls = []

  def fake(x_shape, factor_shapes, dtype, strategies, *, repeats, **kw):
    calls.append((list(strategies), repeats))
    return {s: rounds[len(calls) - 1][s] for s in strategies}

  monkeypatch.setattr(_autotune, "time_strategies", fake)
  best = _autotune.autotune((64, 32), [(2, 4, 8), (2, 8, 4)], repeats=5)
  assert best == (0, 1)
  assert sorted(calls[1][0], key=str) == [(0, 1), (1, 0)] and calls[1][1] == 15
  # A clear winner is not timed again.
  rounds[0] = {(0, 1): 1.5, (1, 0): 1.0, "materialize": 2.0}
  calls.clear()
  _autotune.clear_cache(disk=True)
  assert _autotune.autotune((64, 32), [(2, 4, 8), (2, 8, 4)], repeats=5) == (1, 0)
  assert len(calls) == 1


def test_autotune_tunes_inference_and_training_apart(rng, cache_dir, monkeypatch):
  # Training (differentiated) runs the fwd+bwd pick; inference the fwd pick.
  x, factors = _case(rng, rows=48)
  xj, fj = jnp.asarray(x), [jnp.asarray(f) for f in factors]
  picks = {"fwd+bwd": (1, 0), "fwd": "materialize"}
  asked = []

  def fake(x_shape, factor_shapes, *, objective="fwd+bwd", **kw):
    asked.append(objective)
    return picks[objective]

  monkeypatch.setattr(_autotune, "autotune", fake)
  loss = lambda x, fs: jnp.sum(kfc_jax.kron_matmul(x, fs, strategy="autotune") ** 2)
  dx = jax.grad(loss)(xj, fj)
  assert "fwd" not in asked  # the primal is not traced under grad
  w = np_kron(factors)
  np.testing.assert_allclose(dx, 2 * (x @ w) @ w.T, rtol=1e-4, atol=1e-3)
  asked.clear()
  y = jax.jit(lambda x, fs: kfc_jax.kron_matmul(x, fs, strategy="autotune"))(xj, fj)
  assert asked == ["fwd+bwd", "fwd"]
  np.testing.assert_allclose(y, x @ w, rtol=1e-4, atol=1e-4)
  # The forward pick runs: forming W shows as a dot of the factors.
  jaxpr = str(jax.make_jaxpr(lambda x, fs: kfc_jax.kron_matmul(x, fs, strategy="autotune"))(xj, fj))
  picks["fwd"] = (0, 1)
  factored = str(
    jax.make_jaxpr(lambda x, fs: kfc_jax.kron_matmul(x, fs, strategy="autotune"))(xj, fj)
  )
  assert jaxpr != factored


def test_autotune_forms_w_for_training_only_when_that_was_fastest(rng, cache_dir, monkeypatch):
  # Training's pick forms W, inference's is an order: each runs where it won.
  x, factors = _case(rng, rows=48)
  xj, fj = jnp.asarray(x), [jnp.asarray(f) for f in factors]
  picks = {"fwd+bwd": "materialize", "fwd": (1, 0)}
  asked = []

  def fake(x_shape, factor_shapes, *, objective="fwd+bwd", **kw):
    asked.append(objective)
    return picks[objective]

  monkeypatch.setattr(_autotune, "autotune", fake)
  run = lambda x, fs: kfc_jax.kron_matmul(x, fs, strategy="autotune")
  grads = jax.grad(lambda x, fs: jnp.sum(run(x, fs) ** 2), (0, 1))(xj, fj)
  assert asked == ["fwd+bwd"]  # the primal is not traced under grad
  want = jax.grad(lambda x, fs: jnp.sum((x @ kfc_jax.kron(fs)) ** 2), (0, 1))(xj, fj)
  for g, r in zip(jax.tree.leaves(grads), jax.tree.leaves(want), strict=True):
    np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-3)
  asked.clear()
  np.testing.assert_allclose(jax.jit(run)(xj, fj), x @ np_kron(factors), rtol=1e-4, atol=1e-4)
  assert asked == ["fwd+bwd", "fwd"]


def test_autotune_forming_w_is_reverse_mode_only_with_a_clear_error(rng, cache_dir, monkeypatch):
  x, factors = _case(rng, rows=8)
  xj, fj = jnp.asarray(x), [jnp.asarray(f) for f in factors]
  monkeypatch.setattr(_autotune, "autotune", lambda *a, **k: "materialize")
  with pytest.raises(TypeError, match='backward="autodiff"'):
    jax.jacfwd(lambda x: kfc_jax.kron_matmul(x, fj, strategy="autotune"))(xj)
  jac = jax.jacfwd(lambda x: kfc_jax.kron_matmul(x, fj, strategy="autotune", backward="autodiff"))
  expected = np.einsum("ik,lj->ijkl", np.eye(8), np_kron(factors))
  np.testing.assert_allclose(jac(xj), expected, rtol=1e-4, atol=1e-4)


def test_autotune_objective_is_checked_and_keyed(cache_dir, monkeypatch):
  with pytest.raises(ValueError, match='objective must be "fwd" or "fwd\\+bwd", got \'bwd\''):
    _autotune.autotune((8, 32), [(4, 8), (8, 4)], objective="bwd")
  args = ((8, 32), [(1, 4, 8), (1, 8, 4)], jnp.float32, None, None)
  assert _autotune.cache_key(*args) != _autotune.cache_key(*args, "fwd")
  assert _autotune.cache_key(*args) == _autotune.cache_key(*args, "fwd+bwd")


def test_autotune_under_jit_and_grad(rng, cache_dir):
  """Timing needs shapes only, so it runs while kron_matmul is traced."""
  x, factors = _case(rng, rows=16)
  fs = [jnp.asarray(f) for f in factors]

  @jax.jit
  def loss(x, fs):
    return jnp.sum(kfc_jax.kron_matmul(x, fs, strategy="autotune") ** 2)

  grads = jax.grad(loss, (0, 1))(jnp.asarray(x), fs)
  want = jax.grad(lambda x, fs: jnp.sum((x @ kfc_jax.kron(fs)) ** 2), (0, 1))(jnp.asarray(x), fs)
  for g, w in zip(jax.tree.leaves(grads), jax.tree.leaves(want), strict=True):
    np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-3)
  assert (cache_dir / "autotune.json").exists()


def test_autotune_falls_back_to_the_cost_model(rng, cache_dir, monkeypatch, caplog):
  def broken(*args, **kwargs):
    raise RuntimeError("no timer here")

  monkeypatch.setattr(_autotune, "time_strategies", broken)
  x, factors = _case(rng)
  with caplog.at_level(logging.WARNING, logger="kfc_jax"):
    plan = kfc_jax.kron_matmul_plan(x.shape, [f.shape for f in factors], strategy="autotune")
  auto = kfc_jax.kron_matmul_plan(x.shape, [f.shape for f in factors])
  assert plan.chosen == auto.chosen
  assert "cost model" in caplog.text and "no timer here" in caplog.text


def test_autotune_candidates_respect_the_memory_rule():
  # W (4096 x 4096) is larger than x and y at batch 8: never formed.
  big_w = _autotune.candidate_strategies((8, 4096), [(64, 64), (64, 64)], jnp.float32)
  assert "materialize" not in big_w and set(big_w) == {(0, 1), (1, 0)}
  small_w = _autotune.candidate_strategies((4096, 64), [(8, 8), (8, 8)], jnp.float32)
  assert "materialize" in small_w


# ---------------------------------------------------------------------------
# Calibration
# ---------------------------------------------------------------------------


def _synthetic(model, sweep, dtype=jnp.float32):
  """Measurements whose times follow the additive model exactly."""
  weights = np.array(
    [
      1 / model.flops_per_second,
      1 / model.bytes_per_second,
      1 / model.cache_bytes_per_second,
      model.overhead_seconds,
    ]
  )
  out = []
  for batch, ms, ns, r in sweep:
    plan = kfc_jax.kron_matmul_plan(
      (batch, math.prod(ms)), [(r, m, n) for m, n in zip(ms, ns, strict=True)]
    )
    strategies = [c.order for c in plan.candidates if c.strategy == "factored"]
    for s in [*strategies, "materialize"]:
      m = calibrate.Measurement(batch, ms, ns, r, s, 0.0)
      t = float(calibrate.features(m, model.full_speed_dim, model.chunk_bytes, dtype) @ weights)
      out.append(dataclasses.replace(m, seconds=t))
  return out


def test_fit_recovers_known_constants():
  truth = kfc_jax.CostModel(
    flops_per_second=3e11,
    bytes_per_second=4e10,
    overhead_seconds=2e-5,
    full_speed_dim=64,
    chunk_bytes=2**20,
    cache_bytes_per_second=9e10,
  )
  measurements = _synthetic(truth, calibrate.SWEEP)
  model, report = calibrate.fit(
    measurements, kfc_jax.default_cost_model("cpu"), full_speed_dims=(64,)
  )
  for field in (
    "flops_per_second",
    "bytes_per_second",
    "cache_bytes_per_second",
    "overhead_seconds",
  ):
    np.testing.assert_allclose(
      getattr(model, field), getattr(truth, field), rtol=1e-6, err_msg=field
    )
  assert report["full_speed_dim"] == 64


def test_calibration_file_feeds_default_cost_model(tmp_path, monkeypatch):
  monkeypatch.setenv("KFC_JAX_CACHE_DIR", str(tmp_path))
  builtin = kfc_jax.default_cost_model()
  fitted = dataclasses.replace(builtin, flops_per_second=1.25e11, overhead_seconds=7e-6)
  calibrate.write(fitted, {"note": "test"}, _autotune.calibration_path())
  assert kfc_jax.default_cost_model() == fitted
  # Entries of another kind of device are ignored.
  data = json.loads((tmp_path / "cost_model.json").read_text())
  (tmp_path / "cost_model.json").write_text(
    json.dumps({"gpu:some other device": data[_autotune.device_key()]})
  )
  assert kfc_jax.default_cost_model() == builtin


def test_calibrate_command_runs(tmp_path, monkeypatch, capsys):
  monkeypatch.setattr(calibrate, "QUICK_SWEEP", [(64, (4, 8), (8, 4), 1)])
  out = tmp_path / "models.json"
  assert calibrate.main(["--quick", "--repeats", "1", "--out", str(out)]) == 0
  entry = json.loads(out.read_text())[_autotune.device_key()]
  assert entry["flops_per_second"] > 0 and entry["fit"]["plans_timed"] == 3
  assert "wrote" in capsys.readouterr().out
