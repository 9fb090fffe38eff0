"""GKPD: exact recovery, the error formula, optimality, suggestions, errors."""

from __future__ import annotations

import math

import jax
import numpy as np
import pytest

import kfc_jax

# (kernel shape, a_shape, b_shape): neither factor 1 spatially in the first three.
SPLITS = [
  ((4, 4, 6, 4), (2, 2, 2, 2), (2, 2, 3, 2)),
  ((9, 9, 4, 4), (3, 3, 2, 1), (3, 3, 2, 4)),
  ((6, 3, 4, 6), (2, 3, 2, 3), (3, 1, 2, 2)),
  ((3, 3, 16, 16), (3, 3, 4, 4), (1, 1, 4, 4)),
  ((3, 3, 8, 8), (1, 1, 8, 2), (3, 3, 1, 4)),
]


def np_kernel(a, b):
  return sum(np.kron(a[r], b[r]) for r in range(a.shape[0]))


@pytest.mark.parametrize("shape,a_shape,b_shape", SPLITS, ids=str)
@pytest.mark.parametrize("rank", [1, 3])
def test_exact_recovery(rng, shape, a_shape, b_shape, rank):
  rank = min(rank, math.prod(a_shape), math.prod(b_shape))
  a = rng.standard_normal((rank, *a_shape))
  b = rng.standard_normal((rank, *b_shape))
  kernel = np_kernel(a, b)
  dec = kfc_jax.gkpd(kernel, a_shape, b_shape, rank)
  fa, fb = dec.factors
  assert fa.shape == (rank, *a_shape) and fb.shape == (rank, *b_shape)
  assert dec.relative_error < 1e-12
  np.testing.assert_allclose(np_kernel(fa, fb), kernel, atol=1e-10)
  # The factors run in kron_conv as they are.
  with jax.enable_x64(True):
    np.testing.assert_allclose(kfc_jax.kron_kernel(dec.factors), kernel, atol=1e-10)


@pytest.mark.parametrize("shape,a_shape,b_shape", SPLITS, ids=str)
def test_error_is_the_discarded_singular_values(rng, shape, a_shape, b_shape):
  kernel = rng.standard_normal(shape)
  s = None
  for rank in (1, 2, 4):
    dec = kfc_jax.gkpd(kernel, a_shape, b_shape, rank)
    s = dec.singular_values
    expected = np.sqrt((s[rank:] ** 2).sum() / (s**2).sum())
    actual = np.linalg.norm(kernel - np_kernel(*dec.factors)) / np.linalg.norm(kernel)
    np.testing.assert_allclose(dec.relative_error, expected, rtol=1e-10)
    np.testing.assert_allclose(actual, expected, rtol=1e-10)
  # All singular values of the [prod(a), prod(b)] rearrangement.
  assert len(s) == min(math.prod(a_shape), math.prod(b_shape))


