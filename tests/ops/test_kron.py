"""kron_matmul and kron against a float64 np.kron reference (plans: test_cost.py)."""

from __future__ import annotations

import itertools
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.test_util import check_grads
from references import np_kron, random_factors

import kfc_jax

# (in_factors, out_factors): rectangular, size-1 and k = 1..4.
SHAPES = [
  ((5,), (3,)),
  ((2, 3), (4, 5)),
  ((1, 4), (3, 1)),
  ((3, 2, 4), (2, 5, 1)),
  ((2, 1, 3, 2), (2, 3, 1, 2)),
]


def _assert_strategies_match(rng, in_factors, out_factors, rank, batch_shape, strategies):
  factors = random_factors(rng, in_factors, out_factors, rank)
  x = rng.standard_normal((*batch_shape, math.prod(in_factors)))
  expected = x @ np_kron(factors)
  for strategy in strategies:
    y = kfc_jax.kron_matmul(jnp.asarray(x), [jnp.asarray(f) for f in factors], strategy=strategy)
    chex.assert_shape(y, (*batch_shape, math.prod(out_factors)))
    np.testing.assert_allclose(y, expected, rtol=1e-10, atol=1e-10, err_msg=f"strategy={strategy}")


@pytest.mark.parametrize("in_factors,out_factors", SHAPES, ids=str)
@pytest.mark.parametrize("rank", [1, 2, 8])
@pytest.mark.parametrize("batch_shape", [(), (4,), (2, 3), (2, 1, 3)], ids=str)
def test_matches_np_kron(x64, rng, in_factors, out_factors, rank, batch_shape):
  _assert_strategies_match(
    rng, in_factors, out_factors, rank, batch_shape, ["auto", "factored", "materialize"]
  )


@pytest.mark.parametrize("in_factors,out_factors", SHAPES[1:], ids=str)
def test_every_contraction_order(x64, rng, in_factors, out_factors):
  orders = list(itertools.permutations(range(len(in_factors))))
  _assert_strategies_match(rng, in_factors, out_factors, 3, (2, 3), orders)


def test_two_dimensional_factor_means_rank_one(x64, rng):
  a, b = rng.standard_normal((3, 4)), rng.standard_normal((2, 5))
  x = rng.standard_normal((7, 6))
  np.testing.assert_allclose(kfc_jax.kron_matmul(x, [a, b]), x @ np.kron(a, b), rtol=1e-12)


@pytest.mark.parametrize("in_factors,out_factors", SHAPES, ids=str)
@pytest.mark.parametrize("rank", [1, 3])
def test_kron_matches_np_kron(x64, rng, in_factors, out_factors, rank):
  factors = random_factors(rng, in_factors, out_factors, rank)
  np.testing.assert_allclose(kfc_jax.kron(factors), np_kron(factors), rtol=1e-12)


# Relative-error tolerances per dtype, for O(1) entries and sums of ~100 terms.
TOLERANCES = {jnp.float32: 1e-5, jnp.bfloat16: 3e-2, jnp.float16: 4e-3}


@pytest.mark.parametrize("dtype", list(TOLERANCES), ids=lambda d: jnp.dtype(d).name)
@pytest.mark.parametrize("strategy", ["factored", "materialize"])
@pytest.mark.parametrize("precision", [None, jax.lax.Precision.HIGHEST], ids=str)
def test_dtypes(rng, dtype, strategy, precision):
  in_factors, out_factors, rank = (4, 6), (5, 3), 2
  factors = random_factors(rng, in_factors, out_factors, rank)
  x = rng.standard_normal((16, 24))
  expected = x @ np_kron(factors)
  y = kfc_jax.kron_matmul(
    jnp.asarray(x, dtype),
    [jnp.asarray(f, dtype) for f in factors],
    strategy=strategy,
    precision=precision,
  )
  assert y.dtype == dtype
  # Inputs are rounded to dtype too, so compare with the reference relative
  # to the output's scale.
  err = np.abs(np.asarray(y, np.float64) - expected).max() / np.abs(expected).max()
  assert err < TOLERANCES[dtype], err


@pytest.mark.parametrize("strategy", ["factored", "materialize", "auto"])
def test_preferred_element_type_accumulates_wider(rng, strategy):
  factors = [jnp.asarray(f, jnp.bfloat16) for f in random_factors(rng, (8, 8), (8, 8), 4)]
  x = jnp.asarray(rng.standard_normal((32, 64)), jnp.bfloat16)
  expected = np.asarray(x, np.float64) @ np_kron(factors)
  y = kfc_jax.kron_matmul(x, factors, preferred_element_type=jnp.float32, strategy=strategy)
  assert y.dtype == jnp.float32
  err = np.abs(np.asarray(y) - expected).max() / np.abs(expected).max()
  assert err < 1e-5, err  # only the inputs were rounded, not the sums


def test_mixed_dtypes_promote(rng):
  x = jnp.asarray(rng.standard_normal((3, 6)), jnp.bfloat16)
  factors = [jnp.asarray(f, jnp.float32) for f in random_factors(rng, (2, 3), (2, 2), 1)]
  assert kfc_jax.kron_matmul(x, factors).dtype == jnp.float32


