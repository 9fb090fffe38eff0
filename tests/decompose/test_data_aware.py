"""Data-aware decompositions: input_cov= minimises the error of the outputs.

References are float64 NumPy written independently of the library: the
optimum of ``||S (W - W_hat)||`` is computed with the Cholesky root of ``C``
(the library whitens with the symmetric root for Kronecker problems) or from
the eigenvalues of ``W^T C W``, which need no root at all.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from conftest import np_kron

import kfc_jax
from kfc_jax.decompose import _data_aware


def _random_cov(rng, size, samples=None, spread=2.0):
  """A full-rank covariance with uneven variances and correlations."""
  samples = samples or 4 * size
  x = rng.standard_normal((samples, size)) * np.exp(spread * rng.standard_normal(size))
  x = x @ (np.eye(size) + 0.5 * rng.standard_normal((size, size)))
  return x.T @ x / samples


def _objective(w, w_hat, cov):
  d = w - w_hat
  return float(np.sum(d * (cov @ d)))


def _data_error(w, w_hat, cov):
  return np.sqrt(_objective(w, w_hat, cov) / _objective(w, 0 * w, cov))


def _rearrange(w, m1, m2, n1, n2):
  return w.reshape(m1, m2, n1, n2).transpose(0, 2, 1, 3).reshape(m1 * n1, m2 * n2)


class TestLowRank:
  @pytest.mark.parametrize("rank", [1, 3, 5])
  def test_equals_the_optimum(self, rng, rank):
    w = rng.standard_normal((9, 7))
    cov = _random_cov(rng, 9)
    u, v = dec = kfc_jax.low_rank(w, rank, input_cov=cov, cov_reg=0.0)
    # Optimal value: the tail of the eigenvalues of W^T C W (= sigma(S W)^2).
    eig = np.sort(np.linalg.eigvalsh(w.T @ cov @ w))[::-1]
    np.testing.assert_allclose(
      _objective(w, u @ v, cov), eig[rank:].sum(), rtol=1e-9, atol=1e-12 * eig.sum()
    )
    np.testing.assert_allclose(dec.data_error, np.sqrt(eig[rank:].sum() / eig.sum()), rtol=1e-9)
    np.testing.assert_allclose(
      dec.relative_error, np.linalg.norm(w - u @ v) / np.linalg.norm(w), rtol=1e-12
    )
    # Nudging the factors only makes the data objective worse.
    best = _objective(w, u @ v, cov)
    for _ in range(10):
      nudged = (u + 1e-4 * rng.standard_normal(u.shape)) @ (v + 1e-4 * rng.standard_normal(v.shape))
      assert _objective(w, nudged, cov) > best

  def test_beats_the_weight_only_answer_on_the_data(self, rng):
    w = rng.standard_normal((16, 12))
    cov = _random_cov(rng, 16)
    data = kfc_jax.low_rank(w, 4, input_cov=cov)
    u, v = kfc_jax.low_rank(w, 4)
    assert data.data_error < 0.9 * _data_error(w, u @ v, cov)
    assert data.relative_error > np.linalg.norm(w - u @ v) / np.linalg.norm(w)

  def test_ridge_is_the_documented_one(self, rng):
    w = rng.standard_normal((8, 6))
    cov = _random_cov(rng, 8)
    reg = 0.3
    ridged = cov + reg * np.mean(np.diag(cov)) * np.eye(8)
    u, v = kfc_jax.low_rank(w, 2, input_cov=cov, cov_reg=reg)
    eig = np.sort(np.linalg.eigvalsh(w.T @ ridged @ w))[::-1]
    np.testing.assert_allclose(_objective(w, u @ v, ridged), eig[2:].sum(), rtol=1e-9)

  @pytest.mark.parametrize("scale", [1.0, 3.5])
  def test_identity_gives_the_weight_only_answer(self, rng, scale):
    w = rng.standard_normal((7, 9))
    u0, v0 = kfc_jax.low_rank(w, 3)
    dec = kfc_jax.low_rank(w, 3, input_cov=scale * np.eye(7))
    np.testing.assert_allclose(dec.u, u0, rtol=1e-12)
    np.testing.assert_allclose(dec.v, v0, rtol=1e-12)
    np.testing.assert_allclose(dec.data_error, dec.relative_error, rtol=1e-12)

  def test_running_covariance_is_accepted(self, rng):
    w = rng.standard_normal((6, 5))
    x = rng.standard_normal((40, 6))
    stats = kfc_jax.decompose.input_covariance(x)
    a = kfc_jax.low_rank(w, 2, input_cov=stats)
    b = kfc_jax.low_rank(w, 2, input_cov=x.T @ x / 40)
    np.testing.assert_allclose(a.u @ a.v, b.u @ b.v, rtol=1e-12)


class TestNearestKronecker:
  @pytest.mark.parametrize("rank", [1, 2, 4])
  def test_kronecker_factored_covariance_gives_the_optimum(self, rng, rank):
    m1, m2, n1, n2 = 3, 4, 5, 2
    w = rng.standard_normal((m1 * m2, n1 * n2))
    c1, c2 = _random_cov(rng, m1), _random_cov(rng, m2)
    dec = kfc_jax.nearest_kronecker(
      w, (m1, m2), (n1, n2), rank, input_cov=np.kron(c1, c2), cov_reg=0.0
    )
    # Reference: Cholesky roots (not the library's symmetric ones), truncated SVD.
    root = np.kron(np.linalg.cholesky(c1).T, np.linalg.cholesky(c2).T)
    s = np.linalg.svd(_rearrange(root @ w, m1, m2, n1, n2), compute_uv=False)
    optimum = np.sqrt((s[rank:] ** 2).sum() / (s**2).sum())
    np.testing.assert_allclose(dec.data_error, optimum, rtol=1e-7, atol=1e-12)
    achieved = _data_error(w, np_kron(dec.factors), np.kron(c1, c2))
    np.testing.assert_allclose(achieved, dec.data_error, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(
      dec.relative_error, np.linalg.norm(w - np_kron(dec.factors)) / np.linalg.norm(w), rtol=1e-10
    )

  def test_general_covariance_never_loses_to_the_weight_only_answer(self, rng):
    for _ in range(5):
      w = rng.standard_normal((12, 12))
      cov = _random_cov(rng, 12)
      data = kfc_jax.nearest_kronecker(w, (3, 4), (4, 3), 2, input_cov=cov)
      weight = kfc_jax.nearest_kronecker(w, (3, 4), (4, 3), 2)
      before = _data_error(w, np_kron(weight.factors), cov)
      assert data.data_error <= before
      np.testing.assert_allclose(
        _data_error(w, np_kron(data.factors), cov), data.data_error, rtol=1e-10
      )
      assert data.singular_values is None

  def test_general_covariance_is_near_stationary(self, rng):
    # After ALS no small nudge of any factor lowers the data objective much.
    w = rng.standard_normal((8, 9))
    cov = _random_cov(rng, 8)
    dec = kfc_jax.nearest_kronecker(
      w, (2, 4), (3, 3), 2, input_cov=cov, cov_reg=0.0, max_sweeps=2000, tol=1e-15
    )
    best = _objective(w, np_kron(dec.factors), cov)
    for _ in range(20):
      nudged = [f + 1e-3 * rng.standard_normal(f.shape) for f in dec.factors]
      assert _objective(w, np_kron(nudged), cov) > best * (1 - 1e-6)

  def test_als_descends_monotonically(self, rng):
    m, n = (3, 4), (2, 3)
    w = rng.standard_normal((12, 6))
    cov = _random_cov(rng, 12)
    start = [rng.standard_normal((2, 3, 2)), rng.standard_normal((2, 4, 3))]
    _, history = _data_aware.als(
      w.reshape(*m, *n), [(0, 2), (1, 3)], 2, cov, start, max_sweeps=50, tol=0.0
    )
    assert len(history) > 10
    assert all(b <= a * (1 + 1e-12) for a, b in itertools.pairwise(history))
    assert history[-1] < 0.5 * history[0]
    np.testing.assert_allclose(history[0], _objective(w, np_kron(start), cov), rtol=1e-12)

  def test_als_starts_at_the_weight_only_answer_and_improves_it(self, rng):
    w = rng.standard_normal((12, 12))
    cov = _random_cov(rng, 12)
    weight = kfc_jax.nearest_kronecker(w, (4, 3), (3, 4), 3)
    _, history = _data_aware.als(
      w.reshape(4, 3, 3, 4), [(0, 2), (1, 3)], 2, cov, weight.factors, max_sweeps=100, tol=0.0
    )
    np.testing.assert_allclose(history[0], _objective(w, np_kron(weight.factors), cov), rtol=1e-10)
    assert history[-1] < history[0]

  def test_three_factors(self, rng):
    ms, ns = (2, 3, 2), (2, 2, 3)
    w = rng.standard_normal((12, 12))
    c = [_random_cov(rng, k) for k in ms]
    cov = np.kron(np.kron(c[0], c[1]), c[2])
    data = kfc_jax.nearest_kronecker(w, ms, ns, 2, input_cov=cov)
    weight = kfc_jax.nearest_kronecker(w, ms, ns, 2)
    assert data.data_error < _data_error(w, np_kron(weight.factors), cov)
    np.testing.assert_allclose(
      _data_error(w, np_kron(data.factors), cov), data.data_error, rtol=1e-10
    )

  @pytest.mark.parametrize("ms,ns", [((3, 4), (5, 2)), ((2, 3, 2), (2, 2, 3))], ids=str)
  def test_identity_gives_the_weight_only_answer(self, rng, ms, ns):
    w = rng.standard_normal((12, np.prod(ns)))
    weight = kfc_jax.nearest_kronecker(w, ms, ns, 2)
    data = kfc_jax.nearest_kronecker(w, ms, ns, 2, input_cov=2.0 * np.eye(12))
    for a, b in zip(weight.factors, data.factors, strict=True):
      np.testing.assert_allclose(a, b, rtol=1e-12)
    np.testing.assert_allclose(data.data_error, weight.relative_error, rtol=1e-12)


def _bad_covariances():
  good = np.eye(6) + 0.1
  asym = good.copy()
  asym[0, 1] += 0.5
  nan = good.copy()
  nan[2, 3] = nan[3, 2] = np.nan
  indefinite = np.diag([1.0, 1, 1, 1, 1, -1])
  return [
    (np.eye(5), ValueError, r"input_cov must be \[6, 6\].*got shape \(5, 5\)"),
    (np.ones(6), ValueError, r"input_cov must be \[6, 6\].*got shape \(6,\)"),
    (asym, ValueError, "input_cov must be symmetric"),
    (nan, ValueError, "input_cov must be finite"),
    (indefinite, ValueError, "input_cov must be positive semi-definite"),
    (np.zeros((6, 6)), ValueError, "input_cov must not be all zeros"),
    (np.full((6, 6), "a"), TypeError, "input_cov must hold real numbers"),
  ]


class TestBadCovariances:
  @pytest.mark.parametrize("cov,exc,match", _bad_covariances())
  @pytest.mark.parametrize("method", ["low_rank", "nearest_kronecker"])
  def test_rejected_naming_input_cov(self, cov, exc, match, method):
    w = np.arange(24.0).reshape(6, 4)
    call = {
      "low_rank": lambda: kfc_jax.low_rank(w, 2, input_cov=cov),
      "nearest_kronecker": lambda: kfc_jax.nearest_kronecker(w, (2, 3), (2, 2), input_cov=cov),
    }[method]
    with pytest.raises(exc, match=match):
      call()

  def test_singular_without_ridge(self):
    cov = np.diag([1.0, 1, 1, 1, 1, 0])
    w = np.arange(24.0).reshape(6, 4)
    with pytest.raises(ValueError, match=r"input_cov is singular.*pass cov_reg > 0"):
      kfc_jax.low_rank(w, 2, input_cov=cov, cov_reg=0.0)
    dec = kfc_jax.low_rank(w, 2, input_cov=cov)  # the default ridge makes it usable
    assert np.all(np.isfinite(dec.u)) and 0 <= dec.data_error < 1

  def test_rounding_below_zero_is_clipped(self, rng):
    # A PSD covariance with a float32-sized negative eigenvalue is accepted, and
    # the fit is the one for the clipped covariance.
    basis = np.linalg.qr(rng.standard_normal((6, 6)))[0]
    vals = np.array([5.0, 3, 2, 1, 0.5, 0])
    clipped = (basis * vals) @ basis.T
    noisy = (basis * np.where(vals > 0, vals, -1e-8)) @ basis.T
    w = rng.standard_normal((6, 4))
    # A ridge (1.9e-9) below the negative eigenvalue: only clipping makes it PD.
    with pytest.raises(np.linalg.LinAlgError):
      np.linalg.cholesky(noisy + 1e-9 * np.mean(np.diag(noisy)) * np.eye(6))
    a = kfc_jax.low_rank(w, 2, input_cov=noisy, cov_reg=1e-9)
    b = kfc_jax.low_rank(w, 2, input_cov=clipped, cov_reg=1e-9)
    np.testing.assert_allclose(a.u @ a.v, b.u @ b.v, rtol=1e-6, atol=1e-8)
    with pytest.raises(ValueError, match="beyond rounding"):
      kfc_jax.low_rank(
        w, 2, input_cov=noisy - 1e-4 * np.outer(basis[:, 5], basis[:, 5]), cov_reg=1e-9
      )

  @pytest.mark.parametrize("reg", [-1.0, float("nan"), "big", True])
  def test_bad_ridge(self, reg):
    with pytest.raises(ValueError, match="cov_reg must be a finite number >= 0"):
      kfc_jax.low_rank(np.ones((4, 4)), 1, input_cov=np.eye(4), cov_reg=reg)


class TestTensorForm:
  def test_kfc_formulation_grouping_with_a_factored_covariance(self, rng):
    # Formulation II on a [H, W, C] -> [O1, O2] layer: A: C -> O1, B: (H, W) -> O2.
    h, wd, c, o1, o2 = 2, 3, 4, 3, 2
    w = rng.standard_normal((h * wd * c, o1 * o2))
    c_hw, c_c = _random_cov(rng, h * wd), _random_cov(rng, c)
    cov = np.kron(c_hw, c_c)  # inputs flattened (h, w, c)
    t = w.reshape(h, wd, c, o1, o2)
    dec = kfc_jax.nearest_kronecker_tensor(
      t, [(2, 3), (0, 1, 4)], 2, input_cov=cov, input_ndim=3, cov_reg=0.0
    )
    root = np.kron(np.linalg.cholesky(c_hw).T, np.linalg.cholesky(c_c).T)
    whitened = (root @ w).reshape(h, wd, c, o1, o2)
    s = np.linalg.svd(whitened.transpose(2, 3, 0, 1, 4).reshape(c * o1, -1), compute_uv=False)
    np.testing.assert_allclose(
      dec.data_error, np.sqrt((s[2:] ** 2).sum() / (s**2).sum()), rtol=1e-7
    )
    a, b = dec.factors
    w_hat = np.einsum("rcp,rhwq->hwcpq", a, b).reshape(w.shape)
    np.testing.assert_allclose(_data_error(w, w_hat, cov), dec.data_error, rtol=1e-9)

  @pytest.mark.parametrize("ndim", [None, 0, 5, 1.5])
  def test_input_ndim_must_fit(self, ndim):
    with pytest.raises(ValueError, match="input_ndim must say how many leading axes"):
      kfc_jax.nearest_kronecker_tensor(
        np.ones((2, 3, 4, 5, 6)), [(0, 1, 3), (2, 4)], input_cov=np.eye(6), input_ndim=ndim
      )

  def test_input_ndim_without_input_cov(self):
    with pytest.raises(ValueError, match="input_ndim is only used with input_cov"):
      kfc_jax.nearest_kronecker_tensor(np.ones((2, 3)), [(0,), (1,)], input_ndim=1)
