"""Dense layers: Kronecker splits, KFC formulations and low rank."""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Sequence
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


def search_dense(
  w: Any,
  *,
  max_params: int | None = None,
  compression: float | None = None,
  methods: Sequence[str] = ("kronecker", "low_rank"),
  in_shape: Sequence[int] | None = None,
  rank: int | None = None,
  input_cov: Any = None,
  keep: int = 2,
  exhaustive: bool = False,
  refine: int = 8,
  fit: Callable[[SearchCandidate], np.ndarray] | None = None,
  cov_reg: float = _covariance.DEFAULT_COV_REG,
  seed: int = 0,
) -> SearchResult:
  """Scores every Kronecker split, KFC formulation and low rank within a budget.

  Each two-factor split ``(m1, m2) x (n1, n2)`` of ``w: [m, n]`` is taken at the
  largest rank its parameters fit in the budget (more terms never hurt), and
  scored by the optimal error at that rank; low rank likewise. KFC
  formulations I–IV are scored over every output split when ``in_shape`` is
  given (the layer reads a flattened ``H x W x C`` feature map).

  Args:
    w: the dense kernel ``[in_features, out_features]``.
    max_params: the budget in factor parameters, or
    compression: dense over factor parameters.
    methods: any of ``"kronecker"``, ``"low_rank"``, ``"kfc"``.
    in_shape: ``(H, W, C)`` for ``"kfc"``.
    rank: score every candidate at this rank (those it does not fit are
      left out) instead of the largest that fits.
    input_cov: the input's second moment ``E[x xᵀ]``, ``[m, m]``: score the
      output error on that data instead of the weight error.
    keep: how many of the best candidates must be scored exactly; splits whose
      lower bound cannot beat the ``keep``-th best are pruned.
    exhaustive: score every split (no pruning).
    refine: with ``input_cov``, the number of best splits (by the factored
      proxy) re-measured under the full covariance; only those, and low
      rank (exact), can be ranked first.
    fit: with ``input_cov``, ``fit(candidate) -> Ŵ [m, n]`` to re-measure with
      (e.g. an ALS solver); by default the Kronecker-factored closed form.
    cov_reg: the ridge on ``input_cov`` relative to its mean variance, as
      for :func:`kfc_jax.nearest_kronecker` (checked the same way).
    seed: for the randomized spectra.

  Returns:
    A :class:`SearchResult`, best first.

  Example usage::

    >>> import numpy as np, kfc_jax
    >>> rng = np.random.default_rng(0)
    >>> w = np.kron(rng.normal(size=(8, 4)), rng.normal(size=(4, 8)))  # 32 x 32
    >>> result = kfc_jax.search_dense(w, compression=8)
    >>> result.best.label, result.best.relative_error < 1e-6
    ('kronecker (8, 4)->(4, 8) r=2', True)
  """
  t0 = time.perf_counter()
  w = _checks.finite_matrix(w, "w")
  m, n = w.shape
  budget = _budget(m * n, max_params, compression)
  methods = tuple(methods)
  for method in methods:
    if method not in ("kronecker", "low_rank", "kfc"):
      raise ValueError(f"methods must be among 'kronecker', 'low_rank', 'kfc', got {method!r}.")
  keep = _checks.positive_int(keep, "keep")
  cov = None if input_cov is None else _covariance.check_input_cov(input_cov, m, cov_reg)
  splits: list[_Split] = []
  fixed = None if rank is None else _checks.positive_int(rank, "rank")
  low_rank_rank = _rank_in_budget(budget, m + n, min(m, n), fixed) if "low_rank" in methods else 0
  # Large weights are screened in float32: read them once at half the bytes.
  source = w.astype(np.float32) if w.size >= _spectra.BIG else w
  if "kronecker" in methods:
    for (m1, m2), (n1, n2) in itertools.product(_ordered_pairs(m), _ordered_pairs(n)):
      if (n1 == 1 and m2 == 1) or (m1 == 1 and n2 == 1):
        continue  # an outer product: low rank, scored as such
      if m1 * n1 == 1 or m2 * n2 == 1:
        continue  # one factor is a scalar: the dense weight again
      full = min(m1 * n1, m2 * n2)
      r = _rank_in_budget(budget, m1 * n1 + m2 * n2, full, fixed)
      if r < 1:
        continue
      cand = SearchCandidate(
        "kronecker", r, r * (m1 * n1 + m2 * n2), math.nan, in_factors=(m1, m2), out_factors=(n1, n2)
      )
      splits.append(
        _dense_split(source, None if cov is None else cov.reg, cand, (m1, m2), (n1, n2))
      )
  if "kfc" in methods:
    if in_shape is None:
      raise ValueError(
        "methods with 'kfc' need in_shape=(H, W, C), the feature map the layer reads flattened."
      )
    splits.extend(
      _kfc_splits(
        source,
        None if cov is None else cov.reg,
        _checks.int_tuple(in_shape, "in_shape"),
        budget,
        fixed,
      )
    )
  if low_rank_rank < 1 and not splits:
    raise ValueError(
      f"no candidate of {methods} fits a budget of {budget} parameters"
      f" for a {m}x{n} weight (low rank 1 needs {m + n})."
    )
  scored, pruned = _score_splits(w, cov, splits, low_rank_rank, keep, exhaustive, refine, fit, seed)
  return SearchResult(
    tuple(scored), budget, "weight" if cov is None else "data", pruned, time.perf_counter() - t0
  )


