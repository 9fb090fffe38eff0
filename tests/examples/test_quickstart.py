"""Executes examples/quickstart.ipynb on tiny settings (``KFC_QUICKSTART_TINY``).

The kernel is this interpreter, registered in a temporary Jupyter path (no
user-wide kernelspec is installed).
"""

from __future__ import annotations

import re
from pathlib import Path

import nbclient
import nbformat
from ipykernel import kernelspec

NOTEBOOK = Path(__file__).resolve().parents[2] / "examples" / "quickstart.ipynb"


def _text(cell) -> str:
  parts = []
  for out in cell.get("outputs", []):
    if out.get("output_type") == "stream":
      parts.append(out["text"])
    elif "data" in out:
      parts.append(out["data"].get("text/plain", ""))
  return "".join(parts)


def test_quickstart_runs_on_tiny_settings(tmp_path, monkeypatch):
  kernelspec.install(kernel_name="kfc-quickstart", prefix=str(tmp_path))
  monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "share" / "jupyter"))
  monkeypatch.setenv("KFC_QUICKSTART_TINY", "1")  # The kernel inherits it.
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  nb = nbformat.read(NOTEBOOK, as_version=4)
  assert nb.metadata.kernelspec.name == "python3"  # What Colab runs.
  client = nbclient.NotebookClient(
    nb, kernel_name="kfc-quickstart", timeout=120, resources={"metadata": {"path": str(tmp_path)}}
  )
  client.execute()  # Raises CellExecutionError on any failing cell.

  code = [c for c in nb.cells if c.cell_type == "code"]
  install, out = code[0], "\n".join(_text(c) for c in code)
  assert "pip install" in install.source and "except ImportError" in install.source
  assert not _text(install)  # kfc_jax is importable here: nothing installed.
  assert "logits: (2, 10)" in out
  assert "FC layer: dense 401,664 params, KFC 2,500" in out  # 2,244 + bias.
  accuracies = re.findall(r"test accuracy (\d+\.\d)%", out)
  assert len(accuracies) == 2
  errors = [float(e) for e in re.findall(r"relative error (\d\.\d+)", out)]
  assert len(errors) == 3 and all(0 < e < 1 for e in errors)
  assert errors[1] < errors[0]  # Rank 8 is closer than rank 1.
  assert re.search(r"compressed \d+\.\d%", out)
  assert re.search(r"fine-tuned compressed model: accuracy \d+\.\d%", out)
