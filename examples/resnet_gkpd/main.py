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
from examples.resnet_gkpd import input_pipeline
from examples.resnet_gkpd import train
# pylint: enable=g-import-not-at-top,wrong-import-position


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
  """The command line."""
  parser = argparse.ArgumentParser(
      description="Train a CIFAR ResNet, compress it by GKPD, fine-tune.",
      formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  parser.add_argument("--config", default="default",
                      help="'default' or a path to a config file")
  parser.add_argument("--workdir", required=True,
                      help="where results.json and report.md go")
  parser.add_argument("--dataset", choices=input_pipeline.DATASETS)
  parser.add_argument("--depth", type=int, help="6n+2: 20, 32, ...")
  parser.add_argument("--num_train", type=int,
                      help="train on the first N training images (0: all)")
  parser.add_argument("--epochs", type=int)
  parser.add_argument("--finetune_epochs", type=int)
  parser.add_argument("--batch_size", type=int)
  parser.add_argument("--learning_rate", type=float)
  parser.add_argument("--finetune_learning_rate", type=float)
  parser.add_argument("--compression", type=float,
                      help="dense / Kronecker parameters of each block conv")
  parser.add_argument("--split", choices=train.SPLITS)
  parser.add_argument("--no_augment", action="store_true")
  parser.add_argument("--seed", type=int)
  parser.add_argument("--data_dir", help="TFDS data directory")
  parser.add_argument("--manual_dir",
                      help="directory with the dataset's original files")
  parser.add_argument("--no_download", action="store_true",
                      help="never let TFDS download the dataset")
  parser.add_argument("--no_progress", action="store_true",
                      help="no progress bar")
  return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
  """Runs the experiment; returns the exit status."""
  args = parse_args(argv)
  logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s",
                      datefmt="%H:%M:%S")
  logging.getLogger("examples").setLevel(logging.INFO)
  try:
    config = configs.load_config_module(args.config, "resnet_gkpd").get_config()
    overrides = {k: getattr(args, k) for k in (
        "dataset", "depth", "num_train", "epochs", "finetune_epochs",
        "batch_size", "learning_rate", "finetune_learning_rate",
        "compression", "split", "seed", "data_dir", "manual_dir")
                 if getattr(args, k) is not None}
    if overrides.get("num_train") == 0:
      overrides["num_train"] = None
    for flag, field in (("no_augment", "augment"), ("no_download", "download"),
                        ("no_progress", "progress")):
      if getattr(args, flag):
        overrides[field] = False
    config = dataclasses.replace(config, **overrides)
    train.check_config(config)  # Bad values fail before any work.
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  try:
    with tqdm_logging.logging_redirect_tqdm():
      train.train_and_evaluate(config, args.workdir)
  except tfds_data.DatasetUnavailableError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
