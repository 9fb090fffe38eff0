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
import sys
from collections.abc import Sequence
from pathlib import Path

if __package__ in (None, ""):
  # Run as a script: make `examples.*` importable from the repository root.
  sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

# pylint: disable=g-import-not-at-top,wrong-import-position
from examples._common import cli
from examples.mnist import models, train

# pylint: enable=g-import-not-at-top,wrong-import-position


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
  """The command line."""
  parser = cli.parser(
    "Reproduce the KFC paper's MNIST table.", "where results, plots and checkpoints go"
  )
  cli.add_data_flags(parser, "the four original MNIST .gz files", "MNIST")
  cli.add_variant_flags(parser, models.VARIANTS)
  parser.add_argument(
    "--no_checkpoints", action="store_true", help="do not save the best parameters with orbax"
  )
  return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
  """Runs the experiment; returns the exit status."""
  return cli.run(
    parse_args(argv),
    example="mnist",
    fields=cli.VARIANT_FIELDS,
    check=train.check_config,
    experiment=train.train_and_evaluate,
  )


if __name__ == "__main__":
  sys.exit(main())
