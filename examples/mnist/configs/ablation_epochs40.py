"""Offset ablation arm: training length 40 epochs (cosine over 40).

The Baseline, 3 seeds, otherwise the 12-epoch protocol (``_ablation.py``)::

  python examples/mnist/main.py --config=ablation_epochs40 \\
      --workdir=runs/mnist_ablation/epochs40
"""

from examples.mnist.configs import _ablation


def get_config():
  """The control with epochs=40."""
  return _ablation.arm(epochs=40)
