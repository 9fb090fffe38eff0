"""The plans :func:`kron_conv` and :func:`kron_conv_sum` run.

A term ``K = sum_r A[r] ⊗ B[r]`` runs factored (a conv by ``B``, then one by
``A`` dilated by ``B``'s size; ``docs/DESIGN.md``, "Kronecker convolution") or
materialised (form ``K``, one dense conv). Each plan prices both under the
:class:`~kfc_jax.CostModel`; :class:`KronConvSumPlan` decides for a sum of
terms, and is what both :func:`kron_conv_sum` and the conv layers' ``cost()``
read. Their geometry (padding, output sizes) is ``_conv_geometry.py``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence
from typing import Any, Literal, NamedTuple

import jax.numpy as jnp

from kfc_jax import _checks
from kfc_jax.ops import _autotune
from kfc_jax.ops._conv_geometry import (
  ConvGeometry,
  PaddingLike,
  Pads,
  conv_geometry,
  first_stride,
  out_size,
  route,
)
from kfc_jax.ops._cost import CostModel, PlanCost, default_cost_model, matmul_plan

ConvStrategy = Literal["auto", "factored", "materialize", "autotune"]


# ---------------------------------------------------------------------------
# One term
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class KronConvPlan:
  """How :func:`kron_conv` computes one term; ``chosen`` is what runs.

  Attributes:
    x_shape: ``(N, H, W, C)``, batch axes flattened (for ``"CIRCULAR"``
      padding, the input already wrapped around).
    a_shape: ``(r, ah, aw, ai, ao)``.
    b_shape: ``(r, bh, bw, bi, bo)``.
    strides: ``(sh, sw)``.
    padding: ``K``'s explicit padding ``((top, bottom), (left, right))``.
    kernel_dilation: ``(dh, dw)``.
    out_shape: ``(N, Y, X, ao*bo)``.
    chosen: the :class:`~kfc_jax.PlanCost` that runs.
    candidates: every plan considered, cheapest first.

  Example usage::

    >>> import kfc_jax
    >>> plan = kfc_jax.kron_conv_plan((8, 32, 32, 16), [(3, 3, 4, 8), (1, 1, 4, 8)])
    >>> plan.out_shape, plan.padding, plan.chosen == plan.candidates[0]
    ((8, 32, 32, 64), ((1, 1), (1, 1)), True)
  """

  x_shape: tuple[int, int, int, int]
  a_shape: tuple[int, ...]
  b_shape: tuple[int, ...]
  strides: tuple[int, int]
  padding: Pads
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
    kh, kw, c, o = (a * b for a, b in zip(self.a_shape[1:], self.b_shape[1:], strict=True))
    return (kh, kw, c, o)

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

  def cost(self, strategy: str) -> PlanCost:
    """The candidate of ``strategy`` (``"factored"`` or ``"materialize"``)."""
    return next(c for c in self.candidates if c.strategy == strategy)


class ConvStep(NamedTuple):
  """One convolution (or GEMM on channels) of a plan; sizes in bytes."""

  flops: int
  bytes: int
  in_channels: int
  out_channels: int
  pixels: int = 0  # output pixels of a conv (0: a GEMM on the channels)


def _factored_cost(geo: ConvGeometry, a, b, itemsize, model) -> PlanCost:
  n, h, w, c = geo.x_shape
  strides, pads, dil = geo.strides, geo.pads, geo.dilation
  r, ah, aw, ai, ao = a
  _, bh, bw, bi, bo = b
  path = route(a, b)
  y = out_size(h, pads[0], ah * bh, strides[0], dil[0])
  x = out_size(w, pads[1], aw * bw, strides[1], dil[1])
  if path == "matmul":
    plan = matmul_plan(n * y * x, (ai, bi), (ao, bo), r, itemsize, "factored", model)
    return dataclasses.replace(plan.chosen, order=())
  if path == "gemm-conv":
    h1, w1 = h, w
  else:
    g = first_stride(strides, (ah, aw), (bh, bw), dil)
    h1 = out_size(h, pads[0], bh, g[0], dil[0])
    w1 = out_size(w, pads[1], bw, g[1], dil[1])
  x_size, z_size, y_size = n * h * w * c, n * ai * h1 * w1 * r * bo, n * y * x * ao * bo
  by_b = ConvStep(
    2 * n * ai * h1 * w1 * bh * bw * bi * r * bo,
    itemsize * (x_size + z_size),
    bi,
    r * bo,
    0 if path == "gemm-conv" else n * ai * h1 * w1,
  )
  by_a = ConvStep(
    2 * n * bo * y * x * ah * aw * ai * r * ao,
    itemsize * (z_size + y_size),
    ai * r,
    ao,
    0 if path == "conv-gemm" else n * bo * y * x,
  )
  # Axis shuffles (input groups to the batch axis, z's groups, output groups
  # back) are separate memory-bound ops: each reads and writes its array.
  shuffled = (
    (x_size if ai > 1 and path != "gemm-conv" else 0)
    + (z_size if path != "conv-gemm" else 0)
    + (y_size if bo > 1 else 0)
  )
  seconds = sum(model.conv_step_seconds(*s) for s in (by_b, by_a))
  if shuffled:
    seconds += model.memory_seconds(2 * itemsize * shuffled)
  return PlanCost(
    "factored",
    (),
    int(by_b.flops + by_a.flops),
    int(by_b.bytes + by_a.bytes + 2 * itemsize * shuffled),
    int(itemsize * 2 * z_size),
    float(seconds),
  )


def _materialize_cost(geo: ConvGeometry, a, b, itemsize, model) -> PlanCost:
  n, h, w, c = geo.x_shape
  strides, pads, dil = geo.strides, geo.pads, geo.dilation
  r = a[0]
  kh, kw, _, o = (p * q for p, q in zip(a[1:], b[1:], strict=True))
  k_size = kh * kw * c * o
  y = out_size(h, pads[0], kh, strides[0], dil[0])
  x = out_size(w, pads[1], kw, strides[1], dil[1])
  build_flops, build_bytes = 2 * r * k_size, itemsize * k_size
  conv = ConvStep(
    2 * n * y * x * k_size, itemsize * (n * h * w * c + k_size + n * y * x * o), c, o, n * y * x
  )
  seconds = model.step_seconds(
    build_flops, build_bytes, model.full_speed_dim
  ) + model.conv_step_seconds(*conv)
  return PlanCost(
    "materialize",
    (),
    int(build_flops + conv.flops),
    int(build_bytes + conv.bytes),
    int(itemsize * k_size),
    float(seconds),
  )


@functools.lru_cache(maxsize=4096)
def conv_plan(
  geo: ConvGeometry,
  a: tuple[int, ...],
  b: tuple[int, ...],
  itemsize: int,
  strategy: str,
  model: CostModel,
) -> KronConvPlan:
  """The plan of one term for validated arguments."""
  candidates = sorted(
    [_factored_cost(geo, a, b, itemsize, model), _materialize_cost(geo, a, b, itemsize, model)],
    key=lambda c: c.seconds,
  )
  if strategy == "auto":
    chosen = candidates[0]
  else:
    chosen = next(c for c in candidates if c.strategy == strategy)
  n, h, w, _ = geo.x_shape
  pads, dil = geo.pads, geo.dilation
  y = out_size(h, pads[0], a[1] * b[1], geo.strides[0], dil[0])
  x = out_size(w, pads[1], a[2] * b[2], geo.strides[1], dil[1])
  return KronConvPlan(
    geo.x_shape, a, b, geo.strides, pads, dil, (n, y, x, a[4] * b[4]), chosen, tuple(candidates)
  )


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
    strategy: ``"auto"`` (cheapest by the cost model), ``"factored"``,
      ``"materialize"`` or ``"autotune"`` (the plan measured fastest forward
      + backward on this device, timed on first use and cached; see
      :func:`kron_conv`).
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
  a, b = _checks.conv_term_shapes(factor_shapes, "factor_shapes")
  strategy = _checks.strategy(strategy)
  geo = conv_geometry(
    tuple(int(d) for d in x_shape), a, b, strides, padding, kernel_dilation, "x_shape"
  )
  return conv_plan(
    geo,
    a,
    b,
    jnp.dtype(dtype).itemsize,
    tuned(geo, [(a, b)], dtype, strategy),
    cost_model or default_cost_model(),
  )


def tuned(geo: ConvGeometry, shapes, dtype, strategy: str, precision=None, pet=None) -> str:
  """``strategy``, with ``"autotune"`` replaced by the measured-fastest plan
  forward + backward (``"auto"`` when it cannot be timed)."""
  if strategy != "autotune":
    return strategy
  return _autotune.autotuned_conv_strategy(geo, shapes, dtype, precision, pet)


# ---------------------------------------------------------------------------
# A sum of terms
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class KronConvSumPlan:
  """How :func:`kron_conv_sum` computes a sum of terms; what it costs.

  Attributes:
    terms: each term's :class:`KronConvPlan`.
    strategy: ``"materialize"`` (the terms' kernels summed, one dense conv)
      or ``"factored"`` (every term factored).

  Example usage::

    >>> import kfc_jax
    >>> plan = kfc_jax.kron_conv_sum_plan(
    ...     (8, 32, 32, 64), [[(3, 3, 8, 8), (1, 1, 8, 8)], [(1, 1, 8, 8), (3, 3, 8, 8)]])
    >>> len(plan.terms), plan.out_shape, plan.strategy in ("factored", "materialize")
    (2, (8, 32, 32, 64), True)
  """

  terms: tuple[KronConvPlan, ...]
  strategy: str

  @property
  def flops(self) -> int:
    """FLOPs of what runs (forming the kernels counted for the first term)."""
    if self.strategy == "materialize":
      return self.terms[0].cost("materialize").flops
    return sum(t.cost("factored").flops for t in self.terms)

  @property
  def seconds(self) -> float:
    """Predicted seconds of what runs."""
    if self.strategy == "materialize":
      return self.terms[0].cost("materialize").seconds
    return sum(t.cost("factored").seconds for t in self.terms)

  @property
  def dense_flops(self) -> int:
    """FLOPs of the dense convolution by the summed kernel."""
    return self.terms[0].dense_flops

  @property
  def out_shape(self) -> tuple[int, int, int, int]:
    return self.terms[0].out_shape


def sum_plan(
  geo: ConvGeometry,
  shapes: Sequence[tuple[tuple[int, ...], ...]],
  itemsize: int,
  strategy: str,
  model: CostModel,
) -> KronConvSumPlan:
  """The plan of a sum of terms for validated arguments.

  Forming the kernels costs next to nothing, so under ``"auto"`` one dense
  conv by their sum beats any mix as soon as it beats running every term
  factored. One term runs as its own plan chose.
  """
  terms = tuple(conv_plan(geo, a, b, itemsize, strategy, model) for a, b in shapes)
  if strategy != "auto":
    how = "materialize" if strategy == "materialize" else "factored"
  elif terms[0].cost("materialize").seconds < sum(t.cost("factored").seconds for t in terms):
    how = "materialize"
  else:
    how = "factored"
  return KronConvSumPlan(terms, how)


def kron_conv_sum_plan(
  x_shape: Sequence[int],
  terms: Sequence[Sequence[Sequence[int]]],
  *,
  strides: int | Sequence[int] = 1,
  padding: PaddingLike = "SAME",
  kernel_dilation: int | Sequence[int] = 1,
  dtype: Any = jnp.float32,
  strategy: ConvStrategy = "auto",
  cost_model: CostModel | None = None,
) -> KronConvSumPlan:
  """The plan :func:`kron_conv_sum` runs for these shapes, with predicted costs.

  Args:
    x_shape: ``[*batch, H, W, C_in]``.
    terms: per term, ``(A shape, B shape)`` as ``factor_shapes`` of
      :func:`kron_conv_plan`; all must compose to the same kernel shape.
    strides, padding, kernel_dilation, dtype, cost_model: as for
      :func:`kron_conv_plan`.
    strategy: ``"auto"``, ``"factored"`` (every term factored),
      ``"materialize"`` (one dense conv by the summed kernel) or
      ``"autotune"`` (as for :func:`kron_conv_plan`).

  Returns:
    A :class:`KronConvSumPlan`; ``plan.strategy`` is what runs.

  Example usage::

    >>> import kfc_jax
    >>> plan = kfc_jax.kron_conv_sum_plan(
    ...     (8, 16, 16, 16), [[(3, 3, 4, 4), (1, 1, 4, 8)],
    ...                       [(2, 3, 1, 2, 8), (2, 1, 3, 8, 4)]])
    >>> [t.kernel_shape for t in plan.terms], plan.out_shape
    ([(3, 3, 16, 32), (3, 3, 16, 32)], (8, 16, 16, 32))
  """
  if isinstance(terms, (str, bytes)) or not isinstance(terms, Sequence) or not terms:
    raise TypeError(
      f"terms must be a non-empty sequence of (A shape, B shape) pairs, got {terms!r}."
    )
  shapes = [_checks.conv_term_shapes(t, f"terms[{i}]") for i, t in enumerate(terms)]
  _checks.same_kernel_shape(shapes)
  strategy = _checks.strategy(strategy)
  geo = conv_geometry(
    tuple(int(d) for d in x_shape), *shapes[0], strides, padding, kernel_dilation, "x_shape"
  )
  return sum_plan(
    geo,
    shapes,
    jnp.dtype(dtype).itemsize,
    tuned(geo, shapes, dtype, strategy),
    cost_model or default_cost_model(),
  )
