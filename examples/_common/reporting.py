"""Paper-style tables and the test-error-versus-parameters plot."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any


def format_count(n: float | None) -> str:
  """Parameter counts the way papers print them: ``73984 -> '74.0K'``."""
  if n is None:
    return "—"
  if n >= 1e6:
    return f"{n / 1e6:.2f}M"
  if n >= 1e3:
    return f"{n / 1e3:.1f}K"
  return f"{n:.0f}"


def format_with_reduction(n: float | None, reduction: float | None) -> str:
  """``'2.3K (96.8%)'``; the reduction is omitted when unknown or zero."""
  if n is None:
    return "—"
  if reduction is None or abs(reduction) < 0.05:
    return format_count(n)
  return f"{format_count(n)} ({reduction:.1f}%)"


def mean_std(values: Sequence[float]) -> tuple[float, float]:
  """Mean and sample standard deviation (0 for a single value)."""
  n = len(values)
  mean = sum(values) / n
  if n < 2:
    return mean, 0.0
  var = sum((v - mean) ** 2 for v in values) / (n - 1)
  return mean, math.sqrt(var)


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
  """A Markdown table with padded columns (readable as plain text too)."""
  widths = [max(len(str(c)) for c in col) for col in zip(headers, *rows)]

  def line(cells):
    return "| " + " | ".join(
        str(c).ljust(w) for c, w in zip(cells, widths)) + " |"

  sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
  return "\n".join([line(headers), sep] + [line(r) for r in rows])


def plot_error_vs_params(
    path: str | os.PathLike[str],
    ours: Sequence[dict[str, Any]],
    paper: Sequence[dict[str, Any]],
    *,
    title: str,
) -> None:
  """Writes a two-panel PNG: test error against layer and model parameters.

  Args:
    path: the PNG to write.
    ours: one dict per variant with ``variant``, ``layer_params``,
      ``model_params`` and ``test_errors`` (percent, one per seed); drawn as
      mean with a min-max bar.
    paper: one dict per published point with ``variant``, ``layer_params``,
      ``model_params``, ``test_error`` and ``derived`` (the keys among
      ``layer_params``/``model_params`` whose counts are computed from the
      definitions rather than printed in the paper; drawn hollow).
    title: the figure title.
  """
  # The object-oriented API: no pyplot, so no global backend state to disturb.
  # pylint: disable=g-import-not-at-top
  from matplotlib import ticker
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure
  # pylint: enable=g-import-not-at-top

  # One color per variant, shared by our point (circle) and the paper's
  # (square), so no text labels are needed.
  names = list(dict.fromkeys([r["variant"] for r in ours] +
                             [p["variant"] for p in paper]))
  color = {n: f"C{i % 10}" for i, n in enumerate(names)}
  fig = Figure(figsize=(11, 4.5), layout="constrained")
  FigureCanvasAgg(fig)
  axes = fig.subplots(1, 2, sharey=True)
  for ax, key, label in ((axes[0], "layer_params", "FC/KFC layer parameters"),
                         (axes[1], "model_params", "model parameters")):
    for r in ours:
      errs = list(r["test_errors"])
      mean = sum(errs) / len(errs)
      ax.errorbar([r[key]], [mean],
                  yerr=[[mean - min(errs)], [max(errs) - mean]], fmt="o",
                  color=color[r["variant"]], capsize=3)
    for p in paper:
      if p.get(key) is None:
        continue
      c = color[p["variant"]]
      ax.scatter([p[key]], [p["test_error"]], marker="s", zorder=3,
                 facecolors="none" if key in p.get("derived", ()) else c,
                 edgecolors=c)
    if key == "layer_params":  # Spans orders of magnitude; the model less.
      ax.set_xscale("log")
      ax.xaxis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
      ax.xaxis.set_minor_formatter(ticker.NullFormatter())
    ax.xaxis.set_major_formatter(
        ticker.FuncFormatter(lambda v, _: format_count(v)))
    ax.set_xlabel(label)
    ax.grid(True, which="both", alpha=0.3)
  axes[0].set_ylabel("test error (%)")
  for n in names:
    axes[0].plot([], [], "o", color=color[n], label=n)
  axes[0].errorbar([], [], yerr=[], fmt="o", color="gray", capsize=3,
                   label="ours (mean, min-max over seeds)")
  axes[0].scatter([], [], marker="s", color="gray", label="paper")
  axes[0].scatter([], [], marker="s", facecolors="none", edgecolors="gray",
                  label="paper, counts derived")
  axes[0].legend(fontsize=7, loc="best")
  fig.suptitle(title)
  fig.savefig(os.fspath(path), dpi=120)
