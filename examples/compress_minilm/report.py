"""The sweep's table, winners and plot, from ``<workdir>/rows/*/seed_*.json``.

Command (from the repository root)::

  python examples/compress_minilm/main.py --workdir=runs/minilm --stage=report

Writes ``results.json``, ``table.md`` and ``cosine_vs_params.png`` into the
output directory (the example's ``results/``).
"""

from __future__ import annotations

import json
import pathlib
import shutil
from collections import defaultdict

import numpy as np


def _mean_std(values):
  values = np.asarray(values, np.float64)
  return float(values.mean()), (float(values.std(ddof=1)) if len(values) > 1 else None)


def collect(workdir: pathlib.Path) -> list[dict]:
  """One summary per row (seeds averaged), in sweep order."""
  rows = []
  for row_dir in sorted((workdir / "rows").glob("*")):
    seeds = [json.loads(p.read_text()) for p in sorted(row_dir.glob("seed_*.json"))]
    if not seeds:
      continue
    first = seeds[0]
    infos = first["matrices"]
    summary = {
      **first["row"],
      "name": first["name"],
      "seeds": [s["seed"] for s in seeds],
      "matrices_params": first["matrices_params"],
      "matrices_dense_params": first["matrices_dense_params"],
      "model_params": first["model_params"],
      "dense_model_params": first["dense_model_params"],
      "compress_seconds": first["compress_seconds"],
      "before": {k: first["before"][k] for k in ("mean_cosine", "p5_cosine", "top1")},
      "before_output_error": float(np.mean(list(first["before"]["output_errors"].values()))),
      "mean_weight_error": float(np.mean([i["weight_error"] for i in infos.values()])),
      "seconds_per_step": first["distill"]["seconds_per_step"],
      "steps": len(first["distill"]["losses"]) + first["distill"]["first_step"],
    }
    for key in ("mean_cosine", "p5_cosine", "top1"):
      summary[f"after_{key}"], summary[f"after_{key}_std"] = _mean_std(
        [s["after"][key] for s in seeds]
      )
    summary["after_output_error"] = float(
      np.mean([np.mean(list(s["after"]["output_errors"].values())) for s in seeds])
    )
    if first["row"]["method"] == "kronecker":
      splits = defaultdict(int)
      for info in infos.values():
        splits[f"{tuple(info['in_factors'])}x{tuple(info['out_factors'])} r{info['rank']}"] += 1
      summary["splits"] = dict(splits)
    else:
      summary["ranks"] = sorted({i["rank"] for i in infos.values()})
    rows.append(summary)
  order = {"ffn": 0, "attention": 1}
  rows.sort(key=lambda r: (order[r["matrices"]], r["compression"], r["method"], r["calibration"]))
  return rows


def _fmt(mean, std=None, digits=3):
  return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if std is not None else "")


def table(rows: list[dict], timing: dict | None) -> str:
  """The Markdown table of every row."""
  seconds = (timing or {}).get("median_seconds", {})
  dense = seconds.get("dense")
  lines = [
    "| matrices | budget | method | fit | matrix params (of dense) | model params |"
    " before: mean cos / p5 / top-1 | after: mean cos / p5 / top-1 |"
    " output error before → after | encoder ms (× dense) |",
    "|---|---|---|---|---|---|---|---|---|---|",
  ]
  for r in rows:
    key = f"{r['matrices']}-{r['method']}-{r['compression']}x"
    t = seconds.get(key)
    time_cell = f"{1e3 * t:.0f} ({t / dense:.2f}×)" if t and dense else "—"
    b = r["before"]
    lines.append(
      f"| {r['matrices']} | {r['compression']}× | {r['method']} | {r['calibration']} |"
      f" {r['matrices_params']:,} / {r['matrices_dense_params']:,} |"
      f" {r['model_params']:,} |"
      f" {b['mean_cosine']:.3f} / {b['p5_cosine']:.3f} / {b['top1']:.3f} |"
      f" {_fmt(r['after_mean_cosine'], r['after_mean_cosine_std'])} /"
      f" {r['after_p5_cosine']:.3f} / {r['after_top1']:.3f} |"
      f" {r['before_output_error']:.3f} → {r['after_output_error']:.3f} |"
      f" {time_cell} |"
    )
  if dense:
    lines.append(
      f"\nDense encoder: {1e3 * dense:.0f} ms per batch of 32 x 128 tokens"
      " (median of the interleaved rounds)."
    )
  return "\n".join(lines) + "\n"


