"""Nearest Kronecker product, its grouped-axes form, and the low-rank baseline."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import np_kron, random_factors

import kfc_jax


def _rearrange(w, m1, m2, n1, n2):
  """Van Loan–Pitsianis rearrangement, written independently of the library."""
  return w.reshape(m1, m2, n1, n2).transpose(0, 2, 1, 3).reshape(m1 * n1, m2 * n2)


@pytest.mark.parametrize("rank", [1, 2, 5])
@pytest.mark.parametrize("shape", [((3, 4), (5, 2)), ((1, 6), (4, 1)), ((4, 4), (4, 4))], ids=str)
def test_recovers_exact_kronecker_sum(rng, rank, shape):
  (m1, m2), (n1, n2) = shape
  rank = min(rank, m1 * n1, m2 * n2)
  w = np_kron(random_factors(rng, (m1, m2), (n1, n2), rank))
  dec = kfc_jax.nearest_kronecker(w, (m1, m2), (n1, n2), rank=rank)
  assert [f.shape for f in dec.factors] == [(rank, m1, n1), (rank, m2, n2)]
  np.testing.assert_allclose(np_kron(dec.factors), w, atol=1e-10 * np.abs(w).max())
  assert dec.relative_error < 1e-12


@pytest.mark.parametrize("rank", [1, 3, 7])
def test_error_equals_discarded_singular_values(rng, rank):
  m1, m2, n1, n2 = 4, 5, 3, 6
  w = rng.standard_normal((m1 * m2, n1 * n2))
  dec = kfc_jax.nearest_kronecker(w, (m1, m2), (n1, n2), rank=rank)
  s = np.linalg.svd(_rearrange(w, m1, m2, n1, n2), compute_uv=False)
  np.testing.assert_allclose(dec.singular_values, s, rtol=1e-12)
  tail = np.sqrt(np.sum(s[rank:] ** 2)) / np.linalg.norm(w)
  achieved = np.linalg.norm(w - np_kron(dec.factors)) / np.linalg.norm(w)
  np.testing.assert_allclose(dec.relative_error, tail, rtol=1e-10)
  np.testing.assert_allclose(achieved, tail, rtol=1e-10)


def test_is_optimal_against_perturbations(rng):
  w = rng.standard_normal((12, 12))
  dec = kfc_jax.nearest_kronecker(w, (3, 4), (4, 3), rank=2)
  best = np.linalg.norm(w - np_kron(dec.factors))
  for _ in range(20):
    nudged = [f + 1e-3 * rng.standard_normal(f.shape) for f in dec.factors]
    assert np.linalg.norm(w - np_kron(nudged)) > best


def test_factors_are_balanced(rng):
  w = 1e4 * np_kron(random_factors(rng, (3, 3), (3, 3), 1))
  a, b = kfc_jax.nearest_kronecker(w, (3, 3), (3, 3)).factors
  np.testing.assert_allclose(np.linalg.norm(a), np.linalg.norm(b), rtol=1e-10)


@pytest.mark.parametrize("rank", [1, 2])
@pytest.mark.parametrize("shape", [((2, 3, 2), (3, 2, 2)), ((2, 2, 2, 2), (2, 1, 2, 3))], ids=str)
def test_more_factors_recover_exact_sums(rng, rank, shape):
  ms, ns = shape
  w = np_kron(random_factors(rng, ms, ns, rank))
  dec = kfc_jax.nearest_kronecker(w, ms, ns, rank=rank)
  assert dec.singular_values is None
  assert dec.relative_error < 1e-6
  achieved = np.linalg.norm(w - np_kron(dec.factors)) / np.linalg.norm(w)
  np.testing.assert_allclose(achieved, dec.relative_error, atol=1e-12)


def test_more_factors_report_error_reached_and_improve_with_rank(rng):
  w = rng.standard_normal((12, 12))
  errors = []
  for rank in (1, 2, 4):
    dec = kfc_jax.nearest_kronecker(w, (2, 3, 2), (3, 2, 2), rank=rank)
    achieved = np.linalg.norm(w - np_kron(dec.factors)) / np.linalg.norm(w)
    np.testing.assert_allclose(achieved, dec.relative_error, rtol=1e-10)
    errors.append(dec.relative_error)
  assert errors[0] > errors[1] > errors[2]
  # Never worse than the best rank-1 two-factor fit seen from the first split.
  two = kfc_jax.nearest_kronecker(w, (2, 6), (3, 4), rank=1)
  assert errors[0] >= two.relative_error - 1e-12


def test_tensor_form_with_arbitrary_groups(rng):
  # KFC formulation II: W[h, w, c, o1, o2] = A[c, o1] * B[h, w, o2].
  a, b = rng.standard_normal((4, 5)), rng.standard_normal((2, 3, 6))
  t = np.einsum("co,hwp->hwcop", a, b)
  dec = kfc_jax.nearest_kronecker_tensor(t, [(2, 3), (0, 1, 4)])
  fa, fb = dec.factors
  assert fa.shape == (1, 4, 5) and fb.shape == (1, 2, 3, 6)
  np.testing.assert_allclose(np.einsum("co,hwp->hwcop", fa[0], fb[0]), t, atol=1e-12)


class TestLowRank:
  @pytest.mark.parametrize("rank", [1, 3, 6])
  def test_truncated_svd(self, rng, rank):
    w = rng.standard_normal((9, 6))
    u, v = kfc_jax.low_rank(w, rank)
    assert u.shape == (9, rank) and v.shape == (rank, 6)
    s = np.linalg.svd(w, compute_uv=False)
    np.testing.assert_allclose(
      np.linalg.norm(w - u @ v), np.sqrt(np.sum(s[rank:] ** 2)), atol=1e-10
    )
    np.testing.assert_allclose(np.linalg.norm(u, axis=0), np.linalg.norm(v, axis=1), rtol=1e-10)

  def test_exact_for_low_rank_matrix(self, rng):
    w = rng.standard_normal((8, 2)) @ rng.standard_normal((2, 7))
    u, v = kfc_jax.low_rank(w, 2)
    np.testing.assert_allclose(u @ v, w, atol=1e-12)


class TestErrors:
  def test_non_finite(self):
    w = np.ones((4, 4))
    w[1, 2] = np.nan
    with pytest.raises(ValueError, match="w must be finite, but 1 of its 16 entries"):
      kfc_jax.nearest_kronecker(w, (2, 2), (2, 2))
    w[1, 2] = np.inf
    with pytest.raises(ValueError, match="w must be finite"):
      kfc_jax.low_rank(w, 1)

  def test_wrong_shape(self):
    with pytest.raises(ValueError, match=r"w must have shape .* = \[6, 4\].*got \[4, 4\]"):
      kfc_jax.nearest_kronecker(np.ones((4, 4)), (2, 3), (2, 2))

  def test_wrong_ndim(self):
    with pytest.raises(ValueError, match=r"w must be a 2-D array, got shape \(4,\)"):
      kfc_jax.nearest_kronecker(np.ones(4), (2, 2), (1, 1))

  def test_mismatched_factor_counts(self):
    with pytest.raises(ValueError, match="same length"):
      kfc_jax.nearest_kronecker(np.ones((4, 4)), (2, 2), (4,))

  def test_rank_too_large(self):
    with pytest.raises(ValueError, match=r"rank must be at most 4 .* got rank=5"):
      kfc_jax.nearest_kronecker(np.ones((4, 4)), (2, 2), (2, 2), rank=5)
    with pytest.raises(ValueError, match=r"rank must be at most min\(w.shape\) = 3"):
      kfc_jax.low_rank(np.ones((3, 5)), 4)

  @pytest.mark.parametrize("rank,exc", [(0, ValueError), (-1, ValueError), (1.5, TypeError)])
  def test_bad_rank(self, rank, exc):
    with pytest.raises(exc, match="rank must be a positive integer"):
      kfc_jax.nearest_kronecker(np.ones((4, 4)), (2, 2), (2, 2), rank=rank)
    with pytest.raises(exc, match="rank must be a positive integer"):
      kfc_jax.low_rank(np.ones((4, 4)), rank)

  @pytest.mark.parametrize(
    "factors,exc", [((2, -2), ValueError), ((2, 2.0), TypeError), ((), TypeError)]
  )
  def test_bad_sizes(self, factors, exc):
    with pytest.raises(exc, match="in_factors"):
      kfc_jax.nearest_kronecker(np.ones((4, 4)), factors, (2, 2))

  def test_groups_must_partition(self):
    with pytest.raises(ValueError, match="factor_axes must partition the axes"):
      kfc_jax.nearest_kronecker_tensor(np.ones((2, 3, 4)), [(0,), (0, 1, 2)])

  def test_complex_rejected(self):
    with pytest.raises(TypeError, match="w must hold real numbers"):
      kfc_jax.nearest_kronecker(np.ones((4, 4), np.complex64), (2, 2), (2, 2))
