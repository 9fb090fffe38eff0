"""TFDS datasets as in-memory NumPy arrays, prepared offline when possible.

The examples read their data the way users have it: ``tfds.load(name,
data_dir=...)``. On a machine without a network the same call prepares the
dataset from its original files placed in a *manual directory* (TFDS matches
them by file name and verifies their checksums), so nothing here is specific
to the offline case except the clear error raised when neither the prepared
dataset, nor the files, nor a network are available.

TensorFlow is imported lazily (only when data is actually loaded), so the
training code can be imported and tested without paying for it.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.resources
import importlib.resources.abc
import logging
import os
import socket
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType

import numpy as np

logger = logging.getLogger(__name__)

# Where TFDS downloads from; used only to tell "offline" apart quickly, because
# an offline download otherwise retries with back-off for minutes.
_DOWNLOAD_HOST = ("storage.googleapis.com", 443)


class DatasetUnavailableError(RuntimeError):
  """The dataset is not prepared and cannot be prepared from here."""


def import_tfds() -> ModuleType:
  """Imports ``tensorflow_datasets``, working around a packaging bug.

  tensorflow-datasets 4.9.10 imports ``importlib_resources`` unconditionally
  but declares the dependency only for Python < 3.9
  (tensorflow/datasets#11212), so preparing a dataset fails on a clean
  install. The standard library's ``importlib.resources`` provides what TFDS
  uses from it (``abc.Traversable``), so it stands in when the backport is
  absent. The ``examples`` extra installs the backport, so this only matters
  for TFDS installed without it.

  Returns:
    The ``tensorflow_datasets`` module.
  """
  try:
    importlib.import_module("importlib_resources")
  except ModuleNotFoundError:
    sys.modules["importlib_resources"] = importlib.resources
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  return tfds


def network_available(host: tuple[str, int] = _DOWNLOAD_HOST, timeout: float = 3.0) -> bool:
  """Whether a TCP connection to the TFDS download host succeeds quickly."""
  try:
    with socket.create_connection(host, timeout=timeout):
      return True
  except OSError:
    return False


def missing_files(directory: str | os.PathLike[str] | None, names: Sequence[str]) -> list[str]:
  """The entries of ``names`` that are not files in ``directory``."""
  if directory is None:
    return list(names)
  return [n for n in names if not (Path(directory) / n).is_file()]


def load_numpy_splits(
  name: str,
  splits: Mapping[str, str],
  *,
  data_dir: str | os.PathLike[str] | None,
  manual_dir: str | os.PathLike[str] | None,
  manual_files: Sequence[str],
  download: bool = True,
  how_to_get: str = "",
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """Loads supervised TFDS splits into memory, preparing the dataset if needed.

  Args:
    name: the TFDS name, e.g. ``"mnist"``.
    splits: our split name -> TFDS split string, e.g.
      ``{"train": "train[:-10000]", "validation": "train[-10000:]"}``.
    data_dir: the TFDS data directory (``None``: TFDS's default,
      ``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``).
    manual_dir: a directory holding the dataset's original files
      (``manual_files``); ``None`` means TFDS's own
      ``<data_dir>/downloads/manual``.
    manual_files: the file names TFDS expects for an offline preparation.
    download: whether TFDS may download the files when they are not in
      ``manual_dir``.
    how_to_get: extra lines for the error message (e.g. where the files of
      this project live and which environment variable points at them).

  Returns:
    ``{split: (images, labels)}`` as NumPy arrays, in TFDS's order.

  Raises:
    DatasetUnavailableError: the dataset is not prepared and can be neither
      prepared from ``manual_dir`` nor downloaded, or preparing it failed
      (e.g. a file with the wrong checksum). The message says what to do.
  """
  tfds = import_tfds()
  builder = tfds.builder(name, data_dir=data_dir)
  if manual_dir is None:
    manual_dir = Path(builder.data_dir_root) / "downloads" / "manual"
  manual_dir = Path(manual_dir).expanduser()
  missing = missing_files(manual_dir, manual_files)

  def unavailable(reason: str) -> DatasetUnavailableError:
    lines = [
      f"The {name!r} dataset is not prepared in {builder.data_dir_root} "
      f"and cannot be prepared: {reason}",
      "Get it in one of these ways:",
      "  * with a network, run again: TFDS downloads and prepares it "
      "(--data_dir chooses where it goes);",
      f"  * without one, put the original files ({', '.join(manual_files)}) "
      f"in a directory and pass it as the manual dir (now {manual_dir}).",
    ]
    if how_to_get:
      lines.append(how_to_get)
    return DatasetUnavailableError("\n".join(lines))

  if not builder.is_prepared():
    if missing:
      if not download:
        raise unavailable(
          f"downloading is disabled and the manual dir {manual_dir} lacks {', '.join(missing)}."
        )
      if not network_available():
        raise unavailable(
          f"there is no network and the manual dir {manual_dir} lacks {', '.join(missing)}."
        )
      logger.info("Downloading and preparing %s into %s", name, builder.data_dir_root)
    else:
      logger.info(
        "Preparing %s into %s from the files in %s", name, builder.data_dir_root, manual_dir
      )
    config = tfds.download.DownloadConfig(manual_dir=None if missing else str(manual_dir))
    try:
      builder.download_and_prepare(download_config=config)
    except Exception as e:  # TFDS raises many types (checksums, I/O, HTTP).
      raise unavailable(f"preparing it failed with {type(e).__name__}: {e}") from e

  arrays = {}
  for ours, theirs in splits.items():
    ds = builder.as_dataset(split=theirs, as_supervised=True)
    # Decode in large batches; `batch_size=-1` in `tfds.load` does the same but
    # does not work under `tfds.testing.mock_data`.
    images, labels = [], []
    for x, y in tfds.as_numpy(ds.batch(10_000)):
      images.append(x)
      labels.append(y)
    arrays[ours] = (np.concatenate(images), np.concatenate(labels))
  return arrays


@dataclasses.dataclass(frozen=True)
class Splits:
  """Images ``uint8 [N, H, W, C]`` and labels ``int32 [N]`` per split."""

  train: tuple[np.ndarray, np.ndarray]
  validation: tuple[np.ndarray, np.ndarray]
  test: tuple[np.ndarray, np.ndarray]


def load_with_validation(name: str, *, train_size: int, num_validation: int, **kwargs) -> Splits:
  """TFDS ``train`` less its last ``num_validation`` images, those, and ``test``.

  TFDS stores ``train`` in a fixed, shuffled order, so the validation images
  are the last of that order, not of the original files.

  Args:
    name: the TFDS name.
    train_size: the size of TFDS's ``train`` split.
    num_validation: how many of the last training images to hold out.
    **kwargs: ``data_dir``, ``manual_dir``, ``manual_files``, ``download``
      and ``how_to_get`` of :func:`load_numpy_splits`.

  Returns:
    The three splits.

  Raises:
    ValueError: ``num_validation`` is not in ``[1, train_size - 1]``.
    DatasetUnavailableError: see :func:`load_numpy_splits`.
  """
  if not 0 < num_validation < train_size:
    raise ValueError(f"num_validation must be in [1, {train_size - 1}]; got {num_validation}.")
  arrays = load_numpy_splits(
    name,
    {
      "train": f"train[:-{num_validation}]",
      "validation": f"train[-{num_validation}:]",
      "test": "test",
    },
    **kwargs,
  )
  return Splits(**{k: (x, y.astype(np.int32)) for k, (x, y) in arrays.items()})
