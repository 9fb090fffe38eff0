"""Input covariances for data-aware decompositions: building and checking them.

A dense layer ``y = x @ W`` (``W: [in, out]``) that is replaced by ``W_hat``
changes its outputs by ``x @ (W - W_hat)``; over the layer's real inputs the
mean squared change is ``tr((W - W_hat)^T C (W - W_hat))`` with the uncentred
input covariance (second moment) ``C = E[x x^T]``, ``[in, in]``. A conv is a
dense layer on its patches: with the HWIO kernel reshaped to
``[kh*kw*C_in, C_out]``, ``C`` is the second moment of the ``kh*kw*C_in``
patches, flattened row-major as ``(kh, kw, C_in)`` (the same order).

Everything here is float64 NumPy, run once, offline.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from kfc_jax import _checks

# Default ridge, relative to the mean variance: C + DEFAULT_COV_REG * mean(diag C) * I.
DEFAULT_COV_REG = 1e-6
# Negative eigenvalues down to -PSD_ROUNDING * the largest are rounding (a
# float32 covariance) and are clipped to zero; below, the covariance is rejected.
PSD_ROUNDING = 1e-6


def real_array(value: Any, name: str, ndim: int = 2) -> np.ndarray:
  """``value`` as a finite float64 array; accepts bfloat16 and other ml_dtypes.

  ml_dtypes floats (bfloat16, float8) are not ``np.floating`` subtypes, so
  they are recognised through ``jnp.issubdtype`` and widened first.
  """
  try:
    arr = np.asarray(value)
  except Exception as e:  # pragma: no cover - exotic array types
    raise TypeError(f"{name} must be an array, got {type(value).__name__}.") from e
  if jnp.issubdtype(arr.dtype, jnp.floating) and not np.issubdtype(arr.dtype, np.floating):
    arr = arr.astype(np.float64)
  return _checks.finite_matrix(arr, name, ndim=ndim)


class RunningCovariance(NamedTuple):
  """A streaming second moment: ``sum = sum_i x_i x_i^T`` over ``count`` rows.

  Pass it (or its :attr:`covariance`) as ``input_cov=``.

  Example usage::

    >>> import numpy as np, kfc_jax
    >>> x = np.random.default_rng(0).standard_normal((10, 3))
    >>> stats = kfc_jax.decompose.input_covariance(x[:4])
    >>> stats = kfc_jax.decompose.input_covariance(x[4:], running=stats)
    >>> stats.count, np.allclose(stats.covariance, x.T @ x / 10)
    (10, True)
  """

  sum: np.ndarray
  count: int

  @property
  def covariance(self) -> np.ndarray:
    """``sum / count``: the uncentred covariance ``E[x x^T]``."""
    return self.sum / self.count


def _accumulate(
  rows: np.ndarray, running: RunningCovariance | None, name: str
) -> RunningCovariance:
  size = rows.shape[1]
  if running is None:
    total, count = np.zeros((size, size)), 0
  else:
    if not isinstance(running, RunningCovariance):
      raise TypeError(
        f"running must be a RunningCovariance from an earlier call, got {type(running).__name__}."
      )
    total, count = running.sum, running.count
    if total.shape != (size, size):
      raise ValueError(
        f"{name} has {size} features per row but running holds a"
        f" covariance of shape {total.shape}; use one running sum per layer."
      )
  return RunningCovariance(total + rows.T @ rows, count + rows.shape[0])


def input_covariance(x: Any, *, running: RunningCovariance | None = None) -> RunningCovariance:
  """Second moment of a dense layer's inputs, for ``input_cov=``.

  Args:
    x: ``[*batch, in_features]`` inputs of the layer (any float dtype).
    running: the result of the previous call, to accumulate over batches.

  Returns:
    A :class:`RunningCovariance`; ``.covariance`` is ``E[x x^T]``, ``[in, in]``.

  Example usage::

    >>> import numpy as np, kfc_jax
    >>> stats = None
    >>> for batch in np.random.randn(3, 32, 6):
    ...   stats = kfc_jax.decompose.input_covariance(batch, running=stats)
    >>> stats.count, stats.covariance.shape
    (96, (6, 6))
  """
  arr = real_array(x, "x", ndim=max(np.ndim(x), 1))
  if arr.ndim < 2:
    raise ValueError(
      f"x must have shape [*batch, in_features] (at least 2-D), got shape {arr.shape}."
    )
  return _accumulate(arr.reshape(-1, arr.shape[-1]), running, "x")


def patches(
  x: np.ndarray,
  kernel_size: tuple[int, int],
  strides: tuple[int, int],
  padding: Any,
  dilation: tuple[int, int],
) -> np.ndarray:
  """``[N*Ho*Wo, kh*kw*C]`` patches of an NHWC ``x``, ordered ``(kh, kw, C)``."""
  n, h, w, _c = x.shape
  span = [(k - 1) * d + 1 for k, d in zip(kernel_size, dilation, strict=True)]
  if isinstance(padding, str):
    if padding.upper() not in ("SAME", "VALID"):
      raise ValueError(
        f"padding must be 'SAME', 'VALID', an int or ((lo, hi), (lo, hi)), got {padding!r}."
      )
    pads = jax.lax.padtype_to_pads((h, w), span, strides, padding.upper())
  elif isinstance(padding, numbers.Integral) and not isinstance(padding, bool):
    pads = [(int(padding), int(padding))] * 2
  else:
    try:
      pads = [(int(lo), int(hi)) for lo, hi in padding]
    except (TypeError, ValueError) as e:
      raise ValueError(
        f"padding must be 'SAME', 'VALID', an int or ((lo, hi), (lo, hi)), got {padding!r}."
      ) from e
    if len(pads) != 2 or min(min(p) for p in pads) < 0:
      raise ValueError(f"padding must be two non-negative (lo, hi) pairs, got {padding!r}.")
  padded = np.pad(x, [(0, 0), *pads, (0, 0)])
  out_h = (padded.shape[1] - span[0]) // strides[0] + 1
  out_w = (padded.shape[2] - span[1]) // strides[1] + 1
  if out_h < 1 or out_w < 1:
    raise ValueError(
      f"x of spatial size {(h, w)} with padding {pads} is smaller than the"
      f" kernel's span {tuple(span)}: no patch fits."
    )
  taps = [
    padded[
      :,
      p * dilation[0] : p * dilation[0] + (out_h - 1) * strides[0] + 1 : strides[0],
      q * dilation[1] : q * dilation[1] + (out_w - 1) * strides[1] + 1 : strides[1],
    ]
    for p in range(kernel_size[0])
    for q in range(kernel_size[1])
  ]
  return np.stack(taps, axis=3).reshape(n * out_h * out_w, -1)


def patch_covariance(
  x: Any,
  kernel_size: int | Sequence[int],
  *,
  strides: int | Sequence[int] = 1,
  padding: Any = "SAME",
  kernel_dilation: int | Sequence[int] = 1,
  running: RunningCovariance | None = None,
) -> RunningCovariance:
  """Second moment of a conv layer's input patches, for ``input_cov=`` of GKPD.

  The patches are what the conv multiplies by its HWIO kernel reshaped to
  ``[kh*kw*C_in, C_out]``: flattened row-major as ``(kh, kw, C_in)``, with the
  zero padding the conv sees (``padding`` as ``flax.nnx.Conv`` takes it).

  Args:
    x: ``[N, H, W, C_in]`` inputs of the conv (NHWC).
    kernel_size: ``(kh, kw)`` or one int.
    strides: the conv's strides.
    padding: ``"SAME"``, ``"VALID"``, an int, or ``((lo, hi), (lo, hi))``.
    kernel_dilation: the conv's kernel dilation.
    running: the result of the previous call, to accumulate over batches.

  Returns:
    A :class:`RunningCovariance` over ``kh*kw*C_in`` patch features.

  Example usage::

    >>> import numpy as np, kfc_jax
    >>> stats = kfc_jax.decompose.patch_covariance(np.random.randn(2, 8, 8, 4), 3)
    >>> stats.count, stats.covariance.shape   # 2 images x 64 positions
    (128, (36, 36))
  """
  arr = real_array(x, "x", ndim=4)
  size = _checks.pair(kernel_size, "kernel_size")
  rows = patches(
    arr,
    size,
    _checks.pair(strides, "strides"),
    padding,
    _checks.pair(kernel_dilation, "kernel_dilation"),
  )
  return _accumulate(rows, running, "x")


class Covariance(NamedTuple):
  """A checked input covariance: as given (``raw``) and regularised (``reg``)."""

  raw: np.ndarray
  reg: np.ndarray


def check_input_cov(
  input_cov: Any, size: int, cov_reg: float, what: str = "the weight's input dimension"
) -> Covariance:
  """Validates ``input_cov`` (``[size, size]``) and adds the ridge.

  ``reg = C + cov_reg * mean(diag C) * I`` must be positive definite. When it
  is not, eigenvalues of ``C`` down to ``-PSD_ROUNDING`` times the largest
  are taken for rounding and clipped to zero; a more negative one, or a
  singular ``C`` with ``cov_reg=0``, is an error.
  """
  if (
    isinstance(cov_reg, bool)
    or not isinstance(cov_reg, numbers.Real)
    or not (np.isfinite(cov_reg) and cov_reg >= 0)
  ):
    raise ValueError(f"cov_reg must be a finite number >= 0, got {cov_reg!r}.")
  if isinstance(input_cov, RunningCovariance):
    if input_cov.count < 1:
      raise ValueError("input_cov is a RunningCovariance over 0 rows.")
    input_cov = input_cov.covariance
  c = real_array(input_cov, "input_cov", ndim=max(np.ndim(input_cov), 1))
  if c.shape != (size, size):
    raise ValueError(f"input_cov must be [{size}, {size}] ({what} is {size}), got shape {c.shape}.")
  scale = np.abs(c).max()
  if scale == 0:
    raise ValueError("input_cov must not be all zeros (no input energy to fit).")
  asym = np.abs(c - c.T).max()
  if asym > 1e-6 * scale:
    raise ValueError(
      f"input_cov must be symmetric, but |C - C^T| reaches {asym:.3g} (max |C| = {scale:.3g})."
    )
  c = (c + c.T) / 2
  mean_var = float(np.mean(np.diag(c)))
  if not mean_var > 0:
    raise ValueError(
      f"input_cov must be positive semi-definite, but its mean diagonal is {mean_var:.3g}."
    )
  reg = c + cov_reg * mean_var * np.eye(size)
  try:
    np.linalg.cholesky(reg)
  except np.linalg.LinAlgError:
    vals, vecs = np.linalg.eigh(c)
    if vals[0] < -PSD_ROUNDING * vals[-1]:
      raise ValueError(
        f"input_cov must be positive semi-definite, but its smallest eigenvalue"
        f" is {vals[0]:.3g} (largest {vals[-1]:.3g}), beyond rounding"
        f" (-{PSD_ROUNDING:g} x the largest)."
      ) from None
    # Rounding in a float32 covariance: clip the eigenvalues at zero.
    c = (vecs * np.clip(vals, 0.0, None)) @ vecs.T
    reg = c + cov_reg * mean_var * np.eye(size)
    try:
      np.linalg.cholesky(reg)
    except np.linalg.LinAlgError:
      raise ValueError(
        f"input_cov is singular (smallest eigenvalue {vals[0]:.3g}, largest"
        f" {vals[-1]:.3g}) and the ridge cov_reg * mean(diag) ="
        f" {cov_reg * mean_var:.3g} does not make it positive definite; pass"
        " cov_reg > 0 (the default is 1e-6)."
      ) from None
  return Covariance(c, reg)


def data_objective(diff: np.ndarray, cov: np.ndarray) -> float:
  """``tr(D^T C D)`` for ``D: [in, out]``."""
  return float(np.sum(diff * (cov @ diff)))


def data_error(w: np.ndarray, w_hat: np.ndarray, cov: np.ndarray) -> float:
  """``||S (W - W_hat)||_F / ||S W||_F`` with ``S^T S = C`` (0 for ``S W = 0``)."""
  total = data_objective(w, cov)
  if total <= 0:
    return 0.0
  return float(np.sqrt(max(data_objective(w - w_hat, cov), 0.0) / total))


def is_scaled_identity(cov: np.ndarray) -> bool:
  """Whether ``cov = c * I``: every data objective is then the weight objective."""
  diag = np.diag(cov)
  return bool(np.all(diag == diag[0]) and np.count_nonzero(cov - np.diag(diag)) == 0)
