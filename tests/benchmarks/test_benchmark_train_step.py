"""The MNIST training-step benchmark runs (--quick) and writes its table."""

from __future__ import annotations

import json
import os

import pytest

BENCHMARKS = os.path.join(os.path.dirname(__file__), os.pardir, os.pardir, "benchmarks")


@pytest.mark.slow
def test_quick_run_writes_results(tmp_path, monkeypatch):
  monkeypatch.syspath_prepend(BENCHMARKS)
  import train_step

  assert train_step.main(["--quick", "--repeats", "1", "--out", str(tmp_path)]) == 0
  stem = tmp_path / "train_step_cpu_float32_quick"
  payload = json.loads(stem.with_suffix(".json").read_text())
  (row,) = payload["rows"]
  assert set(row["ms"]) == set(train_step.QUICK_VARIANTS) and all(v > 0 for v in row["ms"].values())
  assert "KFC-II / Baseline" in stem.with_suffix(".md").read_text()
