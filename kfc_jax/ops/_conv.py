"""2-D convolution by a sum of generalised Kronecker products of kernels.

Conventions (docs/DESIGN.md §2, §6): images are NHWC, kernels HWIO. A term is a
pair of factors ``A: [r, ah, aw, ai, ao]`` and ``B: [r, bh, bw, bi, bo]`` (a
4-D factor means ``r = 1``) and stands for the kernel
``K: [ah*bh, aw*bw, ai*bi, ao*bo]``,

  ``K[(p1,p2), (q1,q2), (i1,i2), (o1,o2)] = sum_r A[r,p1,q1,i1,o1] B[r,p2,q2,i2,o2]``

with row-major pairs (``p = p1*bh + p2``, ...), i.e. ``jnp.kron`` over every
HWIO axis. The convolution by ``K`` is two small convolutions (the kernel is
never formed): one by ``B`` (per input-channel group ``i1``, at stride 1),
then one by ``A`` dilated by ``(bh, bw)`` (per output-channel group ``o2``,
contracting ``i1`` and the rank together), with ``K``'s padding applied once
in the first and the stride applied in the second.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence
from typing import Any, Literal

import jax
import jax.numpy as jnp
from jax import lax

from kfc_jax import _checks
from kfc_jax.ops._kron import (CostModel, PlanCost, default_cost_model, kron_matmul,
                               kron_matmul_plan)

Array = jax.Array
ConvStrategy = Literal["auto", "factored", "materialize"]
PaddingLike = str | int | Sequence[int] | Sequence[tuple[int, int]]
PrecisionLike = Any

_DIMENSION_NUMBERS = ("NHWC", "HWIO", "NHWC")
_ITEMSIZE_DTYPES = {1: jnp.int8, 2: jnp.bfloat16, 4: jnp.float32, 8: jnp.float64}


# ---------------------------------------------------------------------------
# Argument validation
# ---------------------------------------------------------------------------


def _as_term(factors: Any, name: str = "factors") -> tuple[Array, Array]:
  """Validates one ``(A, B)`` pair; returns 5-D factors ``[r, h, w, i, o]``."""
  if hasattr(factors, "ndim") or not isinstance(factors, Sequence):
    raise TypeError(
        f"{name} must be a pair (A, B) of kernel factors, A [rank, ah, aw, ai,"
        f" ao] and B [rank, bh, bw, bi, bo] (or 4-D HWIO, rank 1); got"
        f" {type(factors).__name__}.")
  if len(factors) != 2:
    if factors and all(isinstance(t, Sequence) and not hasattr(t, "ndim")
                       for t in factors):
      raise TypeError(
          f"{name} must be one pair (A, B), got a sequence of {len(factors)}"
          f" pairs; use kron_conv_sum(x, terms) to sum several terms.")
    raise ValueError(
        f"{name} must be a pair (A, B) of kernel factors, got {len(factors)}"
        " factors.")
  out = []
  for label, f in zip("AB", factors):
    if not hasattr(f, "ndim"):
      f = jnp.asarray(f)
    if f.ndim == 4:
      f = f[None]
    elif f.ndim != 5:
      raise ValueError(
          f"{name} factor {label} must have shape [rank, h, w, in, out] or"
          f" [h, w, in, out] (HWIO), got shape {tuple(f.shape)} ({f.ndim}-D).")
    if not jnp.issubdtype(f.dtype, jnp.floating):
      raise TypeError(
          f"{name} factor {label} must have a floating dtype, got {f.dtype}.")
    out.append(f)
  a, b = out
  if a.shape[0] != b.shape[0]:
    raise ValueError(
        f"{name} factors A and B must have the same rank (leading axis), got A"
        f" {tuple(a.shape)} and B {tuple(b.shape)}.")
  if a.shape[0] < 1:
    raise ValueError(f"{name} must have rank >= 1, got rank {a.shape[0]}.")
  return a, b


def _term_shapes(shapes: Any, name: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
  """Validates ``(A.shape, B.shape)``; returns them 5-D."""
  if not isinstance(shapes, Sequence) or len(shapes) != 2:
    raise ValueError(
        f"{name} must be a pair (A shape, B shape), each (rank, h, w, in, out)"
        f" or (h, w, in, out), got {shapes!r}.")
  out = []
  for label, s in zip("AB", shapes):
    s = _checks.int_tuple(s, f"{name} {label}")
    if len(s) == 4:
      s = (1, *s)
    if len(s) != 5:
      raise ValueError(
          f"{name} {label} must be (rank, h, w, in, out) or (h, w, in, out),"
          f" got {s}.")
    out.append(s)
  if out[0][0] != out[1][0]:
    raise ValueError(
        f"{name} A and B must have the same rank, got {out[0]} and {out[1]}.")
  return out[0], out[1]


def _explicit_pads(padding, in_hw, kernel_hw, strides, dilation):
  """``K``'s padding as ``((top, bottom), (left, right))``."""
  if not isinstance(padding, str):
    return padding
  eff = tuple((k - 1) * d + 1 for k, d in zip(kernel_hw, dilation))
  mode = "SAME" if padding == "CIRCULAR" else padding
  return tuple(tuple(p) for p in lax.padtype_to_pads(in_hw, eff, strides, mode))


