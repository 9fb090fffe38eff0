"""The README's KFC example runs as written."""

from __future__ import annotations

import contextlib
import io
import pathlib
import re

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_readme_kfc_example_runs():
  text = README.read_text()
  section = text[text.index("## A KFC layer in a Flax model"):]
  code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
  assert len(code.strip().splitlines()) <= 15
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    exec(compile(code, str(README), "exec"), {})
  lines = out.getvalue().splitlines()
  assert lines[0] == "(8, 10)"
  assert lines[1].startswith("path") and lines[-1].startswith("total")
