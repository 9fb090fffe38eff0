"""Default configuration: the paper's SVHN variants, one short epoch.

Command (from the repository root)::

  python examples/svhn/main.py --workdir=/tmp/kfc_svhn --manual_dir=DIR

``DIR`` holds ``train_32x32.mat``, ``test_32x32.mat`` and ``extra_32x32.mat``
(or drop ``--manual_dir`` where TFDS can download them). SVHN is not
available on this project's machines, so this configuration has not been
timed here; the 2.2M-parameter CNN does about 6x the MNIST net's work per
image on 1.35x as many images, so expect several minutes per epoch and
variant on a laptop CPU.
"""

from __future__ import annotations

import dataclasses

from examples._common import configs
from examples.svhn import models


@dataclasses.dataclass(frozen=True)
class Config(configs.TrainConfig):
  """The MNIST protocol's configuration with SVHN's defaults.

  The fields are ``examples/_common/configs.py``'s ``TrainConfig``;
  ``manual_dir`` holds the three SVHN ``.mat`` files and ``num_validation``
  is taken from the end of SVHN's ``train`` split. This example writes no
  checkpoints (``save_checkpoints`` is ignored).
  """

  variants: tuple[str, ...] = models.PAPER_VARIANTS
  epochs: int = 1
  num_validation: int = 6_000
  save_checkpoints: bool = False


def get_config() -> Config:
  """The default configuration."""
  return Config()
