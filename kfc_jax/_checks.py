"""Argument validation shared by the core and the layers.

Every check raises ``ValueError`` or ``TypeError`` naming the argument, what it
received and what it needed. ``assert`` is kept for internal invariants only.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np


def positive_int(value: Any, name: str) -> int:
  """Returns ``value`` as an int, or raises if it is not a positive integer."""
  if isinstance(value, bool) or not isinstance(value, numbers.Integral):
    raise TypeError(
        f"{name} must be a positive integer, got {value!r} of type"
        f" {type(value).__name__}."
    )
  if value < 1:
    raise ValueError(f"{name} must be a positive integer (>= 1), got {value}.")
  return int(value)


def int_tuple(value: Any, name: str) -> tuple[int, ...]:
  """Returns ``value`` as a non-empty tuple of positive ints, or raises."""
  if isinstance(value, numbers.Integral) and not isinstance(value, bool):
    value = (value,)
  if not isinstance(value, Sequence) or isinstance(value, str) or not value:
    raise TypeError(
        f"{name} must be a non-empty sequence of positive integers, got"
        f" {value!r}."
    )
  return tuple(positive_int(v, f"{name}[{i}]") for i, v in enumerate(value))


def finite_matrix(w: Any, name: str, ndim: int = 2) -> np.ndarray:
  """Returns ``w`` as a float64 NumPy array, checking its rank and values."""
  try:
    arr = np.asarray(w)
  except Exception as e:  # pragma: no cover - exotic array types
    raise TypeError(f"{name} must be an array, got {type(w).__name__}.") from e
  if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
    raise TypeError(
        f"{name} must hold real numbers, got dtype {arr.dtype}."
    )
  if arr.ndim != ndim:
    raise ValueError(
        f"{name} must be a {ndim}-D array, got shape {arr.shape} ({arr.ndim}-D)."
    )
  arr = arr.astype(np.float64)
  if not np.all(np.isfinite(arr)):
    bad = int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
    raise ValueError(
        f"{name} must be finite, but {bad} of its {arr.size} entries are NaN"
        " or infinite."
    )
  return arr
