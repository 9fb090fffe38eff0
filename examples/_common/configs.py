"""The examples' configs: the fields they share, and loading one by name."""

from __future__ import annotations

import dataclasses
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
      names = sorted(p.stem for p in configs_dir.glob("*.py") if not p.stem.startswith("_"))
      raise ValueError(
        f"Unknown config {spec!r}; use one of {names} or a path to a .py file with get_config()."
      )
    return importlib.import_module(f"examples.{example}.configs.{spec}")
  if not path.is_file() and (example_dir / path).is_file():
    path = example_dir / path  # e.g. configs/paper.py
  if not path.is_file():
    raise ValueError(f"Config file {spec!r} does not exist.")
  module_spec = importlib.util.spec_from_file_location(f"_{example}_config_{path.stem}", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """What a variant-and-seed example (MNIST, SVHN, KDL) runs; the defaults
  are the KFC paper's MNIST protocol, shortened.

  Attributes:
    variants: the model variants to train (the example's ``models.VARIANTS``).
    seeds: one run per variant and seed (initialisation, dropout, shuffling).
    epochs: passes over the training images.
    batch_size: global training batch; a multiple of the device count.
    eval_batch_size: global evaluation batch; a multiple of the device count.
    learning_rate: Adam's step size (the peak, with a schedule).
    lr_schedule: ``"constant"`` or ``"cosine"`` (decay to zero over the run).
    weight_decay: coupled L2 decay added to the gradient before Adam, as in the
      paper's Caffe solver (``weight_decay: 1e-4``); not AdamW.
    dropout_rate: dropout on the FC/KFC layer's output (CNNs only).
    num_validation: the last this-many training images are the validation
      set used to pick the epoch whose parameters are tested.
    data_dir: TFDS data directory (``None``: TFDS's default).
    manual_dir: directory with the dataset's original files for offline
      preparation (``None``: the example's default; for MNIST
      ``$KFC_JAX_MNIST_DIR``, else ``../shared/data/mnist`` next to the
      repository when it exists).
    download: whether TFDS may download the dataset when it is not prepared.
    save_checkpoints: write the best-validation parameters of each run with
      orbax under ``<workdir>/checkpoints/<variant>/seed_<seed>`` (where the
      example supports it).
    prefetch: batches kept in flight by the input pipeline.
    progress: show a progress bar with running loss and accuracy.
    log_every: steps between refreshes of the running loss and accuracy
      shown on the progress bar.
  """

  variants: tuple[str, ...] = ()
  seeds: tuple[int, ...] = (0,)
  epochs: int = 2
  batch_size: int = 128
  eval_batch_size: int = 1000
  learning_rate: float = 1e-3
  lr_schedule: str = "constant"
  weight_decay: float = 1e-4
  dropout_rate: float = 0.5
  num_validation: int = 10_000
  data_dir: str | None = None
  manual_dir: str | None = None
  download: bool = True
  save_checkpoints: bool = True
  prefetch: int = 2
  progress: bool = True
  log_every: int = 50
