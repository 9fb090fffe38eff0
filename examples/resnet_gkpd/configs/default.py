"""Default configuration: ResNet-20, a short dense run, GKPD at 5x, fine-tune.

Command (from the repository root)::

  python examples/resnet_gkpd/main.py --dataset=mnist --num_train=10000 \
      --workdir=/tmp/resnet_gkpd

Runtime, hardware and result (``examples/resnet_gkpd/RESULTS.md``): with
``--dataset=mnist --num_train=10000`` (ResNet-20, 2 epochs + 1 fine-tune
epoch) the run took 22 minutes on this project's 2-core x86 CPU, shared with
other jobs (no accelerator), and reached 98.14% test accuracy dense, 10.28%
right after 5x GKPD compression of the block convs and 95.39% after
fine-tuning. The GKPD paper's setting (ResNet-32 on CIFAR-10, fully
trained) is closer to ``--dataset=cifar10 --depth=32 --epochs=200
--finetune_epochs=200`` (200 epochs is a standard CIFAR schedule, our
choice), which needs an accelerator.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Config:
  """Everything a run of ``train.train_and_evaluate`` depends on.

  Attributes:
    dataset: ``"cifar10"`` (TFDS) or ``"mnist"`` (padded to 32x32).
    depth: ResNet depth ``6n + 2`` (20, 32, ...).
    num_train: train on the first this-many training images (``None``: all).
    epochs: dense training epochs.
    finetune_epochs: epochs of fine-tuning after compression.
    batch_size: training batch; a multiple of the device count.
    eval_batch_size: evaluation batch; a multiple of the device count.
    learning_rate: SGD's peak step size for dense training (cosine decay to
      zero over the run, after ``warmup_steps`` of linear warm-up).
    finetune_learning_rate: the same for fine-tuning.
    warmup_steps: linear warm-up steps of each run (clipped to half its
      length).
    momentum: SGD (Nesterov) momentum.
    weight_decay: coupled L2 decay added to the gradient before momentum.
    compression: target ratio of dense to Kronecker parameters of each block
      conv (the 3x3 convs inside residual blocks; the stem conv and the
      classifier stay dense).
    split: how the Kronecker shapes are chosen: ``"suggest"`` --
      ``kfc_jax.suggest_conv_factors`` searches every split of each trained
      kernel for the smallest GKPD error within the budget (as the GKPD
      paper searches its configurations); ``"blocks"`` -- 4x4 channel blocks,
      ``A: [3, 3, C_in/4, C_out/4] (x) B: [1, 1, 4, 4]``, at the rank nearest
      the budget (3 for every ResNet width at 5x).
    augment: random crops (and, for CIFAR-10, horizontal flips) of the
      training images.
    seed: initialisation, shuffling and augmentation.
    data_dir: TFDS data directory (``None``: TFDS's default).
    manual_dir: directory with the dataset's original files for offline
      preparation (see ``input_pipeline.py``).
    download: whether TFDS may download the dataset when it is not prepared.
    prefetch: batches kept in flight by the input pipeline.
    progress: show a progress bar with running loss and accuracy.
    log_every: steps between refreshes of the progress bar's metrics.
    calibration_batches: batches of ``batch_size`` training images (drawn
      once with ``seed``, not augmented) on which ``recovery.py`` collects
      the block convs' input covariances (data-aware GKPD) and refits the
      BatchNorm statistics.
    distill_steps: steps of distillation fine-tuning from the dense parent
      in ``recovery.py`` (batches of ``batch_size`` augmented training
      images; the same batches for every compressed model).
    distill_learning_rate: peak step size of that fine-tuning (the same
      SGD recipe as training, warm-up and cosine decay over its steps).
    distill_temperature: softening of both logits in the distillation loss.
    distill_label_weight: weight of the hard-label cross-entropy in that
      loss (0: the teacher's logits only).
    data_aware_splits: how data-aware GKPD picks each conv's split:
      ``"search"`` -- ``kfc_jax.compress(..., calibration=)`` searches the
      splits by output error; ``"weight-only"`` -- it fits at the splits and
      ranks the weight-only search chose (one fit per layer, much cheaper).
  """

  dataset: str = "cifar10"
  depth: int = 20
  num_train: int | None = None
  epochs: int = 2
  finetune_epochs: int = 1
  batch_size: int = 128
  eval_batch_size: int = 500
  learning_rate: float = 0.1
  finetune_learning_rate: float = 0.01
  warmup_steps: int = 20
  momentum: float = 0.9
  weight_decay: float = 1e-4
  compression: float = 5.0
  split: str = "suggest"
  augment: bool = True
  seed: int = 0
  data_dir: str | None = None
  manual_dir: str | None = None
  download: bool = True
  prefetch: int = 2
  progress: bool = True
  log_every: int = 20
  calibration_batches: int = 8
  distill_steps: int = 200
  distill_learning_rate: float = 0.01
  distill_temperature: float = 2.0
  distill_label_weight: float = 0.0
  data_aware_splits: str = "search"


def get_config() -> Config:
  """The default configuration."""
  return Config()
