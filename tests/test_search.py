"""Error-driven search over Kronecker splits, KFC formulations and low rank.

References are float64 NumPy: every split's optimal factors from an SVD of the
rearranged weight, materialised with ``np.kron``, and the error measured on
the materialised weight, so the search's spectrum shortcuts are checked
against what the factors actually reach.
"""

import itertools
import math

import numpy as np
import pytest

from kfc_jax import _search, gkpd, kron_kernel
from kfc_jax._search import _spectra


def _pairs(n):
  return [(d, n // d) for d in range(1, n + 1) if n % d == 0]


def _nkp_error(w, ms, ns, rank):
  """Optimal rank-`rank` Kronecker error, measured on the np.kron materialisation."""
  (m1, m2), (n1, n2) = ms, ns
  r = w.reshape(m1, m2, n1, n2).transpose(0, 2, 1, 3).reshape(m1 * n1, m2 * n2)
  u, s, vt = np.linalg.svd(r, full_matrices=False)
  approx = sum(
    np.kron((u[:, t] * s[t]).reshape(m1, n1), vt[t].reshape(m2, n2)) for t in range(rank)
  )
  return np.linalg.norm(w - approx) / np.linalg.norm(w)


def _exhaustive_kronecker(w, budget):
  """The best (error, split, rank) over every non-degenerate split in budget."""
  m, n = w.shape
  best = None
  for (m1, m2), (n1, n2) in itertools.product(_pairs(m), _pairs(n)):
    if (n1 == 1 and m2 == 1) or (m1 == 1 and n2 == 1) or m1 * n1 == 1 or m2 * n2 == 1:
      continue
    rank = min(budget // (m1 * n1 + m2 * n2), m1 * n1, m2 * n2)
    if rank >= 1:
      e = _nkp_error(w, (m1, m2), (n1, n2), rank)
      if best is None or e < best[0]:
        best = (e, ((m1, m2), (n1, n2)), rank)
  return best


def _structured(rng, m, n, split):
  """A weight with some Kronecker structure on `split` plus noise."""
  (m1, m2), (n1, n2) = split
  w = sum(np.kron(rng.normal(size=(m1, n1)), rng.normal(size=(m2, n2))) * 0.7**t for t in range(3))
  return w + 0.3 * rng.normal(size=(m, n))


@pytest.mark.parametrize(
  "shape,split,compression",
  [
    ((24, 36), ((4, 6), (6, 6)), 4),
    ((32, 16), ((8, 4), (2, 8)), 6),
    ((30, 20), ((5, 6), (4, 5)), 3),
    ((16, 24), ((2, 8), (6, 4)), 8),
  ],
  ids=["24x36", "32x16", "30x20", "16x24"],
)
def test_best_kronecker_split_is_the_exhaustive_optimum(shape, split, compression):
  rng = np.random.default_rng(sum(shape) + compression)
  w = _structured(rng, *shape, split)
  budget = int(w.size / compression)
  want_error, want_split, want_rank = _exhaustive_kronecker(w, budget)
  for exhaustive in (True, False):  # pruning must not lose the winner
    result = _search.search_dense(w, max_params=budget, exhaustive=exhaustive)
    got = result.best_of("kronecker")
    assert got.params <= budget
    assert got.relative_error == pytest.approx(want_error, rel=1e-9, abs=1e-12)
    assert (got.in_factors, got.out_factors) == want_split
    assert got.rank == want_rank
    # The reported error is what the factors reach on the materialised weight.
    assert got.relative_error == pytest.approx(
      _nkp_error(w, got.in_factors, got.out_factors, got.rank), rel=1e-9
    )


def test_every_scored_error_is_its_splits_optimum():
  rng = np.random.default_rng(1)
  w = rng.normal(size=(12, 18))
  result = _search.search_dense(w, compression=3, exhaustive=True)
  kron = [c for c in result.candidates if c.method == "kronecker"]
  assert len(kron) > 10
  for c in kron:
    assert c.exact
    assert c.relative_error == pytest.approx(
      _nkp_error(w, c.in_factors, c.out_factors, c.rank), rel=1e-9, abs=1e-12
    )
  errors = [c.relative_error for c in result.candidates]
  assert errors == sorted(errors)


def test_low_rank_candidate_is_the_truncated_svd():
  rng = np.random.default_rng(2)
  w = rng.normal(size=(40, 30)) @ np.diag(0.8 ** np.arange(30)) @ rng.normal(size=(30, 30))
  result = _search.search_dense(w, max_params=7 * 70 + 5)
  lr = result.best_of("low_rank")
  assert lr.rank == 7 and lr.params == 7 * 70
  u, s, vt = np.linalg.svd(w)
  approx = (u[:, :7] * s[:7]) @ vt[:7]
  assert lr.relative_error == pytest.approx(
    np.linalg.norm(w - approx) / np.linalg.norm(w), rel=1e-9
  )


def test_auto_never_loses_to_low_rank_at_the_same_budget():
  rng = np.random.default_rng(3)
  for shape in [(64, 64), (48, 80), (36, 100)]:
    w = rng.normal(size=shape) @ np.diag(0.9 ** np.arange(shape[1])) + 0.1 * np.kron(
      rng.normal(size=(4, 4)), rng.normal(size=(shape[0] // 4, shape[1] // 4))
    )
    for compression in (2, 5, 12):
      result = _search.search_dense(w, compression=compression)
      lr = result.best_of("low_rank")
      assert result.best.relative_error <= lr.relative_error + 1e-12
      assert result.best.params <= result.budget and lr.params <= result.budget


def test_planted_kronecker_product_is_found_exactly():
  rng = np.random.default_rng(4)
  w = np.kron(rng.normal(size=(8, 4)), rng.normal(size=(4, 8)))
  result = _search.search_dense(w, compression=8)
  assert result.best.method == "kronecker"
  assert (result.best.in_factors, result.best.out_factors) == ((8, 4), (4, 8))
  # Tail energies from the Gram matrix resolve errors down to sqrt(eps).
  assert result.best.relative_error < 1e-6
  assert result.runner_up.relative_error > 0.1


def test_degenerate_outer_product_splits_are_low_rank():
  rng = np.random.default_rng(5)
  w = rng.normal(size=(12, 10))
  result = _search.search_dense(w, compression=2, exhaustive=True)
  for c in result.candidates:
    if c.method == "kronecker":
      (m1, m2), (n1, n2) = c.in_factors, c.out_factors
      assert not (n1 == 1 and m2 == 1) and not (m1 == 1 and n2 == 1)
  assert [c.method for c in result.candidates].count("low_rank") == 1


def test_large_weights_are_screened_without_losing_the_winner(monkeypatch):
  # Pretend every weight is large: float32 sketches, then re-scored.
  rng = np.random.default_rng(6)
  w = _structured(rng, 64, 96, ((8, 8), (8, 12)))
  exact = _search.search_dense(w, compression=8, exhaustive=True)
  monkeypatch.setattr(_spectra, "BIG", 0)
  fast = _search.search_dense(w, compression=8)
  assert fast.best.label == exact.best.label
  assert fast.best.relative_error == pytest.approx(exact.best.relative_error, rel=1e-3)
  for c in fast.candidates:  # sketched errors are upper bounds of the optimum
    ref = next(e for e in exact.candidates if e.label == c.label)
    assert c.relative_error >= ref.relative_error - 1e-5


# ---------------------------------------------------------------------------
# KFC formulations
# ---------------------------------------------------------------------------


def test_kfc_candidates_match_the_formulations_decomposition():
  from kfc_jax.formulations import get_formulation

  rng = np.random.default_rng(7)
  in_shape, n = (3, 3, 8), 16
  w = rng.normal(size=(72, n))
  result = _search.search_dense(
    w, compression=4, methods=("kfc",), in_shape=in_shape, exhaustive=True
  )
  assert {c.formulation for c in result.candidates} >= {"I", "II", "III", "IV"}
  for c in result.candidates:
    dec = get_formulation(c.formulation).decompose(w, in_shape, c.out_factors, c.rank)
    assert c.relative_error == pytest.approx(dec.relative_error, rel=1e-9, abs=1e-12)


# ---------------------------------------------------------------------------
# Data-aware scoring
# ---------------------------------------------------------------------------


def _data_error(w, w_hat, cov):
  return math.sqrt(np.trace((w - w_hat).T @ cov @ (w - w_hat)) / np.trace(w.T @ cov @ w))


def test_data_aware_low_rank_is_the_whitened_optimum():
  rng = np.random.default_rng(8)
  m, n, rank = 20, 12, 4
  w = rng.normal(size=(m, n))
  x = rng.normal(size=(500, m)) * np.linspace(0.05, 3.0, m)
  cov = x.T @ x / len(x)
  result = _search.search_dense(w, max_params=rank * (m + n), methods=("low_rank",), input_cov=cov)
  got = result.best
  # Brute-force optimum: min ||X (W - W_hat)|| over rank-4 W_hat is the
  # truncated SVD of X W mapped back (X has full column rank).
  u, s, vt = np.linalg.svd(x @ w, full_matrices=False)
  best = np.linalg.lstsq(x, (u[:, :rank] * s[:rank]) @ vt[:rank], rcond=None)[0]
  assert got.relative_error == pytest.approx(_data_error(w, best, cov), rel=1e-4)
  uw, sw, vtw = np.linalg.svd(w)
  weight_only = (uw[:, :rank] * sw[:rank]) @ vtw[:rank]
  assert got.relative_error < _data_error(w, weight_only, cov) - 0.01


def test_identity_covariance_gives_the_weight_objective():
  rng = np.random.default_rng(9)
  w = rng.normal(size=(16, 24))
  plain = _search.search_dense(w, compression=4, exhaustive=True)
  white = _search.search_dense(
    w, compression=4, exhaustive=True, input_cov=2.5 * np.eye(16), refine=100
  )
  by_label = {c.label: c.relative_error for c in plain.candidates}
  for c in white.candidates:
    assert c.relative_error == pytest.approx(by_label[c.label], rel=1e-5, abs=1e-8)


def test_kronecker_factored_covariance_is_scored_exactly():
  rng = np.random.default_rng(10)
  (m1, m2), (n1, n2) = (4, 5), (3, 4)
  w = rng.normal(size=(m1 * m2, n1 * n2))
  x1, x2 = rng.normal(size=(50, m1)) * [0.2, 1, 2, 4], rng.normal(size=(60, m2))
  c1, c2 = x1.T @ x1 / 50, x2.T @ x2 / 60
  cov = np.kron(c1, c2)
  result = _search.search_dense(w, compression=4, input_cov=cov, refine=1000, exhaustive=True)
  got = next(c for c in result.candidates if c.in_factors == (m1, m2) and c.out_factors == (n1, n2))
  # Reference: whiten by kron(L1, L2)^T, nearest Kronecker, map back.
  l1, l2 = np.linalg.cholesky(c1), np.linalg.cholesky(c2)
  white = np.kron(l1.T, l2.T) @ w
  r = white.reshape(m1, m2, n1, n2).transpose(0, 2, 1, 3).reshape(m1 * n1, m2 * n2)
  u, s, vt = np.linalg.svd(r)
  approx = sum(
    np.kron((u[:, t] * s[t]).reshape(m1, n1), vt[t].reshape(m2, n2)) for t in range(got.rank)
  )
  w_hat = np.linalg.solve(np.kron(l1.T, l2.T), approx)
  assert got.relative_error == pytest.approx(_data_error(w, w_hat, cov), rel=1e-4)
  assert got.relative_error < _nkp_error(w, (m1, m2), (n1, n2), got.rank) * 1.5


# ---------------------------------------------------------------------------
# Convolutions
# ---------------------------------------------------------------------------


def test_conv_search_is_the_exhaustive_gkpd_optimum(x64):
  rng = np.random.default_rng(11)
  k = np.asarray(
    kron_kernel((rng.normal(size=(3, 1, 4, 4)), rng.normal(size=(1, 3, 2, 4))))
  ) + 0.2 * rng.normal(size=(3, 3, 8, 16))
  budget = k.size // 6
  best = None
  for pairs in itertools.product(*(_pairs(d) for d in k.shape)):
    a, b = tuple(p for p, _ in pairs), tuple(q for _, q in pairs)
    if math.prod(a) == 1 or math.prod(b) == 1:
      continue
    if (a[3] == 1 and b[:3] == (1, 1, 1)) or (b[3] == 1 and a[:3] == (1, 1, 1)):
      continue
    rank = min(budget // (math.prod(a) + math.prod(b)), math.prod(a), math.prod(b))
    if rank >= 1:
      e = gkpd(k, a, b, rank).relative_error
      best = min(best or (e, a, b), (e, a, b))
  result = _search.search_conv(k, max_params=budget)
  got = result.best_of("kronecker")
  assert got.relative_error == pytest.approx(best[0], rel=1e-9)
  assert (got.a_shape, got.b_shape) == best[1:]
  lr = result.best_of("low_rank")
  u, s, vt = np.linalg.svd(k.reshape(-1, 16))
  approx = (u[:, : lr.rank] * s[: lr.rank]) @ vt[: lr.rank]
  assert lr.relative_error == pytest.approx(
    np.linalg.norm(k.reshape(-1, 16) - approx) / np.linalg.norm(k), rel=1e-9
  )
  assert lr.a_shape == (3, 3, 8, 1) and lr.b_shape == (1, 1, 1, 16)


# ---------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
  "cov,match",
  [
    (np.eye(5), r"input_cov must be \[6, 6\]"),
    (np.triu(np.ones((6, 6))), "input_cov must be symmetric"),
    (np.full((6, 6), np.nan), "input_cov must be finite"),
    (-np.eye(6), "input_cov must be positive semi-definite"),
    (np.diag([1, 1, 1, 1, 1, -3.0]), "input_cov must be positive semi-definite"),
  ],
  ids=["size", "asymmetric", "nan", "negative", "indefinite"],
)
def test_bad_covariance_is_named(cov, match):
  with pytest.raises(ValueError, match=match):
    _search.search_dense(np.ones((6, 4)), compression=2, input_cov=cov)


def test_bad_budget_and_methods():
  w = np.random.default_rng(0).normal(size=(8, 8))
  with pytest.raises(ValueError, match="no candidate"):
    _search.search_dense(w, max_params=3)
  with pytest.raises(ValueError, match="at most one of max_params and compression"):
    _search.search_dense(w, max_params=10, compression=2)
  with pytest.raises(ValueError, match="methods must be among"):
    _search.search_dense(w, compression=2, methods=("svd",))
  with pytest.raises(ValueError, match="in_shape"):
    _search.search_dense(w, compression=2, methods=("kfc",))


def test_fixed_rank_scores_every_candidate_at_that_rank():
  rng = np.random.default_rng(12)
  w = rng.normal(size=(16, 16))
  result = _search.search_dense(w, compression=2, rank=2, exhaustive=True)
  assert {c.rank for c in result.candidates} == {2}
  for c in result.candidates:
    if c.method == "kronecker":
      assert c.relative_error == pytest.approx(
        _nkp_error(w, c.in_factors, c.out_factors, 2), rel=1e-9, abs=1e-12
      )


def test_conv_search_agrees_with_suggest_conv_factors_by_error(x64):
  from kfc_jax import suggest_conv_factors

  rng = np.random.default_rng(13)
  k = rng.normal(size=(3, 3, 8, 8)) + np.asarray(
    kron_kernel((rng.normal(size=(3, 3, 2, 4)), rng.normal(size=(1, 1, 4, 2))))
  )
  shape = suggest_conv_factors(k.shape, compression=6, kernel=k, prefer="error")
  want = gkpd(k, shape.a_shape, shape.b_shape, shape.rank).relative_error
  got = _search.search_conv(k, compression=6).best_of("kronecker")
  assert got.relative_error == pytest.approx(want, rel=1e-9)


@pytest.mark.parametrize("kind", ["dense", "conv"])
def test_refined_data_errors_are_achievable_and_bound_the_als_answer(kind):
  # The search re-measures its best splits with the Kronecker-factored closed
  # form: an achievable point, so the decomposition's ALS (started there and
  # never increasing) must end at or below it.
  from kfc_jax.decompose import nearest_kronecker

  rng = np.random.default_rng(14)
  if kind == "dense":
    w = rng.normal(size=(12, 16))
    x = rng.normal(size=(300, 12)) * np.linspace(0.2, 2.0, 12)
    result = _search.search_dense(w, compression=3, input_cov=x.T @ x / 300, refine=3)
  else:
    w = rng.normal(size=(3, 3, 4, 6))
    x = rng.normal(size=(400, 36)) * np.linspace(0.2, 2.0, 36)
    result = _search.search_conv(w, compression=3, input_cov=x.T @ x / 400, refine=3)
  cov = x.T @ x / len(x)
  refined = [c for c in result.candidates[:3] if c.method == "kronecker"]
  assert refined
  for c in refined:
    if kind == "dense":
      dec = nearest_kronecker(w, c.in_factors, c.out_factors, c.rank, input_cov=cov)
    else:
      dec = gkpd(w, c.a_shape, c.b_shape, c.rank, input_cov=cov)
    assert dec.data_error <= c.relative_error + 1e-6
    assert c.relative_error <= 1.0


def test_suggest_factors_prefers_the_lowest_error_given_the_weight():
  from kfc_jax import suggest_factors

  rng = np.random.default_rng(15)
  w = _structured(rng, 24, 36, ((12, 2), (3, 12)))
  budget = w.size // 6
  want_error, want_split, want_rank = _exhaustive_kronecker(w, budget)
  s = suggest_factors(24, 36, max_params=budget, weight=w)
  assert ((s.in_factors, s.out_factors), s.rank) == (want_split, want_rank)
  old = suggest_factors(24, 36, max_params=budget)  # no weight: most params
  assert _nkp_error(w, old.in_factors, old.out_factors, old.rank) > want_error
  assert suggest_factors(24, 36, max_params=budget, weight=w, prefer="params") == old
  with pytest.raises(ValueError, match="needs the trained kernel"):
    suggest_factors(24, 36, max_params=budget, prefer="error")
  with pytest.raises(ValueError, match="within a budget"):
    suggest_factors(24, 36, weight=w)
  with pytest.raises(ValueError, match="two-factor"):
    suggest_factors(24, 36, max_params=budget, weight=w, k=3)
  with pytest.raises(ValueError, match=r"weight must have shape \[in_features"):
    suggest_factors(24, 36, max_params=budget, weight=w.T)


def test_only_errors_under_the_true_covariance_can_win():
  # A Kronecker-factored proxy can be far too optimistic for a general
  # covariance; candidates not re-measured must rank after those that were.
  rng = np.random.default_rng(16)
  w = rng.normal(size=(24, 24))
  x = rng.normal(size=(400, 24)) @ rng.normal(size=(24, 24)) * np.linspace(0.1, 3, 24)
  result = _search.search_dense(w, compression=4, input_cov=x.T @ x / 400, refine=1)
  exact = [c.exact for c in result.candidates]
  assert exact[0] and exact == sorted(exact, reverse=True)
  assert sum(exact) == 2  # low rank and the one refined split
