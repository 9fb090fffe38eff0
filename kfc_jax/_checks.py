"""Argument validation and normalisation shared by every module.

Every check raises ``ValueError`` or ``TypeError`` naming the argument, what it
received and what it needed. ``assert`` is kept for internal invariants only.
"""

from __future__ import annotations

import math
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


# ---------------------------------------------------------------------------
# Conv and plan arguments
# ---------------------------------------------------------------------------

STRATEGY_NAMES = ("auto", "factored", "materialize")
PADDING_NAMES = ("SAME", "VALID", "SAME_LOWER", "CIRCULAR")


def strategy(value: Any, num_factors: int | None = None) -> str | tuple[int, ...]:
  """Returns a plan strategy: one of ``STRATEGY_NAMES``, or a factor order.

  Args:
    value: the ``strategy`` argument.
    num_factors: for :func:`kfc_jax.kron_matmul`, the number of factors; a
      permutation of ``range(num_factors)`` (the contraction order) is then
      accepted too. ``None`` (convolutions) accepts the names only.
  """
  if isinstance(value, str) and value in STRATEGY_NAMES:
    return value
  if (num_factors is not None and isinstance(value, Sequence)
      and not isinstance(value, str)
      and all(isinstance(s, numbers.Integral) for s in value)
      and sorted(value) == list(range(num_factors))):
    return tuple(int(s) for s in value)
  orders = ("" if num_factors is None else
            f" or a permutation of {tuple(range(num_factors))} (the factor"
            " contraction order)")
  raise ValueError(
      f"strategy must be one of {STRATEGY_NAMES}{orders}, got {value!r}.")


def pair(value: Any, name: str) -> tuple[int, int]:
  """Returns ``value`` (a positive int or two of them) as ``(height, width)``."""
  if isinstance(value, Sequence) and not isinstance(value, str) and len(value) != 2:
    raise ValueError(
        f"{name} must be a positive int or a pair (height, width) of positive"
        f" ints, got {value!r}.")
  if not isinstance(value, Sequence):
    v = positive_int(value, name)
    return (v, v)
  t = int_tuple(value, name)
  return (t[0], t[1])


def _padding_choices() -> str:
  return (f"one of {PADDING_NAMES}, an int p (p on every side), a pair (ph, pw),"
          " or ((top, bottom), (left, right))")


def _is_int(value: Any) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def normalize_padding(padding: Any) -> str | tuple[tuple[int, int], ...]:
  """Returns a conv ``padding`` as an upper-case name or explicit pairs.

  Accepts one of ``PADDING_NAMES`` (any case), an int ``p`` (``p`` on every
  side), a pair ``(ph, pw)``, or ``((top, bottom), (left, right))``.
  """
  if isinstance(padding, str):
    name = padding.upper()
    if name not in PADDING_NAMES:
      raise ValueError(f"padding must be {_padding_choices()}; got {padding!r}.")
    return name
  if _is_int(padding):
    return ((padding, padding), (padding, padding))
  if isinstance(padding, Sequence) and len(padding) == 2:
    if all(_is_int(p) for p in padding):
      return tuple((int(p), int(p)) for p in padding)
    if all(isinstance(p, Sequence) and len(p) == 2 and all(_is_int(q) for q in p)
           for p in padding):
      return tuple((int(p[0]), int(p[1])) for p in padding)
  raise ValueError(f"padding must be {_padding_choices()}; got {padding!r}.")


# ---------------------------------------------------------------------------
# Sizes and errors
# ---------------------------------------------------------------------------


def divisor_pairs(n: int) -> list[tuple[int, int]]:
  """Every ``(a, b)`` with ``a * b == n``, by increasing ``a``."""
  return [(d, n // d) for d in range(1, n + 1) if n % d == 0]


def balanced_pairs(n: int, limit: int = 6) -> list[tuple[int, int]]:
  """Up to ``limit`` of the most balanced ``(a, b)`` with ``a * b == n``.

  For error messages that list the splits that would work.
  """
  return sorted(divisor_pairs(n), key=lambda p: abs(math.log(p[0] / p[1])))[:limit]


def relative_error(t: Any, approx: Any) -> float:
  """``||t - approx|| / ||t||`` in float64 (0 for a zero ``t``)."""
  t, approx = np.asarray(t, np.float64), np.asarray(approx, np.float64)
  norm = np.linalg.norm(t)
  return float(np.linalg.norm(t - approx) / norm) if norm > 0 else 0.0
