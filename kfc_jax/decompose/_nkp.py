"""Nearest sums of Kronecker products (Van Loan & Pitsianis).

Everything here runs once, offline, in float64 NumPy: decompositions are
initialisations, not training-time ops.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from kfc_jax import _checks
from kfc_jax._checks import relative_error
from kfc_jax.decompose import _covariance, _cp, _data_aware
from kfc_jax.decompose._covariance import DEFAULT_COV_REG

DATA_SWEEPS = 50  # default ALS sweeps of the data-aware refinement


class KroneckerDecomposition(NamedTuple):
  """Result of a Kronecker decomposition.

  Attributes:
    factors: one array per factor, each with a leading rank axis.
    relative_error: ``||W - W_hat||_F / ||W||_F`` reached (0 for ``W = 0``).
    singular_values: all singular values of the rearranged ``W`` (two factors
      only, where the truncated SVD is optimal); ``None`` otherwise, and
      ``None`` with ``input_cov``.
    data_error: with ``input_cov=C``, the relative error of the layer's
      outputs, ``||S (W - W_hat)||_F / ||S W||_F`` with ``S^T S = C`` (``C`` as
      given, without the ridge); ``None`` without.

  Example usage::

    >>> import numpy as np, kfc_jax
    >>> rng = np.random.default_rng(0)
    >>> a, b = rng.standard_normal((2, 3)), rng.standard_normal((4, 5))
    >>> d = kfc_jax.nearest_kronecker(np.kron(a, b), (2, 4), (3, 5))
    >>> [f.shape for f in d.factors], bool(d.relative_error < 1e-12)
    ([(1, 2, 3), (1, 4, 5)], True)
  """

  factors: tuple[np.ndarray, ...]
  relative_error: float
  singular_values: np.ndarray | None
  data_error: float | None = None


def _max_rank(mode_sizes: Sequence[int]) -> int:
  # For two modes: the rank of the rearranged matrix. For more, a bound on the
  # CP rank (total size over the largest mode), beyond which terms are wasted.
  if len(mode_sizes) == 1:
    return 1
  total = math.prod(mode_sizes)
  return total // max(mode_sizes) if len(mode_sizes) > 2 else min(mode_sizes)


def _balance(vectors: list[np.ndarray]) -> list[np.ndarray]:
  """Rescales rank-one terms so every factor of a term has the same norm."""
  norms = np.stack([np.linalg.norm(v, axis=1) for v in vectors])  # [k, rank]
  k = len(vectors)
  target = np.prod(norms, axis=0) ** (1.0 / k)
  scale = np.where(norms > 0, target / np.where(norms > 0, norms, 1.0), 0.0)
  return [v * s[:, None] for v, s in zip(vectors, scale, strict=True)]


def nearest_kronecker_tensor(
  t: Any,
  factor_axes: Sequence[Sequence[int]],
  rank: int = 1,
  *,
  max_sweeps: int | None = None,
  tol: float = 1e-10,
  input_cov: Any = None,
  input_ndim: int | None = None,
  cov_reg: float = DEFAULT_COV_REG,
) -> KroneckerDecomposition:
  """Nearest sum of ``rank`` generalised Kronecker terms over grouped axes.

  ``t[i_0, ..., i_d] ≈ sum_r prod_f F_f[r, (i_a for a in factor_axes[f])]``:
  each factor owns a group of ``t``'s axes (the groups partition them). With
  two groups the rearranged matrix ``[prod(group 0), prod(group 1)]`` has a
  truncated SVD that is optimal (Van Loan & Pitsianis); with more, the terms
  are a CP decomposition of the rearranged tensor, fitted by alternating least
  squares with line search from up to three starts (the algebraic GEVD
  solution where the mode sizes allow, the greedy sequential-SVD fit, the
  HOSVD), keeping the best (quasi-optimal; see :mod:`._cp`).

  Guarantee for more than two factors: within each start the error never
  increases; a start stops when a sweep improves the relative error by less
  than ``tol`` times its value or after ``max_sweeps``, and the next start is
  tried unless the fit is exact (error <= 1e-12). On 1,976 random exactly
  rank-2/3 three-factor weights with factor sizes 1..4, 1,975 are recovered
  to < 1e-6 (median 0.5 ms each; the old fixed 100 sweeps recovered 1,539 at
  6.9 ms); the exception has a rank above the second-largest mode size, where
  no algebraic start exists, and reaches 2.4e-6
  (``benchmarks/nkp_convergence.py``, ``benchmarks/results/``).

  Every Kronecker-structured weight in kfc_jax (dense, KFC formulations,
  GKPD convolution kernels) is decomposed through this function.

  *Data-aware* (``input_cov=C`` with ``input_ndim=d``): ``t`` is a layer's
  weight whose first ``d`` axes index its input (row-major, ``C`` is
  ``[prod, prod]`` over them) and whose other axes index its output, as for a
  KFC formulation's ``W.reshape(H, W, C, O1, O2)``; the fit minimises the
  output error as :func:`~kfc_jax.nearest_kronecker` does (closed form when
  ``C`` factors over the groups' input axes, ALS otherwise, never worse than
  the weight-only fit).

  Args:
    t: the array to decompose (finite, real).
    factor_axes: one tuple of axis indices per factor, partitioning ``t``'s axes.
    rank: number of terms.
    max_sweeps: ALS sweeps at most: per start of the CP fit (more than two
      factors; default 1000) and for the data-aware refinement (default 50).
    tol: stop a start when a sweep improves the relative error by less than
      this fraction of it (the data objective, for the data-aware refinement).
    input_cov: the input covariance, or ``None`` for the weight error.
    input_ndim: with ``input_cov``, how many leading axes of ``t`` are inputs.
    cov_reg: the ridge on ``input_cov``, relative to its mean variance.

  Returns:
    A :class:`KroneckerDecomposition`; factor ``f`` has shape
    ``[rank, *(t.shape[a] for a in factor_axes[f])]``.

  Example usage::

    >>> import numpy as np, kfc_jax
    >>> rng = np.random.default_rng(0)
    >>> a, b = rng.standard_normal((2, 3)), rng.standard_normal((4, 5))
    >>> t = np.multiply.outer(a, b)  # t[i, j, k, l] = a[i, j] b[k, l]
    >>> d = kfc_jax.nearest_kronecker_tensor(t, ((0, 1), (2, 3)))
    >>> [f.shape for f in d.factors], bool(d.relative_error < 1e-12)
    ([(1, 2, 3), (1, 4, 5)], True)
  """
  arr = np.asarray(t)
  arr = _covariance.real_array(arr, "t", ndim=arr.ndim)
  groups = [tuple(int(a) for a in g) for g in factor_axes]
  flat = sorted(a for g in groups for a in g)
  if flat != list(range(arr.ndim)) or any(not g for g in groups):
    raise ValueError(
      f"factor_axes must partition the axes {tuple(range(arr.ndim))} of t"
      f" (shape {arr.shape}) into non-empty groups, got {factor_axes}."
    )
  rank = _checks.positive_int(rank, "rank")
  group_shapes = [tuple(arr.shape[a] for a in g) for g in groups]
  sizes = [math.prod(s) for s in group_shapes]
  max_rank = _max_rank(sizes)
  if rank > max_rank:
    raise ValueError(
      f"rank must be at most {max_rank} for factor shapes {group_shapes}"
      f" (the rearranged weight has mode sizes {sizes}), got rank={rank}."
    )
  rearranged = np.transpose(arr, [a for g in groups for a in g]).reshape(sizes)
  singular_values = None
  if len(groups) == 1:
    vectors = [rearranged[None]]
    approx = rearranged
  elif len(groups) == 2:
    u, s, vt = np.linalg.svd(rearranged, full_matrices=False)
    singular_values = s
    vectors = [(u[:, :rank] * s[:rank]).T, vt[:rank]]
    approx = vectors[0].T @ vectors[1]
  else:
    modes, _ = _cp.cp_als(rearranged, rank, 1000 if max_sweeps is None else max_sweeps, tol)
    vectors = [m.T for m in modes]
    approx = _cp.reconstruct(modes, rearranged.shape)
  error = relative_error(rearranged, approx)
  if len(groups) == 1:
    error = 0.0
  vectors = _balance(vectors) if len(groups) > 1 else vectors
  factors = tuple(v.reshape(rank, *s) for v, s in zip(vectors, group_shapes, strict=True))
  dec = KroneckerDecomposition(factors, error, singular_values)
  if input_cov is None:
    if input_ndim is not None:
      raise ValueError("input_ndim is only used with input_cov; pass both or neither.")
    return dec
  if (
    isinstance(input_ndim, bool)
    or not isinstance(input_ndim, numbers.Integral)
    or not 1 <= input_ndim < arr.ndim
  ):
    raise ValueError(
      f"input_ndim must say how many leading axes of t (shape {arr.shape}) index"
      f" the layer's input, an integer in [1, {arr.ndim - 1}], got {input_ndim!r}."
    )
  return data_aware_decomposition(
    arr,
    groups,
    int(input_ndim),
    rank,
    dec,
    input_cov,
    cov_reg,
    f"the product of t's first {input_ndim} axes",
    max_sweeps=max_sweeps,
    tol=tol,
  )


def nearest_kronecker(
  w: Any,
  in_factors: Sequence[int],
  out_factors: Sequence[int],
  rank: int = 1,
  *,
  input_cov: Any = None,
  cov_reg: float = DEFAULT_COV_REG,
  **als_options: Any,
) -> KroneckerDecomposition:
  """Nearest ``sum_r kron(F_1[r], ..., F_k[r])`` to a weight matrix.

  For two factors the result is optimal (Van Loan & Pitsianis): with
  ``R(W) = W.reshape(m1, m2, n1, n2).transpose(0, 2, 1, 3).reshape(m1*n1, m2*n2)``,
  ``||W - sum A_r ⊗ B_r||_F = ||R(W) - sum vec(A_r) vec(B_r)^T||_F`` and the
  truncated SVD of ``R(W)`` minimises it; the error is the norm of the
  discarded singular values. For ``k > 2`` factors the method is
  quasi-optimal (greedy sequential SVD refined by ALS, see
  :func:`nearest_kronecker_tensor`) and the error reached is reported.

  *Data-aware* (``input_cov=C``, the layer's input covariance ``E[x x^T]``;
  see :func:`~kfc_jax.decompose.input_covariance`): minimises the error of the
  outputs ``tr((W - W_hat)^T C (W - W_hat)) = ||S (W - W_hat)||_F^2``
  (``S^T S = C``) instead. When ``C = C_1 ⊗ ... ⊗ C_k`` over the same split
  (``C_t: [m_t, m_t]``), whitening is exact: ``S = ⊗ S_t`` and
  ``S (⊗ F_t) = ⊗ (S_t F_t)``, so the nearest Kronecker sum to ``S W`` with
  each factor un-whitened (``F_t = S_t^{-1} F~_t``) is optimal (two
  factors). For a general ``C`` that closed form for the nearest factored
  ``C_1 ⊗ ... ⊗ C_k`` starts alternating least squares on the true objective
  (each step solves the normal equations of one factor exactly; the
  objective never increases); the result is the better, on the data
  objective, of that and the weight-only answer, so it is never worse than
  the weight-only answer. ``C`` is regularised as
  ``C + cov_reg * mean(diag C) * I`` (each Kronecker factor of it too);
  ``C = c * I`` returns the weight-only answer.

  Args:
    w: ``[prod(in_factors), prod(out_factors)]``, finite (any float dtype,
      bfloat16 included; computed in float64).
    in_factors: ``(m_1, ..., m_k)``.
    out_factors: ``(n_1, ..., n_k)``, same length.
    rank: number of Kronecker terms.
    input_cov: ``[in, in]`` symmetric PSD input covariance (or a
      :class:`~kfc_jax.decompose.RunningCovariance`); ``None`` for the
      weight error.
    cov_reg: the ridge on ``input_cov``, relative to its mean variance.
    **als_options: ``max_sweeps`` and ``tol``, for the CP fit of ``k > 2``
      factors (defaults 1000 and 1e-10, see :func:`nearest_kronecker_tensor`)
      and for the data-aware refinement (defaults 50 and 1e-10: stop when a
      sweep lowers the data objective by less than ``tol`` times its value).

  Returns:
    A :class:`KroneckerDecomposition` with factors ``[rank, m_t, n_t]`` (float64
    NumPy; each term's factors scaled to equal norms); with ``input_cov``,
    ``data_error`` is the relative output error and ``singular_values`` is
    ``None``.

  Example usage::

    >>> import numpy as np, kfc_jax
    >>> a, b = np.random.randn(3, 4), np.random.randn(5, 2)
    >>> dec = kfc_jax.nearest_kronecker(np.kron(a, b), (3, 5), (4, 2))
    >>> [f.shape for f in dec.factors], dec.relative_error < 1e-12
    ([(1, 3, 4), (1, 5, 2)], True)
  """
  w = _covariance.real_array(w, "w")
  ms = _checks.int_tuple(in_factors, "in_factors")
  ns = _checks.int_tuple(out_factors, "out_factors")
  if len(ms) != len(ns):
    raise ValueError(
      f"in_factors and out_factors must have the same length (one pair per"
      f" factor), got {len(ms)} in_factors {ms} and {len(ns)} out_factors {ns}."
    )
  if w.shape != (math.prod(ms), math.prod(ns)):
    raise ValueError(
      f"w must have shape [prod(in_factors), prod(out_factors)] ="
      f" {[math.prod(ms), math.prod(ns)]} for in_factors {ms} and out_factors"
      f" {ns}, got {list(w.shape)}."
    )
  k = len(ms)
  t, axes = w.reshape(*ms, *ns), [(f, k + f) for f in range(k)]
  dec = nearest_kronecker_tensor(t, axes, rank, **als_options)
  if input_cov is None:
    return dec
  return data_aware_decomposition(
    t, axes, k, rank, dec, input_cov, cov_reg, "the weight's input dimension", **als_options
  )


def data_aware_decomposition(
  t: np.ndarray,
  factor_axes,
  n_in: int,
  rank: int,
  weight_only: KroneckerDecomposition,
  input_cov: Any,
  cov_reg: float,
  what: str,
  max_sweeps: int | None = None,
  tol: float = 1e-10,
) -> KroneckerDecomposition:
  """The data-aware refit of ``weight_only`` (see :mod:`._data_aware`).

  ``max_sweeps`` bounds both the CP fit of the whitened start (default 1000)
  and the refinement (default 50).
  """
  m = math.prod(t.shape[:n_in])
  cov = _covariance.check_input_cov(input_cov, m, cov_reg, what)
  factors, data_error = _data_aware.fit(
    t,
    factor_axes,
    n_in,
    rank,
    cov,
    cov_reg,
    weight_only.factors,
    lambda tw, axes, r: (
      nearest_kronecker_tensor(tw, axes, r, max_sweeps=max_sweeps, tol=tol).factors
    ),
    DATA_SWEEPS if max_sweeps is None else max_sweeps,
    tol,
  )
  approx = _data_aware.reconstruct(factors, factor_axes, t.shape)
  return KroneckerDecomposition(
    tuple(_data_aware.balance(list(factors))), relative_error(t, approx), None, data_error
  )
