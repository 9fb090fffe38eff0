"""Error-driven choice of a compressed layer's method, split and rank.

For a trained weight and a parameter budget, every candidate replacement that
fits is scored by the error it would reach, and the list comes back ranked:

* **Kronecker** (Van Loan & Pitsianis): for a split ``(m1, m2) x (n1, n2)`` the
  error of the best rank-``r`` sum ``sum A_r ⊗ B_r`` is the norm of the
  rearranged matrix's singular values past ``r``, so *one* spectrum per split
  scores every rank at once; the budget then fixes the largest rank that fits.
* **Low rank**: the tail of ``W``'s own spectrum, again every rank at once. A
  split ``(m, 1) x (1, n)`` (or ``(1, n) x (m, 1)``) is an outer product, i.e.
  low rank in disguise: it is labelled ``"low_rank"``.
* **KFC** formulations (a dense layer reading a flattened ``H x W x C`` map):
  the same rearrangement over the formulation's axis groups.
* **GKPD** (a conv kernel ``[kh, kw, C_in, C_out]``): the same over the four
  axis splits; ``a = (kh, kw, C_in, 1), b = (1, 1, 1, C_out)`` is the low-rank
  conv (a conv to ``r`` channels and a 1x1 conv) and is labelled as such.

Speed: a spectrum is the Gram matrix's eigenvalues when that is cheap, and
otherwise only the top ``r + oversample`` singular values from a randomized
range finder with power iterations (Halko, Martinsson & Tropp 2011). Those
Ritz values never exceed the true ones, so an estimated error is an upper
bound of that split's optimum (``SearchCandidate.exact`` says which). Large weights
(``>= 2**20`` entries) are screened with one-pass float32 sketches and the
best few re-scored with power iterations. Splits are pruned before any SVD
of their own when a lower bound already loses: ``A ⊗ B`` of rank ``r`` has
matrix rank at most ``r * min(m1, n1) * min(m2, n2)``, so its error is at
least low rank's at that rank (Eckart–Young), bounded from ``W``'s sketched
spectrum (valid however rough the sketch, see :func:`_lower_bound`).

Data-aware scoring (``input_cov``, the layer input's second moment ``C =
E[x xᵀ]``) measures ``||Lᵀ(W - Ŵ)||_F / ||Lᵀ W||_F`` with ``C = L Lᵀ``, the
relative error of the outputs on that data. Low rank is exact (the spectrum
of ``Lᵀ W``: whitened SVD). A Kronecker split is scored by the closed form for
the nearest Kronecker-factored covariance ``C ≈ C1 ⊗ C2`` over the same split
(whitening by ``L1 ⊗ L2`` keeps the Kronecker structure, so the whitened NKP
is exact for it); the ``refine`` best are then re-measured under the true
``C`` with that closed-form answer (an achievable point, so an upper bound of
the data-aware optimum), or with a caller's ``fit`` (e.g. an ALS solver).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from kfc_jax import _checks
from kfc_jax.decompose import _covariance

_OVERSAMPLE = 10
_POWER_ITERS = 1   # small matrices, and W itself
_REFINE_ITERS = 1  # the best screened splits of a large weight
_RESCREEN = 2      # how many beyond ``keep`` are re-scored after screening
_BIG = 1 << 20     # weights with this many entries are screened in float32
# Gram + eigvalsh is about 12x dearer per n^3 than the GEMM forming the Gram.
_EIG_COST = 25.0


# ---------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SearchCandidate:
  """One scored replacement of a layer.

  Attributes:
    method: ``"kronecker"`` (dense split or GKPD conv split), ``"kfc"`` (KFC
      formulation) or ``"low_rank"`` (truncated SVD, including the
      degenerate outer-product splits).
    rank: number of terms (the rank, for low rank).
    params: factor parameters.
    relative_error: ``||W - Ŵ|| / ||W||`` (weight objective) or
      ``||Lᵀ(W - Ŵ)|| / ||Lᵀ W||`` (data objective).
    in_factors: dense splits: ``(m1, m2)``; KFC: the factors' input sizes.
    out_factors: dense splits and KFC: ``(n1, n2)``.
    a_shape: conv splits: ``(ah, aw, ai, ao)``.
    b_shape: conv splits: ``(bh, bw, bi, bo)``.
    formulation: KFC: the formulation's name.
    exact: ``False`` when the error comes from a randomized partial spectrum
      (then it is an upper bound of the split's optimum).
  """

  method: str
  rank: int
  params: int
  relative_error: float
  in_factors: tuple[int, ...] | None = None
  out_factors: tuple[int, ...] | None = None
  a_shape: tuple[int, ...] | None = None
  b_shape: tuple[int, ...] | None = None
  formulation: str | None = None
  exact: bool = True

  @property
  def label(self) -> str:
    """A short description, e.g. ``"kronecker (16, 16)x(24, 24) r=4"``."""
    if self.formulation is not None:
      shape = f"KFC-{self.formulation} {self.out_factors}"
    elif self.a_shape is not None:
      shape = f"{self.a_shape}x{self.b_shape}"
    elif self.in_factors is not None:
      shape = f"{self.in_factors}->{self.out_factors}"
    else:
      shape = ""
    return f"{self.method} {shape} r={self.rank}".replace("  ", " ")


@dataclasses.dataclass(frozen=True)
class SearchResult:
  """Scored candidates of one layer, best (lowest error) first.

  Attributes:
    candidates: every scored candidate, by increasing error, then params.
    budget: the parameter budget.
    objective: ``"weight"`` or ``"data"``.
    pruned: splits skipped because their lower bound could not win.
    seconds: wall time of the search.
  """

  candidates: tuple[SearchCandidate, ...]
  budget: int
  objective: str
  pruned: int = 0
  seconds: float = 0.0

  @property
  def best(self) -> SearchCandidate:
    return self.candidates[0]

  @property
  def runner_up(self) -> SearchCandidate | None:
    """The best candidate of another method or shape than :attr:`best`."""
    return self.candidates[1] if len(self.candidates) > 1 else None

  def best_of(self, method: str) -> SearchCandidate | None:
    """The best candidate of ``method``, or ``None`` if none fits."""
    return next((c for c in self.candidates if c.method == method), None)

  def table(self, top: int = 10) -> str:
    lines = [f"{'candidate':<48} {'params':>10} {'rel. error':>10}"]
    for c in self.candidates[:top]:
      mark = "" if c.exact else " (<=)"
      lines.append(f"{c.label:<48} {c.params:>10,} {c.relative_error:>10.4f}{mark}")
    lines.append(f"budget {self.budget:,} params, {self.objective} objective,"
                 f" {len(self.candidates)} scored, {self.pruned} pruned,"
                 f" {self.seconds:.1f} s")
    return "\n".join(lines)

  def __str__(self) -> str:
    return self.table()


# ---------------------------------------------------------------------------
# Spectra
# ---------------------------------------------------------------------------


def _top_energies(mat: np.ndarray, rank: int, rng: np.random.Generator,
                  power_iters: int) -> tuple[np.ndarray, bool]:
  """Squared singular values ``s_1^2 >= ... >= s_k^2`` with ``k >= rank``.

  All of them (exact) for matrices under ``_BIG`` entries or when the Gram
  route is cheaper than sketching, else the top ``rank + oversample`` Ritz
  values of a randomized range finder with ``power_iters`` power iterations
  (each value at most the true one).
  """
  p, q = mat.shape
  small, large = min(p, q), max(p, q)
  sketch = min(small, rank + _OVERSAMPLE)
  gram_cost = 2.0 * small * small * large + _EIG_COST * small ** 3
  sketch_cost = 2.0 * p * q * sketch * (2 * power_iters + 2)
  if gram_cost <= sketch_cost or small <= 64 or p * q < _BIG:
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
  u, s, vt = np.linalg.svd(r, full_matrices=False) if min(r.shape) <= 512 else \
      _leading_pair(r)
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

  candidate: SearchCandidate          # rank, params and labels; error filled later
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


def _score_splits(w: np.ndarray, cov: np.ndarray | None, splits: list[_Split],
                  low_rank_rank: int, keep: int, exhaustive: bool, refine: int,
                  fit: Callable | None, seed: int) -> tuple[list[SearchCandidate], int]:
  """Scores low rank and every split; returns (candidates, pruned count).

  Large matrices are screened by a one-pass sketch in float32; the best
  ``keep + _RESCREEN`` of those are then re-scored with power iterations.
  """
  rng = np.random.default_rng(seed)
  m, n = w.shape
  root = None if cov is None else covariance_root(cov.reg)
  target = w if root is None else root.T @ w
  total = float(np.vdot(target, target))
  big = m * n >= _BIG
  s2_w, exact_w = _top_energies(target.astype(np.float32) if big else target,
                                max(low_rank_rank, 1), rng, _POWER_ITERS)
  scored: list[SearchCandidate] = []
  if low_rank_rank >= 1:
    scored.append(SearchCandidate("low_rank", low_rank_rank, low_rank_rank * (m + n),
                            _tail_error(s2_w, low_rank_rank, total), exact=exact_w))
  # Cheapest lower bounds first, so good splits set the bar early.
  order = sorted(splits, key=lambda s: _lower_bound(s2_w, s.matrix_rank_bound, total))
  pruned = 0
  screened: list[tuple[SearchCandidate, _Split]] = []
  for split in order:
    c = split.candidate
    # The bound is on the true objective; with input_cov splits are scored by
    # a proxy until refined, so only the weight objective prunes.
    if cov is None and not exhaustive and len(scored) + len(screened) >= keep:
      bar = sorted([x.relative_error for x in scored]
                   + [x.relative_error for x, _ in screened])[keep - 1]
      if _lower_bound(s2_w, split.matrix_rank_bound, total) >= bar:
        pruned += 1
        continue
    r = _rearranged(split, np.float32 if big else np.float64)
    if c.rank >= min(r.shape):
      scored.append(dataclasses.replace(c, relative_error=0.0, exact=True))
      continue
    s2, exact = _top_energies(r, c.rank, rng, 0 if big else _POWER_ITERS)
    split_total = total if cov is None else float(np.vdot(r, r))
    screened.append((dataclasses.replace(c, relative_error=_tail_error(
        s2, c.rank, split_total), exact=exact), split))
  screened.sort(key=lambda cs: cs[0].relative_error)
  for i, (c, split) in enumerate(screened):
    if not c.exact and i < keep + _RESCREEN:
      r = _rearranged(split, np.float32)
      s2, _ = _top_energies(r, c.rank, rng, _REFINE_ITERS)
      split_total = total if cov is None else float(np.vdot(r, r))
      c = dataclasses.replace(c, relative_error=min(
          c.relative_error, _tail_error(s2, c.rank, split_total)))
    scored.append(c)
  scored.sort(key=lambda c: (c.relative_error, c.params))
  if cov is not None and refine:
    scored = _refine(w, cov, root, scored, splits, refine, fit)
  return scored, pruned


def _whitening(split: _Split) -> tuple[np.ndarray, np.ndarray]:
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
  return dataclasses.replace(a, relative_error=0.0, exact=True) == \
      dataclasses.replace(b, relative_error=0.0, exact=True)


def _closed_form(split: _Split, rank: int) -> np.ndarray:
  """The Kronecker-factored-whitening answer, as the weight ``[m, n]``."""
  p1, p2, q1, q2 = split.w4().shape
  l1, l2 = _whitening(split)
  u, s, vt = np.linalg.svd(_rearranged(split), full_matrices=False)
  approx = ((u[:, :rank] * s[:rank]) @ vt[:rank]).reshape(p1, q1, p2, q2)
  approx = approx.transpose(0, 2, 1, 3)
  # W = (L1^-T ⊗ L2^-T) W_white.
  back = np.einsum("ai,bj,abkl->ijkl", np.linalg.inv(l1), np.linalg.inv(l2), approx,
                   optimize=True)
  return split.unpermute(back)


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
      raise ValueError(f"methods must be among 'kronecker', 'low_rank', 'kfc', got"
                       f" {method!r}.")
  keep = _checks.positive_int(keep, "keep")
  cov = None if input_cov is None else _covariance.check_input_cov(input_cov, m, cov_reg)
  splits: list[_Split] = []
  fixed = None if rank is None else _checks.positive_int(rank, "rank")
  low_rank_rank = _rank_in_budget(budget, m + n, min(m, n), fixed) \
      if "low_rank" in methods else 0
  # Large weights are screened in float32: read them once at half the bytes.
  source = w.astype(np.float32) if w.size >= _BIG else w
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
      cand = SearchCandidate("kronecker", r, r * (m1 * n1 + m2 * n2), math.nan,
                       in_factors=(m1, m2), out_factors=(n1, n2))
      splits.append(_dense_split(source, None if cov is None else cov.reg, cand,
                                 (m1, m2), (n1, n2)))
  if "kfc" in methods:
    if in_shape is None:
      raise ValueError("methods with 'kfc' need in_shape=(H, W, C), the feature map"
                       " the layer reads flattened.")
    splits.extend(_kfc_splits(source, None if cov is None else cov.reg,
                              _checks.int_tuple(in_shape, "in_shape"), budget, fixed))
  if low_rank_rank < 1 and not splits:
    raise ValueError(f"no candidate of {methods} fits a budget of {budget} parameters"
                     f" for a {m}x{n} weight (low rank 1 needs {m + n}).")
  scored, pruned = _score_splits(w, cov, splits, low_rank_rank, keep, exhaustive,
                                 refine, fit, seed)
  return SearchResult(tuple(scored), budget, "weight" if cov is None else "data",
                      pruned, time.perf_counter() - t0)


def _dense_split(w, cov, cand, ms, ns) -> _Split:
  (m1, m2), (n1, n2) = ms, ns
  return _Split(
      cand, lambda: w.reshape(m1, m2, n1, n2),
      None if cov is None else (lambda: cov.reshape(m1, m2, m1, m2)),
      cand.rank * min(m1, n1) * min(m2, n2),
      lambda t: t.reshape(m1 * m2, n1 * n2))


def _kfc_splits(w, cov, in_shape, budget, fixed) -> list[_Split]:
  from kfc_jax import formulations as _formulations  # formulations imports decompose
  if len(in_shape) != 3:
    raise ValueError(f"in_shape must be (H, W, C), got {in_shape}.")
  m, n = w.shape
  if math.prod(in_shape) != m:
    raise ValueError(f"in_shape {in_shape} has {math.prod(in_shape)} features, but w"
                     f" has {m} input rows.")
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
      cand = SearchCandidate("kfc", rank, rank * (p1 * n1 + p2 * n2), math.nan,
                       in_factors=(p1, p2), out_factors=(n1, n2), formulation=name)

      def w4(perm=perm, p1=p1, p2=p2, n1=n1, n2=n2):
        t = w.reshape(*in_shape, n).transpose(*perm, 3)
        return t.reshape(p1, p2, n1, n2)

      def cov4(perm=perm, p1=p1, p2=p2):
        c = cov.reshape(*in_shape, *in_shape).transpose(*perm, *(3 + p for p in perm))
        return c.reshape(p1, p2, p1, p2)

      def unpermute(t, perm=perm):
        t = t.reshape(*(in_shape[p] for p in perm), n)
        return t.transpose(*np.argsort(perm), 3).reshape(m, n)

      out.append(_Split(cand, w4, None if cov is None else cov4,
                        rank * min(p1, n1) * min(p2, n2), unpermute))
  return out


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
  cov = None if input_cov is None else _covariance.check_input_cov(input_cov, patch,
                                                                   cov_reg)
  w = k.reshape(patch, c_out)
  source = k.astype(np.float32) if k.size >= _BIG else k
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
    raise ValueError(f"no GKPD split or low rank of a {shape} kernel fits a budget of"
                     f" {budget} parameters.")
  scored, pruned = _score_splits(w, cov, splits, low_rank_rank, keep, exhaustive,
                                 refine, fit, seed)
  scored = [dataclasses.replace(c, a_shape=(*shape[:3], 1), b_shape=(1, 1, 1, c_out))
            if c.method == "low_rank" else c for c in scored]
  return SearchResult(tuple(scored), budget, "weight" if cov is None else "data",
                      pruned, time.perf_counter() - t0)


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

  return _Split(cand, w4, None if cov is None else cov4,
                cand.rank * min(pa, ao) * min(pb, bo), unpermute)
