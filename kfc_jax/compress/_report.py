"""Text tables and layer paths, shared by the compression report and ``summarize``."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from kfc_jax.layers import LayerCost


def layer_path(parts: Sequence[Any]) -> str:
  """A layer's path in a model: its attribute names (or indices) joined by ``/``."""
  return "/".join(str(p) for p in parts)


def ratio(before: int, after: int) -> str:
  """``"7.2x"``, or ``"-"`` when ``after`` is zero."""
  return f"{before / after:.1f}x" if after else "-"


def format_table(
  header: Sequence[str], sections: Sequence[Sequence[Sequence[str]]], left_columns: int
) -> str:
  """Aligned text columns: the header, then each section after a rule.

  The first ``left_columns`` columns are left-aligned (names), the rest
  right-aligned (numbers).
  """
  rows = [header, *(row for section in sections for row in section)]
  widths = [max(len(row[i]) for row in rows) for i in range(len(header))]

  def fmt(row):
    cells = zip(row, widths, strict=True)
    return "  ".join(
      c.ljust(w) if i < left_columns else c.rjust(w) for i, (c, w) in enumerate(cells)
    ).rstrip()

  rule = "-" * len(fmt(header))
  lines = [fmt(header)]
  for section in sections:
    lines += [rule, *map(fmt, section)]
  return "\n".join(lines)


@dataclasses.dataclass(frozen=True)
class LayerReport:
  """One compressed layer: what it was, what it became, and what it cost.

  FLOPs are per ``batch`` rows (per output pixel for convs), multiply-adds
  counting two and biases left out; parameters include biases.
  ``relative_error`` is the weight error; ``data_error`` the relative output
  error on the calibration data (``None`` without it); ``choice`` what the
  error search picked and its runner-up (empty when the rule fixed it).

  Example usage::

    >>> import kfc_jax
    >>> from flax import nnx
    >>> model = nnx.Sequential(nnx.Linear(64, 64, rngs=nnx.Rngs(0)))
    >>> rule = kfc_jax.LayerRule("layers/0", in_factors=(8, 8), out_factors=(8, 8))
    >>> _, report = kfc_jax.compress(model, kfc_jax.CompressionPolicy([rule]))
    >>> row = report.rows[0]
    >>> row.path, row.after, row.params_before, row.params_after
    ('layers/0', 'KroneckerLinear (8, 8)->(8, 8)', 4160, 192)
  """

  path: str
  before: str
  after: str
  shape: str
  params_before: int
  params_after: int
  flops_before: int
  flops_after: int
  relative_error: float
  data_error: float | None = None
  choice: str = ""

  @classmethod
  def of(
    cls,
    path: str,
    before: str,
    shape: str,
    cost: LayerCost,
    error: float | None,
    *,
    data_error: float | None = None,
    choice: str = "",
  ) -> LayerReport:
    """The row of a layer replaced by one of ``cost`` with weight error ``error``."""
    after = f"{cost.kind} {cost.detail}".strip()
    return cls(
      path,
      before,
      after,
      shape,
      cost.dense_params,
      cost.params,
      cost.dense_flops,
      cost.flops,
      float(error or 0.0),
      None if data_error is None else float(data_error),
      choice,
    )


@dataclasses.dataclass(frozen=True)
class CompressionReport:
  """Per-layer results of :func:`compress`; ``str()`` gives the table.

  ``model_params_before`` / ``model_params_after`` count every ``Param`` of the
  whole model (layers left alone included).

  Example usage::

    >>> import kfc_jax
    >>> from flax import nnx
    >>> model = nnx.Sequential(nnx.Linear(64, 64, rngs=nnx.Rngs(0)))
    >>> rule = kfc_jax.LayerRule("layers/0", in_factors=(8, 8), out_factors=(8, 8))
    >>> _, report = kfc_jax.compress(model, kfc_jax.CompressionPolicy([rule]))
    >>> len(report.rows), report.model_params_before, report.model_params_after
    (1, 4160, 192)
  """

  rows: tuple[LayerReport, ...]
  model_params_before: int
  model_params_after: int
  batch: int = 1

  @property
  def params_before(self) -> int:
    return sum(r.params_before for r in self.rows)

  @property
  def params_after(self) -> int:
    return sum(r.params_after for r in self.rows)

  @property
  def flops_before(self) -> int:
    return sum(r.flops_before for r in self.rows)

  @property
  def flops_after(self) -> int:
    return sum(r.flops_after for r in self.rows)

  def table(self) -> str:
    """The report as a text table: one row per layer, the total, the model."""
    header = (
      "path",
      "before",
      "after",
      "shape",
      "params",
      "->",
      "saved",
      "FLOPs",
      "->",
      "speedup",
      "rel. error",
    )
    lines = [
      (
        r.path or "(root)",
        r.before,
        r.after,
        r.shape,
        f"{r.params_before:,}",
        f"{r.params_after:,}",
        ratio(r.params_before, r.params_after),
        f"{r.flops_before:,}",
        f"{r.flops_after:,}",
        ratio(r.flops_before, r.flops_after),
        f"{r.relative_error:.3g}",
      )
      for r in self.rows
    ]
    total = (
      "total",
      "",
      "",
      "",
      f"{self.params_before:,}",
      f"{self.params_after:,}",
      ratio(self.params_before, self.params_after),
      f"{self.flops_before:,}",
      f"{self.flops_after:,}",
      ratio(self.flops_before, self.flops_after),
      "",
    )
    model = (
      "model",
      "",
      "",
      "",
      f"{self.model_params_before:,}",
      f"{self.model_params_after:,}",
      ratio(self.model_params_before, self.model_params_after),
      "",
      "",
      "",
      "",
    )
    if any(r.data_error is not None for r in self.rows):  # calibration data given
      header += ("output error",)
      lines = [
        (*line, "-" if r.data_error is None else f"{r.data_error:.3g}")
        for line, r in zip(lines, self.rows, strict=True)
      ]
      total, model = (*total, ""), (*model, "")
    table = format_table(header, [lines, [total, model]], left_columns=4)
    notes = [f"{r.path or '(root)'}: {r.choice}" for r in self.rows if r.choice]
    return "\n".join([table, "", *notes]) if notes else table

  def __str__(self) -> str:
    return self.table()
