"""padded_kron_matmul: the KFC paper's dummy-feature padding, exactly."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from references import np_kron, random_factors

import kfc_jax


@pytest.mark.parametrize("in_features,out_features", [(97, 101), (12, 6), (7, 13)])
def test_padded_kron_matmul_equals_unpadded_maths(x64, rng, in_features, out_features):
  s = kfc_jax.suggest_factors(in_features, out_features, k=2, rank=2)
  factors = random_factors(rng, s.in_factors, s.out_factors, s.rank)
  x = rng.standard_normal((3, in_features))
  y = kfc_jax.padded_kron_matmul(x, factors, out_features)
  w = np_kron(factors)[:in_features, :out_features]
  np.testing.assert_allclose(y, x @ w, rtol=1e-10)
  g = jax.grad(lambda x: kfc_jax.padded_kron_matmul(x, factors, out_features).sum())(x)
  np.testing.assert_allclose(g, np.broadcast_to(w.sum(1), x.shape), rtol=1e-10)


def test_padded_kron_matmul_too_wide():
  factors = [np.ones((2, 2)), np.ones((2, 2))]
  with pytest.raises(ValueError, match=r"in_features <= 4"):
    kfc_jax.padded_kron_matmul(np.ones((1, 5)), factors, 4)
  with pytest.raises(ValueError, match=r"out_features must be <= 4"):
    kfc_jax.padded_kron_matmul(np.ones((1, 4)), factors, 5)
