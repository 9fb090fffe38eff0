"""The kron_matmul benchmark runs (--quick) and writes its JSON and Markdown."""

from __future__ import annotations

import json
import os

import pytest

BENCHMARKS = os.path.join(os.path.dirname(__file__), os.pardir, os.pardir, "benchmarks")


@pytest.mark.slow
def test_quick_run_writes_results(tmp_path, monkeypatch):
  monkeypatch.syspath_prepend(BENCHMARKS)
  import kron_matmul

  assert kron_matmul.main(["--quick", "--repeats", "1", "--out", str(tmp_path)]) == 0
  stem = tmp_path / "kron_matmul_cpu_float32_quick"
  payload = json.loads(stem.with_suffix(".json").read_text())
  assert payload["environment"]["dtype"] == "float32"
  row = payload["rows"][0]
  assert set(row["results"]) == {"fwd", "fwd+bwd"}
  fwd = row["results"]["fwd"]
  assert {"dense", "materialized", "auto", "materialize"} <= set(fwd)
  assert any(label.startswith("order") for label in fwd)
  assert all(v["ms"] > 0 for v in fwd.values())
  assert row["plan"]["predicted_ms"] > 0
  markdown = stem.with_suffix(".md").read_text()
  assert "| case | batch | mode |" in markdown and "Checks:" in markdown


def test_rows_selects_cases_by_name(monkeypatch):
  monkeypatch.syspath_prepend(BENCHMARKS)
  import kron_matmul

  grid = kron_matmul.GRID
  assert [c.name for c in kron_matmul.select_rows(grid, "targets")] == list(kron_matmul.TARGET_ROWS)
  one = grid[3].name
  assert [c.name for c in kron_matmul.select_rows(grid, one)] == [one]
  assert kron_matmul.select_rows(grid, None) == grid
  with pytest.raises(SystemExit, match="--rows: no case named"):
    kron_matmul.select_rows(grid, "no such row")
