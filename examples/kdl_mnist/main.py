"""The KDL paper's MNIST MLPs, dense against KDL (command line).

From the repository root::

  python examples/kdl_mnist/main.py --workdir=/tmp/kdl_mnist          # minutes
  python examples/kdl_mnist/main.py --config=paper --workdir=/tmp/kdl_paper
  python examples/kdl_mnist/main.py --variants=KDL-Rank-1,KDL-Rank-4 \\
      --epochs=5 --workdir=/tmp/kdl_mnist

MNIST is read as in the MNIST example (``examples/mnist``): TFDS from
``--data_dir``, prepared offline from ``--manual_dir`` (or
``$KFC_JAX_MNIST_DIR``, or ``../shared/data/mnist``) when it is not prepared.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

if __package__ in (None, ""):
  # Run as a script: make `examples.*` importable from the repository root.
  sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

# pylint: disable=g-import-not-at-top,wrong-import-position
from tqdm.contrib import logging as tqdm_logging

from examples._common import tfds_data
from examples.kdl_mnist import models
from examples.kdl_mnist import train
from examples.mnist import main as mnist_main
# pylint: enable=g-import-not-at-top,wrong-import-position

CONFIGS = ("default", "paper")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
  """The command line."""
  parser = argparse.ArgumentParser(
      description="The KDL paper's MNIST MLPs: dense against KDL blocks.",
      formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  parser.add_argument("--config", default="default", choices=CONFIGS)
  parser.add_argument("--workdir", required=True,
                      help="where results.json and table.md go")
  parser.add_argument("--data_dir", help="TFDS data directory")
  parser.add_argument("--manual_dir",
                      help="directory with the four original MNIST .gz files")
  parser.add_argument("--no_download", action="store_true",
                      help="never let TFDS download MNIST")
  parser.add_argument("--variants", type=mnist_main._csv(str),  # pylint: disable=protected-access
                      help="comma-separated; valid: " + ", ".join(
                          models.VARIANTS))
  parser.add_argument("--seeds", type=mnist_main._csv(int))  # pylint: disable=protected-access
  parser.add_argument("--epochs", type=int)
  parser.add_argument("--batch_size", type=int)
  parser.add_argument("--learning_rate", type=float)
  parser.add_argument("--lr_schedule", choices=("constant", "cosine"))
  parser.add_argument("--no_progress", action="store_true")
  return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
  """Runs the experiment; returns the exit status."""
  args = parse_args(argv)
  logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s",
                      datefmt="%H:%M:%S")
  logging.getLogger("examples").setLevel(logging.INFO)
  config = importlib.import_module(
      f"examples.kdl_mnist.configs.{args.config}").get_config()
  overrides = {k: getattr(args, k) for k in (
      "data_dir", "manual_dir", "variants", "seeds", "epochs", "batch_size",
      "learning_rate", "lr_schedule") if getattr(args, k) is not None}
  if args.no_download:
    overrides["download"] = False
  if args.no_progress:
    overrides["progress"] = False
  config = dataclasses.replace(config, **overrides)
  try:
    train.check_config(config)  # Bad names and sizes fail before any work.
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  try:
    with tqdm_logging.logging_redirect_tqdm():
      train.train_and_evaluate(config, args.workdir)
  except tfds_data.DatasetUnavailableError as e:
    print(f"error: {e}", file=sys.stderr)  # What to do, not a stack trace.
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
