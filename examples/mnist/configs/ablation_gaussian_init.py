"""Offset ablation arm: Caffe's gaussian filler, std 0.01, instead of its xavier.

The Baseline, 3 seeds, otherwise the 12-epoch protocol (``_ablation.py``)::

  python examples/mnist/main.py --config=ablation_gaussian_init \\
      --workdir=runs/mnist_ablation/gaussian_init
"""

from examples.mnist.configs import _ablation


def get_config():
  """The control with kernel_init="gaussian_0.01"."""
  return _ablation.arm(kernel_init="gaussian_0.01")