def test_singular_values_are_the_rearranged_kernels(rng):
  shape, a_shape, b_shape = SPLITS[2]
  kernel = rng.standard_normal(shape)
  # Rearrangement written out by hand: rows (p1, q1, i1, o1), columns (p2, ...).
  m = np.zeros((math.prod(a_shape), math.prod(b_shape)))
  for idx in np.ndindex(*shape):
    ia = [i // bs for i, bs in zip(idx, b_shape, strict=True)]
    ib = [i % bs for i, bs in zip(idx, b_shape, strict=True)]
    m[np.ravel_multi_index(ia, a_shape), np.ravel_multi_index(ib, b_shape)] = kernel[idx]
  np.testing.assert_allclose(
    kfc_jax.gkpd(kernel, a_shape, b_shape).singular_values,
    np.linalg.svd(m, compute_uv=False),
    rtol=1e-10,
  )


def test_optimal_against_perturbations(rng):
  kernel = rng.standard_normal((4, 4, 4, 4))
  dec = kfc_jax.gkpd(kernel, (2, 2, 2, 2), (2, 2, 2, 2), rank=2)
  best = np.linalg.norm(kernel - np_kernel(*dec.factors))
  for _ in range(20):
    fa, fb = (f + 0.05 * rng.standard_normal(f.shape) for f in dec.factors)
    assert np.linalg.norm(kernel - np_kernel(fa, fb)) >= best


def test_full_rank_is_exact(rng):
  kernel = rng.standard_normal((3, 3, 4, 4))
  dec = kfc_jax.gkpd(kernel, (3, 1, 2, 2), (1, 3, 2, 2), rank=12)
  assert dec.relative_error < 1e-12


def test_flax_kernel_and_float32_accepted(rng):
  kernel = rng.standard_normal((3, 3, 4, 4)).astype(np.float32)
  dec = kfc_jax.gkpd(jax.numpy.asarray(kernel), (3, 3, 2, 2), (1, 1, 2, 2), 2)
  assert dec.factors[0].dtype == np.float64


class TestSuggest:
  @pytest.mark.parametrize("channels", [16, 64, 256])
  @pytest.mark.parametrize("prefer", ["params", "flops"])
  def test_meets_the_budget(self, channels, prefer):
    shape = (3, 3, channels, channels)
    s = kfc_jax.suggest_conv_factors(shape, compression=5, prefer=prefer)
    assert s.compression >= 5
    assert all(p * q == k for p, q, k in zip(s.a_shape, s.b_shape, shape, strict=True))
    assert 1 <= s.rank <= min(math.prod(s.a_shape), math.prod(s.b_shape))
    assert s.flops_per_pixel < s.dense_flops_per_pixel

  def test_prefer_flops_has_fewer_flops(self):
    shape = (3, 3, 64, 64)
    p = kfc_jax.suggest_conv_factors(shape, compression=5, prefer="params")
    f = kfc_jax.suggest_conv_factors(shape, compression=5, prefer="flops")
    assert f.flops_per_pixel <= p.flops_per_pixel
    assert p.params >= f.params

  def test_max_params_and_fixed_rank(self):
    s = kfc_jax.suggest_conv_factors((3, 3, 32, 32), max_params=2000, rank=2)
    assert s.rank == 2 and s.params <= 2000
    assert s.factor_shapes == ((2, *s.a_shape), (2, *s.b_shape))

  def test_error_picks_the_structure_of_the_kernel(self, rng):
    a, b = rng.standard_normal((2, 1, 3, 4, 2)), rng.standard_normal((2, 3, 1, 4, 8))
    kernel = np_kernel(a, b) + 1e-3 * rng.standard_normal((3, 3, 16, 16))
    s = kfc_jax.suggest_conv_factors(kernel.shape, compression=5, kernel=kernel)
    assert s.compression >= 5
    err = kfc_jax.gkpd(kernel, s.a_shape, s.b_shape, s.rank).relative_error
    assert err < 1e-2
    # A budget-matched split that ignores the structure does much worse.
    q = kfc_jax.suggest_conv_factors(kernel.shape, compression=5, prefer="params")
    assert kfc_jax.gkpd(kernel, q.a_shape, q.b_shape, q.rank).relative_error > 10 * err

  def test_errors(self):
    with pytest.raises(
      ValueError,
      match=r"kernel_shape must be \(kh, kw, C_in, C_out\)"
      r".*\(3, 3, 4\)",
    ):
      kfc_jax.suggest_conv_factors((3, 3, 4))
    with pytest.raises(
      ValueError,
      match=r"compression must be a finite number > 1"
      r" \(dense / compressed parameters\), got 1",
    ):
      kfc_jax.suggest_conv_factors((3, 3, 4, 4), compression=1)
    with pytest.raises(ValueError, match="one of compression and max_params"):
      kfc_jax.suggest_conv_factors((3, 3, 4, 4), compression=None)
    with pytest.raises(
      ValueError,
      match=r"prefer must be 'error', 'params' or 'flops',"
      r" got 'speed'",
    ):
      kfc_jax.suggest_conv_factors((3, 3, 4, 4), prefer="speed")
    with pytest.raises(ValueError, match="prefer='error' needs the kernel"):
      kfc_jax.suggest_conv_factors((3, 3, 4, 4), prefer="error")
    with pytest.raises(ValueError, match=r"kernel must have shape kernel_shape = \(3, 3, 4, 4\)"):
      kfc_jax.suggest_conv_factors((3, 3, 4, 4), kernel=np.ones((3, 3, 4, 2)))
    with pytest.raises(
      ValueError,
      match=r"no Kronecker split of kernel_shape \(1, 1, 2, 2\)"
      r" fits max_params=1; the smallest split has 4 parameters per rank",
    ):
      kfc_jax.suggest_conv_factors((1, 1, 2, 2), max_params=1)


class TestErrors:
  def test_split_does_not_multiply(self):
    with pytest.raises(
      ValueError,
      match=r"a_shape \(3, 3, 4, 4\) and b_shape \(1, 1, 2, 4\)"
      r" must multiply to the kernel shape \(3, 3, 8, 8\).*on out_channels"
      r" 4 \* 4 = 16 != 8; valid \(a, b\) pairs for 8: \[\(1, 8\), \(2, 4\),"
      r" \(4, 2\), \(8, 1\)\]",
    ):
      kfc_jax.gkpd(np.ones((3, 3, 8, 8)), (3, 3, 4, 4), (1, 1, 2, 4))

  def test_split_wrong_length(self):
    with pytest.raises(
      ValueError,
      match=r"a_shape must be \(h, w, in, out\), 4 positive"
      r" ints, got \(3, 3, 4\)",
    ):
      kfc_jax.gkpd(np.ones((3, 3, 8, 8)), (3, 3, 4), (1, 1, 2, 2))

  def test_split_not_ints(self):
    with pytest.raises(TypeError, match=r"b_shape\[2\] must be a positive integer, got 2.0"):
      kfc_jax.gkpd(np.ones((3, 3, 8, 8)), (3, 3, 4, 4), (1, 1, 2.0, 2))

  def test_kernel_not_4d(self):
    with pytest.raises(ValueError, match=r"kernel must be a 4-D array, got shape \(9, 8\)"):
      kfc_jax.gkpd(np.ones((9, 8)), (3, 3, 4, 4), (1, 1, 2, 2))

  def test_kernel_not_finite(self):
    k = np.ones((3, 3, 2, 2))
    k[0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="kernel must be finite, but 1 of its 36"):
      kfc_jax.gkpd(k, (3, 3, 1, 1), (1, 1, 2, 2))

  def test_rank_too_high(self):
    with pytest.raises(
      ValueError,
      match=r"rank must be at most min\(prod\(a_shape\),"
      r" prod\(b_shape\)\) = 4 for a_shape \(3, 3, 2, 2\) and b_shape"
      r" \(1, 1, 2, 2\), got rank=5",
    ):
      kfc_jax.gkpd(np.ones((3, 3, 4, 4)), (3, 3, 2, 2), (1, 1, 2, 2), rank=5)

  def test_rank_not_positive(self):
    with pytest.raises(ValueError, match=r"rank must be a positive integer \(>= 1\), got 0"):
      kfc_jax.gkpd(np.ones((3, 3, 4, 4)), (3, 3, 2, 2), (1, 1, 2, 2), rank=0)
