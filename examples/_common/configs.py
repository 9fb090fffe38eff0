"""Loading an example's Python config (Flax-example style)."""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path
from types import ModuleType


def load_config_module(spec: str, example: str) -> ModuleType:
  """The config module ``spec`` of ``examples.<example>``.

  Args:
    spec: a config name in ``examples/<example>/configs`` (``default``,
      ``paper``, ...), or a path to a ``.py`` file with ``get_config()``
      (absolute, relative to the working directory, or to the example).
    example: the example's directory name, e.g. ``"mnist"``.

  Returns:
    The imported module.

  Raises:
    ValueError: an unknown name (the message lists the valid ones) or a
      missing file.
  """
  example_dir = Path(__file__).resolve().parents[1] / example
  configs_dir = example_dir / "configs"
  path = Path(spec)
  if path.suffix != ".py":
    if not (configs_dir / f"{spec}.py").is_file():
      names = sorted(p.stem for p in configs_dir.glob("*.py")
                     if not p.stem.startswith("_"))
      raise ValueError(f"Unknown config {spec!r}; use one of {names} or a "
                       "path to a .py file with get_config().")
    return importlib.import_module(f"examples.{example}.configs.{spec}")
  if not path.is_file() and (example_dir / path).is_file():
    path = example_dir / path  # e.g. configs/paper.py
  if not path.is_file():
    raise ValueError(f"Config file {spec!r} does not exist.")
  module_spec = importlib.util.spec_from_file_location(
      f"_{example}_config_{path.stem}", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module
