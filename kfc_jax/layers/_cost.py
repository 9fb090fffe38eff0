"""``LayerCost``: a layer's parameters and FLOPs next to the dense layer it replaces.

The layouts' ``cost`` methods build it; :func:`dense_linear_cost` and
:func:`dense_conv_cost` give the plain layers as their own baseline.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence


@dataclasses.dataclass(frozen=True)
class LayerCost:
  """Parameters and FLOPs of a layer, next to the dense layer it replaces.

  FLOPs count multiply-adds as two, per ``batch`` rows, bias additions left
  out (as for the dense layer).

  Example usage::

    >>> import kfc_jax
    >>> from flax import nnx
    >>> c = kfc_jax.nnx.KroneckerLinear(16, 16, rngs=nnx.Rngs(0)).cost()
    >>> c.params, c.dense_params, c.flops, c.dense_flops  # 2 (4x4) factors + bias
    (48, 272, 256, 512)
  """

  kind: str
  in_features: int
  out_features: int
  params: int
  flops: int
  dense_params: int
  dense_flops: int
  detail: str = ""


def replacing_dense(
  kind: str,
  in_features: int,
  out_features: int,
  *,
  params: int,
  flops: int,
  use_bias: bool,
  batch: int,
  detail: str,
) -> LayerCost:
  """A cost against the dense ``in_features -> out_features`` layer.

  ``params`` counts the layer's own biases; the dense layer has one bias of
  ``out_features`` when ``use_bias``.
  """
  bias = out_features if use_bias else 0
  return LayerCost(
    kind,
    in_features,
    out_features,
    params,
    flops,
    in_features * out_features + bias,
    2 * batch * in_features * out_features,
    detail,
  )


def dense_linear_cost(
  kind: str, in_features: int, out_features: int, use_bias: bool, batch: int
) -> LayerCost:
  """A plain dense layer as its own baseline."""
  return replacing_dense(
    kind,
    in_features,
    out_features,
    params=in_features * out_features + (out_features if use_bias else 0),
    flops=2 * batch * in_features * out_features,
    use_bias=use_bias,
    batch=batch,
    detail="",
  )


def dense_conv_cost(
  kind: str, kernel_shape: Sequence[int], use_bias: bool, batch: int
) -> LayerCost:
  """A plain conv as its own baseline: FLOPs per ``batch`` output pixels."""
  out = kernel_shape[-1]
  params = math.prod(kernel_shape) + (out if use_bias else 0)
  flops = 2 * batch * math.prod(kernel_shape)
  return LayerCost(kind, kernel_shape[-2], out, params, flops, params, flops, "per output pixel")
