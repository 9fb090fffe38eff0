"""The KDL paper's MNIST numbers (Hogue, Kirby & Narayan, arXiv 2204.04273)."""

from __future__ import annotations

from typing import Any

# variant -> what the paper reports (20 epochs, raw pixels).
PAPER: dict[str, dict[str, Any]] = {
  "Dense": {"model_params": 1_240_000, "test_accuracy": 97.72, "epochs": 20},
  "KDL-Rank-1": {"model_params": 6_534, "test_accuracy": 96.94, "epochs": 20},
}
