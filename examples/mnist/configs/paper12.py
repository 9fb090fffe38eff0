"""The committed table (``RESULTS.md``): all nine variants, 3 seeds, 12 epochs.

Command (from the repository root; ``make paper12`` runs the same)::

  python examples/mnist/main.py --config=paper12 --workdir=runs/mnist_paper12

``paper`` (20 epochs) is the protocol we aimed for; its 540 epochs did not
fit the CPU time we had, so the committed table is this one, 12 epochs for
every variant.

Runtime and hardware: 9 variants x 3 seeds x 12 epochs = 324 epochs, about
2.5-3 hours on this project's 2-core x86 CPU when otherwise idle (25-30 s an
epoch); resumable as ``paper``. Expected result (measured,
``results/results.json``): see ``RESULTS.md`` (Baseline 0.63 ± 0.02%).
"""

from __future__ import annotations

import dataclasses

from examples.mnist.configs import paper


def get_config():
  """``paper`` at 12 epochs."""
  return dataclasses.replace(paper.get_config(), epochs=12)