def winners(rows: list[dict]) -> str:
  """Per matrix set and budget: the best row after distillation, and whether
  Kronecker beat low rank (same fit, before and after)."""
  lines = []
  groups = defaultdict(list)
  for r in rows:
    groups[(r["matrices"], r["compression"])].append(r)
  for (matrices, compression), group in groups.items():
    best = max(group, key=lambda r: r["after_mean_cosine"])
    rest = [r for r in group if r is not best]
    runner = max(rest, key=lambda r: r["after_mean_cosine"]) if rest else None
    margin = (
      (
        f", {best['after_mean_cosine'] - runner['after_mean_cosine']:+.3f} over"
        f" {runner['method']}/{runner['calibration']}"
      )
      if runner
      else ""
    )
    lines.append(
      f"- {matrices} {compression}×: best after distillation "
      f"{best['method']}/{best['calibration']} "
      f"({best['after_mean_cosine']:.3f}{margin})."
    )
    for fit in ("weight", "data"):
      pair = {r["method"]: r for r in group if r["calibration"] == fit}
      if len(pair) == 2:
        kron, low = pair["kronecker"], pair["low_rank"]
        before = kron["before"]["mean_cosine"] - low["before"]["mean_cosine"]
        lines.append(
          f"  - {fit}: Kronecker − low rank = {before:+.3f}"
          f" before, {kron['after_mean_cosine'] - low['after_mean_cosine']:+.3f} after."
        )
  return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: pathlib.Path) -> None:
  """Mean cosine against the replaced matrices' parameters, per method."""
  import matplotlib  # pylint: disable=g-import-not-at-top

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  sets = [m for m in ("ffn", "attention") if any(r["matrices"] == m for r in rows)]
  fig, axes = plt.subplots(1, len(sets), figsize=(6 * len(sets), 4.5), squeeze=False)
  styles = {
    ("low_rank", "weight"): ("tab:blue", "o"),
    ("low_rank", "data"): ("tab:cyan", "s"),
    ("kronecker", "weight"): ("tab:red", "^"),
    ("kronecker", "data"): ("tab:orange", "D"),
  }
  for ax, matrices in zip(axes[0], sets, strict=True):
    for (method, fit), (color, marker) in styles.items():
      pts = sorted(
        (r["matrices_params"], r["before"]["mean_cosine"], r["after_mean_cosine"])
        for r in rows
        if (r["matrices"], r["method"], r["calibration"]) == (matrices, method, fit)
      )
      if not pts:
        continue
      x, before, after = zip(*pts, strict=True)
      ax.plot(x, after, color=color, marker=marker, label=f"{method}, {fit}: distilled")
      ax.plot(
        x,
        before,
        color=color,
        marker=marker,
        linestyle=":",
        alpha=0.6,
        label=f"{method}, {fit}: as compressed",
      )
    dense = next(r["matrices_dense_params"] for r in rows if r["matrices"] == matrices)
    ax.axvline(dense, color="gray", linewidth=0.8)
    ax.set_xscale("log")
    ax.set_title(f"all-MiniLM-L6-v2, {matrices} matrices (dense: {dense:,})")
    ax.set_xlabel("parameters of the replaced matrices")
    ax.set_ylabel("mean cosine to the original embeddings")
    ax.grid(alpha=0.3)
  axes[0][0].legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def write_report(workdir: pathlib.Path, out_dir: pathlib.Path) -> None:
  rows = collect(workdir)
  if not rows:
    raise ValueError(f"No results under {workdir / 'rows'}; run --stage=sweep first.")
  timing_path = workdir / "timing.json"
  timing = json.loads(timing_path.read_text()) if timing_path.is_file() else None
  out_dir.mkdir(parents=True, exist_ok=True)
  corpus_stats = workdir / "corpus_stats.json"
  (out_dir / "results.json").write_text(
    json.dumps(
      {
        "rows": rows,
        "timing": timing,
        "corpus": json.loads(corpus_stats.read_text()) if corpus_stats.is_file() else None,
      },
      indent=1,
    )
  )
  (out_dir / "table.md").write_text(table(rows, timing) + "\n" + winners(rows))
  plot(rows, out_dir / "cosine_vs_params.png")
  if timing_path.is_file():
    shutil.copy(timing_path, out_dir / "timing.json")
