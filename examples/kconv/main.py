"""KConv from scratch: CNNs with Kronecker convolutions (command line).

From the repository root::

  python examples/kconv/main.py --workdir=/tmp/kconv          # short run
  python examples/kconv/main.py --config=paper --workdir=runs/kconv_paper
  python examples/kconv/main.py --architectures=wide \\
      --variants=Dense,KConv-ch4 --seeds=0,1,2 --workdir=/tmp/kconv
  python examples/kconv/main.py --dataset=svhn --manual_dir=DIR \\
      --workdir=/tmp/kconv_svhn

``--config`` takes ``default``/``paper`` or a path to a Python file with a
``get_config()``; the data flags are the MNIST and SVHN examples'.
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
from examples.kconv import models, train

# pylint: enable=g-import-not-at-top,wrong-import-position

FIELDS = (
  *cli.VARIANT_FIELDS,
  "architectures",
  "dataset",
  "train_subset",
  "time_batch",
  "time_rounds",
)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
  """The command line."""
  parser = cli.parser(
    "CNNs with Kronecker convolutions, trained from scratch.",
    "where results, plots and checkpoints go",
  )
  cli.add_data_flags(parser, "the dataset's original files", "the dataset")
  cli.add_variant_flags(parser, models.VARIANTS)
  parser.add_argument(
    "--architectures",
    type=cli.csv(str),
    help="comma-separated; valid: " + ", ".join(models.ARCHITECTURES),
  )
  parser.add_argument("--dataset", choices=tuple(train.IMAGE_SHAPES))
  parser.add_argument(
    "--train_subset", type=int, help="train on the first N training images (0: all)"
  )
  parser.add_argument("--time_batch", type=int, help="batch of the interleaved timings (0: none)")
  parser.add_argument("--time_rounds", type=int, help="interleaved rounds of the timings")
  parser.add_argument(
    "--time_only", action="store_true", help="costs and timings only: train nothing"
  )
  parser.add_argument(
    "--no_checkpoints", action="store_true", help="do not save the best parameters with orbax"
  )
  return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
  """Runs the experiment; returns the exit status."""
  args = parse_args(argv)

  def adjust(changes: dict) -> None:
    if changes.get("train_subset") == 0:
      changes["train_subset"] = None
    if args.time_only:
      changes["train"] = False

  return cli.run(
    args,
    example="kconv",
    fields=FIELDS,
    check=train.check_config,
    experiment=train.train_and_evaluate,
    adjust=adjust,
  )


if __name__ == "__main__":
  sys.exit(main())
