"""The KFC paper's SVHN numbers (Zhou & Wu, arXiv 1507.05775).

How our variants reach them: docs/DESIGN.md, "KFC formulations".

``layer_params``/``model_params`` as printed (rounded), ``None`` where our
copy gives none; :func:`paper_points` fills those from the definitions for
the plot and marks them derived.
"""

from __future__ import annotations

from typing import Any

PAPER: dict[str, dict[str, Any]] = {
  "Baseline": {"layer_params": 1_640_000, "model_params": 2_200_000, "test_error": 2.57},
  "LowRank-128": {"layer_params": None, "model_params": None, "test_error": 3.02},
  "KFC-II": {
    "layer_params": 16_000,
    "layer_reduction": 99.0,
    "model_params": None,
    "test_error": 3.33,
  },
  "KFC-Combined": {
    "layer_params": 340_000,
    "layer_reduction": 79.3,
    "model_params": None,
    "test_error": 2.60,
  },
  "KFC-Rank-10": {
    "layer_params": 170_000,
    "layer_reduction": 89.6,
    "model_params": None,
    "test_error": 3.19,
  },
}


def paper_points(counts: dict[str, dict[str, int]]) -> list[dict[str, Any]]:
  """The paper's points for the plot; missing counts taken from ``counts``.

  Args:
    counts: variant -> our ``{"layer": ..., "model": ...}`` counts (the same
      definitions as the paper's), used where the paper prints none.
  """
  base = PAPER["Baseline"]
  points = []
  for variant, p in PAPER.items():
    ours = counts.get(variant)
    derived = []
    layer, model = p["layer_params"], p["model_params"]
    if layer is None and ours is not None:
      layer, derived = ours["layer"], [*derived, "layer_params"]
    if model is None and layer is not None:
      # The paper's model count: its baseline's, less what the layer saves.
      model = base["model_params"] - base["layer_params"] + layer
      derived.append("model_params")
    if layer is None:
      continue
    points.append(
      {
        "variant": variant,
        "layer_params": layer,
        "model_params": model,
        "test_error": p["test_error"],
        "derived": derived,
      }
    )
  return points
