"""The paper's MNIST protocol: all nine variants, three seeds, 20 epochs.

Command (from the repository root; ``make paper`` runs the same)::

  python examples/mnist/main.py --config=paper --workdir=runs/mnist_paper

The nine rows (``models.ALL_VARIANTS``): Baseline, Cut-96, LowRank-96,
KFC-I, KFC-II, KFC-III, KFC-IV, KFC-Combined and KFC-Rank-10 (KFC-II's
shapes at rank 10: the paper's SVHN rank row, 20,840 weights).

Runtime and hardware: 9 variants x 3 seeds x 20 epochs = 540 epochs; on this
project's 2-core x86 CPU (no accelerator) an epoch takes about 25-30 s when
the machine is otherwise idle and up to 6 min when eight jobs share it, so
4-5 hours idle. Every run saves its state after each epoch
(``<workdir>/resume/``) and, started again, resumes there, so the protocol
can be run in parts; split it with ``--variants``/``--seeds`` (same work
directory, one process at a time, or separate ones run in parallel).
Expected result: test errors near the paper's (Baseline 0.51%, Cut-96 0.58%,
LowRank-96 0.54%, KFC-II 0.76%, KFC-Combined 0.57%); ``RESULTS.md`` records
what we measured.

Protocol (Zhou & Wu, Section 4): Adam with weight decay 1e-4, dropout 0.5 on
the FC/KFC layer, the last 10,000 training images held out for validation,
and the test error of the epoch with the lowest validation error. The paper
gives neither the number of epochs nor a learning-rate schedule; we use 20
epochs of Adam (1e-3) with cosine decay.
"""

from __future__ import annotations

import dataclasses

from examples.mnist import models
from examples.mnist.configs import default


def get_config() -> default.Config:
  """The full protocol."""
  return dataclasses.replace(
    default.get_config(),
    variants=models.ALL_VARIANTS,
    seeds=(0, 1, 2),
    epochs=20,
    lr_schedule="cosine",
  )
