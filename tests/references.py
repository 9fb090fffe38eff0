"""float64 NumPy references every layer test compares against.

Kept apart from the library on purpose: kernels are formed with ``np.kron``
(never the library's ``kron``) and convolutions by a NumPy sliding window
(checked against ``lax.conv_general_dilated`` in ``tests/ops/test_conv.py``).
"""

from __future__ import annotations

import numpy as np
from jax import lax


def np_kron(factors) -> np.ndarray:
  """float64 reference: sum_r np.kron(F_1[r], ..., F_k[r])."""
  fs = [np.asarray(f, np.float64) for f in factors]
  fs = [f[None] if f.ndim == 2 else f for f in fs]
  total = 0.0
  for r in range(fs[0].shape[0]):
    w = np.ones((1, 1))
    for f in fs:
      w = np.kron(w, f[r])
    total = total + w
  return total


def random_factors(rng, in_factors, out_factors, rank, dtype=np.float64):
  return [
    rng.standard_normal((rank, m, n)).astype(dtype)
    for m, n in zip(in_factors, out_factors, strict=True)
  ]


def np_conv_kernel(a, b) -> np.ndarray:
  """float64 ``sum_r np.kron(A[r], B[r])`` over the four HWIO axes."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  if a.ndim == 4:
    a, b = a[None], b[None]
  return sum(np.kron(a[r], b[r]) for r in range(a.shape[0]))


def _explicit_pads(padding, hw, kernel_hw, strides, dilation):
  if isinstance(padding, int):
    return ((padding, padding),) * 2
  if isinstance(padding, str):
    eff = [(k - 1) * d + 1 for k, d in zip(kernel_hw, dilation, strict=True)]
    return lax.padtype_to_pads(hw, eff, strides, padding)
  return padding


def np_conv(x, kernel, strides=1, padding="SAME", dilation=1) -> np.ndarray:
  """float64 NHWC convolution by an HWIO kernel, by a NumPy sliding window.

  ``padding`` is ``"SAME"``, ``"VALID"``, an int or ``((top, bottom), (left,
  right))`` (negative pads crop); ``tests/ops/test_conv.py`` checks it against
  ``lax.conv``.

  Compiling a float64 ``lax.conv`` takes ~1 s per shape on CPU; this takes
  milliseconds, so the grids can be wide.
  """
  strides = (strides, strides) if isinstance(strides, int) else tuple(strides)
  dilation = (dilation, dilation) if isinstance(dilation, int) else tuple(dilation)
  x, kernel = np.asarray(x, np.float64), np.asarray(kernel, np.float64)
  kh, kw, _, _ = kernel.shape
  (top, bottom), (left, right) = _explicit_pads(padding, x.shape[1:3], (kh, kw), strides, dilation)
  # Positive pads are zeros; negative ones crop.
  xp = np.pad(x, ((0, 0), (max(top, 0), max(bottom, 0)), (max(left, 0), max(right, 0)), (0, 0)))
  xp = xp[
    :, max(-top, 0) : xp.shape[1] - max(-bottom, 0), max(-left, 0) : xp.shape[2] - max(-right, 0)
  ]
  eh, ew = (kh - 1) * dilation[0] + 1, (kw - 1) * dilation[1] + 1
  win = np.lib.stride_tricks.sliding_window_view(xp, (eh, ew), axis=(1, 2))
  win = win[:, :: strides[0], :: strides[1], :, :: dilation[0], :: dilation[1]]
  return np.einsum("nyxcpq,pqco->nyxo", win, kernel)


def random_term(rng, a_shape, b_shape, rank, dtype=np.float64):
  """Random conv factors ``(A [rank, *a_shape], B [rank, *b_shape])``."""
  return (
    rng.standard_normal((rank, *a_shape)).astype(dtype),
    rng.standard_normal((rank, *b_shape)).astype(dtype),
  )
