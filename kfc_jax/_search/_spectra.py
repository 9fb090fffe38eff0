"""Spectra, covariances and the scoring of splits (see the package docstring)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import numpy as np

from kfc_jax import _checks
from kfc_jax._search._results import SearchCandidate
from kfc_jax.decompose import _covariance

_OVERSAMPLE = 10
_POWER_ITERS = 1  # small matrices, and W itself
_REFINE_ITERS = 1  # the best screened splits of a large weight
_RESCREEN = 2  # how many beyond ``keep`` are re-scored after screening
BIG = 1 << 20  # weights with this many entries are screened in float32
# Gram + eigvalsh is about 12x dearer per n^3 than the GEMM forming the Gram.
_EIG_COST = 25.0


# ---------------------------------------------------------------------------
# Spectra
# ---------------------------------------------------------------------------


def _top_energies(
  mat: np.ndarray, rank: int, rng: np.random.Generator, power_iters: int
) -> tuple[np.ndarray, bool]:
  """Squared singular values ``s_1^2 >= ... >= s_k^2`` with ``k >= rank``.

  All of them (exact) for matrices under ``BIG`` entries or when the Gram
  route is cheaper than sketching, else the top ``rank + oversample`` Ritz
  values of a randomized range finder with ``power_iters`` power iterations
  (each value at most the true one).
  """
  p, q = mat.shape
  small, large = min(p, q), max(p, q)
  sketch = min(small, rank + _OVERSAMPLE)
  gram_cost = 2.0 * small * small * large + _EIG_COST * small**3
  sketch_cost = 2.0 * p * q * sketch * (2 * power_iters + 2)
  if gram_cost <= sketch_cost or small <= 64 or p * q < BIG:
    gram = mat @ mat.T if p <= q else mat.T @ mat
    s2 = np.clip(np.linalg.eigvalsh(gram.astype(np.float64))[::-1], 0.0, None)
    return s2, mat.dtype == np.float64
  omega = rng.standard_normal((q, sketch)).astype(mat.dtype)
  basis = _orthonormal(mat @ omega)
  for _ in range(power_iters):
    basis = _orthonormal(mat @ _orthonormal(mat.T @ basis))
  small_mat = (basis.T @ mat).astype(np.float64)
  s2 = np.clip(np.linalg.eigvalsh(small_mat @ small_mat.T)[::-1], 0.0, None)
  return s2, False


def _orthonormal(y: np.ndarray) -> np.ndarray:
  """An orthonormal basis of ``y``'s range, by the eigenvectors of ``yᵀy``.

  A tall Householder QR is the slow step of a sketch; this costs one ``k x k``
  eigenproblem and one GEMM. Directions with ``λ < 1e-6 λ_max`` (rank
  deficiency, float32 noise) are dropped, so the basis stays orthonormal to
  about ``1e-3`` in float32, ample for ranking (the Ritz values it gives
  never exceed the true ones by more than that).
  """
  gram = (y.T @ y).astype(np.float64)
  values, vectors = np.linalg.eigh(gram)
  keep = values > 1e-6 * max(values[-1], np.finfo(float).tiny)
  return y @ (vectors[:, keep] / np.sqrt(values[keep])).astype(y.dtype)


def _tail_error(s2: np.ndarray, rank: int, total: float) -> float:
  """Relative error of the best rank-``rank`` approximation from its spectrum."""
  if total <= 0:
    return 0.0
  return float(np.sqrt(max(total - s2[:rank].sum(), 0.0) / total))


def _lower_bound(s2: np.ndarray, rank: int, total: float) -> float:
  """Least relative error of any rank-``rank`` matrix, from a (partial) spectrum.

  ``s2`` are the Ritz values of a sketch ``Q Qᵀ M`` (exact when complete).
  With ``M ᵀM = MᵀQQᵀM + Mᵀ(I - QQᵀ)M``, Ky Fan's inequality bounds the top
  ``rank`` energy of ``M`` by that of the sketch plus all the energy the
  sketch missed, so the bound holds however rough the sketch.
  """
  if total <= 0:
    return 0.0
  missed = max(total - float(s2.sum()), 0.0)
  captured = float(s2[:rank].sum()) + missed
  return float(np.sqrt(max(total - captured, 0.0) / total))


# ---------------------------------------------------------------------------
# Covariances
# ---------------------------------------------------------------------------


def covariance_root(cov: np.ndarray, cov_reg: float = 0.0) -> np.ndarray:
  """Symmetric ``L`` with ``L Lᵀ = cov + cov_reg * mean(diag(cov)) * I``.

  ``cov`` is PSD up to rounding (negative rounding is clipped); the ridge
  keeps it invertible (a Kronecker factor of a regularised covariance needs
  its own).
  """
  c = (cov + cov.T) / 2
  values, vectors = np.linalg.eigh(c)
  floor = cov_reg * max(float(np.trace(c)) / len(c), np.finfo(float).tiny)
  values = np.clip(values, 0.0, None) + floor
  return (vectors * np.sqrt(values)) @ vectors.T


def _kron_factor_cov(cov4: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Nearest ``C1 ⊗ C2`` to ``cov4: [p1, p2, p1, p2]`` (both PSD)."""
  p1, p2 = cov4.shape[:2]
  r = cov4.transpose(0, 2, 1, 3).reshape(p1 * p1, p2 * p2)
  # The leading singular pair of a PSD matrix's rearrangement is a pair of
  # PSD matrices (Van Loan & Pitsianis), up to a common sign.
  u, s, vt = np.linalg.svd(r, full_matrices=False) if min(r.shape) <= 512 else _leading_pair(r)
  c1 = (u[:, 0] * np.sqrt(s[0])).reshape(p1, p1)
  c2 = (vt[0] * np.sqrt(s[0])).reshape(p2, p2)
  if np.trace(c1) < 0:
    c1, c2 = -c1, -c2
  return (c1 + c1.T) / 2, (c2 + c2.T) / 2


