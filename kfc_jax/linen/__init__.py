"""Flax Linen twins of the ``kfc_jax.nnx`` layers (identical parameter names).

Each twin takes the NNX layer's arguments (minus ``rngs``); the
``from_dense_params`` classmethods map a Linen ``Dense`` param dict to the
twin's params.

Example usage::

  >>> import jax, jax.numpy as jnp, kfc_jax
  >>> layer = kfc_jax.linen.KFC((3, 3, 32), 256, terms=[("II", (64, 4))])
  >>> variables = layer.init(jax.random.key(0), jnp.ones((1, 3, 3, 32)))
  >>> layer.apply(variables, jnp.ones((2, 288))).shape
  (2, 256)
"""

from kfc_jax.linen._common import DenseConversion as DenseConversion
from kfc_jax.linen._conv import KroneckerConv as KroneckerConv
from kfc_jax.linen._kdl import KDL as KDL
from kfc_jax.linen._kfc import KFC as KFC
from kfc_jax.linen._linear import KroneckerLinear as KroneckerLinear
from kfc_jax.linen._low_rank import LowRankLinear as LowRankLinear

__all__ = [
  "KDL",
  "KFC",
  "DenseConversion",
  "KroneckerConv",
  "KroneckerLinear",
  "LowRankLinear",
]
