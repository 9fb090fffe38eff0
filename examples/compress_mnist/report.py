"""The sweep's summary, tables and plot.

:func:`summarise` groups the runs by budget and method (means and spreads
over seeds) and pairs them seed by seed: KFC with NKP init against the other
two methods, and every method against the dense baseline fine-tuned the same
way. :func:`write_reports` writes ``results.json``, ``table.md`` and
``test_error_vs_fc_params.png``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from examples._common import reporting
from examples.compress_mnist import models
from examples.compress_mnist.configs import default

METHODS = default.METHODS
METHOD_LABELS = models.METHOD_LABELS
DENSE_FC_PARAMS = models.DENSE_FC_PARAMS


def _stats(values: Sequence[float]) -> dict[str, Any]:
  mean, std = reporting.mean_std(list(values))
  return {"values": list(values), "mean": mean, "std": std}


def summarise(
  runs: Sequence[Mapping[str, Any]], baselines: Sequence[Mapping[str, Any]]
) -> dict[str, Any]:
  """Means and spreads over seeds per (budget, method), and paired differences.

  ``paired``: per budget, ``low_rank_svd - kfc_nkp`` and ``kfc_scratch -
  kfc_nkp`` test errors (after fine-tuning and before) seed by seed (the same
  baseline and shuffling), mean and sample std over seeds; positive means the
  NKP-initialised KFC layer is better. ``vs_dense``: per budget and method,
  its test error minus the dense baseline's fine-tuned the same way, seed by
  seed (when ``finetune_baseline``).
  """
  rows = []
  groups: dict[tuple[int, str], list[Mapping[str, Any]]] = {}
  for r in runs:
    groups.setdefault((r["kfc_rank"], r["method"]), []).append(r)
  for (kfc_rank, method), rs in groups.items():
    rows.append(
      {
        "method": method,
        "kfc_rank": kfc_rank,
        "rank": rs[0]["rank"],
        "seeds": [r["seed"] for r in rs],
        "fc_params": rs[0]["fc_params"],
        "fc_weight_params": rs[0]["fc_weight_params"],
        "fc_reduction_pct": rs[0]["fc_reduction_pct"],
        "model_params": rs[0]["model_params"],
        "relative_error": rs[0]["relative_error"],
        "before_test_error": _stats([r["before_test_error"] for r in rs]),
        "test_error": _stats([r["test_error"] for r in rs]),
        "best_epochs": [r["best_epoch"] for r in rs],
      }
    )
  paired = []
  by_key = {(r["kfc_rank"], r["method"], r["seed"]): r for r in runs}
  for kfc_rank in dict.fromkeys(r["kfc_rank"] for r in runs):
    for other in ("low_rank_svd", "kfc_scratch"):
      seeds = [
        s for (k, m, s) in by_key if k == kfc_rank and m == other and (k, "kfc_nkp", s) in by_key
      ]
      if not seeds:
        continue
      pairs = [(by_key[(kfc_rank, other, s)], by_key[(kfc_rank, "kfc_nkp", s)]) for s in seeds]
      paired.append(
        {
          "kfc_rank": kfc_rank,
          "versus": other,
          "seeds": seeds,
          "params_other": pairs[0][0]["fc_params"],
          "params_kfc": pairs[0][1]["fc_params"],
          "test_error_diff": _stats([o["test_error"] - k["test_error"] for o, k in pairs]),
          "before_test_error_diff": _stats(
            [o["before_test_error"] - k["before_test_error"] for o, k in pairs]
          ),
          "kfc_better_seeds": sum(o["test_error"] > k["test_error"] for o, k in pairs),
        }
      )
  tuned = [b["finetuned"]["test_error"] for b in baselines if "finetuned" in b]
  dense = {b["seed"]: b["finetuned"]["test_error"] for b in baselines if "finetuned" in b}
  vs_dense = []
  for (kfc_rank, method), rs in groups.items():
    diffs = [r["test_error"] - dense[r["seed"]] for r in rs if r["seed"] in dense]
    if diffs:
      vs_dense.append(
        {
          "kfc_rank": kfc_rank,
          "method": method,
          "fc_params": rs[0]["fc_params"],
          "test_error_minus_dense": _stats(diffs),
        }
      )
  return {
    "vs_dense": vs_dense,
    "baseline": {
      "test_error": _stats([b["test_error"] for b in baselines]),
      "finetuned_test_error": _stats(tuned) if tuned else None,
      "fc_params": DENSE_FC_PARAMS,
    },
    "rows": rows,
    "paired": paired,
  }


def _pm(stats: Mapping[str, Any]) -> str:
  return reporting.format_mean_std(stats["mean"], stats["std"], len(stats["values"]))


def tables(summary: Mapping[str, Any]) -> str:
  """Markdown: the sweep table and the paired differences."""
  base = summary["baseline"]
  headers = [
    "Method",
    "Rank",
    "FC params (reduction)",
    "Rel. weight error",
    "Test error % before FT",
    "Test error % after FT",
    "Seeds",
    "Best epochs",
  ]
  tuned = base.get("finetuned_test_error")
  rows = [
    [
      "Baseline (dense FC)",
      "—",
      f"{DENSE_FC_PARAMS:,}",
      "—",
      _pm(base["test_error"]),
      "—" if tuned is None else _pm(tuned),
      str(len(base["test_error"]["values"])),
      "—",
    ]
  ]
  for r in sorted(summary["rows"], key=lambda r: (r["kfc_rank"], METHODS.index(r["method"]))):
    rows.append(
      [
        METHOD_LABELS[r["method"]],
        str(r["rank"]),
        f"{r['fc_params']:,} ({r['fc_reduction_pct']:.1f}%)",
        "—" if r["relative_error"] is None else f"{r['relative_error']:.3f}",
        _pm(r["before_test_error"]),
        _pm(r["test_error"]),
        str(len(r["seeds"])),
        ",".join(map(str, r["best_epochs"])),
      ]
    )
  out = [reporting.format_table(headers, rows)]
  if summary["paired"]:
    headers = [
      "KFC rank",
      "Versus",
      "FC params (other / KFC)",
      "Δ test error after FT (pp)",
      "Δ before FT (pp)",
      "KFC better",
    ]
    rows = [
      [
        str(p["kfc_rank"]),
        METHOD_LABELS[p["versus"]],
        f"{p['params_other']:,} / {p['params_kfc']:,}",
        _pm(p["test_error_diff"]),
        _pm(p["before_test_error_diff"]),
        f"{p['kfc_better_seeds']}/{len(p['seeds'])} seeds",
      ]
      for p in summary["paired"]
    ]
    out += [
      "",
      "Paired differences (other minus KFC-NKP, same seed; positive:"
      " KFC-NKP better), mean ± std over seeds:",
      "",
      reporting.format_table(headers, rows),
    ]
  if summary.get("vs_dense"):
    headers = ["KFC rank", "Method", "FC params", "Test error minus fine-tuned dense (pp)"]
    rows = [
      [
        str(v["kfc_rank"]),
        METHOD_LABELS[v["method"]],
        f"{v['fc_params']:,}",
        _pm(v["test_error_minus_dense"]),
      ]
      for v in sorted(
        summary["vs_dense"], key=lambda v: (v["kfc_rank"], METHODS.index(v["method"]))
      )
    ]
    out += [
      "",
      "Against the dense baseline fine-tuned the same steps (same seed;"
      " ≤ 0: quality kept), mean ± std over seeds:",
      "",
      reporting.format_table(headers, rows),
    ]
  return "\n".join(out)


def write_reports(
  workdir: Path,
  config: default.Config,
  runs: Sequence[Mapping[str, Any]],
  baselines: Sequence[Mapping[str, Any]],
  budgets: Sequence[models.Budget],
  *,
  final: bool = True,
  wall_s: float | None = None,
) -> dict[str, Any]:
  """Writes ``results.json`` (and, when ``final``, ``table.md`` and the plot)."""
  summary = summarise(runs, baselines) if baselines else None
  results = {
    "config": dataclasses.asdict(config),
    "environment": reporting.environment(),
    "budgets": [{**dataclasses.asdict(b), "mismatch_pct": b.mismatch_pct} for b in budgets],
    "wall_s": wall_s,
    "baselines": list(baselines),
    "summary": summary,
    "runs": list(runs),
  }
  reporting.write_json(workdir / "results.json", results)
  if final and summary is not None and runs:
    (workdir / "table.md").write_text(tables(summary) + "\n")
    reporting.plot_error_vs_budget(
      workdir / "test_error_vs_fc_params.png",
      summary["rows"],
      {m: METHOD_LABELS[m] for m in METHODS},
      baseline=summary["baseline"]["test_error"],
      tuned_baseline=summary["baseline"].get("finetuned_test_error"),
      dense_params=DENSE_FC_PARAMS,
      title=f"MNIST: compressing the FC layer (288 -> 256), "
      f"{config.finetune_epochs} fine-tune epochs ({config.finetune})",
    )
  return results
