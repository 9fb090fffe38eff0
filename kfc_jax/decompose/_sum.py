"""Nearest sum of Kronecker terms that group a weight's axes differently.

A layer may sum several Kronecker terms whose factors cut the weight in
different ways (KFC-Combined: II + III + IV; a KFCM layer with terms of
different factor shapes), and a term's factors may be padded past the weight.
No closed form exists for either; this fits the terms by block coordinate
descent: greedily (each term on the residual of the previous ones), then in
sweeps that refit each term to the weight minus all the others. Each refit is
:func:`nearest_kronecker_tensor`, optimal for two factors, so with two-factor
terms the error never increases. Entries of a term that fall in the padding
are unconstrained; each refit fills them with the term's current value (the
EM step for missing entries), which keeps the descent monotone.
"""

from __future__ import annotations

import math
import numbers
import string
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from kfc_jax import _checks
from kfc_jax.decompose import _covariance
from kfc_jax.decompose._nkp import nearest_kronecker_tensor


class KroneckerSumTerm(NamedTuple):
  """How one term cuts the weight.

  The weight ``w: [m, n]`` is zero-padded to ``[prod(in_shape), prod(out_shape)]``
  and reshaped (row-major) to ``(*in_shape, *out_shape)``; ``factor_axes``
  partitions the axes of that tensor, one group per factor, as for
  :func:`nearest_kronecker_tensor`.
  """

  in_shape: tuple[int, ...]
  out_shape: tuple[int, ...]
  factor_axes: tuple[tuple[int, ...], ...]
  rank: int = 1


class KroneckerSumDecomposition(NamedTuple):
  """Result of :func:`nearest_kronecker_sum`.

  Attributes:
    factors: per term, one array per factor, ``[rank, *group shape]``.
    relative_error: ``||W - W_hat||_F / ||W||_F`` on the unpadded weight.
    history: the relative error after the greedy pass and after each sweep.
  """

  factors: tuple[tuple[np.ndarray, ...], ...]
  relative_error: float
  history: tuple[float, ...]


def _reconstruct(factors: Sequence[np.ndarray], factor_axes, shape) -> np.ndarray:
  """``sum_r prod_f F_f[r, group f]`` as a tensor of ``shape``."""
  letters = string.ascii_letters
  ndim = len(shape)
  operands = ",".join(
      "Z" + "".join(letters[a] for a in axes) for axes in factor_axes)
  out = "".join(letters[a] for a in range(ndim))
  return np.einsum(f"{operands}->{out}", *factors, optimize=True)


def _check_term(term: Any, i: int, m: int, n: int) -> KroneckerSumTerm:
  if not isinstance(term, Sequence) or len(term) not in (3, 4):
    raise TypeError(
        f"terms[{i}] must be (in_shape, out_shape, factor_axes[, rank]), got"
        f" {term!r}.")
  in_shape = _checks.int_tuple(term[0], f"terms[{i}].in_shape")
  out_shape = _checks.int_tuple(term[1], f"terms[{i}].out_shape")
  axes = tuple(tuple(int(a) for a in g) for g in term[2])
  rank = _checks.positive_int(term[3] if len(term) == 4 else 1,
                              f"terms[{i}].rank")
  if math.prod(in_shape) < m or math.prod(out_shape) < n:
    raise ValueError(
        f"terms[{i}] has in_shape {in_shape} and out_shape {out_shape}, which"
        f" multiply to {math.prod(in_shape)} x {math.prod(out_shape)}; they"
        f" must cover the weight's shape {m} x {n}.")
  return KroneckerSumTerm(in_shape, out_shape, axes, rank)


def nearest_kronecker_sum(
    w: Any,
    terms: Sequence[Any],
    *,
    sweeps: int = 20,
    tol: float = 1e-10,
) -> KroneckerSumDecomposition:
  """Fits a sum of differently grouped Kronecker terms to a weight matrix.

  A single unpadded term is exactly :func:`nearest_kronecker_tensor` (optimal
  for two factors). Otherwise the terms are fitted greedily, then refined by up
  to ``sweeps`` block-coordinate sweeps until the error improves by less than
  ``tol``; the best fit seen is returned.

  Args:
    w: ``[m, n]`` weight, finite.
    terms: :class:`KroneckerSumTerm` or tuples
      ``(in_shape, out_shape, factor_axes[, rank])``.
    sweeps: refinement sweeps at most.
    tol: stop when a sweep improves the relative error by less than this.

  Returns:
    A :class:`KroneckerSumDecomposition`.

  Example usage::

    >>> import numpy as np, kfc_jax
    >>> a, b = np.random.randn(2, 3), np.random.randn(3, 2)
    >>> w = np.kron(a, b)[:5]               # a 5 x 6 slice of a 6 x 6 product
    >>> dec = kfc_jax.decompose.nearest_kronecker_sum(
    ...     w, [((2, 3), (3, 2), ((0, 2), (1, 3)))], sweeps=500)
    >>> [f.shape for f in dec.factors[0]], dec.relative_error < 1e-6
    ([(1, 2, 3), (1, 3, 2)], True)
  """
  w = _covariance.real_array(w, "w")
  m, n = w.shape
  if isinstance(terms, (str, bytes)) or not isinstance(terms, Sequence) or not terms:
    raise TypeError(f"terms must be a non-empty sequence of terms, got {terms!r}.")
  terms = [_check_term(t, i, m, n) for i, t in enumerate(terms)]
  if isinstance(sweeps, bool) or not isinstance(sweeps, numbers.Integral):
    raise TypeError(f"sweeps must be an integer >= 0, got {sweeps!r}.")
  if sweeps < 0:
    raise ValueError(f"sweeps must be an integer >= 0, got {sweeps}.")
  sweeps = int(sweeps)
  norm = np.linalg.norm(w)

  full_shapes = [(math.prod(t.in_shape), math.prod(t.out_shape)) for t in terms]
  approx = [np.zeros(s) for s in full_shapes]  # each term's padded W_hat
  factors: list[Any] = [None] * len(terms)

  def fit(i: int, target: np.ndarray) -> None:
    t = terms[i]
    full = approx[i].copy()  # padded entries keep the term's own value (EM)
    full[:m, :n] = target
    tensor = full.reshape(*t.in_shape, *t.out_shape)
    dec = nearest_kronecker_tensor(tensor, t.factor_axes, t.rank)
    factors[i] = dec.factors
    approx[i] = _reconstruct(dec.factors, t.factor_axes,
                             tensor.shape).reshape(full_shapes[i])

  def total() -> np.ndarray:
    return sum(a[:m, :n] for a in approx)

  def error() -> float:
    return float(np.linalg.norm(w - total()) / norm) if norm > 0 else 0.0

  for i in range(len(terms)):
    fit(i, w - total())
  history = [error()]
  best = (history[0], list(factors))
  exact = len(terms) == 1 and full_shapes[0] == (m, n)
  for _ in range(0 if exact else sweeps):
    for i in range(len(terms)):
      fit(i, w - total() + approx[i][:m, :n])
    history.append(error())
    if history[-1] < best[0]:
      best = (history[-1], list(factors))
    if history[-2] - history[-1] < tol:
      break
  return KroneckerSumDecomposition(tuple(best[1]), best[0], tuple(history))
