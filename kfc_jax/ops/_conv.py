"""2-D convolution by a sum of generalised Kronecker products of kernels.

Conventions (``docs/DESIGN.md``, "Conventions" and "Kronecker convolution"):
images are NHWC, kernels HWIO. A term is a pair of factors
``A: [r, ah, aw, ai, ao]`` and ``B: [r, bh, bw, bi, bo]`` (a 4-D factor means
``r = 1``) and stands for the kernel
``K: [ah*bh, aw*bw, ai*bi, ao*bo]``,

  ``K[(p1,p2), (q1,q2), (i1,i2), (o1,o2)] = sum_r A[r,p1,q1,i1,o1] B[r,p2,q2,i2,o2]``

with row-major pairs (``p = p1*bh + p2``, ...), i.e. ``jnp.kron`` over every
HWIO axis. The convolution by ``K`` is two small convolutions (the kernel is
never formed): one by ``B`` (per input-channel group ``i1``, at stride 1),
then one by ``A`` dilated by ``(bh, bw)`` (per output-channel group ``o2``,
contracting ``i1`` and the rank together), with ``K``'s padding applied once
in the first and the stride applied in the second.

The backward is autodiff's of the chosen plan, with no custom VJP: measured
(``benchmarks/conv_backward.py``), the factored plan's backward costs what
the dense conv's does relative to its forward, and no mix of the two plans
(``dx`` from one, the factors' gradients from the other) beats the better
plan beyond the noise; the plan choice is what matters.
"""

from __future__ import annotations

import functools
import math
import operator
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from kfc_jax import _checks, _dtypes
from kfc_jax.ops import _autotune, _vjp
from kfc_jax.ops._conv_geometry import (
  ConvGeometry,
  PaddingLike,
  conv_geometry,
  first_stride,
  out_size,
  route,
)
from kfc_jax.ops._conv_plan import ConvStrategy, sum_plan
from kfc_jax.ops._cost import CostModel, default_cost_model
from kfc_jax.ops._kron import kron_matmul

Array = jax.Array
PrecisionLike = Any

_DIMENSION_NUMBERS = ("NHWC", "HWIO", "NHWC")


