"""float64 NumPy references every layer test compares against.

Kept apart from the library on purpose: kernels are formed with ``np.kron``
(never the library's ``kron``) and convolutions by a NumPy sliding window
(checked against ``lax.conv_general_dilated`` in ``tests/ops/test_conv.py``).
"""

from __future__ import annotations

import numpy as np


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
  return [rng.standard_normal((rank, m, n)).astype(dtype)
          for m, n in zip(in_factors, out_factors, strict=True)]


def np_conv_kernel(a, b) -> np.ndarray:
  """float64 ``sum_r np.kron(A[r], B[r])`` over the four HWIO axes."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  if a.ndim == 4:
    a, b = a[None], b[None]
  return sum(np.kron(a[r], b[r]) for r in range(a.shape[0]))


def _same_pads(size: int, k: int, stride: int) -> tuple[int, int]:
  out = -(-size // stride)
  total = max((out - 1) * stride + k - size, 0)
  return total // 2, total - total // 2


def np_conv(x, kernel, strides=1, padding="SAME", dilation=1) -> np.ndarray:
  """float64 NHWC convolution by an HWIO kernel, by a NumPy sliding window.

  ``padding`` is ``"SAME"``, ``"VALID"`` or ``((top, bottom), (left, right))``.
  """
  strides = (strides, strides) if isinstance(strides, int) else tuple(strides)
  dilation = (dilation, dilation) if isinstance(dilation, int) else tuple(dilation)
  x, kernel = np.asarray(x, np.float64), np.asarray(kernel, np.float64)
  kh, kw = kernel.shape[:2]
  eh, ew = (kh - 1) * dilation[0] + 1, (kw - 1) * dilation[1] + 1
  if padding == "VALID":
    pads = ((0, 0), (0, 0))
  elif padding == "SAME":
    pads = (_same_pads(x.shape[1], eh, strides[0]), _same_pads(x.shape[2], ew, strides[1]))
  else:
    pads = tuple(tuple(p) for p in padding)
  xp = np.pad(x, ((0, 0), *pads, (0, 0)))
  win = np.lib.stride_tricks.sliding_window_view(xp, (eh, ew), axis=(1, 2))
  win = win[:, ::strides[0], ::strides[1], :, ::dilation[0], ::dilation[1]]
  return np.einsum("nyxcpq,pqco->nyxo", win, kernel)
