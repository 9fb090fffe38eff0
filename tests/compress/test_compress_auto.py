"""compress chooses by error: budgets, method="auto", and calibration data.

References are float64 NumPy: every candidate's optimal error from an SVD of
the rearranged weight (the search's own shortcuts are tested in
tests/test_search.py), output errors as ``||X (W - W_hat)|| / ||X W||`` on the
calibration inputs themselves.
"""

from __future__ import annotations

import itertools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import kfc_jax
from kfc_jax import LayerRule, compress, compress_linen_params


def _pairs(n):
  return [(d, n // d) for d in range(1, n + 1) if n % d == 0]


def _nkp_error(w, ms, ns, rank):
  (m1, m2), (n1, n2) = ms, ns
  r = w.reshape(m1, m2, n1, n2).transpose(0, 2, 1, 3).reshape(m1 * n1, m2 * n2)
  s = np.linalg.svd(r, compute_uv=False)
  return math.sqrt((s[rank:] ** 2).sum() / (s**2).sum())


def _low_rank_error(w, rank):
  s = np.linalg.svd(w, compute_uv=False)
  return math.sqrt((s[rank:] ** 2).sum() / (s**2).sum())


def _best_split_error(w, budget):
  best = math.inf
  for (m1, m2), (n1, n2) in itertools.product(_pairs(w.shape[0]), _pairs(w.shape[1])):
    if (n1 == 1 and m2 == 1) or (m1 == 1 and n2 == 1) or m1 * n1 == 1 or m2 * n2 == 1:
      continue
    rank = min(budget // (m1 * n1 + m2 * n2), m1 * n1, m2 * n2)
    if rank >= 1:
      best = min(best, _nkp_error(w, (m1, m2), (n1, n2), rank))
  return best


class MLP(nnx.Module):
  def __init__(self, rngs, n_in=48, hidden=32):
    self.fc1 = nnx.Linear(n_in, hidden, rngs=rngs)
    self.fc2 = nnx.Linear(hidden, 10, rngs=rngs)

  def __call__(self, x):
    return self.fc2(nnx.relu(self.fc1(x)))


def _structured_mlp(seed=0):
  """An MLP whose fc1 has Kronecker structure on a non-balanced split."""
  model = MLP(nnx.Rngs(seed))
  rng = np.random.default_rng(seed)
  w = np.kron(rng.normal(size=(3, 8)), rng.normal(size=(16, 4))) + 0.3 * rng.normal(size=(48, 32))
  model.fc1.kernel[...] = jnp.asarray(w / np.sqrt(48), jnp.float32)
  return model


def _kernel(layer):
  return np.asarray(layer.kernel[...], np.float64)


def test_budget_picks_the_best_split_not_the_largest():
  model = _structured_mlp()
  w = _kernel(model.fc1)
  budget = 48 * 32 // 6
  new, report = compress(model, LayerRule("fc1", max_params=budget))
  row = report.rows[0]
  assert type(new.fc1).__name__ == "KroneckerLinear"
  assert row.relative_error == pytest.approx(_best_split_error(w, budget), rel=1e-5)
  # The old rule (most parameters that fit) does worse on this weight.
  old = kfc_jax.suggest_factors(48, 32, max_params=budget)
  assert row.relative_error < _nkp_error(w, old.in_factors, old.out_factors, old.rank)
  assert "runner-up" in row.choice and "runner-up" in report.table()


@pytest.mark.parametrize("compression", [2, 4, 8])
def test_auto_is_never_worse_than_low_rank_at_the_same_budget(compression):
  model = _structured_mlp(compression)
  w = _kernel(model.fc1)
  budget = int(w.size / compression)
  new, report = compress(model, LayerRule("fc1", "auto", compression=compression))
  row = report.rows[0]
  low_rank = _low_rank_error(w, budget // (48 + 32))
  assert row.relative_error <= low_rank + 1e-6
  assert row.relative_error <= _best_split_error(w, budget) + 1e-6
  assert row.params_after - 32 <= budget  # factor params (the bias comes on top)
  x = jax.random.normal(jax.random.key(0), (4, 48))
  assert new(x).shape == (4, 10)


def test_auto_takes_low_rank_when_it_wins_and_says_so():
  model = MLP(nnx.Rngs(1))
  rng = np.random.default_rng(1)
  u, v = rng.normal(size=(48, 3)), rng.normal(size=(3, 32))
  model.fc1.kernel[...] = jnp.asarray(u @ v / 10, jnp.float32)  # exactly rank 3
  new, report = compress(model, LayerRule("fc1", "auto", max_params=4 * 80))
  assert type(new.fc1).__name__ == "LowRankLinear"
  assert report.rows[0].relative_error < 1e-5
  assert report.rows[0].choice.startswith("chose low_rank")


def test_auto_lets_kfc_formulations_compete_on_a_feature_map():
  model = MLP(nnx.Rngs(2), n_in=3 * 3 * 8, hidden=16)
  rng = np.random.default_rng(2)
  # Formulation II structure: A acts on channels, B on positions.
  a, b = rng.normal(size=(8, 4)), rng.normal(size=(9, 4))
  w = np.einsum("co,hp->hcop", a, b).reshape(9, 8, 16).reshape(72, 16)
  model.fc1.kernel[...] = jnp.asarray(w, jnp.float32)
  new, report = compress(model, LayerRule("fc1", "auto", in_shape=(3, 3, 8), compression=8))
  assert type(new.fc1).__name__ == "KFC"
  assert report.rows[0].relative_error < 1e-5
  assert "KFC-II" in report.rows[0].choice


def test_auto_needs_a_budget():
  with pytest.raises(ValueError, match=r"method='auto'.*compression or max_params"):
    LayerRule("fc1", "auto")


# ---------------------------------------------------------------------------
# Calibration data
# ---------------------------------------------------------------------------


def _calibration(seed=0, n=4, batch=64, dim=48):
  rng = np.random.default_rng(seed)
  scale = np.geomspace(0.05, 4.0, dim)  # uneven inputs: weight error != output error
  return [jnp.asarray(rng.normal(size=(batch, dim)) * scale, jnp.float32) for _ in range(n)]


def _output_error(x, w, w_hat):
  return float(np.linalg.norm(x @ (w - w_hat)) / np.linalg.norm(x @ w))


@pytest.mark.parametrize("method", ["low_rank", "kronecker", "auto"])
def test_calibration_fits_the_outputs_and_reports_their_error(method):
  model = _structured_mlp(3)
  data = _calibration(3)
  x = np.concatenate([np.asarray(b, np.float64) for b in data])
  w = _kernel(model.fc1)
  rule = LayerRule("fc1", method, compression=6)
  plain, plain_report = compress(model, rule)
  aware, report = compress(model, rule, calibration=data)
  row = report.rows[0]
  w_plain = np.asarray(plain.fc1.materialize(), np.float64)
  w_aware = np.asarray(aware.fc1.materialize(), np.float64)
  assert row.data_error == pytest.approx(_output_error(x, w, w_aware), rel=1e-3)
  assert plain_report.rows[0].data_error is None
  assert _output_error(x, w, w_aware) < _output_error(x, w, w_plain) - 0.02
  assert "output error" in report.table()
  # The original model is untouched.
  np.testing.assert_array_equal(_kernel(model.fc1), w)


def test_calibration_for_convs():
  class Net(nnx.Module):
    def __init__(self, rngs):
      self.conv = nnx.Conv(4, 8, (3, 3), rngs=rngs)
      self.fc = nnx.Linear(8, 2, rngs=rngs)

    def __call__(self, x):
      return self.fc(nnx.relu(self.conv(x)).mean((1, 2)))

  model = Net(nnx.Rngs(0))
  rng = np.random.default_rng(0)
  data = [
    jnp.asarray(rng.normal(size=(8, 6, 6, 4)) * [0.1, 0.3, 1, 3], jnp.float32) for _ in range(3)
  ]
  rule = LayerRule("conv", compression=3)
  plain, _ = compress(model, rule)
  aware, report = compress(model, rule, calibration=data)
  x = jnp.concatenate(data)

  def out_err(m):
    y, y_hat = model.conv(x), m.conv(x)
    return float(jnp.linalg.norm(y_hat - y) / jnp.linalg.norm(y - model.conv.bias[...]))

  assert report.rows[0].data_error is not None
  assert out_err(aware) < out_err(plain)


def test_linen_calibration():
  class Net(nn.Module):
    @nn.compact
    def __call__(self, x):
      return nn.Dense(10, name="head")(nn.relu(nn.Dense(32, name="body")(x)))

  data = _calibration(4)
  variables = Net().init(jax.random.key(0), data[0])
  rule = LayerRule("body", "low_rank", compression=4)
  small, new_vars, report = compress_linen_params(Net(), variables, rule, data[0], calibration=data)
  _, plain_vars, _plain_report = compress_linen_params(Net(), variables, rule, data[0])
  x = np.concatenate([np.asarray(b, np.float64) for b in data])
  w = np.asarray(variables["params"]["body"]["kernel"], np.float64)

  def w_hat(v):
    p = v["params"]["body"]
    return np.asarray(p["u"], np.float64) @ np.asarray(p["v"], np.float64)

  assert report.rows[0].data_error == pytest.approx(_output_error(x, w, w_hat(new_vars)), rel=1e-3)
  assert _output_error(x, w, w_hat(new_vars)) < _output_error(x, w, w_hat(plain_vars))
  assert small.apply(new_vars, data[0]).shape == (64, 10)


def test_calibration_batches_the_model_rejects_name_the_layer():
  model = _structured_mlp()
  with pytest.raises(ValueError, match="layer 'fc1'"):
    compress(model, LayerRule("fc1", compression=4), calibration=[jnp.ones((2, 7))])