def _out_size(size, pads, k, stride, dilation):
  return (size + pads[0] + pads[1] - (k - 1) * dilation - 1) // stride + 1


# ---------------------------------------------------------------------------
# Plan and cost model
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class KronConvPlan:
  """How :func:`kron_conv` computes one term; ``chosen`` is what runs.

  Attributes:
    x_shape: ``(N, H, W, C)``, batch axes flattened.
    a_shape: ``(r, ah, aw, ai, ao)``.
    b_shape: ``(r, bh, bw, bi, bo)``.
    strides: ``(sh, sw)``.
    padding: ``K``'s explicit padding ``((top, bottom), (left, right))``.
    kernel_dilation: ``(dh, dw)``.
    out_shape: ``(N, Y, X, ao*bo)``.
    chosen: the :class:`~kfc_jax.PlanCost` that runs.
    candidates: every plan considered, cheapest first.
  """

  x_shape: tuple[int, int, int, int]
  a_shape: tuple[int, ...]
  b_shape: tuple[int, ...]
  strides: tuple[int, int]
  padding: tuple[tuple[int, int], tuple[int, int]]
  kernel_dilation: tuple[int, int]
  out_shape: tuple[int, int, int, int]
  chosen: PlanCost
  candidates: tuple[PlanCost, ...]

  @property
  def strategy(self) -> str:
    return self.chosen.strategy

  @property
  def kernel_shape(self) -> tuple[int, int, int, int]:
    """Shape of the composite kernel ``K`` (HWIO)."""
    return tuple(a * b for a, b in zip(self.a_shape[1:], self.b_shape[1:]))

  @property
  def dense_flops(self) -> int:
    """FLOPs of the dense convolution by ``K``."""
    n, y, x, o = self.out_shape
    kh, kw, c, _ = self.kernel_shape
    return 2 * n * y * x * kh * kw * c * o

  @property
  def params(self) -> int:
    """Parameters of the factors (against ``prod(kernel_shape)`` dense)."""
    return math.prod(self.a_shape) + math.prod(self.b_shape)


def _first_stride(strides, a_hw, b_hw, dilation):
  """Stride of the conv by B: the step the conv by A reads its input at.

  A output row ``y`` reads B's output at rows ``y*s + p1*bh*d``, all multiples
  of ``gcd(s, bh*d)`` (of ``s`` when ``ah == 1``): B need not compute the others.
  """
  return tuple(s if ak == 1 else math.gcd(s, bk * d)
               for s, ak, bk, d in zip(strides, a_hw, b_hw, dilation))


