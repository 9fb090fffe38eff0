"""examples/compress_mnist/data_aware.py: one tiny run of every method."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
  sys.path.insert(0, str(REPO))

# pylint: disable=g-import-not-at-top,wrong-import-position
from examples._common import tfds_data  # noqa: E402
from examples.compress_mnist import data_aware, models  # noqa: E402

# pylint: enable=g-import-not-at-top,wrong-import-position


def _split(rng, n):
  return (
    rng.integers(0, 256, (n, 28, 28, 1), dtype=np.uint8),
    rng.integers(0, 10, n).astype(np.int32),
  )


def test_methods_run_and_the_data_aware_fit_lowers_the_output_error(monkeypatch, tmp_path):
  rng = np.random.default_rng(0)
  data = tfds_data.Splits(_split(rng, 64), _split(rng, 32), _split(rng, 16))
  baseline = models.create_baseline(seed=0)
  monkeypatch.setattr(models, "restore_baseline", lambda *a, **k: baseline)
  monkeypatch.setattr(models, "checkpoint_path", lambda *a, **k: tmp_path)
  args = data_aware.parse_args(
    [
      "--workdir",
      str(tmp_path),
      "--baseline_checkpoint",
      str(tmp_path),
      "--kfc_ranks",
      "2",
      "--finetune_epochs",
      "1",
      "--batch_size",
      "16",
      "--calibration_images",
      "64",
      "--methods",
      "kfc_nkp,kfc_nkp_data,auto",
    ]
  )
  results = data_aware.run(args, data=data)
  rows = {r["method"]: r for r in results["rows"]}
  assert sorted(rows) == ["auto", "kfc_nkp", "kfc_nkp_data"]
  plain, aware = rows["kfc_nkp"], rows["kfc_nkp_data"]
  assert plain["calibration_output_error"] is None
  # Fitted to the outputs on the calibration images, it does better on the
  # held-out validation images than the weight-only fit.
  assert aware["validation_output_error"] < plain["validation_output_error"]
  assert rows["auto"]["choice"].startswith("chose")
  assert rows["auto"]["fc_params"] <= rows["kfc_nkp"]["fc_params"]
  assert all(np.isfinite(r["test_error"]) for r in results["rows"])
  assert "| KFC-II, data-aware |" in data_aware.table(results)
