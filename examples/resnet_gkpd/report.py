"""The experiment's report: its phases as a table, the GKPD paper's numbers."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# The GKPD paper's ResNet-32 on CIFAR-10 (Hameed et al. 2022, Table 3).
PAPER = {
  "model": "ResNet-32",
  "dataset": "CIFAR-10",
  "dense_accuracy": 92.55,
  "compression": 5.0,
  "compressed_accuracy": 91.52,
}


def markdown(results: Mapping[str, Any]) -> str:
  """The phases as a Markdown table, the GKPD paper's numbers below."""
  lines = [
    "| phase | test accuracy % | params | block-conv params | "
    "train (or compress) s | test eval s |",
    "|---|---|---|---|---|---|",
  ]
  dense = results["phases"][0]
  for p in results["phases"]:
    ratio = dense["conv_params"] / p["conv_params"]
    lines.append(
      f"| {p['phase']} | {p['test_accuracy']:.2f} | "
      f"{p['params']:,} | {p['conv_params']:,} ({ratio:.2f}x) | "
      f"{p['seconds']:.1f} | {p['eval_seconds']:.1f} |"
    )
  paper = results["paper"]
  lines += [
    "",
    f"GKPD paper ({paper['model']}, {paper['dataset']}): "
    f"{paper['dense_accuracy']}% dense, {paper['compressed_accuracy']}%"
    f" at {paper['compression']:g}x after fine-tuning.",
  ]
  return "\n".join(lines) + "\n"