def _route(a, b) -> str:
  """Which of the two steps are pointwise (1x1) and so run as GEMMs."""
  a_point, b_point = a[1:3] == (1, 1), b[1:3] == (1, 1)
  if a_point and b_point:
    return "matmul"   # K is 1x1: kron_matmul on the (padded, strided) pixels
  if b_point:
    return "gemm-conv"  # B on x as it lies; K's padding moves to A's conv
  if a_point:
    return "conv-gemm"  # A on B's output, which already took the stride
  return "conv-conv"


def _step_seconds(model, flops, bytes_, in_channels, out_channels):
  """One conv (or GEMM) step, slowed down when it has few channels.

  A conv runs at ``sqrt(min(1, min(cin, cout) / (2 * full_speed_dim)))`` of
  full speed. Fitted on XLA:CPU (2 cores) to 15 measured factored/dense pairs
  (``benchmarks/kron_conv.py`` and 3x3 convs of 8 to 256 channels): it picks
  the faster of factored and materialised in all 15, with predicted time
  ratios within 1.5x of the measured ones on average; e.g. a 3x3 64->64 conv
  runs at 0.70 of a 128->128 one (model 0.71), 16->48 at 0.47 (0.5).
  """
  eff = math.sqrt(min(1.0, min(in_channels, out_channels)
                      / (2 * model.full_speed_dim)))
  return model.step_seconds(flops, bytes_, max(1e-3, eff * model.full_speed_dim))


def _factored_cost(x_shape, a, b, strides, pads, dil, itemsize, model) -> PlanCost:
  n, h, w, c = x_shape
  r, ah, aw, ai, ao = a
  _, bh, bw, bi, bo = b
  route = _route(a, b)
  y = _out_size(h, pads[0], ah * bh, strides[0], dil[0])
  x = _out_size(w, pads[1], aw * bw, strides[1], dil[1])
  if route == "matmul":
    plan = kron_matmul_plan((n * y * x, c), [(r, ai, ao), (r, bi, bo)],
                            strategy="factored", cost_model=model,
                            dtype=_ITEMSIZE_DTYPES[itemsize])
    return dataclasses.replace(plan.chosen, order=())
  if route == "gemm-conv":
    h1, w1 = h, w
  else:
    g = _first_stride(strides, (ah, aw), (bh, bw), dil)
    h1 = _out_size(h, pads[0], bh, g[0], dil[0])
    w1 = _out_size(w, pads[1], bw, g[1], dil[1])
  x_size, z_size, y_size = n * h * w * c, n * ai * h1 * w1 * r * bo, n * y * x * ao * bo
  flops1 = 2 * n * ai * h1 * w1 * bh * bw * bi * r * bo
  flops2 = 2 * n * bo * y * x * ah * aw * ai * r * ao
  bytes1 = itemsize * (x_size + z_size)
  bytes2 = itemsize * (z_size + y_size)
  # Axis shuffles (input groups to the batch axis, z's groups, output groups
  # back) are separate memory-bound ops: each reads and writes its array.
  shuffled = ((x_size if ai > 1 and route != "gemm-conv" else 0)
              + (z_size if route != "conv-gemm" else 0)
              + (y_size if bo > 1 else 0))
  seconds = (_step_seconds(model, flops1, bytes1, bi, r * bo)
             + _step_seconds(model, flops2, bytes2, ai * r, ao))
  if shuffled:
    seconds += model.step_seconds(0, 2 * itemsize * shuffled, 1)
  return PlanCost("factored", (), int(flops1 + flops2),
                  int(bytes1 + bytes2 + 2 * itemsize * shuffled),
                  int(itemsize * 2 * z_size), float(seconds))


