"""``KroneckerConv``'s layout: a 2-D conv whose kernel is a sum of Kronecker products.

As :mod:`kfc_jax.layers._dense` does for the dense layers: a
:class:`ConvLayout` (kernel size, channels, conv arguments, terms; validated
once) that knows its parameters and runs the maths over them by name.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any, cast

import jax
import numpy as np

from kfc_jax import _checks
from kfc_jax.decompose import (
  KroneckerSumTerm,
  gkpd,
  nearest_kronecker_sum,
  suggest_conv_factors,
)
from kfc_jax.layers import _params
from kfc_jax.layers._cost import LayerCost
from kfc_jax.ops import kron_conv_sum, kron_conv_sum_plan, kron_kernel
from kfc_jax.shapes import KronConvShape, factorize

Array = jax.Array
_AXES = ("height", "width", "in_features", "out_features")
Shape4 = tuple[int, int, int, int]


@dataclasses.dataclass(frozen=True)
class ConvLayout:
  """Channels, kernel size, conv arguments and terms of a ``KroneckerConv``."""

  in_features: int
  out_features: int
  kernel_size: tuple[int, int]
  strides: tuple[int, int]
  padding: Any  # as kron_conv takes it (validated)
  kernel_dilation: tuple[int, int]
  terms: tuple[KronConvShape, ...]

  @property
  def kernel_shape(self) -> tuple[int, int, int, int]:
    return (*self.kernel_size, self.in_features, self.out_features)

  @property
  def params(self) -> int:
    return sum(t.params for t in self.terms)

  @property
  def total_rank(self) -> int:
    return sum(t.rank for t in self.terms)

  def check_strategy(self, strategy: Any) -> Any:
    """Validates ``strategy`` (``"auto"``, ``"factored"``, ``"materialize"``, ``"autotune"``)."""
    return _checks.strategy(strategy)

  def sum_terms(self) -> list[KroneckerSumTerm]:
    """The terms as cuts of ``K.reshape(kh*kw*C_in, C_out)`` (nearest_kronecker_sum)."""
    out = []
    for t in self.terms:
      (ah, aw, ai, ao), (bh, bw, bi, bo) = t.a_shape, t.b_shape
      out.append(
        KroneckerSumTerm((ah, bh, aw, bw, ai, bi), (ao, bo), ((0, 2, 4, 6), (1, 3, 5, 7)), t.rank)
      )
    return out

  def param_specs(
    self, factor_metadata: Any = None, bias_metadata: Any = None
  ) -> list[_params.ParamSpec]:
    """``factor_{t}_0`` (A) and ``factor_{t}_1`` (B) of every term, then ``bias``.

    The default scales give ``K`` entries of variance ``1 / fan_in``,
    ``fan_in = kh*kw*C_in`` (Flax's default ``lecun_normal`` conv): each factor
    is lecun-normal on its own fan-in (``ah*aw*ai``, ``bh*bw*bi``), which
    already multiplies to ``fan_in``, scaled by ``1 / sqrt(R)`` for the ``R =
    sum rank`` products.
    """
    metadata = _params.pair_metadata(factor_metadata)
    c = 1 / math.sqrt(self.total_rank)
    specs = [
      _params.ParamSpec(
        _params.factor_name(t, f), shape, True, math.sqrt(c / math.prod(shape[1:4])), metadata[f]
      )
      for t, term in enumerate(self.terms)
      for f, shape in enumerate(term.factor_shapes)
    ]
    return specs + _params.bias_specs({"bias": (self.out_features,)}, bias_metadata)

  def factors(self, params: Mapping[str, Any]) -> list[tuple[Any, Any]]:
    """``[(A, B), ...]``, one pair per term, from the params by name."""
    return [
      (params[_params.factor_name(t, 0)], params[_params.factor_name(t, 1)])
      for t in range(len(self.terms))
    ]

  def apply(
    self,
    params: Mapping[str, Any],
    x: Any,
    *,
    dtype: Any = None,
    precision: Any = None,
    preferred_element_type: Any = None,
    strategy: Any = "auto",
  ) -> Array:
    """``conv(x, sum_t K_t) + bias`` without forming the ``K_t``."""
    factors = self.factors(params)
    arrays = _params.promote([x, *(f for fs in factors for f in fs), params.get("bias")], dtype)
    x, bias = arrays[0], arrays[-1]
    it = iter(arrays[1:-1])
    factors = [(next(it), next(it)) for _ in factors]
    if x.ndim < 3 or x.shape[-1] != self.in_features:
      raise ValueError(
        f"x must have shape [*batch, height, width, {self.in_features}] (NHWC,"
        f" in_features channels), got shape {tuple(x.shape)}."
      )
    y = kron_conv_sum(
      x,
      factors,
      strides=self.strides,
      padding=self.padding,
      kernel_dilation=self.kernel_dilation,
      precision=precision,
      preferred_element_type=preferred_element_type,
      strategy=strategy,
    )
    return _params.add_bias(y, bias)

  def materialize(self, params: Mapping[str, Any], **kwargs: Any) -> Array:
    """The effective HWIO kernel ``[kh, kw, in_features, out_features]``."""
    kernels = [kron_kernel(fs, **kwargs) for fs in self.factors(params)]
    return sum(kernels[1:], kernels[0])

  def check_kernel(self, kernel: Any) -> np.ndarray:
    """``kernel`` as float64 NumPy, checked against the layout's kernel shape."""
    kernel = _checks.finite_matrix(kernel, "kernel", ndim=4)
    if kernel.shape != self.kernel_shape:
      raise ValueError(
        f"the conv kernel must have shape [kh, kw, in_features, out_features] ="
        f" {list(self.kernel_shape)}, got {list(kernel.shape)}."
      )
    return kernel

  def fit(
    self, kernel: Any, bias: Any = None, *, use_bias: bool, sweeps: int = 20, input_cov: Any = None
  ) -> tuple[dict[str, np.ndarray], float]:
    """Params nearest to a conv ``(kernel, bias)``, by name, and the error.

    One term is :func:`~kfc_jax.gkpd` (optimal); several are fitted greedily
    and refined (:func:`~kfc_jax.nearest_kronecker_sum`).
    """
    kernel = self.check_kernel(kernel)
    if len(self.terms) == 1:
      t = self.terms[0]
      dec = gkpd(kernel, t.a_shape, t.b_shape, t.rank, input_cov=input_cov)
      factors, error = [dec.factors], dec.relative_error
    else:
      kh, kw, c, o = kernel.shape
      dec = nearest_kronecker_sum(
        kernel.reshape(kh * kw * c, o), self.sum_terms(), sweeps=sweeps, input_cov=input_cov
      )
      factors, error = dec.factors, dec.relative_error
    params = {
      _params.factor_name(t, f): np.asarray(v)
      for t, fs in enumerate(factors)
      for f, v in enumerate(fs)
    }
    return (_params.with_bias(params, bias, self.out_features, use_bias), float(error))

  def cost(
    self, kind: str, *, use_bias: bool, batch: int, input_size: Any, strategy: Any, dtype: Any
  ) -> LayerCost:
    """Parameters and FLOPs against the dense conv by the same kernel shape.

    With ``input_size = (H, W)`` the FLOPs are those of ``batch`` images (the
    plan ``kron_conv_sum`` runs, strides and padding included); without it, of
    ``batch`` output pixels at stride 1 (the factored count).
    """
    bias = self.out_features if use_bias else 0
    dense_params = math.prod(self.kernel_shape) + bias
    labels = " + ".join(t.label for t in self.terms)
    if input_size is None:
      flops = batch * sum(t.flops_per_pixel for t in self.terms)
      dense_flops = batch * 2 * math.prod(self.kernel_shape)
      detail = f"{labels}, per output pixel"
    else:
      h, w = _checks.pair(input_size, "input_size")
      # The plan kron_conv_sum runs: one dense conv by the summed kernel, or
      # every term factored.
      plan = kron_conv_sum_plan(
        (batch, h, w, self.in_features),
        [t.factor_shapes for t in self.terms],
        strides=self.strides,
        padding=self.padding,
        kernel_dilation=self.kernel_dilation,
        dtype=dtype or np.float32,
        strategy=strategy,
      )
      flops, dense_flops = plan.flops, plan.dense_flops
      detail = f"{labels} @{h}x{w}"
    return LayerCost(
      kind,
      self.in_features,
      self.out_features,
      self.params + bias,
      flops,
      dense_params,
      dense_flops,
      detail,
    )


def _split(value: Any, name: str) -> tuple[int, int, int, int]:
  s = _checks.int_tuple(value, name)
  if len(s) != 4:
    raise ValueError(f"{name} must be (h, w, in, out), 4 positive ints, got {s}.")
  return s  # type: ignore[return-value]


def _complete(given: tuple[int, ...], kernel_shape, name: str, other: str):
  """The other factor's shape: ``kernel_shape / given`` axis by axis."""
  out = []
  for axis, k, g in zip(_AXES, kernel_shape, given, strict=True):
    if k % g:
      divisors = [d for d in range(1, k + 1) if k % d == 0]
      raise ValueError(
        f"{name} {given} must divide the kernel shape {tuple(kernel_shape)}"
        f" (kernel_size, in_features, out_features) axis by axis, but {axis}"
        f" {k} is not a multiple of {g}; choose from {divisors}, and {other}"
        f" gets the rest."
      )
    out.append(k // g)
  return tuple(out)


def _resolve_term(term: Any, where: str, kernel_shape) -> KronConvShape:
  if isinstance(term, KronConvShape):
    term = (term.a_shape, term.b_shape, term.rank)
  if not isinstance(term, Sequence) or isinstance(term, str) or not 2 <= len(term) <= 3:
    raise TypeError(
      f"{where}must be (a_shape, b_shape), (a_shape, b_shape, rank) or a"
      f" KronConvShape, got {term!r}."
    )
  a, b, *rank = term
  rank = _checks.positive_int(rank[0] if rank else 1, f"{where}rank")
  kh, kw, c, o = kernel_shape
  if a is None and b is None:
    # All of the kernel's window in A, channels split evenly: the GKPD paper's
    # usual "3x3 (x) 1x1" shape.
    (ai, bi), (ao, bo) = factorize(c, 2), factorize(o, 2)
    a, b = (kh, kw, ai, ao), (1, 1, bi, bo)
  elif b is None:
    a = _split(a, f"{where}a_shape")
    b = _complete(a, kernel_shape, f"{where}a_shape", "b_shape")
  elif a is None:
    b = _split(b, f"{where}b_shape")
    a = _complete(b, kernel_shape, f"{where}b_shape", "a_shape")
  else:
    a, b = _split(a, f"{where}a_shape"), _split(b, f"{where}b_shape")
    for axis, k, p, q in zip(_AXES, kernel_shape, a, b, strict=True):
      if p * q != k:
        raise ValueError(
          f"{where}a_shape {a} and b_shape {b} must multiply to the kernel"
          f" shape {tuple(kernel_shape)} (kernel_size, in_features,"
          f" out_features) axis by axis, but on {axis} {p} * {q} = {p * q}"
          f" != {k}."
        )
  limit = min(math.prod(a), math.prod(b))
  if rank > limit:
    raise ValueError(
      f"{where}rank must be at most min(prod(a_shape), prod(b_shape)) ="
      f" {limit} for a_shape {tuple(a)} and b_shape {tuple(b)} (a higher rank"
      f" only repeats terms), got rank={rank}."
    )
  return KronConvShape(
    cast(Shape4, tuple(kernel_shape)), cast(Shape4, tuple(a)), cast(Shape4, tuple(b)), rank
  )


def conv_layout(
  in_features: Any,
  out_features: Any,
  kernel_size: Any,
  strides: Any = 1,
  *,
  padding: Any = "SAME",
  kernel_dilation: Any = 1,
  a_shape: Any = None,
  b_shape: Any = None,
  rank: Any = 1,
  terms: Any = None,
) -> ConvLayout:
  """Validates ``KroneckerConv``'s arguments."""
  in_features = _checks.positive_int(in_features, "in_features")
  out_features = _checks.positive_int(out_features, "out_features")
  kernel_size = _checks.pair(kernel_size, "kernel_size")
  strides = _checks.pair(1 if strides is None else strides, "strides")
  kernel_dilation = _checks.pair(
    1 if kernel_dilation is None else kernel_dilation, "kernel_dilation"
  )
  _checks.normalize_padding(padding)
  shape = (*kernel_size, in_features, out_features)
  if terms is None:
    resolved = (_resolve_term((a_shape, b_shape, rank), "", shape),)
  else:
    if a_shape is not None or b_shape is not None or rank != 1:
      raise ValueError(
        "pass either terms or a_shape/b_shape/rank, not both; got"
        f" terms={terms!r} with a_shape={a_shape!r}, b_shape={b_shape!r},"
        f" rank={rank!r}."
      )
    if isinstance(terms, (str, KronConvShape)) or not isinstance(terms, Sequence) or not terms:
      raise TypeError(
        "terms must be a non-empty list of (a_shape, b_shape[, rank]) tuples"
        f" or KronConvShape objects, got {terms!r}."
      )
    resolved = tuple(_resolve_term(t, f"terms[{i}] ", shape) for i, t in enumerate(terms))
  return ConvLayout(
    in_features, out_features, kernel_size, strides, padding, kernel_dilation, resolved
  )


def compression_terms(
  kernel: np.ndarray, compression: Any, a_shape: Any, b_shape: Any, rank: Any, terms: Any
) -> Any:
  """``terms`` for ``from_conv``: with ``compression``, the one split (and rank)
  :func:`~kfc_jax.suggest_conv_factors` finds best for ``kernel``."""
  if compression is None:
    return terms
  if a_shape is not None or b_shape is not None or terms is not None or rank != 1:
    raise ValueError(
      "pass either compression or a_shape/b_shape/rank/terms, not both; got"
      f" compression={compression!r} with a_shape={a_shape!r},"
      f" b_shape={b_shape!r}, rank={rank!r}, terms={terms!r}."
    )
  s = suggest_conv_factors(kernel.shape, compression=compression, kernel=kernel)
  return [(s.a_shape, s.b_shape, s.rank)]
