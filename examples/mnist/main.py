"""Reproduces the KFC paper's MNIST table (command line).

From the repository root::

  python examples/mnist/main.py --workdir=/tmp/kfc_mnist            # minutes
  python examples/mnist/main.py --config=paper --workdir=/tmp/kfc_paper
  python examples/mnist/main.py --variants=Baseline,KFC-II --epochs=5 \\
      --seeds=0,1,2 --workdir=/tmp/kfc_mnist

``--config`` takes ``default``/``paper`` or a path to a Python file with a
``get_config()``. MNIST is read with tensorflow-datasets from ``--data_dir``;
when it is not prepared there, TFDS prepares it from the four original files
in ``--manual_dir`` (or ``$KFC_JAX_MNIST_DIR``, or ``../shared/data/mnist``)
or, failing that, downloads it.
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
from tqdm.contrib import logging as tqdm_logging

from examples._common import configs
from examples._common import tfds_data
from examples.mnist import models
from examples.mnist import train
# pylint: enable=g-import-not-at-top,wrong-import-position


def _csv(kind):
  def parse(text: str):
    return tuple(kind(t.strip()) for t in text.split(",") if t.strip())
  return parse


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
  """The command line."""
  parser = argparse.ArgumentParser(
      description="Reproduce the KFC paper's MNIST table.",
      formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  parser.add_argument("--config", default="default",
                      help="'default', 'paper' or a path to a config file")
  parser.add_argument("--workdir", required=True,
                      help="where results, plots and checkpoints go")
  parser.add_argument("--data_dir", help="TFDS data directory")
  parser.add_argument(
      "--manual_dir",
      help="directory with the four original MNIST .gz files (offline)")
  parser.add_argument("--no_download", action="store_true",
                      help="never let TFDS download MNIST")
  parser.add_argument(
      "--variants", type=_csv(str),
      help="comma-separated, e.g. Baseline,KFC-II; valid: "
      + ", ".join(models.VARIANTS))
  parser.add_argument("--seeds", type=_csv(int), help="e.g. 0,1,2")
  parser.add_argument("--epochs", type=int)
  parser.add_argument("--batch_size", type=int)
  parser.add_argument("--learning_rate", type=float)
  parser.add_argument("--lr_schedule", choices=("constant", "cosine"))
  parser.add_argument("--no_checkpoints", action="store_true",
                      help="do not save the best parameters with orbax")
  parser.add_argument("--no_progress", action="store_true",
                      help="no progress bar")
  return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
  """Runs the experiment; returns the exit status."""
  args = parse_args(argv)
  # Our progress at INFO; third-party chatter (JAX backends, orbax) only from
  # WARNING up.
  logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s",
                      datefmt="%H:%M:%S")
  logging.getLogger("examples").setLevel(logging.INFO)
  try:
    config = configs.load_config_module(args.config, "mnist").get_config()
    overrides = {k: getattr(args, k) for k in (
        "data_dir", "manual_dir", "variants", "seeds", "epochs", "batch_size",
        "learning_rate", "lr_schedule") if getattr(args, k) is not None}
    if args.no_download:
      overrides["download"] = False
    if args.no_checkpoints:
      overrides["save_checkpoints"] = False
    if args.no_progress:
      overrides["progress"] = False
    config = dataclasses.replace(config, **overrides)
    train.check_config(config)  # Bad names and sizes fail before any work.
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  try:
    with tqdm_logging.logging_redirect_tqdm():
      train.train_and_evaluate(config, args.workdir)
  except tfds_data.DatasetUnavailableError as e:
    # A missing dataset: what to do, not a stack trace.
    print(f"error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
