"""The one-core-vs-all-cores benchmark runs (--quick) and writes its JSON and Markdown."""

from __future__ import annotations

import json
import os

import pytest

BENCHMARKS = os.path.join(os.path.dirname(__file__), os.pardir, os.pardir, "benchmarks")


@pytest.mark.slow
def test_quick_run_writes_results(tmp_path, monkeypatch):
  monkeypatch.syspath_prepend(BENCHMARKS)
  import cpu_threads

  args = ["--quick", "--trials", "1", "--repeats", "1", "--out", str(tmp_path)]
  assert cpu_threads.main(args) == 0
  stem = tmp_path / "cpu_threads_float32_quick"
  payload = json.loads(stem.with_suffix(".json").read_text())
  cores = payload["cores"]
  assert set(payload["runs"]) == {"1", str(cores)}
  for rows in payload["runs"].values():
    (row,) = rows
    for mode in ("fwd", "fwd+bwd"):
      assert set(row[mode]) == {"dense", "einsum", "auto", "unblocked"}
      assert all(ms > 0 for ms in row[mode].values())
  assert "| case | mode | competitor |" in stem.with_suffix(".md").read_text()


def test_median_of_trials(monkeypatch):
  monkeypatch.syspath_prepend(BENCHMARKS)
  import cpu_threads

  trial = lambda t: [{"case": "c", "fwd": {"auto": t}, "fwd+bwd": {"auto": 2 * t}}]
  (row,) = cpu_threads._median_of_trials([trial(1.0), trial(5.0), trial(2.0)])
  assert row["fwd"] == {"auto": 2.0} and row["fwd+bwd"] == {"auto": 4.0}
