"""Paper-style tables, plots and the ``results.json`` the examples write."""

from __future__ import annotations

import json
import math
import os
import platform
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import flax
import jax
import numpy as np
import optax


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


def format_mean_std(mean: float, std: float, count: int, digits: int = 2) -> str:
  """``'0.83 ± 0.05'``; the spread only when there is more than one value."""
  text = f"{mean:.{digits}f}"
  return text + f" ± {std:.{digits}f}" if count > 1 else text


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
  """A Markdown table with padded columns (readable as plain text too)."""
  widths = [max(len(str(c)) for c in col) for col in zip(headers, *rows, strict=True)]

  def line(cells):
    return "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

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
  from matplotlib import ticker  # pylint: disable=g-import-not-at-top

  # One color per variant, shared by our point (circle) and the paper's
  # (square), so no text labels are needed.
  names = list(dict.fromkeys([r["variant"] for r in ours] + [p["variant"] for p in paper]))
  color = {n: f"C{i % 10}" for i, n in enumerate(names)}
  fig, axes = _figure(2, sharey=True)
  for ax, key, label in (
    (axes[0], "layer_params", "FC/KFC layer parameters"),
    (axes[1], "model_params", "model parameters"),
  ):
    for r in ours:
      errs = list(r["test_errors"])
      mean = sum(errs) / len(errs)
      ax.errorbar(
        [r[key]],
        [mean],
        yerr=[[mean - min(errs)], [max(errs) - mean]],
        fmt="o",
        color=color[r["variant"]],
        capsize=3,
      )
    for p in paper:
      if p.get(key) is None:
        continue
      c = color[p["variant"]]
      ax.scatter(
        [p[key]],
        [p["test_error"]],
        marker="s",
        zorder=3,
        facecolors="none" if key in p.get("derived", ()) else c,
        edgecolors=c,
      )
    if key == "layer_params":  # Spans orders of magnitude; the model less.
      _log_count_axis(ax)
    else:
      ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: format_count(v)))
    ax.set_xlabel(label)
    ax.grid(True, which="both", alpha=0.3)
  axes[0].set_ylabel("test error (%)")
  for n in names:
    axes[0].plot([], [], "o", color=color[n], label=n)
  axes[0].errorbar(
    [], [], yerr=[], fmt="o", color="gray", capsize=3, label="ours (mean, min-max over seeds)"
  )
  axes[0].scatter([], [], marker="s", color="gray", label="paper")
  axes[0].scatter(
    [], [], marker="s", facecolors="none", edgecolors="gray", label="paper, counts derived"
  )
  axes[0].legend(fontsize=7, loc="best")
  fig.suptitle(title)
  fig.savefig(os.fspath(path), dpi=120)


def environment() -> dict[str, Any]:
  """Versions and hardware, for the record."""
  devices = jax.local_devices()
  return {
    "jax": jax.__version__,
    "flax": flax.__version__,
    "optax": optax.__version__,
    "python": platform.python_version(),
    "platform": devices[0].platform,
    "device_kind": devices[0].device_kind,
    "num_devices": len(devices),
    "cpu_count": os.cpu_count(),
    "machine": platform.machine(),
    "processor": platform.processor(),
  }


def write_json(path: str | os.PathLike[str], results: Any) -> None:
  """Writes ``results`` as indented JSON, never leaving a half-written file."""
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(path.name + ".tmp")
  tmp.write_text(json.dumps(results, indent=2))
  tmp.replace(path)


def param_reductions(counts: Mapping[str, int], baseline: Mapping[str, int]) -> dict[str, Any]:
  """A variant's parameter counts and their reductions (%) from the baseline.

  Args:
    counts: ``layer``, ``layer_weights`` (without bias) and ``model``.
    baseline: the same for the baseline.
  """

  def reduction(key):
    return 100.0 * (1.0 - counts[key] / baseline[key])

  return {
    "layer_params": counts["layer"],
    "layer_weight_params": counts["layer_weights"],
    "model_params": counts["model"],
    "layer_reduction_pct": reduction("layer"),
    "layer_weight_reduction_pct": reduction("layer_weights"),
    "model_reduction_pct": reduction("model"),
  }


_COUNT_KEYS = (
  "layer_params",
  "layer_weight_params",
  "model_params",
  "layer_reduction_pct",
  "layer_weight_reduction_pct",
  "model_reduction_pct",
)