def _materialize_cost(x_shape, a, b, strides, pads, dil, itemsize, model) -> PlanCost:
  n, h, w, c = x_shape
  r = a[0]
  kh, kw, _, o = (p * q for p, q in zip(a[1:], b[1:]))
  k_size = kh * kw * c * o
  y = _out_size(h, pads[0], kh, strides[0], dil[0])
  x = _out_size(w, pads[1], kw, strides[1], dil[1])
  build_flops, build_bytes = 2 * r * k_size, itemsize * k_size
  conv_flops = 2 * n * y * x * k_size
  conv_bytes = itemsize * (n * h * w * c + k_size + n * y * x * o)
  seconds = (model.step_seconds(build_flops, build_bytes, model.full_speed_dim)
             + _step_seconds(model, conv_flops, conv_bytes, c, o))
  return PlanCost("materialize", (), int(build_flops + conv_flops),
                  int(build_bytes + conv_bytes), int(itemsize * k_size),
                  float(seconds))


@functools.lru_cache(maxsize=4096)
def _plan_cached(x_shape, a, b, strides, pads, dil, itemsize, strategy,
                 model) -> KronConvPlan:
  args = (x_shape, a, b, strides, pads, dil, itemsize, model)
  candidates = sorted([_factored_cost(*args), _materialize_cost(*args)],
                      key=lambda c: c.seconds)
  if strategy == "auto":
    chosen = candidates[0]
  else:
    chosen = next(c for c in candidates if c.strategy == strategy)
  n = x_shape[0]
  y = _out_size(x_shape[1], pads[0], a[1] * b[1], strides[0], dil[0])
  x = _out_size(x_shape[2], pads[1], a[2] * b[2], strides[1], dil[1])
  return KronConvPlan(x_shape, a, b, strides, pads, dil, (n, y, x, a[4] * b[4]),
                      chosen, tuple(candidates))


def _check_x_shape(x_shape, a, b, name="x"):
  c = a[3] * b[3]
  if len(x_shape) < 3 or x_shape[-1] != c:
    raise ValueError(
        f"{name} must have shape [*batch, height, width, {c}] (NHWC; {c} = the"
        f" factors' input channels ai*bi = {a[3]}*{b[3]}), got {name} with"
        f" shape {tuple(x_shape)}.")


def _resolve(x_shape, a, b, strides, padding, kernel_dilation, name="x"):
  """Validated ``(x_shape [N,H,W,C], strides, padding, explicit pads, dilation)``."""
  _check_x_shape(x_shape, a, b, name)
  strides = _checks.pair(strides, "strides")
  dil = _checks.pair(kernel_dilation, "kernel_dilation")
  padding = _checks.normalize_padding(padding)
  hw = tuple(int(d) for d in x_shape[-3:-1])
  khw = (a[1] * b[1], a[2] * b[2])
  pads = _explicit_pads(padding, hw, khw, strides, dil)
  for axis, size, p, k, d in zip(("height", "width"), hw, pads, khw, dil):
    if size + p[0] + p[1] < (k - 1) * d + 1:
      raise ValueError(
          f"x's {axis} {size} padded by {p} is {size + p[0] + p[1]}, smaller"
          f" than the (dilated) kernel {axis} {(k - 1) * d + 1}; use a larger"
          f" input or padding='SAME' (got padding={padding!r}).")
  n = math.prod(int(d) for d in x_shape[:-3])
  return (n, *hw, int(x_shape[-1])), strides, padding, pads, dil