def _leading_pair(r: np.ndarray):
  v = np.ones(r.shape[1]) / math.sqrt(r.shape[1])
  for _ in range(50):
    u = r @ v
    u /= np.linalg.norm(u)
    v = r.T @ u
    s = np.linalg.norm(v)
    v /= s
  return u[:, None], np.array([s]), v[None]


# ---------------------------------------------------------------------------
# The search
# ---------------------------------------------------------------------------


@dataclasses.dataclass
class _Split:
  """A two-factor cut of the weight, viewed as ``w4: [p1, p2, q1, q2]``."""

  candidate: SearchCandidate  # rank, params and labels; error filled later
  w4: Callable[[], np.ndarray]  # the weight, input axes permuted to (a, b)
  cov4: Callable[[], np.ndarray] | None
  matrix_rank_bound: int
  unpermute: Callable[[np.ndarray], np.ndarray]  # [p1, p2, q1, q2] -> [m, n]


def _budget(dense_params: int, max_params: int | None, compression: float | None) -> int:
  if max_params is not None and compression is not None:
    raise ValueError("pass at most one of max_params and compression, got both.")
  if compression is not None:
    return max(int(dense_params / _checks.compression_ratio(compression)), 0)
  if max_params is None:
    raise ValueError("pass a budget: max_params or compression.")
  return _checks.positive_int(max_params, "max_params")


