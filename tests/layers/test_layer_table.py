"""Cross-cutting checks, run over every layer in ``layer_cases.CASES``.

Float64 reference, dtype x param_dtype x precision grid, gradients, the jitted
path without retracing, split/merge and state round trip, Linen <-> NNX
consistency, metadata on every factor, parameter counts, the
``KroneckerLayer`` protocol. Dense layers and convolutions alike.
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
from layer_cases import CASE_IDS, CASES, nnx_params, randomize
from references import np_conv

import kfc_jax

cases = pytest.mark.parametrize("case", CASES, ids=CASE_IDS)


def _x(rng, case, batch_shape=(4,), dtype=np.float64):
  return rng.standard_normal((*batch_shape, *case.x_shape)).astype(dtype)


def _rel(y, ref):
  y, ref = np.asarray(y, np.float64), np.asarray(ref, np.float64)
  return np.linalg.norm(y - ref) / np.linalg.norm(ref)


def _examples(case, x):
  """``x: [*batch, *x_shape]`` as ``[N, *x_shape]``, for the references."""
  return x.reshape(-1, *case.x_shape)


@cases
@pytest.mark.parametrize("batch_shape", [(), (2, 3)], ids=str)
def test_matches_float64_reference(x64, rng, case, batch_shape):
  layer = case.nnx(param_dtype=jnp.float64)
  randomize(layer, rng)
  x = _x(rng, case, batch_shape)
  y = nnx.jit(lambda m, v: m(v))(layer, jnp.asarray(x))
  ref = case.reference(nnx_params(layer), _examples(case, x))
  chex.assert_shape(y, (*batch_shape, *ref.shape[1:]))
  np.testing.assert_allclose(np.asarray(y).reshape(ref.shape), ref, rtol=1e-10, atol=1e-10)
  if case.conv is None and len(case.x_shape) > 1:  # KFC also takes the flat map
    flat = x.reshape(*batch_shape, case.in_features)
    np.testing.assert_allclose(layer(jnp.asarray(flat)), y, rtol=1e-12, atol=1e-12)


# Relative error allowed per compute dtype (inputs O(1), sums of ~60 terms).
TOLERANCES = {"float32": 2e-6, "bfloat16": 3e-2, "float16": 4e-3}


def _grid():
  """dtype x param_dtype x precision: in full for the layers with the most
  code paths (KFC transposes, mixed terms), a corner of it for the others."""
  full = itertools.product(
    [None, jnp.float32, jnp.bfloat16, jnp.float16],
    [jnp.float32, jnp.bfloat16],
    [None, jax.lax.Precision.HIGHEST],
  )
  corner = [
    (None, jnp.float32, None),
    (jnp.bfloat16, jnp.bfloat16, None),
    (jnp.float16, jnp.float32, jax.lax.Precision.HIGHEST),
    (None, jnp.bfloat16, jax.lax.Precision.HIGHEST),
  ]
  name = lambda d: "infer" if d is None else jnp.dtype(d).name
  for case in CASES:
    grid = full if case.id in ("kfc-combined", "linear-terms", "conv-terms-dilated") else corner
    for dtype, param_dtype, precision in grid:
      yield pytest.param(
        case,
        dtype,
        param_dtype,
        precision,
        id=(f"{case.id}-{name(dtype)}-p{name(param_dtype)}-{precision}"),
      )


@pytest.mark.parametrize("case,dtype,param_dtype,precision", list(_grid()))
def test_dtype_grid(rng, case, dtype, param_dtype, precision):
  layer = case.nnx(dtype=dtype, param_dtype=param_dtype, precision=precision)
  randomize(layer, rng)
  x = _x(rng, case, (4,), np.float32)
  y = nnx.jit(lambda m, v: m(v))(layer, jnp.asarray(x))
  compute = jnp.dtype(dtype or jnp.float32)  # float32 x promotes low params
  assert y.dtype == compute
  for name, value in nnx_params(layer).items():
    assert value.dtype == jnp.dtype(param_dtype), name
  # Reference from what the computation actually sees: x in the compute dtype.
  x_seen = np.asarray(jnp.asarray(x, compute), np.float64)
  params = {
    k: np.asarray(jnp.asarray(v, compute), np.float64) for k, v in nnx_params(layer).items()
  }
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
  # And against the closed form: for a dense linear layer d sum(y) / dx = W @ 1.
  if case.linear and case.conv is None:
    w = case.kernel(nnx_params(layer))
    gx = jax.grad(lambda v: f(state, v).sum())(x)
    np.testing.assert_allclose(
      np.asarray(gx).reshape(3, -1), np.tile(w.sum(axis=1), (3, 1)), rtol=1e-10
    )


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
    np.testing.assert_array_equal(twin.apply(copied, method="materialize"), layer.materialize())
  assert twin.cost_for_input(4, x.shape) == layer.cost_for_input(4, x.shape)


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
  bias = case.args[1] if case.kwargs.get("use_bias", True) else 0
  assert cost.dense_params == case.kernel_size + bias
  assert cost.dense_flops == 2 * case.kernel_size
  assert cost.flops > 0
  twin_params = case.linen().init(jax.random.key(0), jnp.ones((1, *case.x_shape)))["params"]
  assert sum(v.size for v in jax.tree.leaves(twin_params)) == count


@cases
def test_is_a_kronecker_layer(case):
  layer, twin = case.nnx(), case.linen()
  for module in (layer, twin):
    assert isinstance(module, kfc_jax.layers.KroneckerLayer)
    assert module.replaces == ("conv" if case.conv else "linear")
  assert layer.layout == twin.layout  # the same layout, read the same way


@cases
def test_materialize_is_the_effective_kernel(x64, rng, case):
  layer = case.nnx(
    param_dtype=jnp.float64, use_bias=False, **({} if case.linear else {"activation": None})
  )
  randomize(layer, rng)
  x = _x(rng, case, (4,))
  w = np.asarray(layer.materialize())
  if case.linear:
    np.testing.assert_allclose(w, case.kernel(nnx_params(layer)), rtol=1e-12, atol=1e-12)
  chex.assert_shape(
    w, (*layer.kernel_size, *case.args[:2]) if case.conv else (case.in_features, case.args[1])
  )
  y = np.asarray(layer(jnp.asarray(x)))
  np.testing.assert_allclose(
    y.reshape(-1), case.apply_kernel(x, w).reshape(-1), rtol=1e-10, atol=1e-10
  )


@cases
def test_linen_errors_at_first_call_not_construction(case):
  is_kfc = case.linen_cls is kfc_jax.linen.KFC
  bad = case.linen(terms=[("II", (7, 7))]) if is_kfc else case.linen(rank=0)
  with pytest.raises(ValueError, match=r"rank|out_factors"):
    bad.init(jax.random.key(0), jnp.ones((1, *case.x_shape)))


def test_every_layer_is_in_the_table():
  public = {getattr(kfc_jax.nnx, n) for n in kfc_jax.nnx.__all__}
  assert public - {c.nnx_cls for c in CASES} == {kfc_jax.nnx.KroneckerFactor}
  linen = {getattr(kfc_jax.linen, n) for n in kfc_jax.linen.__all__}
  modules = {m for m in linen if isinstance(m, type) and issubclass(m, nn.Module)}
  assert {c.linen_cls for c in CASES} == modules


@pytest.mark.parametrize(
  "strides,padding,dilation",
  [(1, "SAME", 1), (2, "SAME", 1), (2, "VALID", 1), (1, "SAME", 2), ((2, 1), ((1, 0), (2, 1)), 1)],
  ids=str,
)
def test_numpy_conv_reference_is_lax_conv(x64, rng, strides, padding, dilation):
  x, w = rng.standard_normal((2, 9, 8, 3)), rng.standard_normal((2, 3, 3, 4))
  pair = lambda v: (v, v) if isinstance(v, int) else v
  expected = jax.lax.conv_general_dilated(
    x,
    w,
    pair(strides),
    padding,
    rhs_dilation=pair(dilation),
    dimension_numbers=("NHWC", "HWIO", "NHWC"),
  )
  np.testing.assert_allclose(
    np_conv(x, w, strides, padding, dilation), expected, rtol=1e-12, atol=1e-12
  )
