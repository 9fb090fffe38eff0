"""The committed table (``RESULTS.md``): the paper's five variants, 12 epochs.

Command (from the repository root; ``make paper12`` runs the same)::

  python examples/mnist/main.py --config=paper12 --workdir=runs/mnist_paper12

Runtime and hardware: 5 variants x 3 seeds x 12 epochs = 180 epochs, 2-3
hours on this project's 2-core x86 CPU when otherwise idle; resumable as
``paper``. Expected result (measured, ``results/results.json``): Baseline
0.63 ± 0.02%, Cut-96 0.73 ± 0.04, LowRank-96 0.69 ± 0.02, KFC-II 0.83 ±
0.05, KFC-Combined 0.70 ± 0.03.
"""

from __future__ import annotations

import dataclasses

from examples.mnist import models
from examples.mnist.configs import paper


def get_config():
  """``paper`` at 12 epochs, for the paper's five variants."""
  return dataclasses.replace(paper.get_config(), variants=models.PAPER_VARIANTS, epochs=12)
