"""Compresses the MNIST CNN's FC layer at a sweep of budgets (command line).

From the repository root::

  # On the MNIST example's Baseline checkpoints (seed_0, seed_1, seed_2):
  python examples/compress_mnist/main.py --workdir=/tmp/compress_mnist \\
      --baseline_checkpoint=/tmp/mnist_run/checkpoints/Baseline
  # Training its own baselines first:
  python examples/compress_mnist/main.py --workdir=/tmp/compress_mnist \\
      --baseline_epochs=4
  # Fine-tuning the whole network instead of the head (slow on a CPU):
  python examples/compress_mnist/main.py --workdir=/tmp/compress_all \\
      --baseline_checkpoint=... --finetune=all --kfc_ranks=1,6 --seeds=0

MNIST is read as in the MNIST example (``--data_dir``, ``--manual_dir``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

if __package__ in (None, ""):
  # Run as a script: make `examples.*` importable from the repository root.
  sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

# pylint: disable=g-import-not-at-top,wrong-import-position
from examples._common import cli
from examples.compress_mnist import train
from examples.compress_mnist.configs import default

# pylint: enable=g-import-not-at-top,wrong-import-position

FIELDS = (
  "baseline_checkpoint",
  "baseline_epochs",
  "seeds",
  "kfc_ranks",
  "methods",
  "finetune",
  "finetune_epochs",
  "learning_rate",
  "batch_size",
  "data_dir",
  "manual_dir",
)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
  """The command line; unset options keep the config's values."""
  parser = cli.parser(
    "Compress the MNIST CNN's FC layer: KFC (NKP init) vs low rank (SVD "
    "init) vs KFC from scratch, at matched parameter budgets.",
    "where results.json, table.md and the plot go",
    config_help="'default' or a path to a config file",
  )
  parser.add_argument(
    "--baseline_checkpoint",
    help="the MNIST example's orbax checkpoints: a directory with seed_<s>"
    " sub-directories (e.g. <mnist workdir>/checkpoints/Baseline) or one"
    " checkpoint for every seed; default: train the baselines here",
  )
  parser.add_argument("--baseline_epochs", type=int, help="epochs of each baseline trained here")
  parser.add_argument("--seeds", type=cli.csv(int), help="e.g. 0,1,2")
  parser.add_argument(
    "--kfc_ranks", type=cli.csv(int), help="budgets as KFC ranks, e.g. 1,2,6,12,24"
  )
  parser.add_argument("--methods", type=cli.csv(str), help="some of " + ",".join(default.METHODS))
  parser.add_argument(
    "--finetune",
    choices=default.FINETUNE_MODES,
    help="fc: the compressed layer; head: it and the"
    " classifier (conv features cached); all: everything",
  )
  parser.add_argument("--finetune_epochs", type=int)
  parser.add_argument("--learning_rate", type=float, help="fine-tuning step size")
  parser.add_argument("--batch_size", type=int)
  cli.add_data_flags(parser, "the four original MNIST .gz files", "MNIST")
  parser.add_argument(
    "--no_finetune_baseline",
    action="store_true",
    help="skip the control: the dense baseline fine-tuned the same way",
  )
  parser.add_argument("--progress", action="store_true", help="progress bars")
  return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
  """Runs the sweep; returns the exit status."""
  args = parse_args(argv)

  def adjust(changes):
    if args.progress:
      changes["progress"] = True
    if args.no_finetune_baseline:
      changes["finetune_baseline"] = False

  # Bad settings and missing checkpoints fail before any work.
  return cli.run(
    args,
    example="compress_mnist",
    fields=FIELDS,
    check=train.check_config,
    experiment=train.run_sweep,
    adjust=adjust,
  )


if __name__ == "__main__":
  sys.exit(main())
