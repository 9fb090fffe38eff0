"""Offset ablation arm: the other conv stack the paper's sizes allow (VALID 5x5, 5x5, 3x3, 3x3).

The Baseline, 3 seeds, otherwise the 12-epoch protocol (``_ablation.py``)::

  python examples/mnist/main.py --config=ablation_valid_stack \\
      --workdir=runs/mnist_ablation/valid_stack
"""

from examples.mnist.configs import _ablation


def get_config():
  """The control with conv_stack="valid"."""
  return _ablation.arm(conv_stack="valid")