def _dense_split(w, cov, cand, ms, ns) -> _Split:
  (m1, m2), (n1, n2) = ms, ns
  return _Split(
    cand,
    lambda: w.reshape(m1, m2, n1, n2),
    None if cov is None else (lambda: cov.reshape(m1, m2, m1, m2)),
    cand.rank * min(m1, n1) * min(m2, n2),
    lambda t: t.reshape(m1 * m2, n1 * n2),
  )


def _kfc_splits(w, cov: np.ndarray | None, in_shape, budget, fixed) -> list[_Split]:
  from kfc_jax import formulations as _formulations  # formulations imports decompose

  if len(in_shape) != 3:
    raise ValueError(f"in_shape must be (H, W, C), got {in_shape}.")
  m, n = w.shape
  if math.prod(in_shape) != m:
    raise ValueError(
      f"in_shape {in_shape} has {math.prod(in_shape)} features, but w has {m} input rows."
    )
  out = []
  for name in ("I", "II", "III", "IV"):
    form = _formulations.get_formulation(name)
    perm = form.permutation
    p1, p2 = form.in_factors(in_shape)
    out_splits = [(n, 1)] if form.fixed_out is not None else _ordered_pairs(n)
    for n1, n2 in out_splits:
      rank = _rank_in_budget(budget, p1 * n1 + p2 * n2, min(p1 * n1, p2 * n2), fixed)
      if rank < 1:
        continue
      cand = SearchCandidate(
        "kfc",
        rank,
        rank * (p1 * n1 + p2 * n2),
        math.nan,
        in_factors=(p1, p2),
        out_factors=(n1, n2),
        formulation=name,
      )

      def w4(perm=perm, p1=p1, p2=p2, n1=n1, n2=n2):
        t = w.reshape(*in_shape, n).transpose(*perm, 3)
        return t.reshape(p1, p2, n1, n2)

      def cov4(perm=perm, p1=p1, p2=p2):
        assert cov is not None  # cov4 is kept only when cov is given
        c = cov.reshape(*in_shape, *in_shape).transpose(*perm, *(3 + p for p in perm))
        return c.reshape(p1, p2, p1, p2)

      def unpermute(t, perm=perm):
        t = t.reshape(*(in_shape[p] for p in perm), n)
        return t.transpose(*np.argsort(perm), 3).reshape(m, n)

      out.append(
        _Split(cand, w4, None if cov is None else cov4, rank * min(p1, n1) * min(p2, n2), unpermute)
      )
  return out
