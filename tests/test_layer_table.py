"""Cross-cutting checks, run over every layer in ``layer_cases.CASES``.

Float64 reference, dtype x param_dtype x precision grid, gradients, the jitted
path without retracing, split/merge and state round trip, Linen <-> NNX
consistency, metadata on every factor, parameter counts.
"""

from __future__ import annotations

import itertools
import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.test_util import check_grads

import kfc_jax
from layer_cases import CASE_IDS, CASES, nnx_params, randomize

cases = pytest.mark.parametrize("case", CASES, ids=CASE_IDS)


def _x(rng, case, batch_shape=(4,), dtype=np.float64):
  return rng.standard_normal((*batch_shape, *case.x_shape)).astype(dtype)


def _rel(y, ref):
  y, ref = np.asarray(y, np.float64), np.asarray(ref, np.float64)
  return np.linalg.norm(y - ref) / np.linalg.norm(ref)


@cases
@pytest.mark.parametrize("batch_shape", [(), (2, 3)], ids=str)
def test_matches_float64_reference(x64, rng, case, batch_shape):
  layer = case.nnx(param_dtype=jnp.float64)
  randomize(layer, rng)
  x = _x(rng, case, batch_shape)
  y = nnx.jit(lambda m, v: m(v))(layer, jnp.asarray(x))
  chex.assert_shape(y, (*batch_shape, case.args[1]))
  flat = x.reshape(*batch_shape, case.in_features)
  ref = case.reference(nnx_params(layer), flat.reshape(-1, case.in_features))
  np.testing.assert_allclose(np.asarray(y).reshape(ref.shape), ref, rtol=1e-11,
                             atol=1e-11)
  if x.shape[-1] != case.in_features:  # KFC also takes the flattened map
    np.testing.assert_allclose(layer(jnp.asarray(flat)), y, rtol=1e-12, atol=1e-12)


# Relative error allowed per compute dtype (inputs O(1), sums of ~60 terms).
TOLERANCES = {"float32": 2e-6, "bfloat16": 3e-2, "float16": 4e-3}


def _grid():
  """dtype x param_dtype x precision: in full for the layers with the most
  code paths (KFC transposes, mixed terms), a corner of it for the others."""
  full = itertools.product([None, jnp.float32, jnp.bfloat16, jnp.float16],
                           [jnp.float32, jnp.bfloat16],
                           [None, jax.lax.Precision.HIGHEST])
  corner = [(None, jnp.float32, None), (jnp.bfloat16, jnp.bfloat16, None),
            (jnp.float16, jnp.float32, jax.lax.Precision.HIGHEST),
            (None, jnp.bfloat16, jax.lax.Precision.HIGHEST)]
  name = lambda d: "infer" if d is None else jnp.dtype(d).name
  for case in CASES:
    grid = full if case.id in ("kfc-combined", "linear-terms") else corner
    for dtype, param_dtype, precision in grid:
      yield pytest.param(case, dtype, param_dtype, precision, id=(
          f"{case.id}-{name(dtype)}-p{name(param_dtype)}-{precision}"))


@pytest.mark.parametrize("case,dtype,param_dtype,precision", list(_grid()))
def test_dtype_grid(rng, case, dtype, param_dtype, precision):
  layer = case.nnx(dtype=dtype, param_dtype=param_dtype, precision=precision)
  randomize(layer, rng)
  x = _x(rng, case, (8,), np.float32)
  y = nnx.jit(lambda m, v: m(v))(layer, jnp.asarray(x))
  compute = jnp.dtype(dtype or jnp.float32)  # float32 x promotes low params
  assert y.dtype == compute
  for name, value in nnx_params(layer).items():
    assert value.dtype == jnp.dtype(param_dtype), name
  # Reference from what the computation actually sees: x in the compute dtype.
  x_seen = np.asarray(jnp.asarray(x, compute), np.float64).reshape(8, -1)
  params = {k: np.asarray(jnp.asarray(v, compute), np.float64)
            for k, v in nnx_params(layer).items()}
  assert _rel(y, case.reference(params, x_seen)) < TOLERANCES[compute.name]


@cases
def test_gradients(x64, rng, case):
  layer = case.nnx(param_dtype=jnp.float64)
  randomize(layer, rng)
  graphdef, state = nnx.split(layer)
  x = jnp.asarray(_x(rng, case, (3,)))

  @jax.jit  # finite differences call f many times
  def f(state, x):
    return nnx.merge(graphdef, state)(x)

  check_grads(f, (state, x), order=1, modes=["rev"], atol=1e-6, rtol=1e-6)


@cases
def test_jit_without_retracing(rng, case):
  chex.clear_trace_counter()
  layer = case.nnx()

  @nnx.jit
  @chex.assert_max_traces(n=1)
  def apply(layer, x):
    return layer(x)

  for _ in range(3):
    x = jnp.asarray(_x(rng, case, (4,), np.float32))
    np.testing.assert_allclose(apply(layer, x), layer(x), rtol=1e-5, atol=1e-5)


