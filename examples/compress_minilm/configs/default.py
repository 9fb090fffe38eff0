"""The sweep: FFN and attention matrices, low rank and Kronecker, 2x/4x/8x.

Command (from the repository root)::

  python examples/compress_minilm/main.py --workdir=runs/minilm

Runtime and hardware: see ``RESULTS.md`` (this project's 2-core x86 CPU,
shared with other jobs). The distillation step count is what that CPU
allowed, the same for every row.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Config:
  """Everything a run of ``main.py`` depends on.

  Attributes:
    matrices: which matrix sets to compress, one row set each (``"ffn"``: the
      12 FFN matrices; ``"attention"``: the 24 attention projections).
    methods: ``"low_rank"`` and/or ``"kronecker"``.
    compressions: each replaced kernel keeps ``1/compression`` of its
      parameters (the biases stay).
    calibrations: ``"weight"`` (weight error) and/or ``"data"`` (output error
      on the distillation sentences, ``input_cov=``).
    distill_order: ``(matrices, compression)`` pairs in the order their rows
      are distilled (after every row has been compressed and evaluated).
    seeds: distillation seeds (data order) for every row.
    extra_seed_rows: row names (``Row.name``) distilled with ``extra_seeds``
      too, where the CPU allows more than one seed.
    extra_seeds: the further seeds of those rows.
    calibration_sentences: distillation sentences whose matrix inputs give
      the covariances (the first ones of the distillation set).
    calibration_max_len: token length they are cut to.
    kron_top_splits: data-aware Kronecker: best weight-error splits refitted.
    als_sweeps: data-aware Kronecker: ALS sweeps at most after the closed
      form for the nearest Kronecker-factored covariance. 0 here: the splits
      that win on this model are near-degenerate, e.g. (192, 2) x (2, 768) at
      rank 76, where one ALS step solves a 14,592-square system per factor.
    distill_steps: AdamW steps for every row.
    batch_size: sentences per step.
    distill_max_len: token length of the distillation batches.
    learning_rate: peak of the warm-up + cosine schedule.
    warmup_steps: linear warm-up.
    weight_decay: AdamW's decoupled decay.
    hidden_weight: weight of the hidden-state MSE beside the cosine loss.
    eval_max_len: token length of the evaluation sentences (none is longer).
    eval_sentences: evaluation sentences used (``None``: all).
    timing_rounds: interleaved rounds of the batch-32, length-128 timing.
    checkpoint_every: distillation steps between orbax checkpoints.
    progress: progress bars.
  """

  matrices: tuple[str, ...] = ("ffn", "attention")
  methods: tuple[str, ...] = ("low_rank", "kronecker")
  compressions: tuple[int, ...] = (2, 4, 8)
  calibrations: tuple[str, ...] = ("weight", "data")
  distill_order: tuple[tuple[str, int], ...] = (
    ("ffn", 4),
    ("ffn", 2),
    ("ffn", 8),
    ("attention", 4),
    ("attention", 2),
    ("attention", 8),
  )
  seeds: tuple[int, ...] = (0,)
  extra_seed_rows: tuple[str, ...] = (
    "ffn-low_rank-4x-weight",
    "ffn-low_rank-4x-data",
    "ffn-kronecker-4x-weight",
    "ffn-kronecker-4x-data",
  )
  extra_seeds: tuple[int, ...] = (1, 2)
  calibration_sentences: int = 512
  calibration_max_len: int = 64
  kron_top_splits: int = 3
  als_sweeps: int = 0
  distill_steps: int = 40
  batch_size: int = 16
  distill_max_len: int = 32
  learning_rate: float = 3e-4
  warmup_steps: int = 6
  weight_decay: float = 0.01
  hidden_weight: float = 1.0
  eval_max_len: int = 128
  eval_sentences: int | None = 1000
  timing_rounds: int = 5
  checkpoint_every: int = 20
  progress: bool = True


def get_config() -> Config:
  """The default configuration."""
  return Config()
