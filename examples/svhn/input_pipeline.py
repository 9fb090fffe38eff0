"""SVHN (``svhn_cropped``) through tensorflow-datasets, held in memory.

``train`` (73,257 images) is split into its first ``73,257 - num_validation``
(training) and its last ``num_validation`` (validation, default 6,000);
``test`` is the usual 26,032. The ``extra`` split is not used (the paper
does not say it used it).

SVHN cannot be downloaded on this project's machines: TFDS prepares it from
the three original files (``train_32x32.mat``, ``test_32x32.mat``,
``extra_32x32.mat`` from http://ufldl.stanford.edu/housenumbers/) put in a
manual directory (``--manual_dir`` or ``$KFC_JAX_SVHN_DIR``), or downloads
them where there is a network. Without either, :func:`load_svhn` raises
:class:`~examples._common.tfds_data.DatasetUnavailableError` saying so.
"""

from __future__ import annotations

import os
from pathlib import Path

from examples._common import tfds_data

MANUAL_DIR_ENV = "KFC_JAX_SVHN_DIR"
# The files TFDS's svhn_cropped builder downloads (and accepts from
# manual_dir).
SVHN_FILES = ("train_32x32.mat", "test_32x32.mat", "extra_32x32.mat")
TRAIN_SIZE = 73_257

SvhnSplits = tfds_data.Splits  # Images uint8 [N, 32, 32, 3], labels int32.


def default_manual_dir() -> Path | None:
  """``$KFC_JAX_SVHN_DIR`` when set, else ``None`` (TFDS's own manual dir)."""
  value = os.environ.get(MANUAL_DIR_ENV)
  return Path(value) if value else None


def load_svhn(
  *,
  data_dir: str | os.PathLike[str] | None = None,
  manual_dir: str | os.PathLike[str] | None = None,
  download: bool = True,
  num_validation: int = 6_000,
) -> SvhnSplits:
  """Loads (preparing if needed) ``svhn_cropped`` into memory.

  Args:
    data_dir: TFDS data directory (``None``: TFDS's default).
    manual_dir: directory with the three original ``.mat`` files (``None``:
      :func:`default_manual_dir`).
    download: whether TFDS may download the files if they are not at hand.
    num_validation: how many of the last training images to hold out.

  Returns:
    The three splits.

  Raises:
    ValueError: ``num_validation`` is not in ``[1, 73256]``.
    tfds_data.DatasetUnavailableError: SVHN is not prepared and can be
      neither prepared from the files nor downloaded; the message says how to
      get it.
  """
  return tfds_data.load_with_validation(
    "svhn_cropped",
    train_size=TRAIN_SIZE,
    num_validation=num_validation,
    data_dir=data_dir,
    manual_dir=manual_dir if manual_dir is not None else default_manual_dir(),
    manual_files=SVHN_FILES,
    download=download,
    how_to_get=(
      "  (The files are at http://ufldl.stanford.edu/housenumbers/; set "
      f"the manual dir with --manual_dir or ${MANUAL_DIR_ENV}.)"
    ),
  )
