"""Offset ablation arm: training length 20 epochs (cosine over 20).

The Baseline, 3 seeds, otherwise the 12-epoch protocol (``_ablation.py``)::

  python examples/mnist/main.py --config=ablation_epochs20 \\
      --workdir=runs/mnist_ablation/epochs20
"""

from examples.mnist.configs import _ablation


def get_config():
  """The control with epochs=20."""
  return _ablation.arm(epochs=20)