def kron_conv_plan(
    x_shape: Sequence[int],
    factor_shapes: Sequence[Sequence[int]],
    *,
    strides: int | Sequence[int] = 1,
    padding: PaddingLike = "SAME",
    kernel_dilation: int | Sequence[int] = 1,
    dtype: Any = jnp.float32,
    strategy: ConvStrategy = "auto",
    cost_model: CostModel | None = None,
) -> KronConvPlan:
  """The plan :func:`kron_conv` runs for these shapes, with predicted costs.

  Two candidates: ``"factored"`` (conv by B, then conv by A dilated, the
  kernel never formed) and ``"materialize"`` (form ``K``, one dense conv).
  Factored does fewer FLOPs at low rank but two convs with fewer channels
  each, plus three axis shuffles; the roofline :class:`~kfc_jax.CostModel`
  weighs both.

  Args:
    x_shape: ``[*batch, H, W, ai*bi]``.
    factor_shapes: ``(A shape, B shape)``, each ``(r, h, w, in, out)`` or
      ``(h, w, in, out)``.
    strides: int or ``(sh, sw)``.
    padding: as for :func:`kron_conv`.
    kernel_dilation: int or ``(dh, dw)``, the dilation of ``K``.
    dtype: element type (sets the bytes per element).
    strategy: ``"auto"`` (cheapest by the cost model), ``"factored"`` or
      ``"materialize"``.
    cost_model: device model; defaults to :func:`~kfc_jax.default_cost_model`.

  Returns:
    A :class:`KronConvPlan`; ``plan.chosen`` is what runs.

  Example usage::

    >>> import kfc_jax
    >>> plan = kfc_jax.kron_conv_plan(
    ...     (64, 32, 32, 64), [(3, 3, 16, 16), (1, 1, 4, 4)], strategy="factored")
    >>> plan.out_shape, plan.kernel_shape, plan.strategy
    ((64, 32, 32, 64), (3, 3, 64, 64), 'factored')
    >>> round(plan.dense_flops / plan.chosen.flops, 2)   # FLOPs saved
    3.89
  """
  a, b = _term_shapes(factor_shapes, "factor_shapes")
  x_shape = tuple(int(d) for d in x_shape)
  strategy = _checks.strategy(strategy)
  x4, strides, _, pads, dil = _resolve(x_shape, a, b, strides, padding,
                                       kernel_dilation, "x_shape")
  return _plan_cached(x4, a, b, strides, pads, dil, jnp.dtype(dtype).itemsize,
                      strategy, cost_model or default_cost_model())


# ---------------------------------------------------------------------------
# Computation
# ---------------------------------------------------------------------------


def _conv(x, k, strides, pads, dilation, precision, pet):
  return lax.conv_general_dilated(
      x, k, window_strides=strides, padding=pads, rhs_dilation=dilation,
      dimension_numbers=_DIMENSION_NUMBERS, precision=precision,
      preferred_element_type=pet)


def kron_kernel(
    factors: Sequence[Any],
    *,
    precision: PrecisionLike = None,
    preferred_element_type: Any = None,
) -> Array:
  """Materialises ``K = sum_r A[r] ⊗ B[r]`` over the HWIO axes.

  Args:
    factors: ``(A, B)``, ``A: [r, ah, aw, ai, ao]``, ``B: [r, bh, bw, bi, bo]``
      (4-D HWIO factors mean r = 1).
    precision: passed to the rank contraction.
    preferred_element_type: accumulation/result dtype of the rank contraction.

  Returns:
    ``K: [ah*bh, aw*bw, ai*bi, ao*bo]`` with
    ``K[(p1,p2),(q1,q2),(i1,i2),(o1,o2)] = sum_r A[r,p1,q1,i1,o1] B[r,p2,q2,i2,o2]``.

  Example usage::

    >>> import jax.numpy as jnp, kfc_jax
    >>> a, b = jnp.ones((2, 2, 4, 8)), jnp.ones((3, 1, 2, 2))
    >>> kfc_jax.kron_kernel((a, b)).shape
    (6, 2, 8, 16)
  """
  a, b = _as_term(factors)
  dtype = jnp.result_type(a, b)
  k = jnp.einsum("rabcd,refgh->aebfcgdh", a.astype(dtype), b.astype(dtype),
                 precision=precision, preferred_element_type=preferred_element_type)
  return k.reshape(*(p * q for p, q in zip(a.shape[1:], b.shape[1:])))


