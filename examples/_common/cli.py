"""What the examples' command lines share: flags, logging, the error exits.

Each example's ``main.py`` declares its own flags and says how they override
its config; :func:`run` does the rest the same way everywhere.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from collections.abc import Callable, Iterable
from typing import Any

from tqdm.contrib import logging as tqdm_logging

from examples._common import configs, tfds_data


def csv(kind: Callable[[str], Any]) -> Callable[[str], tuple[Any, ...]]:
  """An argparse type: ``"a,b"`` -> ``(kind("a"), kind("b"))``."""

  def parse(text: str) -> tuple[Any, ...]:
    return tuple(kind(t.strip()) for t in text.split(",") if t.strip())

  return parse


def add_data_flags(parser: argparse.ArgumentParser, files: str, dataset: str) -> None:
  """``--data_dir``, ``--manual_dir`` and ``--no_download``."""
  parser.add_argument("--data_dir", help="TFDS data directory")
  parser.add_argument("--manual_dir", help=f"directory with {files} (offline preparation)")
  parser.add_argument(
    "--no_download", action="store_true", help=f"never let TFDS download {dataset}"
  )


def add_variant_flags(parser: argparse.ArgumentParser, variants: Iterable[str]) -> None:
  """The flags of the variant-and-seed examples (MNIST, SVHN, KDL)."""
  parser.add_argument(
    "--variants", type=csv(str), help="comma-separated; valid: " + ", ".join(variants)
  )
  parser.add_argument("--seeds", type=csv(int), help="e.g. 0,1,2")
  parser.add_argument("--epochs", type=int)
  parser.add_argument("--batch_size", type=int)
  parser.add_argument("--learning_rate", type=float)
  parser.add_argument("--lr_schedule", choices=("constant", "cosine"))
  parser.add_argument("--no_progress", action="store_true", help="no progress bar")


VARIANT_FIELDS = (
  "data_dir",
  "manual_dir",
  "variants",
  "seeds",
  "epochs",
  "batch_size",
  "learning_rate",
  "lr_schedule",
)
# Flags that switch a config field off.
NEGATIONS = {
  "no_download": "download",
  "no_progress": "progress",
  "no_checkpoints": "save_checkpoints",
  "no_augment": "augment",
}


def overrides(args: argparse.Namespace, fields: Iterable[str]) -> dict[str, Any]:
  """The config fields the command line sets: ``fields`` and the negations."""
  out = {k: getattr(args, k) for k in fields if getattr(args, k) is not None}
  for flag, field in NEGATIONS.items():
    if getattr(args, flag, False):
      out[field] = False
  return out


def setup_logging() -> None:
  """Our progress at INFO; third-party chatter (JAX, orbax) from WARNING up."""
  logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
  logging.getLogger("examples").setLevel(logging.INFO)


def run(
  args: argparse.Namespace,
  *,
  example: str,
  fields: Iterable[str],
  check: Callable[[Any], Any],
  experiment: Callable[[Any, str], Any],
  adjust: Callable[[dict[str, Any]], None] | None = None,
) -> int:
  """Loads the config, applies the flags, checks, runs; the exit status.

  Args:
    args: the parsed command line, with ``config`` and ``workdir``.
    example: the example's directory name (where its configs live).
    fields: config fields set by flags of the same name.
    check: validates the config (raises ``ValueError``) before any work.
    experiment: ``(config, workdir)``: the run.
    adjust: edits the overrides in place before they are applied.

  Returns:
    0, or 2 after printing a bad setting or a missing dataset (what to do,
    not a stack trace).
  """
  setup_logging()
  try:
    config = configs.load_config_module(args.config, example).get_config()
    changes = overrides(args, fields)
    if adjust is not None:
      adjust(changes)
    config = dataclasses.replace(config, **changes)
    check(config)
  except (ValueError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  try:
    with tqdm_logging.logging_redirect_tqdm():
      experiment(config, args.workdir)
  except tfds_data.DatasetUnavailableError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  return 0


def parser(
  description: str,
  workdir_help: str,
  config_help: str = "'default', 'paper' or a path to a config file",
) -> argparse.ArgumentParser:
  """An argument parser with ``--config`` and the required ``--workdir``."""
  p = argparse.ArgumentParser(
    description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter
  )
  p.add_argument("--config", default="default", help=config_help)
  p.add_argument("--workdir", required=True, help=workdir_help)
  return p