@pytest.mark.parametrize("strategy", ["factored", "materialize", (0, 2, 1)])
@pytest.mark.parametrize("rank", [1, 3])
@pytest.mark.parametrize("backward,modes", [("autodiff", ["fwd", "rev"]), ("planned", ["rev"])])
def test_gradients(x64, rng, strategy, rank, backward, modes):
  # The planned backward is a custom_vjp: reverse mode (any order) only.
  factors = tuple(jnp.asarray(f) for f in random_factors(rng, (2, 3, 2), (3, 2, 2), rank))
  x = jnp.asarray(rng.standard_normal((4, 12)))

  def f(x, *factors):
    return kfc_jax.kron_matmul(x, factors, strategy=strategy, backward=backward)

  check_grads(f, (x, *factors), order=2, modes=modes)


def test_gradients_match_reference(x64, rng):
  factors = [jnp.asarray(f) for f in random_factors(rng, (3, 4), (2, 5), 2)]
  x = jnp.asarray(rng.standard_normal((6, 12)))
  g = jnp.asarray(rng.standard_normal((6, 10)))
  loss = lambda x, fs: jnp.sum(kfc_jax.kron_matmul(x, fs) * g)
  dx, dfs = jax.grad(loss, argnums=(0, 1))(x, factors)
  np.testing.assert_allclose(dx, np.asarray(g) @ np_kron(factors).T, rtol=1e-10)
  # dL/dA[r, i, j] = sum over the B block: <x^T g, kron(e_ij, B[r])>.
  xtg = (np.asarray(x).T @ np.asarray(g)).reshape(3, 4, 2, 5)
  a, b = (np.asarray(f) for f in factors)
  np.testing.assert_allclose(dfs[0], np.einsum("ikjl,rkl->rij", xtg, b), rtol=1e-10)
  np.testing.assert_allclose(dfs[1], np.einsum("ikjl,rij->rkl", xtg, a), rtol=1e-10)


def test_jit_vmap_and_no_retracing(rng):
  factors = [jnp.asarray(f) for f in random_factors(rng, (4, 4), (3, 3), 2, np.float32)]
  xs = jnp.asarray(rng.standard_normal((5, 8, 16)), jnp.float32)

  @jax.jit
  @chex.assert_max_traces(n=1)
  def f(x, factors):
    return kfc_jax.kron_matmul(x, factors)

  for _ in range(3):
    y = f(xs, factors)
  w = np_kron(factors)
  np.testing.assert_allclose(y, np.asarray(xs) @ w, rtol=1e-4, atol=1e-4)
  # vmap over per-example factors, too.
  stacked = [jnp.stack([f, 2 * f]) for f in factors]
  yv = jax.vmap(lambda x, fs: kfc_jax.kron_matmul(x, fs))(xs[:2], stacked)
  np.testing.assert_allclose(yv[1], np.asarray(xs[1]) @ (4 * w), rtol=1e-4, atol=1e-3)


# Every float dtype of the dtype policy, with its unit roundoff.
FLOAT_DTYPES = {
  jnp.float16: 2.0**-11,
  jnp.bfloat16: 2.0**-8,
  jnp.float32: 2.0**-24,
  jnp.float64: 2.0**-53,
}


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_property_random_shapes(data):
  k = data.draw(st.integers(1, 3), label="k")
  ms = data.draw(st.lists(st.integers(1, 4), min_size=k, max_size=k), label="in")
  ns = data.draw(st.lists(st.integers(1, 4), min_size=k, max_size=k), label="out")
  rank = data.draw(st.integers(1, 3), label="rank")
  # Sizes from 0: empty batches (x: [0, m], [3, 0, m]) give empty results.
  batch = data.draw(st.lists(st.integers(0, 3), max_size=2), label="batch")
  dtype = data.draw(st.sampled_from(list(FLOAT_DTYPES)), label="dtype")
  strategy = data.draw(st.sampled_from(["auto", "factored", "materialize"]), label="strategy")
  seed = data.draw(st.integers(0, 2**31 - 1), label="seed")
  rng = np.random.default_rng(seed)
  with jax.enable_x64(True):
    # The reference multiplies the inputs as rounded to dtype, in float64.
    factors = [
      np.asarray(jnp.asarray(f, dtype), np.float64) for f in random_factors(rng, ms, ns, rank)
    ]
    x = np.asarray(jnp.asarray(rng.standard_normal((*batch, math.prod(ms))), dtype), np.float64)
    y = kfc_jax.kron_matmul(
      jnp.asarray(x, dtype), [jnp.asarray(f, dtype) for f in factors], strategy=strategy
    )
  assert y.dtype == dtype
  chex.assert_shape(y, (*batch, math.prod(ns)))
  # Rounding bound: each of the k contractions (and the stored intermediates)
  # rounds, relative to |x| @ |W| (no cancellation in the bound).
  scale = np.abs(x) @ np_kron([np.abs(f) for f in factors])
  tol = 8 * (k + 1) * FLOAT_DTYPES[dtype] * (scale + 1e-30)
  assert np.all(np.abs(np.asarray(y, np.float64) - x @ np_kron(factors)) <= tol)


