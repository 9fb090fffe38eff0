"""Linen twin of :class:`kfc_jax.nnx.KDL`."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from kfc_jax import _layers
from kfc_jax.linen import _common
from kfc_jax.ops import kron


class KDL(nn.Module):
  """Kronecker multi-layer block (Linen): right layer, then left layer.

  Same arguments (minus ``rngs``) and parameter names (``left``, ``right``,
  ``left_bias``, ``right_bias``) as :class:`kfc_jax.nnx.KDL`.

  Example usage::

    >>> import jax, jax.numpy as jnp, kfc_jax
    >>> block = kfc_jax.linen.KDL(784, 256, (28, 28), (16, 16))
    >>> params = block.init(jax.random.key(0), jnp.ones((1, 784)))["params"]
    >>> jax.tree.map(jnp.shape, params)["left"], jax.tree.map(jnp.shape, params)["right"]
    ((1, 28, 16), (1, 28, 16))
  """

  in_features: int
  out_features: int
  in_factors: Sequence[int]
  out_factors: Sequence[int]
  rank: int = 1
  activation: Callable[[jax.Array], jax.Array] | None = jax.nn.relu
  use_bias: bool = True
  dtype: Any = None
  param_dtype: Any = jnp.float32
  precision: Any = None
  preferred_element_type: Any = None
  factor_init: Any = None
  bias_init: Any = _common.default_bias_init
  factor_metadata: Any = None
  bias_metadata: Mapping[str, Any] | None = None

  def setup(self):
    layout = _layers.kdl_layout(self.in_features, self.out_features,
                                self.in_factors, self.out_factors, self.rank)
    if self.activation is not None and not callable(self.activation):
      raise TypeError(
          f"activation must be callable or None, got {self.activation!r}.")
    self._kdl_layout = layout
    metas = _layers.pair_metadata(self.factor_metadata)
    stds = _layers.kdl_stddevs(layout)
    shapes = (layout.left_shape, layout.right_shape)
    self.left, self.right = (
        self.param(name, _common.boxed_init(self.factor_init or _layers.normal_init(s),
                                            m, "factor_metadata"),
                   shape, self.param_dtype)
        for name, s, shape, m in zip(("left", "right"), stds, shapes, metas))
    if self.use_bias:
      bias_init = _common.boxed_init(self.bias_init, self.bias_metadata, "bias_metadata")
      self.left_bias = self.param("left_bias", bias_init, layout.left_bias_shape,
                                  self.param_dtype)
      self.right_bias = self.param("right_bias", bias_init, layout.right_bias_shape,
                                   self.param_dtype)
    else:
      self.left_bias = self.right_bias = None

  def __call__(self, x: jax.Array) -> jax.Array:
    """Applies the block to ``x: [*batch, in_features]``."""
    return _layers.kdl_apply(
        self._kdl_layout, x, self.left, self.right, self.left_bias,
        self.right_bias, self.activation, dtype=self.dtype, precision=self.precision,
        preferred_element_type=self.preferred_element_type)

  def materialize(self) -> jax.Array:
    """``sum_r L[r] ⊗ R[r]``: the block's kernel when it is linear."""
    return kron([self.left, self.right], precision=self.precision)

  def cost(self, batch: int = 1) -> _layers.LayerCost:
    """Parameters and FLOPs against the dense layer this block replaces."""
    layout = _layers.kdl_layout(self.in_features, self.out_features,
                                self.in_factors, self.out_factors, self.rank)
    return _layers.kdl_cost(layout, use_bias=self.use_bias, batch=batch)
