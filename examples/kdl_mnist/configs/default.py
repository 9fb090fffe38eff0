"""Default configuration: the KDL paper's two MLPs, shortened to minutes.

Command (from the repository root)::

  python examples/kdl_mnist/main.py --workdir=/tmp/kdl_mnist

Runtime and expected result: see ``RESULTS.md`` (measured on this project's
shared 2-core x86 CPU).
"""

from __future__ import annotations

import dataclasses

from examples.kdl_mnist import models


@dataclasses.dataclass(frozen=True)
class Config:
  """Everything a run of ``train.train_and_evaluate`` depends on.

  The step and loop settings have the meaning of the MNIST example's
  (``examples/mnist/configs/default.py``), whose steps this example reuses.

  Attributes:
    variants: ``"Dense"`` and/or ``"KDL-Rank-<r>"``.
    seeds: one run per variant and seed (initialisation, shuffling).
    epochs: passes over the 50,000 training images.
    batch_size: global training batch; a multiple of the device count.
    eval_batch_size: global evaluation batch; a multiple of the device count.
    learning_rate: Adam's step size (the peak, with a schedule).
    lr_schedule: ``"constant"`` or ``"cosine"``.
    weight_decay: coupled L2 decay (0: plain Adam).
    num_validation: the last this-many training images pick the tested epoch.
    data_dir: TFDS data directory (``None``: TFDS's default).
    manual_dir: the four original MNIST files for offline preparation.
    download: whether TFDS may download MNIST when it is not prepared.
    prefetch: batches kept in flight by the input pipeline.
    progress: show a progress bar.
    log_every: steps between refreshes of the progress bar's numbers.
  """

  variants: tuple[str, ...] = models.PAPER_VARIANTS
  seeds: tuple[int, ...] = (0,)
  epochs: int = 3
  batch_size: int = 128
  eval_batch_size: int = 1000
  learning_rate: float = 1e-3
  lr_schedule: str = "constant"
  weight_decay: float = 0.0
  num_validation: int = 10_000
  data_dir: str | None = None
  manual_dir: str | None = None
  download: bool = True
  prefetch: int = 2
  progress: bool = True
  log_every: int = 50


def get_config() -> Config:
  """The default configuration."""
  return Config()
