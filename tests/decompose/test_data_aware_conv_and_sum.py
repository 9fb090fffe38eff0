"""Data-aware gkpd and nearest_kronecker_sum, against float64 references."""

from __future__ import annotations

import math

import jax
import numpy as np
import pytest
from conftest import np_kron, random_factors

import kfc_jax


def _random_cov(rng, size):
  x = rng.standard_normal((4 * size, size)) * np.exp(rng.standard_normal(size))
  x = x @ (np.eye(size) + 0.5 * rng.standard_normal((size, size)))
  return x.T @ x / (4 * size)


def _objective(w, w_hat, cov):
  d = w - w_hat
  return float(np.sum(d * (cov @ d)))


def _data_error(w, w_hat, cov):
  return math.sqrt(_objective(w, w_hat, cov) / _objective(w, 0 * w, cov))


def _np_kernel(a, b):
  return sum(np.kron(a[r], b[r]) for r in range(a.shape[0]))


def _conv(x, kernel):
  with jax.enable_x64(True):
    return np.asarray(
      jax.lax.conv_general_dilated(
        x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
      )
    )


class TestGkpd:
  @pytest.mark.parametrize(
    "a_shape,b_shape", [((2, 1, 2, 3), (1, 2, 2, 2)), ((1, 3, 2, 2), (2, 1, 3, 3))], ids=str
  )
  @pytest.mark.parametrize("rank", [1, 2])
  def test_kronecker_factored_patch_covariance_gives_the_optimum(self, rng, a_shape, b_shape, rank):
    kh, kw, ci, co = (p * q for p, q in zip(a_shape, b_shape, strict=True))
    kernel = rng.standard_normal((kh, kw, ci, co))
    ah, aw, ai, ao = a_shape
    bh, bw, bi, bo = b_shape
    ma, mb = ah * aw * ai, bh * bw * bi
    c_a, c_b = _random_cov(rng, ma), _random_cov(rng, mb)
    # Patch covariance C[(p1 p2, q1 q2, i1 i2), (...)'] = C_A[(p1 q1 i1), .] C_B[(p2 q2 i2), .].
    c6 = np.einsum(
      "abcdef,ghijkl->agbhcidjekfl",
      c_a.reshape(ah, aw, ai, ah, aw, ai),
      c_b.reshape(bh, bw, bi, bh, bw, bi),
    )
    cov = c6.reshape(kh * kw * ci, kh * kw * ci)
    dec = kfc_jax.gkpd(kernel, a_shape, b_shape, rank, input_cov=cov, cov_reg=0.0)
    # Reference: the kernel with (A-patch, B-patch) rows, whitened by Cholesky roots.
    t = kernel.reshape(ah, bh, aw, bw, ai, bi, ao, bo).transpose(0, 2, 4, 1, 3, 5, 6, 7)
    w = t.reshape(ma * mb, ao * bo)
    root = np.kron(np.linalg.cholesky(c_a).T, np.linalg.cholesky(c_b).T)
    r = (root @ w).reshape(ma, mb, ao, bo).transpose(0, 2, 1, 3).reshape(ma * ao, -1)
    s = np.linalg.svd(r, compute_uv=False)
    optimum = np.sqrt((s[rank:] ** 2).sum() / (s**2).sum())
    np.testing.assert_allclose(dec.data_error, optimum, rtol=1e-7, atol=1e-12)
    k_hat = _np_kernel(*dec.factors)
    np.testing.assert_allclose(
      _data_error(kernel.reshape(-1, co), k_hat.reshape(-1, co), cov),
      dec.data_error,
      rtol=1e-9,
      atol=1e-13,
    )

  def test_patch_covariance_of_real_inputs_lowers_the_conv_output_error(self, rng):
    # Correlated images (smoothed noise) through a 3x3 conv: the data error is
    # the relative error of the conv's outputs on those very images.
    x = rng.standard_normal((6, 10, 10, 4))
    x = x + np.roll(x, 1, axis=1) + np.roll(x, 1, axis=2) + 0.5 * x[..., ::-1]
    kernel = rng.standard_normal((3, 3, 4, 6))
    stats = kfc_jax.decompose.patch_covariance(x, 3, padding="SAME")
    data = kfc_jax.gkpd(kernel, (3, 3, 2, 2), (1, 1, 2, 3), 2, input_cov=stats)
    weight = kfc_jax.gkpd(kernel, (3, 3, 2, 2), (1, 1, 2, 3), 2)
    y = _conv(x, kernel)
    out_error = lambda k: np.linalg.norm(y - _conv(x, k)) / np.linalg.norm(y)
    np.testing.assert_allclose(out_error(_np_kernel(*data.factors)), data.data_error, rtol=1e-8)
    assert data.data_error < out_error(_np_kernel(*weight.factors))
    assert data.relative_error >= weight.relative_error

  def test_identity_gives_the_weight_only_answer(self, rng):
    kernel = rng.standard_normal((3, 3, 4, 4))
    weight = kfc_jax.gkpd(kernel, (3, 1, 2, 2), (1, 3, 2, 2), 2)
    data = kfc_jax.gkpd(kernel, (3, 1, 2, 2), (1, 3, 2, 2), 2, input_cov=np.eye(36))
    for a, b in zip(weight.factors, data.factors, strict=True):
      np.testing.assert_allclose(a, b, rtol=1e-12)

  def test_wrong_covariance_size_names_the_patch(self, rng):
    kernel = rng.standard_normal((3, 3, 4, 4))
    with pytest.raises(ValueError, match=r"input_cov must be \[36, 36\].*kh\*kw\*C_in"):
      kfc_jax.gkpd(kernel, (3, 3, 2, 2), (1, 1, 2, 2), input_cov=np.eye(4))


