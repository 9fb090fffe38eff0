"""Linen twin of :class:`kfc_jax.nnx.LowRankLinear`."""

from __future__ import annotations

import functools
from typing import Any

import jax

from kfc_jax import layers
from kfc_jax.linen import _common


class LowRankLinear(_common.KroneckerModule):
  """``y = (x @ u) @ v + b`` (Linen); the paper's LowRank-k baseline.

  Same arguments (minus ``rngs``) and parameter names (``u``, ``v``,
  ``bias``) as :class:`kfc_jax.nnx.LowRankLinear`.

  Example usage::

    >>> import jax, jax.numpy as jnp, kfc_jax
    >>> layer = kfc_jax.linen.LowRankLinear(288, 256, rank=96)
    >>> params = layer.init(jax.random.key(0), jnp.ones((1, 288)))["params"]
    >>> jax.tree.map(jnp.shape, params)
    {'bias': (256,), 'u': (288, 96), 'v': (96, 256)}
  """

  in_features: int
  out_features: int
  rank: int

  @functools.cached_property
  def layout(self) -> layers.LowRankLayout:
    return layers.low_rank_layout(self.in_features, self.out_features, self.rank)

  def __call__(self, x: jax.Array) -> jax.Array:
    """Applies the layer to ``x: [*batch, in_features]``."""
    return self.layout.apply(self.param_values, x, **self.compute_options)

  def cost(self, batch: int = 1) -> layers.LayerCost:
    """Parameters and FLOPs against the dense layer this one replaces."""
    return self.layout.cost(type(self).__name__, use_bias=self.use_bias, batch=batch)

  @classmethod
  def from_dense_params(
    cls, params: Any, *, rank: int, input_cov: Any = None, **fields: Any
  ) -> _common.DenseConversion:
    """The truncated-SVD twin nearest to a Linen ``Dense``'s params (optimal).

    Example usage::

      >>> import jax, jax.numpy as jnp, flax.linen as nn, kfc_jax
      >>> dense = nn.Dense(32).init(jax.random.key(0), jnp.ones((1, 64)))
      >>> conv = kfc_jax.linen.LowRankLinear.from_dense_params(dense, rank=32)
      >>> conv.relative_error < 1e-5
      True
    """
    kernel, bias, _ = _common.dense_params(params)
    fields = _common.conversion_fields(params, fields)
    return cls(*kernel.shape, rank=rank, **fields)._convert(kernel, bias, input_cov=input_cov)
