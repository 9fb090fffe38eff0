"""Argument validation and normalisation shared by every module.

Every check raises ``ValueError`` or ``TypeError`` naming the argument, what it
received and what it needed. ``assert`` is kept for internal invariants only.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np

from kfc_jax._dtypes import factor_dtype


def positive_int(value: Any, name: str) -> int:
  """Returns ``value`` as an int, or raises if it is not a positive integer."""
  if isinstance(value, bool) or not isinstance(value, numbers.Integral):
    raise TypeError(
      f"{name} must be a positive integer, got {value!r} of type {type(value).__name__}."
    )
  if value < 1:
    raise ValueError(f"{name} must be a positive integer (>= 1), got {value}.")
  return int(value)


def compression_ratio(value: Any, name: str = "compression") -> float:
  """Returns a compression ratio (dense / compressed parameters): finite, > 1."""
  if isinstance(value, bool) or not isinstance(value, numbers.Real):
    raise TypeError(
      f"{name} must be a real number > 1 (dense / compressed parameters), got"
      f" {value!r} of type {type(value).__name__}."
    )
  ratio = float(value)
  if not (math.isfinite(ratio) and ratio > 1):
    raise ValueError(
      f"{name} must be a finite number > 1 (dense / compressed parameters), got {value!r}."
    )
  return ratio


def int_tuple(value: Any, name: str) -> tuple[int, ...]:
  """Returns ``value`` as a non-empty tuple of positive ints, or raises."""
  if isinstance(value, numbers.Integral) and not isinstance(value, bool):
    value = (value,)
  if not isinstance(value, Sequence) or isinstance(value, str) or not value:
    raise TypeError(f"{name} must be a non-empty sequence of positive integers, got {value!r}.")
  return tuple(positive_int(v, f"{name}[{i}]") for i, v in enumerate(value))


def finite_matrix(w: Any, name: str, ndim: int = 2) -> np.ndarray:
  """Returns ``w`` as a float64 NumPy array, checking its rank and values."""
  try:
    arr = np.asarray(w)
  except Exception as e:  # pragma: no cover - exotic array types
    raise TypeError(f"{name} must be an array, got {type(w).__name__}.") from e
  if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
    raise TypeError(f"{name} must hold real numbers, got dtype {arr.dtype}.")
  if arr.ndim != ndim:
    raise ValueError(f"{name} must be a {ndim}-D array, got shape {arr.shape} ({arr.ndim}-D).")
  arr = arr.astype(np.float64)
  if not np.all(np.isfinite(arr)):
    bad = int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
    raise ValueError(
      f"{name} must be finite, but {bad} of its {arr.size} entries are NaN or infinite."
    )
  return arr


# ---------------------------------------------------------------------------
# Conv and plan arguments
# ---------------------------------------------------------------------------

STRATEGY_NAMES = ("auto", "factored", "materialize")
PADDING_NAMES = ("SAME", "VALID", "SAME_LOWER", "CIRCULAR")


def strategy(value: Any, num_factors: int | None = None) -> Any:
  """Returns a plan strategy: one of ``STRATEGY_NAMES``, or a factor order.

  Typed ``Any`` so callers keep their own ``Literal`` strategy types.

  Args:
    value: the ``strategy`` argument.
    num_factors: for :func:`kfc_jax.kron_matmul`, the number of factors; a
      permutation of ``range(num_factors)`` (the contraction order) is then
      accepted too. ``None`` (convolutions) accepts the names only.
  """
  names = (*STRATEGY_NAMES, "autotune")
  if isinstance(value, str) and value in names:
    return value
  if (
    num_factors is not None
    and isinstance(value, Sequence)
    and not isinstance(value, str)
    and all(isinstance(s, numbers.Integral) for s in value)
    and sorted(value) == list(range(num_factors))
  ):
    return tuple(int(s) for s in value)
  orders = (
    ""
    if num_factors is None
    else f" or a permutation of {tuple(range(num_factors))} (the factor contraction order)"
  )
  raise ValueError(f"strategy must be one of {names}{orders}, got {value!r}.")


def pair(value: Any, name: str) -> tuple[int, int]:
  """Returns ``value`` (a positive int or two of them) as ``(height, width)``."""
  if isinstance(value, Sequence) and not isinstance(value, str) and len(value) != 2:
    raise ValueError(
      f"{name} must be a positive int or a pair (height, width) of positive ints, got {value!r}."
    )
  if not isinstance(value, Sequence):
    v = positive_int(value, name)
    return (v, v)
  t = int_tuple(value, name)
  return (t[0], t[1])


def _padding_choices() -> str:
  return (
    f"one of {PADDING_NAMES}, an int p (p on every side), a pair (ph, pw),"
    " or ((top, bottom), (left, right))"
  )


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
    if all(isinstance(p, Sequence) and len(p) == 2 and all(_is_int(q) for q in p) for p in padding):
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


# ---------------------------------------------------------------------------
# Factors of the primitives
# ---------------------------------------------------------------------------


def _is_array_sequence(value: Any) -> bool:
  """Whether ``value`` is a list/tuple of arrays (not one array, not numbers)."""
  return (
    isinstance(value, Sequence)
    and not isinstance(value, str)
    and len(value) > 0
    and all(hasattr(v, "ndim") for v in value)
  )


def nonnegative_shape(value: Any, name: str) -> tuple[int, ...]:
  """Returns ``value`` as a non-empty tuple of ints >= 0 (an array shape)."""
  if (
    not isinstance(value, Sequence)
    or isinstance(value, str)
    or not value
    or not all(isinstance(d, numbers.Integral) and not isinstance(d, bool) for d in value)
  ):
    raise TypeError(
      f"{name} must be a non-empty sequence of integers (an array shape), got {value!r}."
    )
  if any(d < 0 for d in value):
    raise ValueError(f"{name} must have sizes >= 0, got {tuple(value)}.")
  return tuple(int(d) for d in value)


def factor_list(factors: Any, name: str = "factors") -> list[Any]:
  """Normalises ``factors`` to a list of ``[r, m, n]`` arrays (same r)."""
  if hasattr(factors, "ndim") or not isinstance(factors, Sequence):
    raise TypeError(
      f"{name} must be a sequence (list or tuple) of factor arrays, each"
      f" [rank, m_t, n_t] or [m_t, n_t]; got {type(factors).__name__}. For a"
      f" single factor write ({name[:-1] if name.endswith('s') else name},)."
    )
  if not factors:
    raise ValueError(f"{name} must hold at least one factor, got none.")
  out = []
  for i, f in enumerate(factors):
    if _is_array_sequence(f):
      raise TypeError(
        f"{name}[{i}] must be one array [rank, m, n] or [m, n], got a"
        f" {type(f).__name__} of {len(f)} arrays; stack rank terms with"
        " jnp.stack (the leading axis is the rank)."
      )
    if not hasattr(f, "ndim"):
      f = jnp.asarray(f)
    if f.ndim == 2:
      f = f[None]
    elif f.ndim != 3:
      raise ValueError(
        f"{name}[{i}] must have shape [rank, m, n] or [m, n], got shape"
        f" {tuple(f.shape)} ({f.ndim}-D)."
      )
    factor_dtype(f.dtype, f"{name}[{i}]")
    if 0 in f.shape[1:]:
      raise ValueError(
        f"{name}[{i}] must have sizes m, n >= 1, got shape {tuple(f.shape)};"
        " a zero-size factor has no Kronecker product to multiply by."
      )
    out.append(f)
  ranks = [f.shape[0] for f in out]
  if len(set(ranks)) != 1:
    raise ValueError(
      f"all {name} must have the same rank (leading axis), got ranks {ranks}"
      f" for shapes {[tuple(f.shape) for f in out]}."
    )
  if ranks[0] < 1:
    raise ValueError(f"{name} must have rank >= 1, got rank {ranks[0]}.")
  return out


def matmul_factor_shapes(factor_shapes: Any) -> list[tuple[int, int, int]]:
  """Validates ``kron_matmul_plan``'s ``factor_shapes``; returns them 3-D."""
  shapes = []
  for i, s in enumerate(factor_shapes):
    s = int_tuple(s, f"factor_shapes[{i}]")
    if len(s) == 2:
      s = (1, *s)
    if len(s) != 3:
      raise ValueError(f"factor_shapes[{i}] must be (rank, m, n) or (m, n), got {s}.")
    shapes.append(s)
  if not shapes:
    raise ValueError("factor_shapes must hold at least one shape, got none.")
  if len({s[0] for s in shapes}) != 1:
    raise ValueError(f"all factor_shapes must have the same rank, got {[s[0] for s in shapes]}.")
  return shapes


