"""The KFC paper's MNIST numbers (Zhou & Wu, arXiv 1507.05775).

How our variants reach them: docs/DESIGN.md, "KFC formulations".

``layer_params`` and ``model_params`` are as printed (rounded, e.g. 74.0K),
``None`` where our copy of the paper gives none. For the plot, the missing
counts are derived from the definitions (:func:`paper_points`) and marked.
"""

from __future__ import annotations

from typing import Any

_FC_IN = 288  # 3 * 3 * 32
_FC_OUT = 256
_CLASSES = 10

# variant -> what the paper reports.
PAPER: dict[str, dict[str, Any]] = {
  "Baseline": {"layer_params": 74_000, "model_params": 99_500, "test_error": 0.51},
  "Cut-96": {"layer_params": None, "model_params": None, "test_error": 0.58},
  "LowRank-96": {"layer_params": None, "model_params": None, "test_error": 0.54},
  "KFC-II": {
    "layer_params": 2_100,
    "layer_reduction": 97.2,
    "model_params": None,
    "test_error": 0.76,
  },
  "KFC-Combined": {
    "layer_params": 27_000,
    "layer_reduction": 63.5,
    "model_params": None,
    "test_error": 0.57,
  },
}


def _derived_layer_params(variant: str) -> int | None:
  """Layer parameters from the definitions, for the points the paper omits."""
  if variant.startswith("Cut-"):
    k = int(variant.split("-")[1])
    return _FC_IN * k + k
  if variant.startswith("LowRank-"):
    k = int(variant.split("-")[1])
    return _FC_IN * k + k * _FC_OUT + _FC_OUT
  return None


def paper_points() -> list[dict[str, Any]]:
  """The paper's points for the plot, with derived counts where it has none.

  A derived model count is the paper's baseline (99.5K) with its FC layer
  (74.0K) replaced by the variant's layer, and for Cut-k the classifier
  shrunk from 256 to k inputs.

  Returns:
    Dicts with ``variant``, ``layer_params``, ``model_params``,
    ``test_error`` and ``derived`` (which of the two counts are derived).
  """
  base = PAPER["Baseline"]
  points = []
  for variant, p in PAPER.items():
    derived = []
    layer = p["layer_params"]
    if layer is None:
      layer = _derived_layer_params(variant)
      derived.append("layer_params")
    model = p["model_params"]
    if model is None:
      model = base["model_params"] - base["layer_params"] + layer
      if variant.startswith("Cut-"):
        k = int(variant.split("-")[1])
        model -= (_FC_OUT - k) * _CLASSES
      derived.append("model_params")
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
