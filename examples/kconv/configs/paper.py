"""The full protocol: every variant of both CNNs, three seeds, 12 epochs.

Command (from the repository root)::

  python examples/kconv/main.py --config=paper --workdir=runs/kconv_paper

Runtime and hardware: 2 architectures x 7 variants x 3 seeds x 12 epochs on
all 50,000 training images. On this project's 2-core x86 CPU a ``paper``
epoch takes about 30 s alone and a ``wide`` one several minutes (its dense
net does 145 MFLOPs an image), so plan on a day; split it with
``--architectures``/``--variants``/``--seeds`` into separate work
directories. Every run saves its state after each epoch and resumes there.
Expected result: test errors within about 1 point of the dense net for the
Kronecker variants with fewer FLOPs, as the KConv paper reports (under 1%
drop at 3.3x speed or 3.6x fewer parameters).

Protocol: the KFC paper's MNIST one (Adam 1e-3 with cosine decay, coupled
weight decay 1e-4, dropout 0.5 on the ``paper`` net's FC layer, the last
10,000 training images as validation, the test error of the best-validation
epoch); the KConv paper's own schedule is not given in the copy we hold.
"""

from __future__ import annotations

import dataclasses

from examples.kconv.configs import default


def get_config() -> default.Config:
  """The full protocol."""
  return dataclasses.replace(
    default.get_config(),
    seeds=(0, 1, 2),
    epochs=12,
    lr_schedule="cosine",
    train_subset=None,
    time_rounds=31,
  )
