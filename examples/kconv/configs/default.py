"""Default configuration: every KConv variant of both CNNs, one short epoch.

Command (from the repository root)::

  python examples/kconv/main.py --workdir=/tmp/kconv

Runtime and hardware: 2 architectures x 7 variants x 1 seed x 1 epoch on a
10,000-image training subset, plus the interleaved timings. On this
project's 2-core x86 CPU shared with about eight other jobs, the ``paper``
half took 24 minutes (8 of timings, then 1.5-2 minutes a variant); the
``wide`` half was not run (its dense net does 37x the FLOPs an image).
Expected result (``paper``, measured): dense 6.8% test error, Kronecker
variants 9.1-10.3% (``RESULTS.md``); a first table, not the paper's
accuracy (``configs/paper.py`` is the full protocol).
"""

from __future__ import annotations

import dataclasses

from examples._common import configs
from examples.kconv import models


@dataclasses.dataclass(frozen=True)
class Config(configs.TrainConfig):
  """``TrainConfig``'s fields (the KFC MNIST protocol) and the KConv ones.

  Attributes:
    dataset: ``"mnist"`` or ``"svhn"`` (``manual_dir`` then holds SVHN's
      ``.mat`` files, as for ``examples/svhn``).
    architectures: keys of ``models.ARCHITECTURES``; every variant is
      trained on each.
    train_subset: train on the first this-many training images only
      (``None``: all); a short run's knob, reported with the results.
    time_batch: batch size of the interleaved inference and training-step
      timings (``0``: no timings).
    time_rounds: interleaved rounds of the timings (the median is kept).
    train: train the networks (``False``: costs and timings only).
  """

  variants: tuple[str, ...] = tuple(models.VARIANTS)
  dataset: str = "mnist"
  architectures: tuple[str, ...] = ("paper", "wide")
  epochs: int = 1
  train_subset: int | None = 10_000
  time_batch: int = 128
  time_rounds: int = 15
  train: bool = True


def get_config() -> Config:
  """The default configuration."""
  return Config()
