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
import sys
from collections.abc import Sequence
from pathlib import Path

if __package__ in (None, ""):
  # Run as a script: make `examples.*` importable from the repository root.
  sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

# pylint: disable=g-import-not-at-top,wrong-import-position
from examples._common import cli
from examples.kdl_mnist import models, train

# pylint: enable=g-import-not-at-top,wrong-import-position


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
  """The command line."""
  parser = cli.parser(
    "The KDL paper's MNIST MLPs: dense against KDL blocks.", "where results.json and table.md go"
  )
  cli.add_data_flags(parser, "the four original MNIST .gz files", "MNIST")
  cli.add_variant_flags(parser, models.VARIANTS)
  return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
  """Runs the experiment; returns the exit status."""
  return cli.run(
    parse_args(argv),
    example="kdl_mnist",
    fields=cli.VARIANT_FIELDS,
    check=train.check_config,
    experiment=train.train_and_evaluate,
  )


if __name__ == "__main__":
  sys.exit(main())