def _conv(x, k, strides, pads, dilation, precision, pet):
  return lax.conv_general_dilated(
    x,
    k,
    window_strides=strides,
    padding=pads,
    rhs_dilation=dilation,
    dimension_numbers=_DIMENSION_NUMBERS,
    precision=precision,
    preferred_element_type=pet,
  )


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
  a, b = _checks.conv_term(factors)
  dtype = jnp.result_type(a, b)
  _, preferred_element_type = _dtypes.compute_dtype(
    a, (a, b), preferred_element_type, name="factors[0]"
  )
  k = jnp.einsum(
    "rabcd,refgh->aebfcgdh",
    a.astype(dtype),
    b.astype(dtype),
    precision=precision,
    preferred_element_type=preferred_element_type,
  )
  return k.reshape(*(p * q for p, q in zip(a.shape[1:], b.shape[1:], strict=True)))


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
  path = route(a.shape, b.shape)
  dot = functools.partial(jnp.einsum, precision=precision, preferred_element_type=pet)
  if path == "matmul":
    # Pad (or crop, for negative padding) and subsample: K only sees these.
    x = lax.pad(
      x, jnp.zeros((), x.dtype), ((0, 0, 0), *((lo, hi, 0) for lo, hi in pads), (0, 0, 0))
    )
    x = x[:, :: strides[0], :: strides[1]]
    y = kron_matmul(
      x,
      (a.reshape(r, ai, ao), b.reshape(r, bi, bo)),
      precision=precision,
      preferred_element_type=pet,
      strategy="factored",
    )
    return y
  if path == "gemm-conv":
    # conv_A(pad(B x)) = conv_A(pad(x) * B): a 1x1 B commutes with zero padding.
    z = dot("nhwab,rbo->nohwar", x.reshape(n, h, w, ai, bi), b.reshape(r, bi, bo))
    a_strides, a_pads, a_dil = strides, pads, dil
  else:
    g = first_stride(strides, (ah, aw), (bh, bw), dil)
    xb = x.reshape(n, h, w, ai, bi)
    if ai > 1:
      xb = xb.transpose(0, 3, 1, 2, 4)
    kb = b.transpose(1, 2, 3, 0, 4).reshape(bh, bw, bi, r * bo)  # out (r, o2)
    z = _conv(xb.reshape(n * ai, h, w, bi), kb, g, pads, dil, precision, pet)
    z = z.reshape(n, ai, *z.shape[1:3], r, bo)
    if path == "conv-gemm":  # B's conv took the whole stride (g = s)
      y = dot("nahwrb,raq->nhwqb", z.astype(x.dtype), a.reshape(r, ai, ao))
      return y.reshape(*y.shape[:3], ao * bo)
    z = z.transpose(0, 5, 2, 3, 1, 4)
    a_strides = tuple(s // gi for s, gi in zip(strides, g, strict=True))
    a_pads = ((0, 0), (0, 0))
    # A factor of size 1 on an axis has no taps to space out (and then g may
    # exceed B's span, so the formula would give 0).
    a_dil = tuple(
      1 if ak == 1 else bk * d // gi
      for ak, bk, d, gi in zip((ah, aw), (bh, bw), dil, g, strict=True)
    )
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


def _prepare(
  x, terms, strides, padding, kernel_dilation, strategy, cost_model, preferred_element_type
):
  """Shared set-up of kron_conv and kron_conv_sum: validated, cast, planned."""
  x = _dtypes.as_array(x, "x")
  strategy = _checks.strategy(strategy)
  shapes = [tuple(tuple(int(d) for d in f.shape) for f in t) for t in terms]
  a0, b0 = shapes[0]
  geo = conv_geometry(x.shape, a0, b0, strides, padding, kernel_dilation)
  # The dtype policy (kfc_jax/_checks.py): integer images promote to the
  # factors' dtype; complex and non-floating accumulators are rejected.
  dtype, pet = _dtypes.compute_dtype(x, [f for t in terms for f in t], preferred_element_type)
  batch_shape = x.shape[:-3]
  # The batch size explicitly: reshape(-1) cannot infer a batch of 0.
  x = x.astype(dtype).reshape(math.prod(batch_shape), *x.shape[-3:])
  if geo.wrap is not None:  # CIRCULAR: wrap around, then no padding
    x = jnp.pad(x, ((0, 0), *geo.wrap, (0, 0)), mode="wrap")
  terms = [tuple(f.astype(dtype) for f in t) for t in terms]
  # "autotune" runs the measured plans (_execute); the plan is the model's.
  plan = sum_plan(
    geo,
    shapes,
    jnp.dtype(dtype).itemsize,
    "auto" if strategy == "autotune" else strategy,
    cost_model or default_cost_model(),
  )
  return x, terms, plan, batch_shape, geo, pet, strategy


class _Tuned(NamedTuple):
  """What ``strategy="autotune"`` needs to time and run a conv (hashable)."""

  geo: ConvGeometry
  shapes: tuple[tuple[tuple[int, ...], ...], ...]
  model_pick: str  # the cost model's plan, if timing fails
  precision: Any
  pet: Any

  def pick(self, dtype, objective: str) -> str:
    s = _autotune.autotuned_conv_strategy(
      self.geo, self.shapes, dtype, self.precision, self.pet, objective
    )
    return self.model_pick if s == "auto" else s

  def run(self, x, terms, strategy):
    return _run(x, terms, strategy, self.geo, self.precision, self.pet)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _autotuned(config: _Tuned, x, terms):
  """``strategy="autotune"``: the plan measured fastest for what is asked.

  JAX traces this body only when nothing differentiates the call
  (inference), so it runs the forward-only pick; differentiated, the forward
  rule runs the forward + backward pick and autodiff's VJP of it. The two
  can differ: on few channels the factored plan wins the forward and loses
  the backward (``benchmarks/results/conv_plans_cpu_float32.md``).
  """
  return config.run(x, terms, config.pick(x.dtype, "fwd"))


def _autotuned_fwd(config: _Tuned, x, terms):
  strategy = config.pick(x.dtype, "fwd+bwd")
  return jax.vjp(lambda x, terms: config.run(x, terms, strategy), x, terms)


def _autotuned_bwd(config, vjp, dy):
  del config
  return vjp(dy)


_autotuned.defvjp(_autotuned_fwd, _autotuned_bwd)


def _execute(x, terms, strategy, plan, geo, precision, pet) -> Array:
  """Runs the plan, or (``"autotune"``) the measured-fastest ones."""
  if strategy != "autotune" or x.shape[0] == 0:
    return _run(x, terms, plan.strategy, geo, precision, pet)
  shapes = tuple(tuple(tuple(int(d) for d in f.shape) for f in t) for t in terms)
  config = _Tuned(geo, shapes, plan.strategy, precision, pet)
  return _vjp.reverse_mode_only(
    _autotuned,
    config,
    x,
    terms,
    'strategy="autotune" of kron_conv / kron_conv_sum is reverse-mode only (it'
    " tunes forward and forward + backward apart, through a jax.custom_vjp):"
    " jax.jvp, jax.jacfwd and jax.hessian cannot go through it. Pass"
    ' strategy="auto", "factored" or "materialize" for forward-mode derivatives.',
  )


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
  cost_model: CostModel | None = None,
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

  Dtypes: the policy of :func:`~kfc_jax.kron_matmul` (real floating factors;
  real floating, integer or bool ``x``; computed in
  ``jnp.result_type(x, *factors)``; complex rejected; ``preferred_element_type``
  ``None`` or real floating, and the result's dtype when given). An empty
  batch gives an empty result; an image of height or width 0 and a zero-size
  factor dimension raise ``ValueError``. A list of several ``(A, B)`` pairs
  raises ``TypeError`` (use :func:`kron_conv_sum`).

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
    strategy: ``"auto"``, ``"factored"``, ``"materialize"`` or
      ``"autotune"`` (both plans timed once per shape and device, forward and
      forward + backward apart, the winners cached as for
      :func:`~kfc_jax.kron_matmul`; reverse-mode differentiation only).
    cost_model: device model for the plan; defaults to
      :func:`~kfc_jax.default_cost_model`.

  Returns:
    ``[*batch, Y, X, ao*bo]``, of dtype ``preferred_element_type`` or the
    promoted dtype of ``x`` and the factors.

  Example usage::

    >>> import jax, jax.numpy as jnp, kfc_jax
    >>> x = jnp.ones((2, 9, 9, 8))
    >>> a = jnp.ones((3, 2, 2, 4, 4))   # rank 3
    >>> b = jnp.ones((3, 2, 2, 2, 4))   # K: [4, 4, 8, 16]
    >>> kfc_jax.kron_conv(x, (a, b), strides=2).shape
    (2, 5, 5, 16)
  """
  x, terms, plan, batch_shape, geo, pet, strategy = _prepare(
    x,
    [_checks.conv_term(factors)],
    strides,
    padding,
    kernel_dilation,
    strategy,
    cost_model,
    preferred_element_type,
  )
  y = _execute(x, terms, strategy, plan, geo, precision, pet)
  return y.reshape(*batch_shape, *y.shape[1:])


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
  cost_model: CostModel | None = None,
) -> Array:
  """Convolution by a sum of Kronecker kernels of different splits (KConv).

  ``K = sum_t kron_kernel(terms[t])``: the terms may cut ``(kh, kw, C_in,
  C_out)`` differently and have different ranks, but must compose to the same
  kernel shape. Each term runs factored as in :func:`kron_conv`, or (when the
  cost model predicts one dense conv beats them all) the terms' kernels are
  summed and run as one conv (see :func:`~kfc_jax.kron_conv_sum_plan`).

  Args:
    x: ``[*batch, H, W, C_in]``.
    terms: a sequence of ``(A, B)`` pairs, each as ``factors`` of
      :func:`kron_conv`.
    strides, padding, kernel_dilation, precision, preferred_element_type, cost_model:
      as for :func:`kron_conv`.
    strategy: ``"auto"``, ``"factored"`` (every term factored),
      ``"materialize"`` (one dense conv by the summed kernel) or
      ``"autotune"`` (the faster of those two, measured; see
      :func:`kron_conv`).

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
      f" {type(terms).__name__ if not isinstance(terms, Sequence) else terms!r}."
    )
  terms = [_checks.conv_term(t, f"terms[{i}]") for i, t in enumerate(terms)]
  _checks.same_kernel_shape([(a.shape, b.shape) for a, b in terms])
  x, terms, plan, batch_shape, geo, pet, strategy = _prepare(
    x, terms, strides, padding, kernel_dilation, strategy, cost_model, preferred_element_type
  )
  y = _execute(x, terms, strategy, plan, geo, precision, pet)
  return y.reshape(*batch_shape, *y.shape[1:])


def _run(x, terms, strategy, geo, precision, pet):
  """One dense conv by the summed kernel, or every term factored."""
  if x.shape[0] == 0:  # an empty batch (the factored reshapes need rows)
    a, b = terms[0]
    khw = (a.shape[1] * b.shape[1], a.shape[2] * b.shape[2])
    out_hw = [
      out_size(size, p, k, s, d)
      for size, p, k, s, d in zip(
        geo.x_shape[1:3], geo.pads, khw, geo.strides, geo.dilation, strict=True
      )
    ]
    return jnp.zeros((0, *out_hw, a.shape[4] * b.shape[4]), pet or x.dtype)
  if strategy == "materialize":
    k = functools.reduce(operator.add, [kron_kernel(t, precision=precision) for t in terms])
    return _conv(x, k, geo.strides, geo.pads, geo.dilation, precision, pet)
  return functools.reduce(
    operator.add,
    [_factored(x, a, b, geo.strides, geo.pads, geo.dilation, precision, pet) for a, b in terms],
  )
