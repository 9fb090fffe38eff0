"""Conv kernels: GKPD splits and the low-rank conv."""

from __future__ import annotations

import dataclasses
import itertools
import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from kfc_jax import _checks
from kfc_jax._search import _spectra
from kfc_jax._search._results import SearchCandidate, SearchResult
from kfc_jax._search._spectra import (
  _budget,
  _ordered_pairs,
  _rank_in_budget,
  _score_splits,
  _Split,
)
from kfc_jax.decompose import _covariance


def search_conv(
  kernel: Any,
  *,
  max_params: int | None = None,
  compression: float | None = None,
  rank: int | None = None,
  input_cov: Any = None,
  keep: int = 2,
  exhaustive: bool = False,
  refine: int = 8,
  fit: Callable[[SearchCandidate], np.ndarray] | None = None,
  cov_reg: float = _covariance.DEFAULT_COV_REG,
  seed: int = 0,
) -> SearchResult:
  """Scores every GKPD split of a conv kernel within a budget (and low rank).

  The conv counterpart of :func:`search_dense`, the search behind
  ``suggest_conv_factors(prefer="error")``: each split ``a x b`` of ``(kh, kw,
  C_in, C_out)`` at the largest rank that fits, scored by its optimal error.
  The split ``a = (kh, kw, C_in, 1)``, ``b = (1, 1, 1, C_out)`` is the
  low-rank conv and is labelled ``"low_rank"``.

  Args:
    kernel: HWIO ``[kh, kw, C_in, C_out]``.
    max_params: the budget in factor parameters, or
    compression: dense over factor parameters.
    rank: score every split at this rank instead of the largest that fits.
    input_cov: the second moment of the conv's input patches,
      ``[kh*kw*C_in, kh*kw*C_in]`` with the patch flattened in ``(h, w, c)``
      order (the kernel's row order): score output errors on that data.
    keep, exhaustive, refine, fit, cov_reg, seed: as for :func:`search_dense`; ``fit``
      returns the kernel as ``[kh*kw*C_in, C_out]``.

  Returns:
    A :class:`SearchResult`, best first.
  """
  t0 = time.perf_counter()
  k = _checks.finite_matrix(kernel, "kernel", ndim=4)
  shape = k.shape
  patch, c_out = math.prod(shape[:3]), shape[3]
  budget = _budget(math.prod(shape), max_params, compression)
  keep = _checks.positive_int(keep, "keep")
  fixed = None if rank is None else _checks.positive_int(rank, "rank")
  cov = None if input_cov is None else _covariance.check_input_cov(input_cov, patch, cov_reg)
  w = k.reshape(patch, c_out)
  source = k.astype(np.float32) if k.size >= _spectra.BIG else k
  splits = []
  for pairs in itertools.product(*(_ordered_pairs(d) for d in shape)):
    a = tuple(p for p, _ in pairs)
    b = tuple(q for _, q in pairs)
    if (a[3] == 1 and b[:3] == (1, 1, 1)) or (b[3] == 1 and a[:3] == (1, 1, 1)):
      continue  # the low-rank conv (or its transpose): scored as low rank
    pa, pb = math.prod(a[:3]), math.prod(b[:3])
    if pa * a[3] == 1 or pb * b[3] == 1:
      continue  # one factor is a scalar
    per_rank = math.prod(a) + math.prod(b)
    r = _rank_in_budget(budget, per_rank, min(math.prod(a), math.prod(b)), fixed)
    if r < 1:
      continue
    cand = SearchCandidate("kronecker", r, r * per_rank, math.nan, a_shape=a, b_shape=b)
    splits.append(_conv_split(source, None if cov is None else cov.reg, cand, a, b))
  low_rank_rank = _rank_in_budget(budget, patch + c_out, min(patch, c_out), fixed)
  if low_rank_rank < 1 and not splits:
    raise ValueError(
      f"no GKPD split or low rank of a {shape} kernel fits a budget of {budget} parameters."
    )
  scored, pruned = _score_splits(w, cov, splits, low_rank_rank, keep, exhaustive, refine, fit, seed)
  scored = [
    dataclasses.replace(c, a_shape=(*shape[:3], 1), b_shape=(1, 1, 1, c_out))
    if c.method == "low_rank"
    else c
    for c in scored
  ]
  return SearchResult(
    tuple(scored), budget, "weight" if cov is None else "data", pruned, time.perf_counter() - t0
  )


def _conv_split(k, cov, cand, a, b) -> _Split:
  (ah, aw, ai, ao), (bh, bw, bi, bo) = a, b
  pa, pb = ah * aw * ai, bh * bw * bi
  perm = (0, 2, 4, 1, 3, 5)  # (ah, bh, aw, bw, ai, bi) -> a axes then b axes

  def w4():
    t = k.reshape(ah, bh, aw, bw, ai, bi, ao, bo).transpose(*perm, 6, 7)
    return t.reshape(pa, pb, ao, bo)

  def cov4():
    c = cov.reshape(ah, bh, aw, bw, ai, bi, ah, bh, aw, bw, ai, bi)
    return c.transpose(*perm, *(6 + p for p in perm)).reshape(pa, pb, pa, pb)

  def unpermute(t):
    t = t.reshape(ah, aw, ai, bh, bw, bi, ao * bo)
    return t.transpose(0, 3, 1, 4, 2, 5, 6).reshape(pa * pb, ao * bo)

  return _Split(
    cand, w4, None if cov is None else cov4, cand.rank * min(pa, ao) * min(pb, bo), unpermute
  )