def _factored(x, a, b, strides, pads, dil, precision, pet):
  """Conv by B per input group ``i1``, then by A dilated per output group ``o2``.

  Groups ride in the batch axis, not ``feature_group_count``: XLA:CPU expands
  grouped convs into dense ones (measured 2-4x slower than the dense conv),
  while an axis shuffle costs a few percent of a conv. A 1x1 factor is a GEMM
  on the channels, with no shuffle of its input.
  """
  n, h, w, _ = x.shape
  r, ah, aw, ai, ao = a.shape
  _, bh, bw, bi, bo = b.shape
  route = _route(a.shape, b.shape)
  dot = functools.partial(jnp.einsum, precision=precision,
                          preferred_element_type=pet)
  if route == "matmul":
    # Pad (or crop, for negative padding) and subsample: K only sees these.
    x = lax.pad(x, jnp.zeros((), x.dtype),
                ((0, 0, 0), *((lo, hi, 0) for lo, hi in pads), (0, 0, 0)))
    x = x[:, ::strides[0], ::strides[1]]
    y = kron_matmul(x, (a.reshape(r, ai, ao), b.reshape(r, bi, bo)),
                    precision=precision, preferred_element_type=pet,
                    strategy="factored")
    return y
  if route == "gemm-conv":
    # conv_A(pad(B x)) = conv_A(pad(x) * B): a 1x1 B commutes with zero padding.
    z = dot("nhwab,rbo->nohwar", x.reshape(n, h, w, ai, bi), b.reshape(r, bi, bo))
    a_strides, a_pads, a_dil = strides, pads, dil
  else:
    g = _first_stride(strides, (ah, aw), (bh, bw), dil)
    xb = x.reshape(n, h, w, ai, bi)
    if ai > 1:
      xb = xb.transpose(0, 3, 1, 2, 4)
    kb = b.transpose(1, 2, 3, 0, 4).reshape(bh, bw, bi, r * bo)  # out (r, o2)
    z = _conv(xb.reshape(n * ai, h, w, bi), kb, g, pads, dil, precision, pet)
    z = z.reshape(n, ai, *z.shape[1:3], r, bo)
    if route == "conv-gemm":  # B's conv took the whole stride (g = s)
      y = dot("nahwrb,raq->nhwqb", z.astype(x.dtype), a.reshape(r, ai, ao))
      return y.reshape(*y.shape[:3], ao * bo)
    z = z.transpose(0, 5, 2, 3, 1, 4)
    a_strides = tuple(s // gi for s, gi in zip(strides, g))
    a_pads = ((0, 0), (0, 0))
    # A factor of size 1 on an axis has no taps to space out (and then g may
    # exceed B's span, so the formula would give 0).
    a_dil = tuple(1 if ak == 1 else bk * d // gi
                  for ak, bk, d, gi in zip((ah, aw), (bh, bw), dil, g))
  # The intermediate is stored in the compute dtype, like a layer's output.
  _, _, h1, w1, _, _ = z.shape
  z = z.astype(x.dtype).reshape(n * bo, h1, w1, ai * r)
  ka = a.transpose(1, 2, 3, 0, 4).reshape(ah, aw, ai * r, ao)  # in (i1, r)
  y = _conv(z, ka, a_strides, a_pads, a_dil, precision, pet)
  _, yh, yw, _ = y.shape
  y = y.reshape(n, bo, yh, yw, ao)
  if bo > 1:
    y = y.transpose(0, 2, 3, 4, 1)
  return y.reshape(n, yh, yw, ao * bo)


def _prepare(x, terms, strides, padding, kernel_dilation, strategy):
  """Shared validation of kron_conv and kron_conv_sum."""
  if not hasattr(x, "ndim"):
    x = jnp.asarray(x)
  # The factors are floating, so integer images promote to their dtype.
  dtype = jnp.result_type(x, *(f for t in terms for f in t))
  strategy = _checks.strategy(strategy)
  a0, b0 = (tuple(int(d) for d in f.shape) for f in terms[0])
  x4, strides, padding, pads, dil = _resolve(x.shape, a0, b0, strides, padding,
                                             kernel_dilation)
  batch_shape = x.shape[:-3]
  x = x.astype(dtype).reshape(x4)
  if padding == "CIRCULAR":
    x = jnp.pad(x, ((0, 0), *pads, (0, 0)), mode="wrap")
    x4, pads = x.shape, ((0, 0), (0, 0))
  terms = [tuple(f.astype(dtype) for f in t) for t in terms]
  plans = [_plan_cached(x4, tuple(a.shape), tuple(b.shape), strides, pads, dil,
                        jnp.dtype(dtype).itemsize, strategy, default_cost_model())
           for a, b in terms]
  return x, terms, plans, batch_shape, strides, pads, dil


def kron_conv(
    x: Any,
    factors: Sequence[Any],
    *,
    strides: int | Sequence[int] = 1,
    padding: PaddingLike = "SAME",
    kernel_dilation: int | Sequence[int] = 1,
    precision: PrecisionLike = None,
    preferred_element_type: Any = None,
    strategy: ConvStrategy = "auto",
) -> Array:
  """2-D convolution of NHWC ``x`` by ``K = sum_r A[r] ⊗ B[r]``, ``K`` not formed.

  Equals ``lax.conv_general_dilated(x, kron_kernel(factors), strides, padding,
  rhs_dilation=kernel_dilation)`` (NHWC/HWIO), computed as a conv by ``B`` (at
  stride 1, on each of the ``ai`` input-channel groups) followed by a conv by
  ``A`` dilated by ``(bh, bw)`` (on each of the ``bo`` output-channel groups,
  contracting the ``ai`` groups and the rank together), with ``K``'s padding
  applied once, in the first conv, and the stride in the second. Any split of
  ``(kh, kw, C_in, C_out)`` works, including ones where neither factor is 1
  spatially. When A's dilated taps all land on multiples of a divisor of the
  stride, that part of the stride moves into the first conv, which then skips
  rows nobody reads.

  ``strategy="auto"`` picks this or forming ``K`` and running one dense conv,
  whichever the cost model predicts is faster (see :func:`kron_conv_plan`).

  Args:
    x: ``[*batch, H, W, ai*bi]`` (NHWC; no batch axes means one image).
    factors: ``(A, B)``, ``A: [r, ah, aw, ai, ao]``, ``B: [r, bh, bw, bi, bo]``
      (4-D HWIO factors mean r = 1). To sum terms of different shapes use
      :func:`kron_conv_sum`.
    strides: int or ``(sh, sw)``.
    padding: ``"SAME"``, ``"VALID"``, ``"SAME_LOWER"``, ``"CIRCULAR"`` (SAME
      sizes, wrap-around values, as in Flax), an int ``p``, a pair
      ``(ph, pw)``, or ``((top, bottom), (left, right))`` — all of ``K``.
    kernel_dilation: int or ``(dh, dw)``, the dilation of ``K``.
    precision: ``lax.Precision`` for both convolutions.
    preferred_element_type: accumulation/result dtype of both convolutions
      (the intermediate is stored in the input dtype).
    strategy: ``"auto"``, ``"factored"`` or ``"materialize"``.

  Returns:
    ``[*batch, Y, X, ao*bo]``.

  Example usage::

    >>> import jax, jax.numpy as jnp, kfc_jax
    >>> x = jnp.ones((2, 9, 9, 8))
    >>> a = jnp.ones((3, 2, 2, 4, 4))   # rank 3
    >>> b = jnp.ones((3, 2, 2, 2, 4))   # K: [4, 4, 8, 16]
    >>> kfc_jax.kron_conv(x, (a, b), strides=2).shape
    (2, 5, 5, 16)
  """
  a, b = _as_term(factors)
  x, terms, plans, batch_shape, strides, pads, dil = _prepare(
      x, [(a, b)], strides, padding, kernel_dilation, strategy)
  (a, b), plan = terms[0], plans[0]
  if plan.strategy == "materialize":
    k = kron_kernel((a, b), precision=precision)
    y = _conv(x, k, strides, pads, dil, precision, preferred_element_type)
  else:
    y = _factored(x, a, b, strides, pads, dil, precision, preferred_element_type)
  return y.reshape(*batch_shape, *y.shape[1:])


def sum_strategy(plans: Sequence[KronConvPlan], strategy: Any) -> str:
  """How :func:`kron_conv_sum` runs terms with these plans: all in one dense
  conv (``"materialize"``) or each factored (``"factored"``).

  Forming the kernels costs next to nothing, so under ``"auto"`` one dense
  conv by their sum beats any mix as soon as it beats running every term
  factored.
  """
  if strategy != "auto":
    return "materialize" if strategy == "materialize" else "factored"
  cost = [{c.strategy: c.seconds for c in p.candidates} for p in plans]
  if cost[0]["materialize"] < sum(c["factored"] for c in cost):
    return "materialize"
  return "factored"


def kron_conv_sum(
    x: Any,
    terms: Sequence[Sequence[Any]],
    *,
    strides: int | Sequence[int] = 1,
    padding: PaddingLike = "SAME",
    kernel_dilation: int | Sequence[int] = 1,
    precision: PrecisionLike = None,
    preferred_element_type: Any = None,
    strategy: ConvStrategy = "auto",
) -> Array:
  """Convolution by a sum of Kronecker kernels of different splits (KConv).

  ``K = sum_t kron_kernel(terms[t])``: the terms may cut ``(kh, kw, C_in,
  C_out)`` differently and have different ranks, but must compose to the same
  kernel shape. Each term runs factored as in :func:`kron_conv`, or (when the
  cost model predicts one dense conv beats them all) the terms' kernels are
  summed and run as one conv.

  Args:
    x: ``[*batch, H, W, C_in]``.
    terms: a sequence of ``(A, B)`` pairs, each as ``factors`` of
      :func:`kron_conv`.
    strides, padding, kernel_dilation, precision, preferred_element_type: as
      for :func:`kron_conv`.
    strategy: ``"auto"``, ``"factored"`` (every term factored) or
      ``"materialize"`` (one dense conv by the summed kernel).

  Returns:
    ``[*batch, Y, X, C_out]``.

  Example usage::

    >>> import jax.numpy as jnp, kfc_jax
    >>> x = jnp.ones((2, 8, 8, 16))
    >>> t1 = (jnp.ones((3, 3, 4, 4)), jnp.ones((1, 1, 4, 8)))      # 3x3 ⊗ 1x1
    >>> t2 = (jnp.ones((2, 3, 1, 2, 8)), jnp.ones((2, 1, 3, 8, 4)))  # 3x1 ⊗ 1x3, rank 2
    >>> kfc_jax.kron_conv_sum(x, [t1, t2]).shape
    (2, 8, 8, 32)
  """
  if hasattr(terms, "ndim") or not isinstance(terms, Sequence) or not terms:
    raise TypeError(
        "terms must be a non-empty sequence of (A, B) pairs, got"
        f" {type(terms).__name__ if not isinstance(terms, Sequence) else terms!r}.")
  terms = [_as_term(t, f"terms[{i}]") for i, t in enumerate(terms)]
  kernel_shapes = [tuple(p * q for p, q in zip(a.shape[1:], b.shape[1:]))
                   for a, b in terms]
  for i, s in enumerate(kernel_shapes[1:], 1):
    if s != kernel_shapes[0]:
      raise ValueError(
          f"all terms must compose to the same kernel shape (kh, kw, C_in,"
          f" C_out); terms[0] gives {kernel_shapes[0]} but terms[{i}] gives {s}"
          f" (A {tuple(terms[i][0].shape)}, B {tuple(terms[i][1].shape)}).")
  x, terms, plans, batch_shape, strides, pads, dil = _prepare(
      x, terms, strides, padding, kernel_dilation, strategy)
  if sum_strategy(plans, strategy) == "materialize":
    k = sum(kron_kernel(t, precision=precision) for t in terms)
    y = _conv(x, k, strides, pads, dil, precision, preferred_element_type)
  else:
    y = sum(_factored(x, a, b, strides, pads, dil, precision,
                      preferred_element_type) for a, b in terms)
  return y.reshape(*batch_shape, *y.shape[1:])
