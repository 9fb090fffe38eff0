"""The KDL paper's MNIST protocol: 20 epochs of each MLP.

Command (from the repository root)::

  python examples/kdl_mnist/main.py --config=paper --workdir=/tmp/kdl_paper

The paper's optimizer and batch size are not in our copy; we keep Adam (1e-3)
at batch 128 and decay it with a cosine over the 20 epochs.
"""

from __future__ import annotations

import dataclasses

from examples.kdl_mnist.configs import default


def get_config() -> default.Config:
  """The full protocol."""
  return dataclasses.replace(default.get_config(), epochs=20, seeds=(0, 1, 2), lr_schedule="cosine")
