"""The conv-plan benchmark runs (--quick) and writes its JSON and Markdown."""

from __future__ import annotations

import json
import os

import pytest

BENCHMARKS = os.path.join(os.path.dirname(__file__), os.pardir, os.pardir, "benchmarks")


@pytest.mark.slow
def test_quick_run_writes_results(tmp_path, monkeypatch):
  monkeypatch.syspath_prepend(BENCHMARKS)
  import conv_plans

  assert conv_plans.main(["--quick", "--repeats", "1", "--out", str(tmp_path)]) == 0
  stem = tmp_path / "conv_plans_cpu_float32_quick"
  payload = json.loads(stem.with_suffix(".json").read_text())
  assert [r["variant"] for r in payload["rows"]] == ["KConv-ch2", "KConv-sp"]
  row = payload["rows"][0]
  assert row["pick"] in ("factored", "materialize")
  assert set(row["ms"]) == {
    f"{mode} {s}" for mode in ("fwd", "fwd+bwd") for s in ("factored", "materialize", "autotune")
  }
  assert all(v > 0 for v in row["ms"].values())
  (floor,) = payload["floor"]
  assert floor["ns_per_pixel"] > 0
  assert "| net | layer | variant |" in stem.with_suffix(".md").read_text()