@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_property_zero_size_factor_is_a_clear_error(data):
  k = data.draw(st.integers(1, 3), label="k")
  dims = data.draw(
    st.lists(st.integers(0, 3), min_size=2 * k, max_size=2 * k).filter(lambda d: 0 in d),
    label="dims",
  )
  batch = data.draw(st.integers(0, 3), label="batch")
  factors = [jnp.ones((dims[2 * t], dims[2 * t + 1])) for t in range(k)]
  bad = next(t for t in range(k) if 0 in dims[2 * t : 2 * t + 2])
  x = jnp.ones((batch, math.prod(dims[0::2])))
  with pytest.raises(ValueError, match=rf"factors\[{bad}\] must have sizes m, n >= 1"):
    kfc_jax.kron_matmul(x, factors)


class TestErrors:
  def test_x_size_mismatch(self):
    with pytest.raises(ValueError, match=r"x must have shape \[\*batch, 6\].*\(2, 3\).*\(4, 5\)"):
      kfc_jax.kron_matmul(jnp.ones((4, 5)), [jnp.ones((2, 2)), jnp.ones((3, 3))])

  def test_scalar_x(self):
    with pytest.raises(ValueError, match="x must have shape"):
      kfc_jax.kron_matmul(jnp.float32(1.0), [jnp.ones((1, 1))])

  def test_different_ranks(self):
    with pytest.raises(ValueError, match=r"same rank.*\[2, 3\]"):
      kfc_jax.kron_matmul(jnp.ones((1, 4)), [jnp.ones((2, 2, 2)), jnp.ones((3, 2, 2))])

  def test_rank_zero(self):
    with pytest.raises(ValueError, match="rank >= 1, got rank 0"):
      kfc_jax.kron_matmul(jnp.ones((1, 2)), [jnp.ones((0, 2, 2))])

  def test_wrong_factor_ndim(self):
    with pytest.raises(ValueError, match=r"factors\[1\] must have shape \[rank, m, n\].*4-D"):
      kfc_jax.kron_matmul(jnp.ones((1, 4)), [jnp.ones((2, 2)), jnp.ones((1, 1, 2, 2))])

  def test_array_instead_of_sequence(self):
    with pytest.raises(TypeError, match="must be a sequence"):
      kfc_jax.kron_matmul(jnp.ones((1, 4)), jnp.ones((1, 4, 4)))

  def test_empty_factors(self):
    with pytest.raises(ValueError, match="at least one factor"):
      kfc_jax.kron_matmul(jnp.ones((1, 4)), [])

  def test_integer_factors(self):
    with pytest.raises(
      TypeError, match=r"factors\[0\] must have a real floating dtype .*, got int32"
    ):
      kfc_jax.kron_matmul(jnp.ones((1, 4)), [jnp.ones((4, 4), jnp.int32)])

  @pytest.mark.parametrize("strategy", ["fast", (0, 0), (0, 1, 2)])
  def test_bad_strategy(self, strategy):
    with pytest.raises(ValueError, match="strategy must be one of"):
      kfc_jax.kron_matmul(jnp.ones((1, 4)), [jnp.ones((2, 2)), jnp.ones((2, 2))], strategy=strategy)

  def test_plan_bad_shapes(self):
    with pytest.raises(ValueError, match=r"x_shape must end in prod\(m_t\) = 6"):
      kfc_jax.kron_matmul_plan((3, 5), [(2, 2), (3, 3)])
    with pytest.raises(ValueError, match="positive integer"):
      kfc_jax.kron_matmul_plan((3, 4), [(2, -2), (2, 2)])
    with pytest.raises(TypeError, match="positive integer"):
      kfc_jax.kron_matmul_plan((3, 4), [(2, 2.5), (2, 2)])


@pytest.mark.parametrize("batch", [7, 12, 1])
def test_chunked_plan_matches_reference(x64, rng, batch):
  # A tiny chunk budget forces the row-block path, including a ragged last block.
  model = kfc_jax.CostModel(1e9, 1e9, 0.0, chunk_bytes=256, cache_bytes_per_second=4e9)
  factors = [jnp.asarray(f) for f in random_factors(rng, (2, 3, 2), (3, 2, 2), 2)]
  x = jnp.asarray(rng.standard_normal((batch, 12)))
  plan = kfc_jax.kron_matmul_plan(
    x.shape, [f.shape for f in factors], dtype=jnp.float64, strategy="factored", cost_model=model
  )
  assert (plan.chosen.chunk_rows is not None) == (batch > 1)
  f = lambda x, fs: kfc_jax.kron_matmul(x, fs, strategy="factored", cost_model=model)
  np.testing.assert_allclose(f(x, factors), np.asarray(x) @ np_kron(factors), rtol=1e-10)
  check_grads(f, (x, factors), order=1, modes=["rev"])
