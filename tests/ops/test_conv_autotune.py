"""strategy="autotune" for kron_conv and kron_conv_sum (ops/_autotune.py, ops/_conv.py)."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads
from references import np_conv, np_conv_kernel, random_term

import kfc_jax
from kfc_jax.ops import _autotune


def _convs(fn, *args) -> int:
  return str(jax.make_jaxpr(fn)(*args)).count("conv_general_dilated")


@pytest.fixture
def picks(monkeypatch):
  """Forces the tuned picks per objective; records which objectives were asked."""
  asked = []
  chosen = {"fwd": "factored", "fwd+bwd": "materialize"}

  def fake(geo, shapes, dtype, precision, pet, objective="fwd+bwd"):
    asked.append(objective)
    return chosen[objective]

  monkeypatch.setattr(_autotune, "autotuned_conv_strategy", fake)
  return chosen, asked


@pytest.mark.parametrize(
  "strides,padding", [(1, "SAME"), (2, "VALID"), (1, "CIRCULAR"), (2, ((2, 0), (1, 1)))]
)
def test_matches_reference_and_gradients(x64, rng, cache_dir, strides, padding):
  a, b = random_term(rng, (3, 3, 2, 3), (1, 1, 3, 2), rank=2)
  x = rng.standard_normal((2, 7, 7, 6))
  y = kfc_jax.kron_conv(x, (a, b), strides=strides, padding=padding, strategy="autotune")
  if padding == "CIRCULAR":  # SAME sizes over the wrapped-around image
    want = np_conv(
      np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="wrap"),
      np_conv_kernel(a, b),
      strides,
      "VALID",
    )
  else:
    want = np_conv(x, np_conv_kernel(a, b), strides, padding)
  np.testing.assert_allclose(y, want, rtol=1e-10, atol=1e-10)

  def f(x, a, b):
    return kfc_jax.kron_conv(x, (a, b), strides=strides, padding=padding, strategy="autotune")

  check_grads(f, (x, a, b), order=1, modes=["rev"])


def test_sum_matches_reference(x64, rng, cache_dir):
  t1 = random_term(rng, (3, 3, 2, 2), (1, 1, 4, 4), rank=1)
  t2 = random_term(rng, (3, 1, 4, 4), (1, 3, 2, 2), rank=2)
  x = rng.standard_normal((3, 6, 6, 8))
  y = kfc_jax.kron_conv_sum(x, [t1, t2], strategy="autotune")
  want = np_conv(x, np_conv_kernel(*t1) + np_conv_kernel(*t2))
  np.testing.assert_allclose(y, want, rtol=1e-10, atol=1e-10)
  check_grads(
    lambda x, t1, t2: kfc_jax.kron_conv_sum(x, [t1, t2], strategy="autotune"),
    (x, t1, t2),
    order=1,
    modes=["rev"],
  )


def test_inference_and_training_run_their_own_picks(rng, picks):
  _, asked = picks
  a, b = (jnp.asarray(f, jnp.float32) for f in random_term(rng, (3, 1, 2, 3), (1, 3, 2, 2), 1))
  x = jnp.asarray(rng.standard_normal((2, 6, 6, 4)), jnp.float32)

  def f(x, a, b):
    return kfc_jax.kron_conv(x, (a, b), strategy="autotune")

  def factored(x, a, b):
    return kfc_jax.kron_conv(x, (a, b), strategy="factored")

  def materialized(x, a, b):
    return kfc_jax.kron_conv(x, (a, b), strategy="materialize")

  # A 3x1 (x) 1x3 split: factored runs two convs, materialize one.
  assert _convs(factored, x, a, b) == 2 and _convs(materialized, x, a, b) == 1
  # Not differentiated: the forward pick (factored).
  assert _convs(f, x, a, b) == 2
  assert asked == ["fwd"]
  # Differentiated: the forward + backward pick (materialize) and its VJP.
  loss = lambda fn: jax.grad(lambda x, a, b: jnp.sum(fn(x, a, b) ** 2), (0, 1, 2))
  assert _convs(loss(factored), x, a, b) != _convs(loss(materialized), x, a, b)
  assert _convs(loss(f), x, a, b) == _convs(loss(materialized), x, a, b)
  assert asked[-1] == "fwd+bwd"
  got, want = loss(f)(x, a, b), loss(materialized)(x, a, b)
  for g, w in zip(got, want, strict=True):
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)


def test_timed_once_then_cached_on_disk(rng, cache_dir, monkeypatch):
  calls = []
  real = _autotune.time_conv_strategies
  monkeypatch.setattr(
    _autotune,
    "time_conv_strategies",
    lambda *a, **k: calls.append((k["objective"], tuple(a[3]))) or real(*a, **k),
  )
  a, b = (jnp.asarray(f, jnp.float32) for f in random_term(rng, (3, 3, 2, 3), (1, 1, 2, 2), 1))
  x = jnp.asarray(rng.standard_normal((4, 8, 8, 4)), jnp.float32)
  grad = jax.grad(lambda x: jnp.sum(kfc_jax.kron_conv(x, (a, b), strategy="autotune")))
  kfc_jax.kron_conv(x, (a, b), strategy="autotune")
  grad(x)
  assert {o for o, _ in calls} == {"fwd", "fwd+bwd"}
  assert all(set(s) <= {"factored", "materialize"} for _, s in calls)
  timed = len(calls)
  kfc_jax.kron_conv(x, (a, b), strategy="autotune")
  jax.jit(grad)(x)
  assert len(calls) == timed  # both objectives cached in memory
  entries = json.loads((cache_dir / "autotune.json").read_text())
  assert sorted(e["objective"] for e in entries.values()) == ["fwd", "fwd+bwd"]
  assert all("conv" in json.loads(k) for k in entries)
  _autotune.clear_cache()  # memory only: a later process reads the disk
  kfc_jax.kron_conv(x, (a, b), strategy="autotune")
  assert len(calls) == timed
  # The plan reports the training pick.
  plan = kfc_jax.kron_conv_plan(x.shape, [a.shape, b.shape], strategy="autotune")
  fwd_bwd = next(e for e in entries.values() if e["objective"] == "fwd+bwd")
  assert plan.strategy == fwd_bwd["strategy"]


def test_forward_mode_is_a_clear_error(rng, cache_dir):
  a, b = (jnp.asarray(f, jnp.float32) for f in random_term(rng, (3, 3, 2, 3), (1, 1, 2, 2), 1))
  x = jnp.asarray(rng.standard_normal((1, 5, 5, 4)), jnp.float32)
  with pytest.raises(TypeError, match='strategy="auto"'):
    jax.jacfwd(lambda x: kfc_jax.kron_conv(x, (a, b), strategy="autotune"))(x)


def test_empty_batch_and_layers(rng, cache_dir):
  from flax import nnx

  a, b = (jnp.asarray(f, jnp.float32) for f in random_term(rng, (3, 3, 2, 3), (1, 1, 2, 2), 1))
  empty = kfc_jax.kron_conv(jnp.zeros((0, 5, 5, 4)), (a, b), strategy="autotune")
  assert empty.shape == (0, 5, 5, 6)
  layer = kfc_jax.nnx.KroneckerConv(
    4,
    6,
    (3, 3),
    a_shape=(3, 3, 2, 3),
    b_shape=(1, 1, 2, 2),
    strategy="autotune",
    rngs=nnx.Rngs(0),
  )
  x = jnp.asarray(rng.standard_normal((2, 5, 5, 4)), jnp.float32)
  want = nnx.clone(layer)
  want.strategy = "materialize"
  np.testing.assert_allclose(layer(x), want(x), rtol=1e-5, atol=1e-5)


def test_bad_strategy_names_autotune():
  with pytest.raises(ValueError, match="autotune"):
    kfc_jax.kron_conv(
      jnp.zeros((1, 5, 5, 4)),
      (jnp.zeros((3, 3, 2, 3)), jnp.zeros((1, 1, 2, 2))),
      strategy="fastest",
    )
