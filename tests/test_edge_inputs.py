"""Edge inputs (issue 15): empty batches, every float dtype, one dtype policy.

Empty batches go through every op (every ``kron_matmul`` strategy, the planned
and autodiff backward, autotune, ``padded_kron_matmul``, ``kron_conv``,
``kron_conv_sum``), every layer (NNX and Linen) and their gradients, under
``jit`` too. The dtype policy (``docs/DESIGN.md``, "Conventions") is checked
the same way for every strategy and the conv ops against float64 references
(``np.kron`` and the NumPy convolution). Property tests draw the edge cases
(empty batches, every float dtype) for ``kron_conv`` and the layers; those of
``kron_matmul`` are in ``tests/ops/test_kron.py``. The bad inputs are in
``tests/test_bad_inputs.py``.
"""

from __future__ import annotations

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st
from layer_cases import CASE_IDS, CASES, nnx_params, randomize
from references import np_conv, np_conv_kernel, np_kron, random_factors

import kfc_jax

MATMUL_STRATEGIES = ["auto", "factored", "materialize", (1, 0), "autotune"]
CONV_STRATEGIES = ["auto", "factored", "materialize"]
# Unit roundoff of every float dtype of the policy.
ROUNDOFF = {
  jnp.float16: 2.0**-11,
  jnp.bfloat16: 2.0**-8,
  jnp.float32: 2.0**-24,
  jnp.float64: 2.0**-53,
}
# Conv splits that take each route of the factored conv (matmul, gemm-conv,
# conv-gemm and conv-conv), as (A HWIO, B HWIO); x has 4 channels.
CONV_SPLITS = [
  ((1, 1, 2, 2), (1, 1, 2, 3)),
  ((3, 3, 2, 2), (1, 1, 2, 3)),
  ((1, 1, 2, 2), (3, 3, 2, 3)),
  ((3, 1, 2, 2), (1, 3, 2, 3)),
  ((2, 2, 2, 2), (2, 2, 2, 3)),
]


# ---------------------------------------------------------------------------
# Empty batches through the ops
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", MATMUL_STRATEGIES, ids=str)
@pytest.mark.parametrize("backward", ["planned", "autodiff"])
@pytest.mark.parametrize("batch_shape", [(0,), (3, 0), (0, 2)], ids=str)
@pytest.mark.parametrize("use_jit", [False, True])
def test_matmul_empty_batch(strategy, backward, batch_shape, use_jit):
  factors = [jnp.ones((2, 2, 3), jnp.bfloat16), jnp.ones((2, 3, 2), jnp.bfloat16)]
  x = jnp.zeros((*batch_shape, 6), jnp.bfloat16)

  def loss(x, factors):
    y = kfc_jax.kron_matmul(x, factors, strategy=strategy, backward=backward)
    return y.astype(jnp.float32).sum(), y

  fn = (
    jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))
    if use_jit
    else jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)
  )
  (total, y), (dx, dfs) = fn(x, factors)
  assert y.shape == (*batch_shape, 6) and y.dtype == jnp.bfloat16
  assert float(total) == 0.0
  assert dx.shape == x.shape and dx.dtype == x.dtype
  for df, f in zip(dfs, factors, strict=True):
    assert df.shape == f.shape and df.dtype == f.dtype
    assert not np.any(np.asarray(df, np.float32))


def test_matmul_empty_batch_keeps_the_policy_dtype():
  factors = [jnp.ones((2, 3)), jnp.ones((3, 2))]
  y = kfc_jax.kron_matmul(jnp.zeros((0, 6), jnp.int32), factors, preferred_element_type=jnp.float16)
  assert y.shape == (0, 6) and y.dtype == jnp.float16
  with jax.enable_x64(True):
    y = kfc_jax.kron_matmul(
      jnp.zeros((0, 6), jnp.float16), [f.astype(jnp.float64) for f in factors]
    )
    assert y.dtype == jnp.float64


def test_matmul_plan_of_an_empty_batch():
  plan = kfc_jax.kron_matmul_plan((0, 6), [(2, 3), (3, 2)], strategy="autotune")
  assert plan.batch == 0 and plan.chosen.flops == 0


