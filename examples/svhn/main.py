"""The KFC paper's SVHN table (command line).

From the repository root::

  python examples/svhn/main.py --workdir=/tmp/kfc_svhn --manual_dir=DIR
  python examples/svhn/main.py --config=paper --workdir=/tmp/kfc_svhn_paper
  python examples/svhn/main.py --variants=Baseline,KFC-II --epochs=5 \\
      --workdir=/tmp/kfc_svhn

SVHN (``svhn_cropped``) is read with tensorflow-datasets from ``--data_dir``;
when it is not prepared there, TFDS prepares it from the three original
``.mat`` files in ``--manual_dir`` (or ``$KFC_JAX_SVHN_DIR``) or, failing
that, downloads them. Without either the command says how to get them.
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
from examples.mnist import main as mnist_main
from examples.svhn import models
from examples.svhn import train
# pylint: enable=g-import-not-at-top,wrong-import-position

CONFIGS = ("default", "paper")
_csv = mnist_main._csv  # pylint: disable=protected-access


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
  """The command line."""
  parser = argparse.ArgumentParser(
      description="Reproduce the KFC paper's SVHN table.",
      formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  parser.add_argument("--config", default="default", choices=CONFIGS)
  parser.add_argument("--workdir", required=True,
                      help="where results and the plot go")
  parser.add_argument("--data_dir", help="TFDS data directory")
  parser.add_argument(
      "--manual_dir",
      help="directory with train_32x32.mat, test_32x32.mat, extra_32x32.mat")
  parser.add_argument("--no_download", action="store_true",
                      help="never let TFDS download SVHN")
  parser.add_argument(
      "--variants", type=_csv(str),
      help="comma-separated, e.g. Baseline,KFC-II; valid: "
      + ", ".join(models.VARIANTS))
  parser.add_argument("--seeds", type=_csv(int), help="e.g. 0,1,2")
  parser.add_argument("--epochs", type=int)
  parser.add_argument("--batch_size", type=int)
  parser.add_argument("--learning_rate", type=float)
  parser.add_argument("--lr_schedule", choices=("constant", "cosine"))
  parser.add_argument("--no_progress", action="store_true",
                      help="no progress bar")
  return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
  """Runs the experiment; returns the exit status."""
  args = parse_args(argv)
  logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s",
                      datefmt="%H:%M:%S")
  logging.getLogger("examples").setLevel(logging.INFO)
  config = importlib.import_module(
      f"examples.svhn.configs.{args.config}").get_config()
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
