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
from collections.abc import Sequence
from typing import Any, NamedTuple, cast

import numpy as np

from kfc_jax import _checks
from kfc_jax.decompose import _covariance, _data_aware
from kfc_jax.decompose._covariance import DEFAULT_COV_REG
from kfc_jax.decompose._nkp import nearest_kronecker_tensor


class KroneckerSumTerm(NamedTuple):
  """How one term cuts the weight.

  The weight ``w: [m, n]`` is zero-padded to ``[prod(in_shape), prod(out_shape)]``
  and reshaped (row-major) to ``(*in_shape, *out_shape)``; ``factor_axes``
  partitions the axes of that tensor, one group per factor, as for
  :func:`nearest_kronecker_tensor`.

  Example usage::

    >>> import kfc_jax
    >>> # w [8, 15] seen as (2, 4, 3, 5): A [2, 3] owns axes 0 and 2, B [4, 5] 1 and 3
    >>> term = kfc_jax.KroneckerSumTerm((2, 4), (3, 5), ((0, 2), (1, 3)), rank=2)
    >>> term.rank, term.factor_axes
    (2, ((0, 2), (1, 3)))
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
    history: the relative error after the greedy pass and after each sweep
      (with ``input_cov``, the relative output error on the ridged covariance,
      the objective the sweeps lower).
    data_error: with ``input_cov=C``, ``||S (W - W_hat)||_F / ||S W||_F``
      (``S^T S = C``, ``C`` as given); ``None`` without.

  Example usage::

    >>> import numpy as np, kfc_jax
    >>> rng = np.random.default_rng(0)
    >>> a, b = rng.standard_normal((2, 3)), rng.standard_normal((4, 5))
    >>> c, e = rng.standard_normal((4, 3)), rng.standard_normal((2, 5))
    >>> w = np.kron(a, b) + np.kron(c, e)  # two terms, split differently
    >>> terms = [((2, 4), (3, 5), ((0, 2), (1, 3))), ((4, 2), (3, 5), ((0, 2), (1, 3)))]
    >>> d = kfc_jax.nearest_kronecker_sum(w, terms)
    >>> [[f.shape for f in t] for t in d.factors]
    [[(1, 2, 3), (1, 4, 5)], [(1, 4, 3), (1, 2, 5)]]
    >>> bool(d.relative_error < d.history[0])  # the sweeps improve the greedy fit
    True
  """

  factors: tuple[tuple[np.ndarray, ...], ...]
  relative_error: float
  history: tuple[float, ...]
  data_error: float | None = None


_reconstruct = _data_aware.reconstruct


def _check_term(term: Any, i: int, m: int, n: int) -> KroneckerSumTerm:
  if not isinstance(term, Sequence) or len(term) not in (3, 4):
    raise TypeError(f"terms[{i}] must be (in_shape, out_shape, factor_axes[, rank]), got {term!r}.")
  in_shape = _checks.int_tuple(term[0], f"terms[{i}].in_shape")
  out_shape = _checks.int_tuple(term[1], f"terms[{i}].out_shape")
  axes = tuple(tuple(int(a) for a in g) for g in term[2])
  rank = _checks.positive_int(term[3] if len(term) == 4 else 1, f"terms[{i}].rank")
  if math.prod(in_shape) < m or math.prod(out_shape) < n:
    raise ValueError(
      f"terms[{i}] has in_shape {in_shape} and out_shape {out_shape}, which"
      f" multiply to {math.prod(in_shape)} x {math.prod(out_shape)}; they"
      f" must cover the weight's shape {m} x {n}."
    )
  return KroneckerSumTerm(in_shape, out_shape, axes, rank)


