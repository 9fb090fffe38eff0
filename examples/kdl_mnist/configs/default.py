"""Default configuration: the KDL paper's two MLPs, shortened to minutes.

Command (from the repository root)::

  python examples/kdl_mnist/main.py --workdir=/tmp/kdl_mnist

Runtime and expected result: see ``RESULTS.md`` (measured on this project's
shared 2-core x86 CPU).
"""

from __future__ import annotations

import dataclasses

from examples._common import configs
from examples.kdl_mnist import models


@dataclasses.dataclass(frozen=True)
class Config(configs.TrainConfig):
  """Everything a run of ``train.train_and_evaluate`` depends on.

  The fields are ``examples/_common/configs.py``'s ``TrainConfig``, with
  ``variants`` ``"Dense"`` and/or ``"KDL-Rank-<r>"``, plain Adam (no weight
  decay) and 3 epochs. The MLPs have no dropout (``dropout_rate`` is
  ignored) and this example writes no checkpoints.
  """

  variants: tuple[str, ...] = models.PAPER_VARIANTS
  epochs: int = 3
  weight_decay: float = 0.0
  save_checkpoints: bool = False


def get_config() -> Config:
  """The default configuration."""
  return Config()