def _rank_in_budget(budget: int, per_rank: int, full: int, fixed: int | None) -> int:
  """The largest rank (or ``fixed``) that fits; 0 when none does."""
  if fixed is not None:
    return fixed if fixed <= full and fixed * per_rank <= budget else 0
  return min(budget // per_rank, full)


def _ordered_pairs(n: int) -> list[tuple[int, int]]:
  return [(d, n // d) for d in range(1, n + 1) if n % d == 0]


def _score_splits(
  w: np.ndarray,
  cov: _covariance.Covariance | None,
  splits: list[_Split],
  low_rank_rank: int,
  keep: int,
  exhaustive: bool,
  refine: int,
  fit: Callable | None,
  seed: int,
) -> tuple[list[SearchCandidate], int]:
  """Scores low rank and every split; returns (candidates, pruned count).

  Large matrices are screened by a one-pass sketch in float32; the best
  ``keep + _RESCREEN`` of those are then re-scored with power iterations.
  """
  rng = np.random.default_rng(seed)
  m, n = w.shape
  root = None if cov is None else covariance_root(cov.reg)
  target = w if root is None else root.T @ w
  total = float(np.vdot(target, target))
  big = m * n >= BIG
  s2_w, exact_w = _top_energies(
    target.astype(np.float32) if big else target, max(low_rank_rank, 1), rng, _POWER_ITERS
  )
  scored: list[SearchCandidate] = []
  if low_rank_rank >= 1:
    scored.append(
      SearchCandidate(
        "low_rank",
        low_rank_rank,
        low_rank_rank * (m + n),
        _tail_error(s2_w, low_rank_rank, total),
        exact=exact_w,
      )
    )
  # Cheapest lower bounds first, so good splits set the bar early.
  order = sorted(splits, key=lambda s: _lower_bound(s2_w, s.matrix_rank_bound, total))
  pruned = 0
  screened: list[tuple[SearchCandidate, _Split]] = []
  for split in order:
    c = split.candidate
    # The bound is on the true objective; with input_cov splits are scored by
    # a proxy until refined, so only the weight objective prunes.
    if cov is None and not exhaustive and len(scored) + len(screened) >= keep:
      bar = sorted([x.relative_error for x in scored] + [x.relative_error for x, _ in screened])[
        keep - 1
      ]
      if _lower_bound(s2_w, split.matrix_rank_bound, total) >= bar:
        pruned += 1
        continue
    r = _rearranged(split, np.float32 if big else np.float64)
    if c.rank >= min(r.shape):
      scored.append(dataclasses.replace(c, relative_error=0.0, exact=True))
      continue
    s2, exact = _top_energies(r, c.rank, rng, 0 if big else _POWER_ITERS)
    split_total = total if cov is None else float(np.vdot(r, r))
    screened.append(
      (
        dataclasses.replace(c, relative_error=_tail_error(s2, c.rank, split_total), exact=exact),
        split,
      )
    )
  screened.sort(key=lambda cs: cs[0].relative_error)
  for i, (c, split) in enumerate(screened):
    if not c.exact and i < keep + _RESCREEN:
      r = _rearranged(split, np.float32)
      s2, _ = _top_energies(r, c.rank, rng, _REFINE_ITERS)
      split_total = total if cov is None else float(np.vdot(r, r))
      c = dataclasses.replace(
        c, relative_error=min(c.relative_error, _tail_error(s2, c.rank, split_total))
      )
    scored.append(c)
  scored.sort(key=lambda c: (c.relative_error, c.params))
  if cov is not None and refine:
    scored = _refine(w, cov, root, scored, splits, refine, fit)
  return scored, pruned


def _whitening(split: _Split) -> tuple[np.ndarray, np.ndarray]:
  assert split.cov4 is not None  # whitened only when scoring under a covariance
  c1, c2 = _kron_factor_cov(split.cov4())
  # Factors of a regularised covariance are positive definite up to rounding.
  floor = _covariance.DEFAULT_COV_REG
  return covariance_root(c1, floor), covariance_root(c2, floor)


def _rearranged(split: _Split, dtype: Any = np.float64) -> np.ndarray:
  """The split's rearranged matrix ``[p1*q1, p2*q2]`` (whitened with a cov)."""
  w4 = split.w4()
  p1, p2, q1, q2 = w4.shape
  if split.cov4 is not None:
    l1, l2 = _whitening(split)
    w4 = np.einsum("ai,bj,abkl->ijkl", l1, l2, w4, optimize=True)
  out = np.empty((p1, q1, p2, q2), dtype)
  out[...] = w4.transpose(0, 2, 1, 3)  # one strided copy, cast on the way
  return out.reshape(p1 * q1, p2 * q2)


def _refine(w, cov, root, scored, splits, refine, fit):
  """Re-measures the best ``refine`` splits under the true covariance."""
  done = 0
  out = []
  for c in scored:
    split = next((s for s in splits if _same(s.candidate, c)), None)
    if split is None or done >= refine:
      out.append(c if split is None else dataclasses.replace(c, exact=False))
      continue
    done += 1
    w_hat = fit(c) if fit is not None else _closed_form(split, c.rank)
    error = _covariance.data_error(w, w_hat, cov.raw)
    out.append(dataclasses.replace(c, relative_error=error, exact=True))
  # Only errors measured under the true covariance may win: a proxy from the
  # Kronecker-factored covariance can be far too optimistic (0.08 against a
  # true 0.68 on an MNIST FC layer's conv features).
  out.sort(key=lambda c: (not c.exact, c.relative_error, c.params))
  return out


def _same(a: SearchCandidate, b: SearchCandidate) -> bool:
  return dataclasses.replace(a, relative_error=0.0, exact=True) == dataclasses.replace(
    b, relative_error=0.0, exact=True
  )


def _closed_form(split: _Split, rank: int) -> np.ndarray:
  """The Kronecker-factored-whitening answer, as the weight ``[m, n]``."""
  p1, p2, q1, q2 = split.w4().shape
  l1, l2 = _whitening(split)
  u, s, vt = np.linalg.svd(_rearranged(split), full_matrices=False)
  approx = ((u[:, :rank] * s[:rank]) @ vt[:rank]).reshape(p1, q1, p2, q2)
  approx = approx.transpose(0, 2, 1, 3)
  # W = (L1^-T ⊗ L2^-T) W_white.
  back = np.einsum("ai,bj,abkl->ijkl", np.linalg.inv(l1), np.linalg.inv(l2), approx, optimize=True)
  return split.unpermute(back)
