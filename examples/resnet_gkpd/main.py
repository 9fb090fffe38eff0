"""Train a CIFAR ResNet, compress its convs by GKPD, fine-tune (command line).

From the repository root::

  # This project's machines (offline, CPU): MNIST padded to 32x32, ~20 min.
  python examples/resnet_gkpd/main.py --dataset=mnist --num_train=10000 \\
      --workdir=/tmp/resnet_gkpd
  # With a network and an accelerator: close to the GKPD paper's setting.
  python examples/resnet_gkpd/main.py --dataset=cifar10 --depth=32 \\
      --epochs=200 --finetune_epochs=200 --workdir=/tmp/resnet32_gkpd

``--config`` takes ``default`` or a path to a Python file with a
``get_config()``; the flags override its fields. CIFAR-10 and MNIST are read
with tensorflow-datasets (see ``input_pipeline.py`` for offline preparation).
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
from examples.resnet_gkpd import input_pipeline, train

# pylint: enable=g-import-not-at-top,wrong-import-position

FIELDS = (
  "dataset",
  "depth",
  "num_train",
  "epochs",
  "finetune_epochs",
  "batch_size",
  "learning_rate",
  "finetune_learning_rate",
  "compression",
  "split",
  "seed",
  "data_dir",
  "manual_dir",
)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
  """The command line."""
  parser = cli.parser(
    "Train a CIFAR ResNet, compress it by GKPD, fine-tune.",
    "where results.json and report.md go",
    config_help="'default' or a path to a config file",
  )
  parser.add_argument("--dataset", choices=input_pipeline.DATASETS)
  parser.add_argument("--depth", type=int, help="6n+2: 20, 32, ...")
  parser.add_argument("--num_train", type=int, help="train on the first N training images (0: all)")
  parser.add_argument("--epochs", type=int)
  parser.add_argument("--finetune_epochs", type=int)
  parser.add_argument("--batch_size", type=int)
  parser.add_argument("--learning_rate", type=float)
  parser.add_argument("--finetune_learning_rate", type=float)
  parser.add_argument(
    "--compression", type=float, help="dense / Kronecker parameters of each block conv"
  )
  parser.add_argument("--split", choices=train.SPLITS)
  parser.add_argument("--no_augment", action="store_true")
  parser.add_argument("--seed", type=int)
  cli.add_data_flags(parser, "the dataset's original files", "the dataset")
  parser.add_argument("--no_progress", action="store_true", help="no progress bar")
  return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
  """Runs the experiment; returns the exit status."""

  def adjust(changes):
    if changes.get("num_train") == 0:
      changes["num_train"] = None

  return cli.run(
    parse_args(argv),
    example="resnet_gkpd",
    fields=FIELDS,
    check=train.check_config,
    experiment=train.train_and_evaluate,
    adjust=adjust,
  )


if __name__ == "__main__":
  sys.exit(main())
