"""The offset ablation's shared base: the Baseline, 3 seeds, 12 epochs.

``RESULTS.md``'s 12-epoch Baseline (0.63 ± 0.02%) is every arm's control;
each ``ablation_*.py`` changes one thing. Run all arms with ``make
ablation`` (one work directory per arm under ``runs/mnist_ablation/``), or
one with::

  python examples/mnist/main.py --config=ablation_mean \\
      --workdir=runs/mnist_ablation/mean

Runtime: 36 epochs an arm (20 and 40 epochs: 60 and 120), 324 in all, about
2.5-3 CPU hours at 25-30 s an epoch on this project's idle 2-core CPU;
resumable per epoch like every run of this example.
"""

from __future__ import annotations

import dataclasses

from examples.mnist.configs import paper12


def arm(**changes):
  """The control with ``changes`` (config fields) applied."""
  return dataclasses.replace(paper12.get_config(), variants=("Baseline",), **changes)
