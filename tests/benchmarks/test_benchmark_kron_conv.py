"""The kron_conv benchmark runs (--quick) and writes its JSON and Markdown."""

from __future__ import annotations

import json
import os
import sys

import pytest

BENCHMARKS = os.path.join(os.path.dirname(__file__), os.pardir, os.pardir, "benchmarks")


@pytest.mark.slow
def test_quick_run_writes_results(tmp_path, monkeypatch):
  monkeypatch.syspath_prepend(BENCHMARKS)
  monkeypatch.setattr(sys, "argv", ["kron_conv.py", "--quick"])
  import kron_conv

  assert kron_conv.main(["--quick", "--repeats", "1", "--out", str(tmp_path)]) == 0
  stem = tmp_path / "kron_conv_cpu_float32_quick"
  payload = json.loads(stem.with_suffix(".json").read_text())
  assert payload["environment"]["dtype"] == "float32"
  row = payload["rows"][0]
  assert set(row["results"]) == {"fwd", "fwd+bwd"}
  assert set(row["results"]["fwd"]) == {"dense", "materialized", "factored"}
  assert all(v["ms"] > 0 for v in row["results"]["fwd"].values())
  assert "| layer | split |" in stem.with_suffix(".md").read_text()