@cases
def test_split_merge_and_state_round_trip(rng, case):
  layer = case.nnx()
  x = jnp.asarray(_x(rng, case, (2,), np.float32))
  graphdef, state = nnx.split(layer)
  np.testing.assert_array_equal(nnx.merge(graphdef, state)(x), layer(x))
  # A pure dict of arrays round-trips into a fresh layer.
  pure = jax.tree.map(np.asarray, nnx.to_pure_dict(state))
  fresh = case.nnx(rngs=nnx.Rngs(1))
  _, fresh_state = nnx.split(fresh)
  nnx.replace_by_pure_dict(fresh_state, pure)
  nnx.update(fresh, fresh_state)
  np.testing.assert_array_equal(fresh(x), layer(x))


@cases
def test_linen_twin_matches_nnx(rng, case):
  layer = case.nnx()
  randomize(layer, rng)
  x = jnp.asarray(_x(rng, case, (3,), np.float32))
  twin = case.linen()
  variables = twin.init(jax.random.key(0), x)
  linen_shapes = jax.tree.map(jnp.shape, variables["params"])
  nnx_shapes = {k: v.shape for k, v in nnx_params(layer).items()}
  assert linen_shapes == nnx_shapes  # identical names and shapes
  copied = {"params": {k: jnp.asarray(v) for k, v in nnx_params(layer).items()}}
  np.testing.assert_array_equal(twin.apply(copied, x), layer(x))
  if case.linear:
    np.testing.assert_array_equal(twin.apply(copied, method="materialize"),
                                  layer.materialize())


@cases
def test_metadata_reaches_every_factor(case):
  layer = case.nnx(factor_metadata={"tag": "kron"}, bias_metadata={"tag": "bias"})
  factors = nnx.state(layer, kfc_jax.nnx.KroneckerFactor)
  assert factors
  for path, var in nnx.to_flat_state(factors):
    assert var.get_metadata()["tag"] == "kron", path
  others = nnx.state(layer, nnx.All(nnx.Param, nnx.Not(kfc_jax.nnx.KroneckerFactor)))
  for path, var in nnx.to_flat_state(others):
    assert var.get_metadata()["tag"] == "bias", path


@cases
def test_factor_filter_selects_factors_only(case):
  layer = case.nnx()
  factors = set(nnx.to_pure_dict(nnx.state(layer, kfc_jax.nnx.KroneckerFactor)))
  params = set(nnx_params(layer))
  assert factors and factors == {p for p in params if "bias" not in p}


@cases
def test_param_count_matches_cost(case):
  layer = case.nnx()
  count = sum(v.size for v in nnx_params(layer).values())
  cost = layer.cost()
  assert cost.params == count
  assert cost.dense_params == case.in_features * case.args[1] + case.args[1]
  assert cost.dense_flops == 2 * case.in_features * case.args[1]
  assert 0 < cost.flops
  twin_params = case.linen().init(jax.random.key(0),
                                  jnp.ones((1, case.in_features)))["params"]
  assert sum(v.size for v in jax.tree.leaves(twin_params)) == count


@cases
def test_materialize_is_the_effective_kernel(x64, rng, case):
  layer = case.nnx(param_dtype=jnp.float64, use_bias=False,
                   **({} if case.linear else {"activation": None}))
  randomize(layer, rng)
  x = _x(rng, case, (4,))
  w = np.asarray(layer.materialize())
  chex.assert_shape(w, (case.in_features, case.args[1]))
  np.testing.assert_allclose(layer(jnp.asarray(x)), x.reshape(4, -1) @ w,
                             rtol=1e-11, atol=1e-11)


@cases
def test_linen_errors_at_first_call_not_construction(case):
  is_kfc = case.linen_cls is kfc_jax.linen.KFC
  bad = case.linen(terms=[("II", (7, 7))]) if is_kfc else case.linen(rank=0)
  with pytest.raises(ValueError, match="rank|out_factors"):
    bad.init(jax.random.key(0), jnp.ones((1, case.in_features)))


def test_every_layer_is_in_the_table():
  # KroneckerConv (NHWC in, HWIO kernel) has its own table in test_conv_layers.py.
  covered = {c.nnx_cls for c in CASES} | {kfc_jax.nnx.KroneckerConv}
  public = {getattr(kfc_jax.nnx, n) for n in kfc_jax.nnx.__all__}
  assert public - covered == {kfc_jax.nnx.KroneckerFactor}
  assert {c.linen_cls for c in CASES} | {kfc_jax.linen.KroneckerConv} >= {getattr(kfc_jax.linen, n)
                                          for n in kfc_jax.linen.__all__
                                          if isinstance(getattr(kfc_jax.linen, n), type)
                                          and issubclass(getattr(kfc_jax.linen, n), nn.Module)}
