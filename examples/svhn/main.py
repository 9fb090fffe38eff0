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
import sys
from collections.abc import Sequence
from pathlib import Path

if __package__ in (None, ""):
  # Run as a script: make `examples.*` importable from the repository root.
  sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

# pylint: disable=g-import-not-at-top,wrong-import-position
from examples._common import cli
from examples.svhn import models, train

# pylint: enable=g-import-not-at-top,wrong-import-position


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
  """The command line."""
  parser = cli.parser("Reproduce the KFC paper's SVHN table.", "where results and the plot go")
  cli.add_data_flags(parser, "train_32x32.mat, test_32x32.mat, extra_32x32.mat", "SVHN")
  cli.add_variant_flags(parser, models.VARIANTS)
  return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
  """Runs the experiment; returns the exit status."""
  return cli.run(
    parse_args(argv),
    example="svhn",
    fields=cli.VARIANT_FIELDS,
    check=train.check_config,
    experiment=train.train_and_evaluate,
  )


if __name__ == "__main__":
  sys.exit(main())