def summarise_variants(runs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
  """One row per variant (in first-seen order): means and spreads over seeds."""
  by_variant: dict[str, list[Mapping[str, Any]]] = {}
  for r in runs:
    by_variant.setdefault(r["variant"], []).append(r)
  rows = []
  for variant, rs in by_variant.items():
    errors = [r["test_error"] for r in rs]
    mean, std = mean_std(errors)
    rows.append(
      {
        "variant": variant,
        "seeds": [r["seed"] for r in rs],
        **{k: rs[0][k] for k in _COUNT_KEYS},
        "test_errors": errors,
        "test_error_mean": mean,
        "test_error_std": std,
        "best_epochs": [r["best_epoch"] for r in rs],
        "train_time_per_epoch_s": float(np.mean([r["train_time_per_epoch_s"] for r in rs])),
      }
    )
  return rows


def variants_table(
  summary: Sequence[Mapping[str, Any]], paper: Mapping[str, Mapping[str, Any]]
) -> str:
  """The KFC paper's table for our variants, the paper's numbers beside them.

  No time column: a run's wall time per epoch (kept in ``results.json``)
  depends on what else shared the machine; compare training speed with
  ``benchmarks/train_step.py``, which times the variants interleaved.

  Args:
    summary: :func:`summarise_variants`'s rows.
    paper: variant -> ``layer_params``, ``layer_reduction`` and
      ``test_error`` as the paper prints them (missing: a dash).
  """
  headers = [
    "Variant",
    "Layer params (red.)",
    "w/o bias (red.)",
    "Model params (red.)",
    "Test error % (mean ± std)",
    "Seeds",
    "Best epochs",
    "Paper: layer params",
    "Paper: test error %",
  ]
  rows = []
  for s in summary:
    theirs = paper.get(s["variant"], {})
    rows.append(
      [
        s["variant"],
        format_with_reduction(s["layer_params"], s["layer_reduction_pct"]),
        format_with_reduction(s["layer_weight_params"], s["layer_weight_reduction_pct"]),
        format_with_reduction(s["model_params"], s["model_reduction_pct"]),
        format_mean_std(s["test_error_mean"], s["test_error_std"], len(s["seeds"])),
        str(len(s["seeds"])),
        ",".join(map(str, s["best_epochs"])),
        format_with_reduction(theirs.get("layer_params"), theirs.get("layer_reduction")),
        (f"{theirs['test_error']:.2f}" if "test_error" in theirs else "—"),
      ]
    )
  return format_table(headers, rows)


def _log_count_axis(ax) -> None:
  """A log x axis labelled with paper-style counts (``2.1K``, ``74.0K``)."""
  from matplotlib import ticker  # pylint: disable=g-import-not-at-top

  ax.set_xscale("log")
  ax.xaxis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
  ax.xaxis.set_minor_formatter(ticker.NullFormatter())
  ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: format_count(v)))


def _figure(columns: int, **subplots):
  """A two-panel figure on the Agg canvas (no pyplot: no global state)."""
  # pylint: disable=g-import-not-at-top
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  # pylint: enable=g-import-not-at-top
  fig = Figure(figsize=(11, 4.5), layout="constrained")
  FigureCanvasAgg(fig)
  return fig, fig.subplots(1, columns, **subplots)


