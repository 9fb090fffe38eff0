"""Offset ablation arm: Flax's default initialisation (lecun_normal) instead of Caffe's xavier.

The Baseline, 3 seeds, otherwise the 12-epoch protocol (``_ablation.py``)::

  python examples/mnist/main.py --config=ablation_lecun_init \\
      --workdir=runs/mnist_ablation/lecun_init
"""

from examples.mnist.configs import _ablation


def get_config():
  """The control with kernel_init="lecun_normal"."""
  return _ablation.arm(kernel_init="lecun_normal")