def conv_term(factors: Any, name: str = "factors") -> tuple[Any, Any]:
  """Validates one ``(A, B)`` pair; returns 5-D factors ``[r, h, w, i, o]``."""
  if hasattr(factors, "ndim") or not isinstance(factors, Sequence):
    raise TypeError(
      f"{name} must be a pair (A, B) of kernel factors, A [rank, ah, aw, ai,"
      f" ao] and B [rank, bh, bw, bi, bo] (or 4-D HWIO, rank 1); got"
      f" {type(factors).__name__}."
    )
  if len(factors) != 2:
    if factors and all(isinstance(t, Sequence) and not hasattr(t, "ndim") for t in factors):
      raise TypeError(
        f"{name} must be one pair (A, B), got a sequence of {len(factors)}"
        f" pairs; use kron_conv_sum(x, terms) to sum several terms."
      )
    raise ValueError(f"{name} must be a pair (A, B) of kernel factors, got {len(factors)} factors.")
  out = []
  for i, f in enumerate(factors):
    label = f"{name}[{i}] ({'AB'[i]})"
    if _is_array_sequence(f):
      raise TypeError(
        f"{label} must be one kernel factor array, got a"
        f" {type(f).__name__} of {len(f)} arrays: {name} looks like a list of"
        " (A, B) pairs; use kron_conv_sum(x, terms) to sum several terms (or"
        " stack rank terms along a leading axis with jnp.stack)."
      )
    if not hasattr(f, "ndim"):
      f = jnp.asarray(f)
    if f.ndim == 4:
      f = f[None]
    elif f.ndim != 5:
      raise ValueError(
        f"{label} must have shape [rank, h, w, in, out] or [h, w, in, out]"
        f" (HWIO), got shape {tuple(f.shape)} ({f.ndim}-D)."
      )
    factor_dtype(f.dtype, label)
    if 0 in f.shape[1:]:
      raise ValueError(
        f"{label} must have every size >= 1, got shape {tuple(f.shape)}; a"
        " zero-size factor has no kernel to convolve by."
      )
    out.append(f)
  a, b = out
  if a.shape[0] != b.shape[0]:
    raise ValueError(
      f"{name} = (A, B) must have A and B of the same rank (leading axis),"
      f" got A {tuple(a.shape)} and B {tuple(b.shape)}."
    )
  if a.shape[0] < 1:
    raise ValueError(f"{name} must have rank >= 1, got rank {a.shape[0]}.")
  return a, b


