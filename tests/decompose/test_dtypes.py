"""Every decomposition takes any float weight, bfloat16 and float16 included.

ml_dtypes' bfloat16 is not an ``np.floating`` subtype; the decompositions
widen it to float64 and must return what the float64 copy of the same values
gives.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

import kfc_jax

DTYPES = [jnp.bfloat16, jnp.float16, np.float32]


def _assert_same(result, reference):
  for a, b in zip(result, reference, strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
class TestLowPrecisionWeights:
  def test_low_rank(self, rng, dtype):
    w = jnp.asarray(rng.standard_normal((8, 6)), dtype)
    wide = np.asarray(w, np.float64)
    dec = kfc_jax.low_rank(w, 2)
    assert dec.u.dtype == np.float64
    _assert_same(dec, kfc_jax.low_rank(wide, 2))
    cov = jnp.asarray(np.eye(8) + 0.2, dtype)
    _assert_same(
      kfc_jax.low_rank(w, 2, input_cov=cov),
      kfc_jax.low_rank(wide, 2, input_cov=np.asarray(cov, np.float64)),
    )

  @pytest.mark.parametrize("ms,ns", [((2, 4), (3, 2)), ((2, 2, 2), (1, 3, 2))], ids=str)
  def test_nearest_kronecker(self, rng, dtype, ms, ns):
    w = jnp.asarray(rng.standard_normal((8, 6)), dtype)
    dec = kfc_jax.nearest_kronecker(w, ms, ns, 2)
    ref = kfc_jax.nearest_kronecker(np.asarray(w, np.float64), ms, ns, 2)
    _assert_same(dec.factors, ref.factors)
    assert dec.relative_error == pytest.approx(ref.relative_error, rel=1e-12)

  def test_nearest_kronecker_tensor(self, rng, dtype):
    t = jnp.asarray(rng.standard_normal((2, 3, 4)), dtype)
    dec = kfc_jax.nearest_kronecker_tensor(t, [(0,), (1, 2)])
    _assert_same(
      dec.factors,
      kfc_jax.nearest_kronecker_tensor(np.asarray(t, np.float64), [(0,), (1, 2)]).factors,
    )

  def test_gkpd(self, rng, dtype):
    k = jnp.asarray(rng.standard_normal((3, 3, 4, 4)), dtype)
    dec = kfc_jax.gkpd(k, (3, 3, 2, 2), (1, 1, 2, 2), 2)
    _assert_same(
      dec.factors, kfc_jax.gkpd(np.asarray(k, np.float64), (3, 3, 2, 2), (1, 1, 2, 2), 2).factors
    )

  def test_nearest_kronecker_sum(self, rng, dtype):
    w = jnp.asarray(rng.standard_normal((6, 4)), dtype)
    terms = [((2, 3), (2, 2), ((0, 2), (1, 3)))]
    dec = kfc_jax.nearest_kronecker_sum(w, terms)
    _assert_same(
      dec.factors[0], kfc_jax.nearest_kronecker_sum(np.asarray(w, np.float64), terms).factors[0]
    )


def test_non_float_dtypes_still_rejected():
  with pytest.raises(TypeError, match="w must hold real numbers, got dtype complex64"):
    kfc_jax.low_rank(np.ones((4, 4), np.complex64), 1)
  with pytest.raises(TypeError, match="kernel must hold real numbers, got dtype bool"):
    kfc_jax.gkpd(np.ones((3, 3, 2, 2), bool), (3, 3, 1, 1), (1, 1, 2, 2))