def _cut(ms, ns, rank=1):
  k = len(ms)
  return (ms, ns, tuple((f, k + f) for f in range(k)), rank)


class TestSum:
  def test_single_term_kronecker_factored_covariance_is_optimal(self, rng):
    w = rng.standard_normal((12, 10))
    c1, c2 = _random_cov(rng, 3), _random_cov(rng, 4)
    cov = np.kron(c1, c2)
    dec = kfc_jax.nearest_kronecker_sum(w, [_cut((3, 4), (5, 2), 2)], input_cov=cov, cov_reg=0.0)
    ref = kfc_jax.nearest_kronecker(w, (3, 4), (5, 2), 2, input_cov=cov, cov_reg=0.0)
    np.testing.assert_allclose(dec.data_error, ref.data_error, rtol=1e-7)

  @pytest.mark.parametrize("padded", [False, True])
  def test_two_groupings_descend_and_beat_the_weight_only_fit(self, rng, padded):
    w = (
      np_kron(random_factors(rng, (3, 4), (5, 2), 1))
      + np_kron(random_factors(rng, (6, 2), (2, 5), 1))
      + 0.3 * rng.standard_normal((12, 10))
    )
    terms = [_cut((3, 4), (5, 2)), _cut((6, 2), (2, 5))]
    if padded:  # an 11 x 9 weight in 12 x 10 terms
      w = w[:11, :9]
    cov = _random_cov(rng, w.shape[0])
    data = kfc_jax.nearest_kronecker_sum(w, terms, input_cov=cov, tol=0)
    weight = kfc_jax.nearest_kronecker_sum(w, terms, tol=0)
    assert all(b <= a + 1e-12 for a, b in zip(data.history, data.history[1:], strict=False))
    w_hat = sum(np_kron(fs)[: w.shape[0], : w.shape[1]] for fs in data.factors)
    np.testing.assert_allclose(_data_error(w, w_hat, cov), data.data_error, rtol=1e-9)
    np.testing.assert_allclose(
      np.linalg.norm(w - w_hat) / np.linalg.norm(w), data.relative_error, rtol=1e-9
    )
    before = _data_error(
      w, sum(np_kron(fs)[: w.shape[0], : w.shape[1]] for fs in weight.factors), cov
    )
    assert data.data_error < before

  def test_identity_gives_the_weight_only_answer(self, rng):
    w = rng.standard_normal((12, 10))
    terms = [_cut((3, 4), (5, 2)), _cut((6, 2), (2, 5))]
    weight = kfc_jax.nearest_kronecker_sum(w, terms)
    data = kfc_jax.nearest_kronecker_sum(w, terms, input_cov=np.eye(12))
    for fa, fb in zip(weight.factors, data.factors, strict=True):
      for a, b in zip(fa, fb, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12)
    assert data.data_error == pytest.approx(weight.relative_error, rel=1e-12)

  def test_bad_covariance(self, rng):
    with pytest.raises(ValueError, match="input_cov must be symmetric"):
      kfc_jax.nearest_kronecker_sum(
        rng.standard_normal((12, 10)), [_cut((3, 4), (5, 2))], input_cov=np.triu(np.ones((12, 12)))
      )
