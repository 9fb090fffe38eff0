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
import dataclasses
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

if __package__ in (None, ""):
  # Run as a script: make `examples.*` importable from the repository root.
  sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

# pylint: disable=g-import-not-at-top,wrong-import-position
from examples._common import tfds_data
from examples.compress_mnist import compress_mnist
from examples.compress_mnist.configs import default
# pylint: enable=g-import-not-at-top,wrong-import-position


def _csv(kind):
  def parse(text: str):
    return tuple(kind(t.strip()) for t in text.split(",") if t.strip())
  return parse


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
  """The command line; unset options keep ``configs/default.py``'s values."""
  parser = argparse.ArgumentParser(
      description="Compress the MNIST CNN's FC layer: KFC (NKP init) vs low rank"
      " (SVD init) vs KFC from scratch, at matched parameter budgets.",
      formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  parser.add_argument("--workdir", required=True,
                      help="where results.json, table.md and the plot go")
  parser.add_argument(
      "--baseline_checkpoint",
      help="the MNIST example's orbax checkpoints: a directory with seed_<s>"
      " sub-directories (e.g. <mnist workdir>/checkpoints/Baseline) or one"
      " checkpoint for every seed; default: train the baselines here")
  parser.add_argument("--baseline_epochs", type=int,
                      help="epochs of each baseline trained here")
  parser.add_argument("--seeds", type=_csv(int), help="e.g. 0,1,2")
  parser.add_argument("--kfc_ranks", type=_csv(int),
                      help="budgets as KFC ranks, e.g. 1,2,6,12,24")
  parser.add_argument("--methods", type=_csv(str),
                      help="some of " + ",".join(default.METHODS))
  parser.add_argument("--finetune", choices=default.FINETUNE_MODES,
                      help="fc: the compressed layer; head: it and the"
                      " classifier (conv features cached); all: everything")
  parser.add_argument("--finetune_epochs", type=int)
  parser.add_argument("--learning_rate", type=float, help="fine-tuning step size")
  parser.add_argument("--batch_size", type=int)
  parser.add_argument("--data_dir", help="TFDS data directory")
  parser.add_argument("--manual_dir",
                      help="directory with the four original MNIST .gz files")
  parser.add_argument("--no_download", action="store_true",
                      help="never let TFDS download MNIST")
  parser.add_argument("--no_finetune_baseline", action="store_true",
                      help="skip the control: the dense baseline fine-tuned the"
                      " same way")
  parser.add_argument("--progress", action="store_true", help="progress bars")
  return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
  """Runs the sweep; returns the exit status."""
  args = parse_args(argv)
  logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s",
                      datefmt="%H:%M:%S")
  logging.getLogger("examples").setLevel(logging.INFO)
  overrides = {k: getattr(args, k) for k in (
      "baseline_checkpoint", "baseline_epochs", "seeds", "kfc_ranks", "methods",
      "finetune", "finetune_epochs", "learning_rate", "batch_size", "data_dir",
      "manual_dir") if getattr(args, k) is not None}
  if args.no_download:
    overrides["download"] = False
  if args.progress:
    overrides["progress"] = True
  if args.no_finetune_baseline:
    overrides["finetune_baseline"] = False
  config = dataclasses.replace(default.get_config(), **overrides)
  try:  # Bad settings and missing checkpoints fail before any work.
    compress_mnist.check_config(config)
    if config.baseline_checkpoint is not None:
      for seed in config.seeds:
        compress_mnist.checkpoint_path(config.baseline_checkpoint, seed)
  except (ValueError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  try:
    compress_mnist.run_sweep(config, args.workdir)
  except tfds_data.DatasetUnavailableError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
