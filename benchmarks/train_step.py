"""Benchmark: one training step of the KFC paper's MNIST CNN per FC variant.

Times ``examples/mnist/train.train_step`` (Adam + L2, dropout on, the
example's own jitted step) for the Baseline (dense 288 -> 256 FC layer) and
the Kronecker variants, interleaved in one process, same batch, so their
ratios hold on a shared machine. The Issue-12 target: a KFC model's step is
no slower than its dense Baseline's.

Run (writes benchmarks/results/train_step_<platform>_<dtype>.{json,md}):

  .venv/bin/python benchmarks/train_step.py             # batch 128 and 1024
  .venv/bin/python benchmarks/train_step.py --quick     # batch 32, 3 variants, few rounds
"""

from __future__ import annotations

import os
import sys

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import _timing
from flax import nnx

from examples._common import loop
from examples.mnist import (
  models,
  train,
)

VARIANTS = models.ALL_VARIANTS  # The nine rows of the MNIST table.
QUICK_VARIANTS = ("Baseline", "KFC-II", "KFC-Combined")  # --quick: a smoke run


def _step_fn(variant: str, batch):
  model = models.MnistCNN(variant, rngs=nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, loop.adam_with_l2(1e-3, 1e-4, "constant", None), wrt=nnx.Param)

  def step(batch):
    return train.train_step(model, optimizer, batch)

  return step, (batch,)


def main(argv=None) -> int:
  args = _timing.parse_args(__doc__, argv)
  batch_sizes = (32,) if args.quick else (128, 1024)
  repeats = args.repeats or (5 if args.quick else 21)
  variants = QUICK_VARIANTS if args.quick else VARIANTS
  env = _timing.environment(args.dtype)
  rng = np.random.default_rng(0)
  rows = []
  for batch_size in batch_sizes:
    batch = {
      "image": rng.integers(0, 256, (batch_size, *models.IMAGE_SHAPE), np.uint8),
      "label": rng.integers(0, models.NUM_CLASSES, (batch_size,), np.int32),
    }
    fns = {v: _step_fn(v, batch) for v in variants}
    times = _timing.time_interleaved(fns, repeats=repeats)
    rows.append({"batch": batch_size, "ms": {v: 1e3 * t for v, t in times.items()}})
    print(batch_size, {v: round(1e3 * t, 3) for v, t in times.items()}, flush=True)
  lines = [
    "# MNIST CNN training step per FC variant",
    "",
    f"Device: {env['device']} ({env['host_cpu']}, {env['cpu_count']} cores);"
    f" jax {env['jax']}; python {env['python']}; {env['date']}.",
    f"Command: `{env['command']}`",
    "",
    "Median ms per `train_step` (Adam + L2, dropout on), interleaved in one"
    " process; ratio = variant / Baseline (< 1: faster than dense).",
    "",
    "| batch | "
    + " | ".join(variants)
    + " | "
    + " | ".join(f"{v} / Baseline" for v in variants[1:])
    + " |",
    "|---|" + "---|" * (2 * len(variants) - 1),
  ]
  for row in rows:
    ms = row["ms"]
    lines.append(
      f"| {row['batch']} | "
      + " | ".join(f"{ms[v]:.3f}" for v in variants)
      + " | "
      + " | ".join(f"{ms[v] / ms['Baseline']:.2f}x" for v in variants[1:])
      + " |"
    )
  markdown = "\n".join(lines) + "\n"
  suffix = "_quick" if args.quick else ""
  stem = os.path.join(args.out, f"train_step_{jax.default_backend()}_{args.dtype}{suffix}")
  _timing.write_results(stem, {"environment": env, "rows": rows}, markdown)
  print(markdown)
  return 0


if __name__ == "__main__":
  sys.exit(main())
