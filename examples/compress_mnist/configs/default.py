"""Default configuration: five matched budgets x three methods x three seeds.

Command (from the repository root), on the MNIST example's Baseline
checkpoints (``<dir>/seed_<s>`` for each seed)::

  python examples/compress_mnist/main.py --workdir=/tmp/compress_mnist \\
      --baseline_checkpoint=/tmp/mnist_run/checkpoints/Baseline

or, training its own baselines first (``--baseline_epochs`` epochs each)::

  python examples/compress_mnist/main.py --workdir=/tmp/compress_mnist

Runtime and hardware (this project's 2-core x86 CPU, shared with other jobs,
no accelerator): 24 min wall with own baselines (4-6 min each), 9 min on
checkpoints; the conv features are computed once per seed and each of the
48 head-only fine-tunes (45 + the dense control) takes 3-15 s. Expected
result (``RESULTS.md``): test errors of 0.9-1.1% for every method from 83%
fewer FC parameters down (dense, fine-tuned alike: 0.90%), KFC with NKP init
better than low rank only at 96.8% fewer (1.70% vs 2.24%), worse at 94%
(1.36% vs 1.06%), and better than the same KFC layer from scratch at every
budget.
"""

from __future__ import annotations

import dataclasses

METHODS = ("kfc_nkp", "low_rank_svd", "kfc_scratch")
FINETUNE_MODES = ("fc", "head", "all")


@dataclasses.dataclass(frozen=True)
class Config:
  """Everything a sweep (``compress_mnist.run_sweep``) depends on.

  Attributes:
    seeds: one baseline per seed (``<baseline_checkpoint>/seed_<s>``, or
      trained with that seed), and that seed's fine-tunes (dropout,
      shuffling; the from-scratch KFC layer's initialisation).
    kfc_ranks: the budgets, as ranks of the KFC term; the low-rank layer of
      each budget gets the rank whose parameter count is nearest.
    formulation: the KFC formulation of the term (docs/DESIGN.md, "KFC
      formulations").
    out_factors: its output factors ``(O1, O2)``, ``O1 * O2 = 256``.
    methods: which of ``kfc_nkp`` (KFC, nearest-Kronecker init),
      ``low_rank_svd`` (low rank, truncated-SVD init) and ``kfc_scratch``
      (the same KFC layer, randomly initialised) to run.
    finetune: what is trained after compression: ``"fc"`` (the compressed
      layer), ``"head"`` (it and the classifier) or ``"all"`` (the conv
      stack too). ``fc``/``head`` freeze the conv stack, whose features are
      then computed once and cached.
    finetune_epochs: passes over the 50,000 training images, the same for
      every method; the epoch with the lowest validation error is tested.
    finetune_baseline: fine-tune the uncompressed baseline the same way too
      (once per seed): the control that separates the effect of compression
      from that of the extra training.
    batch_size: fine-tuning batch.
    eval_batch_size: evaluation batch.
    learning_rate: fine-tuning Adam step size (peak, with a schedule).
    lr_schedule: ``"constant"`` or ``"cosine"`` (to zero over the fine-tune).
    weight_decay: coupled L2 decay, as in the MNIST example.
    dropout_rate: dropout on the FC layer's output, as in the MNIST example.
    baseline_checkpoint: the MNIST example's orbax checkpoints: a directory
      with ``seed_<s>`` sub-directories, or one checkpoint used for every
      seed. ``None``: train the baselines here.
    baseline_epochs: epochs of each own baseline (MNIST example, cosine).
    baseline_learning_rate: its Adam step size.
    num_validation: the last this-many training images are the validation
      split.
    data_dir: TFDS data directory (``None``: TFDS's default).
    manual_dir: the four original MNIST files (see the MNIST example).
    download: whether TFDS may download MNIST.
    prefetch: batches in flight (``finetune="all"`` and own baselines).
    progress: progress bars.
    log_every: progress-bar refresh, in steps.
  """

  seeds: tuple[int, ...] = (0, 1, 2)
  kfc_ranks: tuple[int, ...] = (1, 2, 6, 12, 24)
  formulation: str = "II"
  out_factors: tuple[int, int] = (64, 4)
  methods: tuple[str, ...] = METHODS
  finetune: str = "head"
  finetune_epochs: int = 3
  finetune_baseline: bool = True
  batch_size: int = 128
  eval_batch_size: int = 1000
  learning_rate: float = 1e-3
  lr_schedule: str = "cosine"
  weight_decay: float = 1e-4
  dropout_rate: float = 0.5
  baseline_checkpoint: str | None = None
  baseline_epochs: int = 4
  baseline_learning_rate: float = 1e-3
  num_validation: int = 10_000
  data_dir: str | None = None
  manual_dir: str | None = None
  download: bool = True
  prefetch: int = 2
  progress: bool = False
  log_every: int = 50


def get_config() -> Config:
  """The default configuration."""
  return Config()
