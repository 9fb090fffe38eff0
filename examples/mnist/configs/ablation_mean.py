"""Offset ablation arm: Caffe-style input: [0, 1] less the training set's mean pixel.

The Baseline, 3 seeds, otherwise the 12-epoch protocol (``_ablation.py``)::

  python examples/mnist/main.py --config=ablation_mean \\
      --workdir=runs/mnist_ablation/mean
"""

from examples.mnist.configs import _ablation


def get_config():
  """The control with input_scaling="mean"."""
  return _ablation.arm(input_scaling="mean")