def conv_term_shapes(shapes: Any, name: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
  """Validates ``(A.shape, B.shape)``; returns them 5-D."""
  if not isinstance(shapes, Sequence) or len(shapes) != 2:
    raise ValueError(
      f"{name} must be a pair (A shape, B shape), each (rank, h, w, in, out)"
      f" or (h, w, in, out), got {shapes!r}."
    )
  out = []
  for label, s in zip("AB", shapes, strict=True):
    s = int_tuple(s, f"{name} {label}")
    if len(s) == 4:
      s = (1, *s)
    if len(s) != 5:
      raise ValueError(f"{name} {label} must be (rank, h, w, in, out) or (h, w, in, out), got {s}.")
    out.append(s)
  if out[0][0] != out[1][0]:
    raise ValueError(f"{name} A and B must have the same rank, got {out[0]} and {out[1]}.")
  return out[0], out[1]


def conv_input_shape(
  x_shape: Sequence[int], a: Sequence[int], b: Sequence[int], name: str = "x"
) -> None:
  """Checks that ``x_shape`` is ``[*batch, H, W, ai*bi]`` for factors ``a``, ``b``."""
  c = a[3] * b[3]
  if len(x_shape) < 3 or x_shape[-1] != c:
    raise ValueError(
      f"{name} must have shape [*batch, height, width, {c}] (NHWC; {c} = the"
      f" factors' input channels ai*bi = {a[3]}*{b[3]}), got {name} with"
      f" shape {tuple(x_shape)}."
    )
  if 0 in tuple(x_shape[-3:-1]):
    raise ValueError(
      f"{name} must have height and width >= 1, got {name} with shape"
      f" {tuple(x_shape)} (an empty batch is fine, an empty image is not)."
    )


def same_kernel_shape(shapes: Sequence[tuple[Sequence[int], Sequence[int]]]) -> None:
  """Checks that every ``(A shape, B shape)`` (5-D) composes to one kernel shape."""
  kernels = [tuple(p * q for p, q in zip(a[1:], b[1:], strict=True)) for a, b in shapes]
  for i, k in enumerate(kernels[1:], 1):
    if k != kernels[0]:
      raise ValueError(
        f"all terms must compose to the same kernel shape (kh, kw, C_in,"
        f" C_out); terms[0] gives {kernels[0]} but terms[{i}] gives {k}"
        f" (A {tuple(shapes[i][0])}, B {tuple(shapes[i][1])})."
      )
