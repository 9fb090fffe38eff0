"""MNIST through tensorflow-datasets, split as in the KFC paper, in memory.

``tfds``'s ``train`` split (60,000 images) is divided into its first 50,000
(training) and its last 10,000 (validation); ``test`` is the usual 10,000.

Offline, TFDS prepares MNIST from the four original files in a manual
directory: ``--manual_dir``, else ``$KFC_JAX_MNIST_DIR``, else this project's
``../shared/data/mnist`` (next to the repository) when it exists, else TFDS's
own ``<data_dir>/downloads/manual``.
"""

from __future__ import annotations

import os
from pathlib import Path

from examples._common import tfds_data

MANUAL_DIR_ENV = "KFC_JAX_MNIST_DIR"
# The four files TFDS's MNIST builder downloads (and accepts from manual_dir).
MNIST_FILES = (
  "train-images-idx3-ubyte.gz",
  "train-labels-idx1-ubyte.gz",
  "t10k-images-idx3-ubyte.gz",
  "t10k-labels-idx1-ubyte.gz",
)
TRAIN_SIZE = 60_000
# examples/_common/mnist_data.py -> the repository root is two levels up.
REPO_ROOT = Path(__file__).resolve().parents[2]
PROJECT_MANUAL_DIR = REPO_ROOT.parent / "shared" / "data" / "mnist"
HOW_TO_GET = (
  f"  (Set it with --manual_dir or ${MANUAL_DIR_ENV}; this "
  f"project keeps the files in {PROJECT_MANUAL_DIR}.)"
)

MnistSplits = tfds_data.Splits  # Images uint8 [N, 28, 28, 1], labels int32.


def default_manual_dir() -> Path | None:
  """``$KFC_JAX_MNIST_DIR``, else the project's copy when present, else None."""
  if os.environ.get(MANUAL_DIR_ENV):
    return Path(os.environ[MANUAL_DIR_ENV])
  if PROJECT_MANUAL_DIR.is_dir():
    return PROJECT_MANUAL_DIR
  return None


def load_mnist(
  *,
  data_dir: str | os.PathLike[str] | None = None,
  manual_dir: str | os.PathLike[str] | None = None,
  download: bool = True,
  num_validation: int = 10_000,
) -> MnistSplits:
  """Loads (preparing if needed) MNIST into memory.

  Args:
    data_dir: TFDS data directory (``None``: TFDS's default).
    manual_dir: directory with the four original files (``None``: see
      :func:`default_manual_dir`).
    download: whether TFDS may download the files if they are not at hand.
    num_validation: how many of the last training images to hold out.

  Returns:
    The three splits.

  Raises:
    ValueError: ``num_validation`` is not in ``[1, 59999]``.
    tfds_data.DatasetUnavailableError: MNIST is not prepared and can be
      neither prepared from the files nor downloaded; the message says how to
      get it.
  """
  return tfds_data.load_with_validation(
    "mnist",
    train_size=TRAIN_SIZE,
    num_validation=num_validation,
    data_dir=data_dir,
    manual_dir=manual_dir if manual_dir is not None else default_manual_dir(),
    manual_files=MNIST_FILES,
    download=download,
    how_to_get=HOW_TO_GET,
  )