def plot_error_vs_budget(
  path: str | os.PathLike[str],
  rows: Sequence[Mapping[str, Any]],
  labels: Mapping[str, str],
  *,
  baseline: Mapping[str, float],
  tuned_baseline: Mapping[str, float] | None,
  dense_params: int,
  title: str,
) -> None:
  """Writes a two-panel PNG: test error against layer parameters per method.

  The left panel is the error after fine-tuning, the right the error right
  after compression (the first two methods only: a from-scratch layer has no
  such point worth drawing).

  Args:
    path: the PNG to write.
    rows: one dict per (method, budget) with ``method``, ``fc_params``,
      ``test_error`` and ``before_test_error`` (each ``mean``/``std``).
    labels: method -> legend label, in drawing order.
    baseline: the dense model's test error (``mean``/``std``).
    tuned_baseline: the dense model fine-tuned the same way, or None.
    dense_params: the dense layer's parameters (for the legend).
    title: the figure title.
  """
  fig, axes = _figure(2)
  methods = list(labels)
  colors = {m: f"C{i}" for i, m in enumerate(methods)}
  for ax, key, drawn in (
    (axes[0], "test_error", methods),
    (axes[1], "before_test_error", methods[:2]),
  ):
    for method in drawn:
      rs = sorted((r for r in rows if r["method"] == method), key=lambda r: r["fc_params"])
      if not rs:
        continue
      ax.errorbar(
        [r["fc_params"] for r in rs],
        [r[key]["mean"] for r in rs],
        yerr=[r[key]["std"] for r in rs],
        fmt="o-",
        capsize=3,
        color=colors[method],
        label=labels[method],
      )
    ax.axhline(
      baseline["mean"], color="gray", ls="--", label=f"baseline, dense FC ({dense_params:,} params)"
    )
    ax.axhspan(
      baseline["mean"] - baseline["std"],
      baseline["mean"] + baseline["std"],
      color="gray",
      alpha=0.15,
    )
    if key == "test_error" and tuned_baseline is not None:
      ax.axhline(
        tuned_baseline["mean"], color="black", ls=":", label="baseline fine-tuned the same way"
      )
      ax.axhspan(
        tuned_baseline["mean"] - tuned_baseline["std"],
        tuned_baseline["mean"] + tuned_baseline["std"],
        color="black",
        alpha=0.08,
      )
    _log_count_axis(ax)
    ax.set_xlabel("FC-layer parameters (with bias)")
    ax.set_ylabel("test error (%)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="best")
  axes[0].set_title("after fine-tuning (mean ± std over seeds)", fontsize=9)
  axes[1].set_yscale("log")
  axes[1].set_title("right after compression, before fine-tuning", fontsize=9)
  fig.suptitle(title)
  fig.savefig(os.fspath(path), dpi=120)


def load_json(path: str | os.PathLike[str]) -> Any:
  """The JSON in ``path`` (e.g. an example's committed results), or None."""
  path = Path(path)
  return json.loads(path.read_text()) if path.is_file() else None


def describe_run(config: Any, committed: Mapping[str, Any] | None, command: str) -> str:
  """What a run of ``config`` is, and how long it took the committed runs.

  Args:
    config: has ``variants``, ``seeds`` and ``epochs``.
    committed: the committed full run's ``results.json`` (its ``config``,
      ``environment`` and per-variant ``train_time_per_epoch_s``), or None.
    command: the command that reproduces the committed results.
  """
  text = (
    f"This run: {len(config.variants)} variants x {len(config.seeds)} "
    f"seed(s) x {config.epochs} epochs."
  )
  if committed is None:
    return text
  c = committed["config"]
  per_epoch = {s["variant"]: s["train_time_per_epoch_s"] for s in committed["summary"]}
  known = [per_epoch.get(v) for v in config.variants]
  if all(known):
    minutes = sum(known) * len(config.seeds) * config.epochs / 60
    text += (
      f" The committed runs took {min(known):.0f}-{max(known):.0f} s "
      f"an epoch on {committed['environment']['cpu_count']} CPU cores, "
      f"so about {minutes:.0f} minutes plus compilation and evaluation "
      "(more on a busy machine)."
    )
  if config.epochs < c["epochs"] or len(config.seeds) < len(c["seeds"]):
    text += (
      f" It is a shortened run: the committed results "
      f"({c['epochs']} epochs, {len(c['seeds'])} seeds; `{command}`) "
      "are printed beside its own at the end."
    )
  return text


def beside_committed(
  summary: Sequence[Mapping[str, Any]],
  committed: Mapping[str, Any],
  paper: Mapping[str, Mapping[str, Any]],
  epochs: int,
) -> str:
  """This run's test errors beside the committed full run's and the paper's.

  Args:
    summary: this run's :func:`summarise_variants` rows.
    committed: the committed run's ``results.json``.
    paper: variant -> the paper's numbers (``test_error``).
    epochs: this run's epochs.
  """
  c = committed["config"]
  ours = {s["variant"]: s for s in summary}
  theirs = {s["variant"]: s for s in committed["summary"]}
  headers = [
    "Variant",
    f"This run: test error % ({epochs} epochs)",
    f"Committed: test error % ({c['epochs']} epochs, {len(c['seeds'])} seeds)",
    "Paper: test error %",
  ]
  rows = []
  for variant in dict.fromkeys(list(ours) + list(theirs)):
    cells = [variant]
    for s in (ours.get(variant), theirs.get(variant)):
      cells.append(
        "—"
        if s is None
        else format_mean_std(s["test_error_mean"], s["test_error_std"], len(s["seeds"]))
      )
    error = paper.get(variant, {}).get("test_error")
    cells.append("—" if error is None else f"{error:.2f}")
    rows.append(cells)
  return format_table(headers, rows)
