"""Linen twin of :class:`kfc_jax.nnx.KDL`."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import jax

from kfc_jax import layers
from kfc_jax.linen import _common


class KDL(_common.KroneckerModule):
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

  @functools.cached_property
  def layout(self) -> layers.KDLLayout:
    return layers.kdl_layout(
      self.in_features, self.out_features, self.in_factors, self.out_factors, self.rank
    )

  def _check_options(self) -> None:
    if self.activation is not None and not callable(self.activation):
      raise TypeError(f"activation must be callable or None, got {self.activation!r}.")

  def __call__(self, x: jax.Array) -> jax.Array:
    """Applies the block to ``x: [*batch, in_features]``."""
    return self.layout.apply(self.param_values, x, self.activation, **self.compute_options)

  def cost(self, batch: int = 1) -> layers.LayerCost:
    """Parameters and FLOPs against the dense layer this block replaces."""
    return self.layout.cost(type(self).__name__, use_bias=self.use_bias, batch=batch)
