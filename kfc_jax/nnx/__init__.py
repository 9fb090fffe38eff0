"""Flax NNX layers (the primary API): Kronecker-structured dense layers.

Example usage::

  >>> import jax.numpy as jnp, kfc_jax
  >>> from flax import nnx
  >>> layer = kfc_jax.nnx.KFC((3, 3, 32), 256, terms=[("II", (64, 4))],
  ...                         rngs=nnx.Rngs(0))
  >>> layer(jnp.ones((2, 3, 3, 32))).shape
  (2, 256)
"""

from kfc_jax.nnx._common import KroneckerFactor as KroneckerFactor
from kfc_jax.nnx._conv import KroneckerConv as KroneckerConv
from kfc_jax.nnx._kdl import KDL as KDL
from kfc_jax.nnx._kfc import KFC as KFC
from kfc_jax.nnx._linear import KroneckerLinear as KroneckerLinear
from kfc_jax.nnx._low_rank import LowRankLinear as LowRankLinear

__all__ = [
  "KDL",
  "KFC",
  "KroneckerConv",
  "KroneckerFactor",
  "KroneckerLinear",
  "LowRankLinear",
]