def nearest_kronecker_sum(
  w: Any,
  terms: Sequence[Any],
  *,
  sweeps: int = 20,
  tol: float = 1e-10,
  input_cov: Any = None,
  cov_reg: float = DEFAULT_COV_REG,
) -> KroneckerSumDecomposition:
  """Fits a sum of differently grouped Kronecker terms to a weight matrix.

  A single unpadded term is exactly :func:`nearest_kronecker_tensor` (optimal
  for two factors). Otherwise the terms are fitted greedily, then refined by up
  to ``sweeps`` block-coordinate sweeps until the error improves by less than
  ``tol``; the best fit seen is returned.

  *Data-aware* (``input_cov=C``, the ``[m, m]`` input covariance): the same
  descent on the output error ``tr((W - W_hat)^T C (W - W_hat))``; each term
  starts from the whitened closed form of :func:`~kfc_jax.nearest_kronecker`
  and each refit is ``10`` sweeps of its alternating least squares, so the
  objective never increases; the result is the better, on the data, of this
  and the weight-only fit. Ridge: ``C + cov_reg * mean(diag C) * I``.

  Args:
    w: ``[m, n]`` weight, finite.
    terms: :class:`KroneckerSumTerm` or tuples
      ``(in_shape, out_shape, factor_axes[, rank])``.
    sweeps: refinement sweeps at most.
    tol: stop when a sweep improves the relative error by less than this.
    input_cov: ``[m, m]`` input covariance (or a
      :class:`~kfc_jax.decompose.RunningCovariance`); ``None`` for the weight
      error.
    cov_reg: the ridge on ``input_cov``, relative to its mean variance.

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
  if input_cov is None:
    return _descend(w, terms, sweeps, tol, _weight_refit(terms), _weight_error(w))
  cov = _covariance.check_input_cov(input_cov, m, cov_reg, "w's first dimension")
  weight_only = _descend(w, terms, sweeps, tol, _weight_refit(terms), _weight_error(w))
  baseline = _covariance.data_error(w, _total(weight_only.factors, terms, m, n), cov.raw)
  weight_only = weight_only._replace(data_error=baseline)
  if _covariance.is_scaled_identity(cov.raw):
    return weight_only
  # The weight is zero-padded to each term's full shape. Padded inputs are
  # never seen by the layer (unconstrained rows): give them a weight of their
  # own that keeps C_i positive definite; the EM fill makes their target the
  # term's current value, so the descent stays monotone on the real objective.
  pads = {}
  for t in terms:
    rows = math.prod(t.in_shape)
    if rows not in pads:
      pads[rows] = np.eye(rows) * np.mean(np.diag(cov.reg))
      pads[rows][:m, :m] = cov.reg

  def refit(i, tensor, current):
    t = terms[i]
    n_in, c = len(t.in_shape), pads[math.prod(t.in_shape)]
    if current is None:
      current = _data_aware.whitened_start(
        tensor,
        t.factor_axes,
        n_in,
        t.rank,
        c,
        cov_reg,
        lambda x, axes, r: nearest_kronecker_tensor(x, axes, r).factors,
      )
    factors, _ = _data_aware.als(tensor, t.factor_axes, n_in, c, current, _INNER_SWEEPS, tol)
    return factors

  total_ridged = _covariance.data_objective(w, cov.reg)

  def data_error(approx):
    return math.sqrt(max(_covariance.data_objective(w - approx, cov.reg), 0.0) / total_ridged)

  dec = _descend(w, terms, sweeps, tol, refit, data_error, exact_single=False)
  error = _covariance.data_error(w, _total(dec.factors, terms, m, n), cov.raw)
  if error >= baseline:
    return weight_only
  return dec._replace(data_error=error)


_INNER_SWEEPS = 10  # ALS sweeps per term per block-coordinate step (data-aware)


def _total(factors, terms, m, n) -> np.ndarray:
  return cast(
    np.ndarray,
    sum(
      _reconstruct(fs, t.factor_axes, (*t.in_shape, *t.out_shape)).reshape(
        math.prod(t.in_shape), -1
      )[:m, :n]
      for fs, t in zip(factors, terms, strict=True)
    ),
  )


def _weight_refit(terms):
  def refit(i, tensor, current):
    del current  # the truncated SVD needs no start
    t = terms[i]
    return nearest_kronecker_tensor(tensor, t.factor_axes, t.rank).factors

  return refit


def _weight_error(w):
  norm = np.linalg.norm(w)
  return lambda approx: float(np.linalg.norm(w - approx) / norm) if norm > 0 else 0.0


def _descend(w, terms, sweeps, tol, refit, error, exact_single=True) -> KroneckerSumDecomposition:
  """Greedy fit then block-coordinate sweeps; ``refit(i, tensor, current)``."""
  m, n = w.shape
  full_shapes = [(math.prod(t.in_shape), math.prod(t.out_shape)) for t in terms]
  approx = [np.zeros(s) for s in full_shapes]  # each term's padded W_hat
  factors: list[Any] = [None] * len(terms)

  def fit(i: int, target: np.ndarray) -> None:
    t = terms[i]
    full = approx[i].copy()  # padded entries keep the term's own value (EM)
    full[:m, :n] = target
    tensor = full.reshape(*t.in_shape, *t.out_shape)
    factors[i] = tuple(refit(i, tensor, factors[i]))
    approx[i] = _reconstruct(factors[i], t.factor_axes, tensor.shape).reshape(full_shapes[i])

  def total() -> np.ndarray:
    return cast(np.ndarray, sum(a[:m, :n] for a in approx))

  for i in range(len(terms)):
    fit(i, w - total())
  history = [error(total())]
  best = (history[0], list(factors))
  exact = exact_single and len(terms) == 1 and full_shapes[0] == (m, n)
  for _ in range(0 if exact else sweeps):
    for i in range(len(terms)):
      fit(i, w - total() + approx[i][:m, :n])
    history.append(error(total()))
    if history[-1] < best[0]:
      best = (history[-1], list(factors))
    if history[-2] - history[-1] < tol:
      break
  relative = _weight_error(w)(_total(best[1], terms, m, n))
  return KroneckerSumDecomposition(tuple(best[1]), relative, tuple(history))
