"""nearest_kronecker_sum: several differently grouped terms, and padding."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import np_kron, random_factors

import kfc_jax


def _cut(ms, ns, rank=1):
  k = len(ms)
  return (ms, ns, tuple((f, k + f) for f in range(k)), rank)


def test_single_term_is_nearest_kronecker(rng):
  w = rng.standard_normal((12, 10))
  dec = kfc_jax.nearest_kronecker_sum(w, [_cut((3, 4), (5, 2), 2)])
  ref = kfc_jax.nearest_kronecker(w, (3, 4), (5, 2), rank=2)
  assert dec.relative_error == pytest.approx(ref.relative_error, rel=1e-12)
  assert len(dec.history) == 1  # optimal at once: no sweeps
  np.testing.assert_allclose(np_kron(dec.factors[0]), np_kron(ref.factors), atol=1e-12)


def test_two_groupings_descend_monotonically_to_a_near_exact_fit(rng):
  # W = A ⊗ B + C ⊗ D with different factor shapes.
  w = np_kron(random_factors(rng, (3, 4), (5, 2), 1)) + np_kron(
    random_factors(rng, (6, 2), (2, 5), 1)
  )
  dec = kfc_jax.nearest_kronecker_sum(
    w, [_cut((3, 4), (5, 2)), _cut((6, 2), (2, 5))], sweeps=200, tol=0
  )
  assert all(b <= a + 1e-12 for a, b in zip(dec.history, dec.history[1:], strict=False))
  assert dec.relative_error < 1e-3
  approx = sum(np_kron(fs) for fs in dec.factors)
  np.testing.assert_allclose(
    np.linalg.norm(w - approx) / np.linalg.norm(w), dec.relative_error, rtol=1e-9
  )


def test_padding_is_filled_by_the_term_itself(rng):
  full = np_kron(random_factors(rng, (4, 4), (3, 3), 1))
  w = full[:13, :8]
  # EM for the missing entries is slow on some draws (one needs ~1,000 sweeps).
  dec = kfc_jax.nearest_kronecker_sum(w, [_cut((4, 4), (3, 3))], sweeps=2000, tol=0)
  assert all(b <= a + 1e-12 for a, b in zip(dec.history, dec.history[1:], strict=False))
  assert dec.history[-1] < dec.history[0] / 100
  approx = np_kron(dec.factors[0])[:13, :8]
  np.testing.assert_allclose(
    np.linalg.norm(w - approx) / np.linalg.norm(w), dec.relative_error, rtol=1e-9
  )


def test_three_factor_terms(rng):
  w = np_kron(random_factors(rng, (2, 3, 2), (2, 2, 3), 1))
  dec = kfc_jax.nearest_kronecker_sum(w, [_cut((2, 3, 2), (2, 2, 3))])
  assert dec.relative_error < 1e-8
  assert [f.shape for f in dec.factors[0]] == [(1, 2, 2), (1, 3, 2), (1, 2, 3)]


def test_zero_weight(rng):
  dec = kfc_jax.nearest_kronecker_sum(np.zeros((4, 4)), [_cut((2, 2), (2, 2))])
  assert dec.relative_error == 0.0


@pytest.mark.parametrize(
  "terms,error,match",
  [
    ([], TypeError, "non-empty sequence"),
    ([((2,), (2,))], TypeError, r"terms\[0\] must be \(in_shape, out_shape"),
    ([((2, 2), (2, 1), ((0, 2), (1, 3)))], ValueError, r"cover the weight's shape 4 x 4"),
    ([((2, 2), (2, 2), ((0, 2), (1, 3)), 0)], ValueError, r"terms\[0\]\.rank"),
  ],
)
def test_errors(terms, error, match):
  with pytest.raises(error, match=match):
    kfc_jax.nearest_kronecker_sum(np.ones((4, 4)), terms)


@pytest.mark.parametrize("sweeps,error", [(2.5, TypeError), (True, TypeError), (-1, ValueError)])
def test_sweeps_must_be_a_nonnegative_integer(sweeps, error):
  with pytest.raises(error, match=r"sweeps must be an integer >= 0"):
    kfc_jax.nearest_kronecker_sum(np.ones((4, 4)), [_cut((2, 2), (2, 2))], sweeps=sweeps)
