"""CP decomposition of a rearranged weight (three or more Kronecker factors).

``W = sum_r F_1[r] ⊗ ... ⊗ F_k[r]`` rearranges into a rank-``r`` CP
decomposition of the tensor ``[m_1 n_1, ..., m_k n_k]``. No closed form exists
(unlike two factors); this runs alternating least squares (ALS) with an
extrapolating line search from two starts and keeps the better fit:

- the greedy start: each term the sequential-SVD rank-one fit of the residual
  of the previous ones;
- the HOSVD start: each mode's leading left singular vectors of its unfolding
  (the two-factor nearest Kronecker product of that mode against the rest),
  padded with the greedy start's columns where a mode is smaller than the rank.

Guarantee: within a run the relative error never increases (each ALS step is
an exact least-squares solve; an extrapolated point is kept only if it is
better), and a run stops when a sweep improves the error by less than
``tol`` times its value, or after ``max_sweeps``. The returned error is the
one reached, measured. Plain ALS crawls through "swamps" (near-collinear
terms) for hundreds of sweeps; the line search (Bro 1998; Rajih, Comon &
Harshman 2008 use its exact form) steps along the last sweep's direction by
``sweep ** (1/3)`` and typically cuts that by an order of magnitude.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def unfold(t: np.ndarray, mode: int) -> np.ndarray:
  return np.moveaxis(t, mode, 0).reshape(t.shape[mode], -1)


def khatri_rao(mats: Sequence[np.ndarray]) -> np.ndarray:
  out = mats[0]
  for m in mats[1:]:
    out = np.einsum("ir,jr->ijr", out, m).reshape(-1, m.shape[1])
  return out


def reconstruct(modes: Sequence[np.ndarray], shape) -> np.ndarray:
  return (modes[0] @ khatri_rao(modes[1:]).T).reshape(shape)


def _sequential_rank_one(t: np.ndarray) -> list[np.ndarray]:
  """Best rank-one term mode by mode: SVD of mode 1 vs the rest, then recurse."""
  vecs = []
  rest = t
  for size in t.shape[:-1]:
    u, s, vt = np.linalg.svd(rest.reshape(size, -1), full_matrices=False)
    vecs.append(u[:, 0] * s[0])
    rest = vt[0]
  vecs.append(rest)
  return vecs


def greedy_start(t: np.ndarray, rank: int) -> list[np.ndarray]:
  modes = [np.zeros((d, rank)) for d in t.shape]
  residual = t.copy()
  for j in range(rank):  # each term fits the residual of the previous ones
    for mode, v in zip(modes, _sequential_rank_one(residual), strict=True):
      mode[:, j] = v
    residual = residual - reconstruct([m[:, j : j + 1] for m in modes], t.shape)
  return modes


def hosvd_start(t: np.ndarray, rank: int, fallback: list[np.ndarray]) -> list[np.ndarray]:
  modes = []
  for n in range(t.ndim):
    u = np.linalg.svd(unfold(t, n), full_matrices=False)[0][:, :rank]
    if u.shape[1] < rank:
      u = np.concatenate([u, fallback[n][:, u.shape[1] :]], axis=1)
    modes.append(u)
  return modes


def gevd_start(t: np.ndarray, rank: int) -> list[np.ndarray] | None:
  """The algebraic CP solution, exact for an exactly rank-``rank`` tensor.

  With the two largest modes (sizes ``I >= J >= rank``) kept and the rest
  merged into a third (size ``K >= 2``), compress to ``[rank, rank, K]``; two
  random mixtures of its slices are ``A' D_1 B'^T`` and ``A' D_2 B'^T``, so the
  eigenvectors of ``S_1 S_2^+`` are ``A'`` (Sanchez & Kowalski 1990). The
  other modes follow by least squares and rank-one splits. ``None`` when the
  sizes do not allow it.
  """
  order = list(np.argsort(t.shape, kind="stable")[::-1])
  first, second, rest = order[0], order[1], sorted(order[2:])
  merged = int(np.prod([t.shape[n] for n in rest]))
  if rank < 2 or rank > t.shape[second] or merged < 2:
    return None
  t3 = np.transpose(t, [first, second, *rest]).reshape(t.shape[first], t.shape[second], merged)
  u1 = np.linalg.svd(unfold(t3, 0), full_matrices=False)[0][:, :rank]
  u2 = np.linalg.svd(unfold(t3, 1), full_matrices=False)[0][:, :rank]
  core = np.einsum("ijk,ir,js->rsk", t3, u1, u2)
  mix = np.random.default_rng(0).standard_normal((merged, 2))
  s1, s2 = core @ mix[:, 0], core @ mix[:, 1]
  vecs = np.real(np.linalg.eig(s1 @ np.linalg.pinv(s2))[1])
  a = u1 @ vecs
  a /= np.maximum(np.linalg.norm(a, axis=0), 1e-300)
  rows = np.linalg.pinv(a) @ unfold(t3, 0)  # row r ≈ vec(b_r c_r^T)
  modes = {first: a, second: np.zeros((t.shape[second], rank))}
  merged_mode = np.zeros((merged, rank))
  for r in range(rank):
    u, s, vt = np.linalg.svd(rows[r].reshape(t.shape[second], merged), full_matrices=False)
    modes[second][:, r] = u[:, 0] * s[0]
    merged_mode[:, r] = vt[0]
  if len(rest) == 1:
    modes[rest[0]] = merged_mode
  else:
    split = [
      _sequential_rank_one(merged_mode[:, r].reshape([t.shape[n] for n in rest]))
      for r in range(rank)
    ]
    for i, n in enumerate(rest):
      modes[n] = np.stack([split[r][i] for r in range(rank)], axis=1)
  return [modes[n] for n in range(t.ndim)]


def _error(t: np.ndarray, norm: float, modes) -> float:
  return float(np.linalg.norm(t - reconstruct(modes, t.shape)) / norm)


def _sweep(unfolded: list[np.ndarray], modes: list[np.ndarray]) -> list[np.ndarray]:
  modes = list(modes)
  k, rank = len(modes), modes[0].shape[1]
  for n in range(k):
    others = [modes[i] for i in range(k) if i != n]
    gram = np.ones((rank, rank))
    for m in others:
      gram *= m.T @ m
    modes[n] = np.linalg.lstsq(gram.T, (unfolded[n] @ khatri_rao(others)).T, rcond=None)[0].T
  return modes


def run_als(
  t: np.ndarray, modes: list[np.ndarray], max_sweeps: int, tol: float
) -> tuple[list[np.ndarray], float, int]:
  """ALS with line search from ``modes``: ``(modes, relative error, sweeps)``."""
  norm = float(np.linalg.norm(t))
  if norm == 0:
    return [np.zeros_like(m) for m in modes], 0.0, 0
  unfolded = [unfold(t, n) for n in range(t.ndim)]
  err = _error(t, norm, modes)
  sweeps = 0
  for sweeps in range(1, max_sweeps + 1):
    new = _sweep(unfolded, modes)
    new_err = _error(t, norm, new)
    if sweeps > 1:
      jump = sweeps ** (1.0 / 3.0)
      trial = [m0 + jump * (m1 - m0) for m0, m1 in zip(modes, new, strict=True)]
      trial_err = _error(t, norm, trial)
      if trial_err < new_err:
        new, new_err = trial, trial_err
    improvement = err - new_err
    if new_err <= err:
      modes, err = new, new_err
    if improvement <= tol * err or err < 1e-15:
      break
  return modes, err, sweeps


def cp_als(t: np.ndarray, rank: int, max_sweeps: int, tol: float) -> tuple[list[np.ndarray], float]:
  """Rank-``rank`` CP factors ``[size_n, rank]`` of ``t`` and the error reached."""
  greedy = greedy_start(t, rank)
  starts = [lambda: gevd_start(t, rank), lambda: greedy, lambda: hosvd_start(t, rank, greedy)]
  modes, err = None, np.inf
  for start in starts:
    init = start()
    if init is None:
      continue
    found, found_err, _ = run_als(t, init, max_sweeps, tol)
    if found_err < err:
      modes, err = found, found_err
    if err <= 1e-12:  # exact: no other start can do better
      break
  assert modes is not None  # the greedy start is never None
  return modes, err
