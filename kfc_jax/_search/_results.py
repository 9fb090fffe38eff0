"""The search's results: candidates and their ranking."""

from __future__ import annotations

import dataclasses

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
    lines.append(
      f"budget {self.budget:,} params, {self.objective} objective,"
      f" {len(self.candidates)} scored, {self.pruned} pruned,"
      f" {self.seconds:.1f} s"
    )
    return "\n".join(lines)

  def __str__(self) -> str:
    return self.table()
