"""Low rank ``w ≈ u @ v`` (truncated SVD; data-aware with an input covariance).

Like the Kronecker decompositions (``_nkp.py``), it runs once, offline, in
float64 NumPy.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.linalg

from kfc_jax import _checks
from kfc_jax._checks import relative_error
from kfc_jax.decompose import _covariance
from kfc_jax.decompose._covariance import DEFAULT_COV_REG


class LowRankDecomposition(tuple):
  """``(u, v)`` with ``w ≈ u @ v``; unpacks as the pair.

  Attributes:
    u: ``[m, rank]``.
    v: ``[rank, n]``.
    relative_error: ``||W - u v||_F / ||W||_F``.
    data_error: with ``input_cov=C``, ``||S (W - u v)||_F / ||S W||_F``
      (``S^T S = C``, ``C`` as given); ``None`` without.

  Example usage::

    >>> import numpy as np, kfc_jax
    >>> rng = np.random.default_rng(0)
    >>> w = rng.standard_normal((6, 2)) @ rng.standard_normal((2, 5))  # rank 2
    >>> u, v = kfc_jax.low_rank(w, 2)
    >>> u.shape, v.shape, np.allclose(u @ v, w)
    ((6, 2), (2, 5), True)
  """

  relative_error: float
  data_error: float | None

  def __new__(
    cls, u: np.ndarray, v: np.ndarray, relative_error: float, data_error: float | None = None
  ):
    self = super().__new__(cls, (u, v))
    self.relative_error, self.data_error = relative_error, data_error
    return self

  @property
  def u(self) -> np.ndarray:
    return self[0]

  @property
  def v(self) -> np.ndarray:
    return self[1]

  def __repr__(self) -> str:
    return (
      f"LowRankDecomposition(u: {self.u.shape}, v: {self.v.shape},"
      f" relative_error={self.relative_error:.4g},"
      f" data_error={self.data_error})"
    )


def low_rank(
  w: Any, rank: int, *, input_cov: Any = None, cov_reg: float = DEFAULT_COV_REG
) -> LowRankDecomposition:
  """Truncated-SVD factors ``(u [m, rank], v [rank, n])`` with ``w ≈ u @ v``.

  The KFC paper's low-rank baseline. Singular values are split evenly
  (``u = U sqrt(S)``, ``v = sqrt(S) V^T``) so both factors are well scaled.

  *Data-aware* (``input_cov=C``, the input covariance ``E[x x^T]`` of the
  layer ``y = x @ w``): minimises ``||S (W - u v)||_F`` with ``S^T S = C``,
  the error of the outputs, in closed form by whitening (as ASVD/SVD-LLM):
  with the Cholesky factor ``C = L L^T``, ``S = L^T``, the optimum is
  ``L^{-T} SVD_rank(L^T W)``. ``C`` is regularised as
  ``C + cov_reg * mean(diag C) * I`` first; ``C = c * I`` gives the
  weight-only answer.

  Args:
    w: ``[m, n]``, finite (any float dtype, bfloat16 included).
    rank: at most ``min(m, n)``.
    input_cov: ``[m, m]`` symmetric PSD input covariance, or a
      :class:`~kfc_jax.decompose.RunningCovariance`; ``None`` for the weight
      error.
    cov_reg: the ridge on ``input_cov``, relative to its mean variance.

  Returns:
    A :class:`LowRankDecomposition`: the pair ``(u, v)`` (float64 NumPy) with
    ``relative_error`` and ``data_error``.

  Example usage::

    >>> import numpy as np, kfc_jax
    >>> u, v = kfc_jax.low_rank(np.random.randn(6, 4), rank=2)
    >>> u.shape, v.shape
    ((6, 2), (2, 4))
  """
  w = _covariance.real_array(w, "w")
  rank = _checks.positive_int(rank, "rank")
  if rank > min(w.shape):
    raise ValueError(
      f"rank must be at most min(w.shape) = {min(w.shape)} for w of shape"
      f" {w.shape}, got rank={rank}."
    )
  cov = None
  if input_cov is not None:
    cov = _covariance.check_input_cov(input_cov, w.shape[0], cov_reg, "w's first dimension")
  if cov is None or _covariance.is_scaled_identity(cov.raw):
    root = lower = None
    target = w
  else:
    lower = np.linalg.cholesky(cov.reg)
    target = lower.T @ w  # S W with S = L^T
  u, s, vt = np.linalg.svd(target, full_matrices=False)
  root = np.sqrt(s[:rank])
  u, v = u[:, :rank] * root, root[:, None] * vt[:rank]
  if lower is not None:
    u = scipy.linalg.solve_triangular(lower.T, u, lower=False)
  data_error = None if cov is None else _covariance.data_error(w, u @ v, cov.raw)
  return LowRankDecomposition(u, v, relative_error(w, u @ v), data_error)
