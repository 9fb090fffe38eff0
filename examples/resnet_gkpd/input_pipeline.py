"""CIFAR-10 or MNIST (padded to 32x32) through tensorflow-datasets, in memory.

* ``cifar10``: TFDS's ``train`` (50,000 images) and ``test`` (10,000),
  ``uint8 [N, 32, 32, 3]``. Downloaded by TFDS where there is a network, or
  prepared offline from ``cifar-10-binary.tar.gz`` in a manual directory
  (``--manual_dir`` or ``$KFC_JAX_CIFAR10_DIR``).
* ``mnist``: prepared like the MNIST example's (offline from
  ``../shared/data/mnist`` on this project's machines), the 28x28 digits
  zero-padded by 2 pixels on each side to ``uint8 [N, 32, 32, 1]``, the input
  size of a CIFAR ResNet.
  Training images come from TFDS's ``train`` split (60,000), test images
  from ``test`` (10,000).

``num_train`` keeps only the first that-many training images (TFDS stores
them shuffled, so every class is present); the experiment always tests on
the whole test set.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np

from examples._common import mnist_data, tfds_data

DATASETS = ("cifar10", "mnist")
CIFAR10_MANUAL_DIR_ENV = "KFC_JAX_CIFAR10_DIR"
# The file TFDS's cifar10 builder downloads (and accepts from manual_dir).
CIFAR10_FILES = ("cifar-10-binary.tar.gz",)
IMAGE_SIZE = 32


@dataclasses.dataclass(frozen=True)
class Splits:
  """Images ``uint8 [N, 32, 32, C]`` and labels ``int32 [N]`` per split."""

  train: tuple[np.ndarray, np.ndarray]
  test: tuple[np.ndarray, np.ndarray]

  @property
  def channels(self) -> int:
    return int(self.train[0].shape[-1])


def pad_to_32(images: np.ndarray) -> np.ndarray:
  """Zero-pads ``[N, H, W, C]`` images (H, W <= 32) to ``[N, 32, 32, C]``.

  Raises:
    ValueError: ``images`` is not 4-D or larger than 32x32.
  """
  if images.ndim != 4 or max(images.shape[1:3]) > IMAGE_SIZE:
    raise ValueError(
      f"images must be [N, H, W, C] with H, W <= {IMAGE_SIZE}; got shape {images.shape}."
    )
  dh, dw = IMAGE_SIZE - images.shape[1], IMAGE_SIZE - images.shape[2]
  return np.pad(images, ((0, 0), (dh // 2, dh - dh // 2), (dw // 2, dw - dw // 2), (0, 0)))


def load(
  dataset: str,
  *,
  num_train: int | None = None,
  num_test: int | None = None,
  data_dir: str | os.PathLike[str] | None = None,
  manual_dir: str | os.PathLike[str] | None = None,
  download: bool = True,
) -> Splits:
  """Loads (preparing if needed) ``dataset`` into memory.

  Args:
    dataset: ``"cifar10"`` or ``"mnist"``.
    num_train: keep the first this-many training images (``None``: all;
      only those are decoded).
    num_test: the same for the test images (``None``, the default: all;
      smaller only for quick checks).
    data_dir: TFDS data directory (``None``: TFDS's default).
    manual_dir: directory with the dataset's original files for an offline
      preparation (``None``: ``$KFC_JAX_CIFAR10_DIR`` for CIFAR-10; for MNIST
      ``$KFC_JAX_MNIST_DIR``, else ``../shared/data/mnist`` when it exists).
    download: whether TFDS may download the files if they are not at hand.

  Returns:
    The train and test splits.

  Raises:
    ValueError: an unknown ``dataset`` or a non-positive ``num_train`` or
      ``num_test``.
    tfds_data.DatasetUnavailableError: the dataset is not prepared and can be
      neither prepared from the files nor downloaded.
  """
  if dataset not in DATASETS:
    raise ValueError(f"dataset must be one of {DATASETS}; got {dataset!r}.")
  for name, n in (("num_train", num_train), ("num_test", num_test)):
    if n is not None and (not isinstance(n, int) or n < 1):
      raise ValueError(f"{name} must be a positive int or None; got {n!r}.")
  splits = {
    "train": "train" if num_train is None else f"train[:{num_train}]",
    "test": "test" if num_test is None else f"test[:{num_test}]",
  }
  if dataset == "mnist":
    if manual_dir is None:
      manual_dir = mnist_data.default_manual_dir()
    files, how_to_get = mnist_data.MNIST_FILES, mnist_data.HOW_TO_GET
  else:
    if manual_dir is None and os.environ.get(CIFAR10_MANUAL_DIR_ENV):
      manual_dir = Path(os.environ[CIFAR10_MANUAL_DIR_ENV])
    files, how_to_get = (
      CIFAR10_FILES,
      (f"  (Set it with --manual_dir or ${CIFAR10_MANUAL_DIR_ENV}.)"),
    )
  arrays = tfds_data.load_numpy_splits(
    dataset,
    splits,
    data_dir=data_dir,
    manual_dir=manual_dir,
    manual_files=files,
    download=download,
    how_to_get=how_to_get,
  )
  pad = pad_to_32 if dataset == "mnist" else (lambda x: x)
  # Sliced again: TFDS's mock data ignores the slices of split strings.
  sizes = {"train": num_train, "test": num_test}
  return Splits(
    **{k: (pad(x[: sizes[k]]), y[: sizes[k]].astype(np.int32)) for k, (x, y) in arrays.items()}
  )


def augment(
  images: np.ndarray, rng: np.random.Generator, *, flip: bool = True, pad: int = 4
) -> np.ndarray:
  """He et al.'s CIFAR augmentation on a host batch: random crops and flips.

  Each image is zero-padded by ``pad`` pixels, cropped back to its size at a
  random offset and, with ``flip``, mirrored left-right with probability 1/2.
  """
  n, h, w, _ = images.shape
  padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  dy = rng.integers(0, 2 * pad + 1, n)
  dx = rng.integers(0, 2 * pad + 1, n)
  rows = dy[:, None] + np.arange(h)[None, :]  # [n, h]
  cols = dx[:, None] + np.arange(w)[None, :]  # [n, w]
  out = padded[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]
  if flip:
    mirror = rng.random(n) < 0.5
    out[mirror] = out[mirror, :, ::-1]
  return out