@pytest.mark.parametrize("use_jit", [False, True])
def test_padded_matmul_empty_batch(use_jit):
  factors = [jnp.ones((2, 3)), jnp.ones((3, 2))]
  fn = lambda x: kfc_jax.padded_kron_matmul(x, factors, 5)
  fn = jax.jit(fn) if use_jit else fn
  for shape in [(0, 5), (3, 0, 5)]:
    y = fn(jnp.zeros(shape))
    assert y.shape == (*shape[:-1], 5) and y.dtype == jnp.float32
  assert jax.grad(lambda x: fn(x).sum())(jnp.zeros((0, 5))).shape == (0, 5)


@pytest.mark.parametrize("strategy", CONV_STRATEGIES)
@pytest.mark.parametrize("split", CONV_SPLITS, ids=str)
@pytest.mark.parametrize("use_sum", [False, True])
def test_conv_empty_batch(strategy, split, use_sum):
  a, b = (jnp.ones((2, *s)) for s in split)  # rank 2
  kh, kw = split[0][0] * split[1][0], split[0][1] * split[1][1]

  def conv(x, a, b):
    kwargs = dict(strides=2, padding="VALID", strategy=strategy)
    if use_sum:
      return kfc_jax.kron_conv_sum(x, [(a, b)], **kwargs)
    return kfc_jax.kron_conv(x, (a, b), **kwargs)

  for batch_shape in [(0,), (2, 0)]:
    x = jnp.zeros((*batch_shape, 7, 8, 4))
    y = jax.jit(conv)(x, a, b)
    expected_hw = ((7 - kh) // 2 + 1, (8 - kw) // 2 + 1)
    assert y.shape == (*batch_shape, *expected_hw, 6) and y.dtype == jnp.float32
  dx, da, db = jax.grad(lambda *args: conv(*args).sum(), argnums=(0, 1, 2))(
    jnp.zeros((0, 7, 8, 4)), a, b
  )
  assert dx.shape == (0, 7, 8, 4) and da.shape == a.shape and db.shape == b.shape
  assert not np.any(np.asarray(da)) and not np.any(np.asarray(db))


# ---------------------------------------------------------------------------
# Empty batches through the layers
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("batch_shape", [(0,), (3, 0)], ids=str)
def test_layers_empty_batch(case, batch_shape):
  x = jnp.zeros((*batch_shape, *case.x_shape))
  layer = case.nnx()
  y = layer(x)
  out_one = layer(jnp.ones((1, *case.x_shape)))
  assert y.shape == (*batch_shape, *out_one.shape[1:]) and y.dtype == out_one.dtype
  grads = nnx.grad(lambda m: m(x).sum())(layer)
  for value in jax.tree.leaves(nnx.to_pure_dict(grads)):
    assert not np.any(np.asarray(value))
  linen = case.linen()
  variables = linen.init(jax.random.key(0), jnp.ones((1, *case.x_shape)))
  y_linen = jax.jit(linen.apply)(variables, x)
  assert y_linen.shape == y.shape and y_linen.dtype == y.dtype


# ---------------------------------------------------------------------------
# One dtype policy, every strategy and the conv ops
# ---------------------------------------------------------------------------


def _expected_dtype(x_dtype, factor_dtype, pet):
  return jnp.dtype(pet) if pet is not None else jnp.result_type(x_dtype, factor_dtype)


@pytest.mark.parametrize("strategy", ["auto", "factored", "materialize", (1, 0)], ids=str)
@pytest.mark.parametrize(
  "x_dtype",
  [jnp.float16, jnp.bfloat16, jnp.float32, jnp.int32, jnp.bool_],
  ids=lambda d: jnp.dtype(d).name,
)
@pytest.mark.parametrize(
  "factor_dtype", [jnp.bfloat16, jnp.float32], ids=lambda d: jnp.dtype(d).name
)
@pytest.mark.parametrize("pet", [None, jnp.float32], ids=str)
def test_matmul_dtype_policy(rng, strategy, x_dtype, factor_dtype, pet):
  factors = random_factors(rng, (2, 3), (3, 2), 2)
  x = rng.integers(-2, 3, (4, 6)) if x_dtype != jnp.bool_ else rng.integers(0, 2, (4, 6))
  xs, fs = jnp.asarray(x, x_dtype), [jnp.asarray(f, factor_dtype) for f in factors]
  y = kfc_jax.kron_matmul(xs, fs, strategy=strategy, preferred_element_type=pet)
  dtype = _expected_dtype(x_dtype, factor_dtype, pet)
  assert y.dtype == dtype
  # The reference multiplies the inputs as cast to the compute dtype.
  compute = jnp.result_type(x_dtype, factor_dtype)
  w = np_kron([np.asarray(f.astype(compute), np.float64) for f in fs])
  expected = np.asarray(xs.astype(compute), np.float64) @ w
  scale = np.abs(np.asarray(xs.astype(compute), np.float64)) @ np_kron(
    [np.abs(np.asarray(f.astype(compute), np.float64)) for f in fs]
  )
  tol = 16 * ROUNDOFF[jnp.dtype(compute).type] * scale + 1e-30
  assert np.all(np.abs(np.asarray(y, np.float64) - expected) <= tol)


@pytest.mark.parametrize("strategy", CONV_STRATEGIES)
@pytest.mark.parametrize(
  "x_dtype", [jnp.float16, jnp.bfloat16, jnp.float32, jnp.int32], ids=lambda d: jnp.dtype(d).name
)
@pytest.mark.parametrize("pet", [None, jnp.float32], ids=str)
def test_conv_dtype_policy(rng, strategy, x_dtype, pet):
  a = jnp.asarray(rng.standard_normal((2, 3, 1, 2, 2)), jnp.bfloat16)
  b = jnp.asarray(rng.standard_normal((2, 1, 3, 2, 3)), jnp.bfloat16)
  x = jnp.asarray(rng.integers(-2, 3, (2, 5, 6, 4)), x_dtype)
  for y in (
    kfc_jax.kron_conv(x, (a, b), strategy=strategy, preferred_element_type=pet),
    kfc_jax.kron_conv_sum(x, [(a, b)], strategy=strategy, preferred_element_type=pet),
  ):
    assert y.dtype == _expected_dtype(x_dtype, jnp.bfloat16, pet)
    compute = jnp.result_type(x_dtype, jnp.bfloat16)
    xs = np.asarray(x.astype(compute), np.float64)
    k = np_conv_kernel(a, b)
    expected = np_conv(xs, k)
    scale = np_conv(
      np.abs(xs),
      np.abs(np_conv_kernel(np.abs(np.asarray(a, np.float64)), np.abs(np.asarray(b, np.float64)))),
    )
    tol = 16 * ROUNDOFF[jnp.dtype(compute).type] * scale + 1e-30
    assert np.all(np.abs(np.asarray(y, np.float64) - expected) <= tol)


def test_conv_pairs_are_not_read_as_one_rank_two_term(rng):
  """The issue's reproduction: it returned a result off by up to 19."""
  c1, d1, c2, d2 = (
    jnp.asarray(rng.standard_normal(s), jnp.float32)
    for s in [(3, 3, 2, 2), (1, 1, 2, 2), (3, 3, 2, 2), (1, 1, 2, 2)]
  )
  x = jnp.asarray(rng.standard_normal((1, 6, 6, 4)), jnp.float32)
  with pytest.raises(TypeError, match="kron_conv_sum"):
    kfc_jax.kron_conv(x, [(c1, d1), (c2, d2)])
  # What the caller meant, and what a rank-2 term is written as:
  summed = kfc_jax.kron_conv_sum(x, [(c1, d1), (c2, d2)])
  stacked = kfc_jax.kron_conv(x, (jnp.stack([c1, c2]), jnp.stack([d1, d2])))
  np.testing.assert_allclose(summed, stacked, rtol=1e-5, atol=1e-5)


def test_compress_too_high_compression_leaves_the_model(rng):
  model = nnx.Sequential(nnx.Linear(64, 64, rngs=nnx.Rngs(0)))
  before = nnx_params(model)
  with pytest.raises(ValueError, match="no layer shape fits compression"):
    kfc_jax.compress(model, kfc_jax.LayerRule(".*", compression=1e9))
  after = nnx_params(model)
  assert before.keys() == after.keys()
  for name in before:
    np.testing.assert_array_equal(before[name], after[name])


# ---------------------------------------------------------------------------
# Property tests: kron_conv and the layers, edge cases drawn
# ---------------------------------------------------------------------------


@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_property_kron_conv(data):
  a_hw = data.draw(st.tuples(st.integers(1, 2), st.integers(1, 2)), label="a_hw")
  b_hw = data.draw(st.tuples(st.integers(1, 2), st.integers(1, 2)), label="b_hw")
  ai, bi, ao, bo = data.draw(st.tuples(*[st.integers(1, 2)] * 4), label="channels")
  rank = data.draw(st.integers(1, 2), label="rank")
  batch = data.draw(st.lists(st.integers(0, 2), max_size=2), label="batch")
  hw = data.draw(st.tuples(st.integers(4, 6), st.integers(4, 6)), label="hw")
  strides = data.draw(st.integers(1, 2), label="strides")
  padding = data.draw(st.sampled_from(["SAME", "VALID"]), label="padding")
  dtype = data.draw(st.sampled_from(list(ROUNDOFF)), label="dtype")
  strategy = data.draw(st.sampled_from(CONV_STRATEGIES), label="strategy")
  rng = np.random.default_rng(data.draw(st.integers(0, 2**31 - 1), label="seed"))
  with jax.enable_x64(True):
    a = jnp.asarray(rng.standard_normal((rank, *a_hw, ai, ao)), dtype)
    b = jnp.asarray(rng.standard_normal((rank, *b_hw, bi, bo)), dtype)
    x = jnp.asarray(rng.standard_normal((*batch, *hw, ai * bi)), dtype)
    y = kfc_jax.kron_conv(x, (a, b), strides=strides, padding=padding, strategy=strategy)
    a64, b64, x64 = (np.asarray(t, np.float64) for t in (a, b, x))
  assert y.dtype == dtype
  x_flat = x64.reshape(-1, *hw, ai * bi)
  if x_flat.shape[0] == 0:  # the NumPy reference needs an image to slide over
    probe = np_conv(np.zeros((1, *hw, ai * bi)), np_conv_kernel(a64, b64), strides, padding)
    chex.assert_shape(y, (*batch, *probe.shape[1:]))
    return
  expected = np_conv(x_flat, np_conv_kernel(a64, b64), strides, padding)
  scale = np_conv(np.abs(x_flat), np_conv_kernel(np.abs(a64), np.abs(b64)), strides, padding)
  chex.assert_shape(y, (*batch, *expected.shape[1:]))
  y_flat = np.asarray(y, np.float64).reshape(expected.shape)
  tol = 16 * ROUNDOFF[dtype] * scale + 1e-30
  assert np.all(np.abs(y_flat - expected) <= tol)


@settings(max_examples=20, deadline=None)
@given(data=st.data())
def test_property_layers(data):
  case = data.draw(st.sampled_from(CASES), label="case")
  batch = data.draw(st.lists(st.integers(0, 2), min_size=1, max_size=2), label="batch")
  dtype = data.draw(st.sampled_from([jnp.float16, jnp.bfloat16, jnp.float32]), label="dtype")
  rng = np.random.default_rng(data.draw(st.integers(0, 2**31 - 1), label="seed"))
  layer = case.nnx(param_dtype=dtype, dtype=dtype)
  randomize(layer, rng)
  x = jnp.asarray(rng.standard_normal((*batch, *case.x_shape)), dtype)
  y = layer(x)
  assert y.dtype == dtype
  n = math.prod(batch)
  if n == 0:
    probe = layer(jnp.ones((1, *case.x_shape), dtype))
    assert y.shape == (*batch, *probe.shape[1:])
    return
  params = {k: np.asarray(v, np.float64) for k, v in nnx_params(layer).items()}
  x64 = np.asarray(x, np.float64).reshape(n, *case.x_shape)
  expected = case.reference(params, x64)
  assert y.shape == (*batch, *expected.shape[1:])
  # Relative to the output's size: the layers round in dtype (KDL's
  # activation included), so the bound is a norm, not an elementwise one.
  err = np.linalg.norm(np.asarray(y, np.float64).reshape(expected.shape) - expected)
  assert err <= 64 * ROUNDOFF[dtype] * (np.linalg.norm(expected) + np.sqrt(expected.size))
