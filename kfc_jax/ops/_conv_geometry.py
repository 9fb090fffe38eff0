"""The geometry of a Kronecker convolution: padding, output sizes, strides, route.

Shared by the plans (``_conv_plan.py``) and the compute (``_conv.py``); see
``docs/DESIGN.md``, "Kronecker convolution".
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

from jax import lax

from kfc_jax import _checks

PaddingLike = str | int | Sequence[int] | Sequence[tuple[int, int]]
Pads = tuple[tuple[int, int], tuple[int, int]]


class ConvGeometry(NamedTuple):
  """A convolution's validated arguments, as the plans and the compute use them.

  ``x_shape`` is the input that the convolution actually reads: for
  ``"CIRCULAR"`` padding, ``x`` already wrapped around (``wrap`` holds the
  pads to wrap it by) and ``pads`` zero.
  """

  x_shape: tuple[int, int, int, int]  # (N, H, W, C), batch axes flattened
  strides: tuple[int, int]
  pads: Pads  # K's explicit padding
  dilation: tuple[int, int]
  wrap: Pads | None  # CIRCULAR: pads to wrap x by first


def out_size(size: int, pads: tuple[int, int], k: int, stride: int, dilation: int) -> int:
  """Output length of a conv along one axis."""
  return (size + pads[0] + pads[1] - (k - 1) * dilation - 1) // stride + 1


def _explicit_pads(padding, in_hw, kernel_hw, strides, dilation) -> Pads:
  """``K``'s padding as ``((top, bottom), (left, right))``."""
  if not isinstance(padding, str):
    return padding
  eff = tuple((k - 1) * d + 1 for k, d in zip(kernel_hw, dilation, strict=True))
  mode = "SAME" if padding == "CIRCULAR" else padding
  (top, bottom), (left, right) = lax.padtype_to_pads(in_hw, eff, strides, mode)
  return ((top, bottom), (left, right))


def conv_geometry(
  x_shape: Sequence[int],
  a: Sequence[int],
  b: Sequence[int],
  strides: Any,
  padding: Any,
  kernel_dilation: Any,
  name: str = "x",
) -> ConvGeometry:
  """Validates the conv arguments for factor shapes ``a``, ``b`` (5-D)."""
  _checks.conv_input_shape(x_shape, a, b, name)
  strides = _checks.pair(strides, "strides")
  dil = _checks.pair(kernel_dilation, "kernel_dilation")
  padding = _checks.normalize_padding(padding)
  hw = tuple(int(d) for d in x_shape[-3:-1])
  khw = (a[1] * b[1], a[2] * b[2])
  pads = _explicit_pads(padding, hw, khw, strides, dil)
  for axis, size, p, k, d in zip(("height", "width"), hw, pads, khw, dil, strict=True):
    if size + p[0] + p[1] < (k - 1) * d + 1:
      raise ValueError(
        f"x's {axis} {size} padded by {p} is {size + p[0] + p[1]}, smaller"
        f" than the (dilated) kernel {axis} {(k - 1) * d + 1}; use a larger"
        f" input or padding='SAME' (got padding={padding!r})."
      )
  n = math.prod(int(d) for d in x_shape[:-3])
  (h, w), c = hw, int(x_shape[-1])
  if padding == "CIRCULAR":
    wrapped = (n, h + sum(pads[0]), w + sum(pads[1]), c)
    return ConvGeometry(wrapped, strides, ((0, 0), (0, 0)), dil, pads)
  return ConvGeometry((n, h, w, c), strides, pads, dil, None)


def first_stride(strides, a_hw, b_hw, dilation) -> tuple[int, int]:
  """Stride of the conv by B: the step the conv by A reads its input at.

  A output row ``y`` reads B's output at rows ``y*s + p1*bh*d``, all multiples
  of ``gcd(s, bh*d)`` (of ``s`` when ``ah == 1``): B need not compute the others.
  """
  sh, sw = (
    s if ak == 1 else math.gcd(s, bk * d)
    for s, ak, bk, d in zip(strides, a_hw, b_hw, dilation, strict=True)
  )
  return (sh, sw)


def route(a: Sequence[int], b: Sequence[int]) -> str:
  """Which of the two steps are pointwise (1x1) and so run as GEMMs."""
  a_point, b_point = tuple(a[1:3]) == (1, 1), tuple(b[1:3]) == (1, 1)
  if a_point and b_point:
    return "matmul"  # K is 1x1: kron_matmul on the (padded, strided) pixels
  if b_point:
    return "gemm-conv"  # B on x as it lies; K's padding moves to A's conv
  if a_point:
    return "conv-gemm"  # A on B's output, which already took the stride
  return "conv-conv"
