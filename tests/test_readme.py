"""The README's KFC example runs as written."""

from __future__ import annotations

import contextlib
import io
import pathlib
import re

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def _run_section(heading: str) -> list[str]:
  """Runs the first Python block after ``heading``; returns its printed lines."""
  text = README.read_text()
  section = text[text.index(heading) :]
  code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
  assert len(code.strip().splitlines()) <= 16
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    exec(compile(code, str(README), "exec"), {})
  return out.getvalue().splitlines()


def test_readme_kfc_example_runs():
  lines = _run_section("## A KFC layer in a Flax model")
  assert lines[0] == "(8, 10)"
  assert lines[1].startswith("path") and lines[-1].startswith("total")


def test_readme_compress_example_runs():
  lines = _run_section("## Compress a trained model")
  assert lines[0].startswith("path") and lines[-1] == "(4, 10)"
  row = next(line for line in lines if line.startswith("fc1"))
  # The budget picks the split with the lowest error (issue 10), and says so.
  assert "KroneckerLinear" in row and "65,792" in row
  assert any(line.startswith("fc1: chose kronecker") for line in lines)
