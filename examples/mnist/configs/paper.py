"""The paper's MNIST protocol: every variant, three seeds, 20 epochs.

Command (from the repository root)::

  python examples/mnist/main.py --config=paper --workdir=/tmp/kfc_mnist_paper

Runtime and hardware: 9 variants x 3 seeds x 20 epochs = 540 epochs; on this
project's 2-core x86 CPU (no accelerator) a Baseline epoch takes about 80 s
(KFC variants a little less), so about 11-12 hours in all, 6-7 hours for the
paper's five variants (``--variants=Baseline,Cut-96,LowRank-96,KFC-II,``
``KFC-Combined``). Split it with ``--variants``/``--seeds`` into separate work
directories to run in parallel. Expected result: test errors near the
paper's (Baseline 0.51%, Cut-96 0.58%, LowRank-96 0.54%, KFC-II 0.76%,
KFC-Combined 0.57%); ``RESULTS.md`` records what we measured.

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
