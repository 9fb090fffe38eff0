"""Linen twin of :class:`kfc_jax.nnx.KroneckerLinear`."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

from kfc_jax import layers
from kfc_jax.linen import _common


class KroneckerLinear(_common.KroneckerDenseBase):
  """``y = x @ W + b`` with ``W = sum_r F_1[r] ⊗ ... ⊗ F_k[r]`` (Linen).

  Same arguments (minus ``rngs``) and parameter names (``factor_{t}_{f}``,
  ``bias``) as :class:`kfc_jax.nnx.KroneckerLinear`; bad arguments raise at
  the first ``init``/``apply``.

  Example usage::

    >>> import jax, jax.numpy as jnp, kfc_jax
    >>> layer = kfc_jax.linen.KroneckerLinear(288, 256, in_factors=(16, 18),
    ...                                       out_factors=(16, 16))
    >>> params = layer.init(jax.random.key(0), jnp.ones((1, 288)))["params"]
    >>> jax.tree.map(jnp.shape, params)
    {'bias': (256,), 'factor_0_0': (1, 16, 16), 'factor_0_1': (1, 18, 16)}
  """

  in_features: int
  out_features: int
  in_factors: Sequence[int] | None = None
  out_factors: Sequence[int] | None = None
  rank: int = 1
  terms: Sequence[Any] | None = None

  @functools.cached_property
  def layout(self) -> layers.DenseLayout:
    return layers.linear_layout(
      self.in_features,
      self.out_features,
      in_factors=self.in_factors,
      out_factors=self.out_factors,
      rank=self.rank,
      terms=self.terms,
    )

  @classmethod
  def from_dense_params(
    cls, params: Any, *, sweeps: int = 20, input_cov: Any = None, **fields: Any
  ) -> _common.DenseConversion:
    """The twin nearest to a Linen ``Dense``'s params (see the NNX ``from_linear``).

    Example usage::

      >>> import jax, jax.numpy as jnp, flax.linen as nn, kfc_jax
      >>> dense = nn.Dense(32).init(jax.random.key(0), jnp.ones((1, 64)))
      >>> conv = kfc_jax.linen.KroneckerLinear.from_dense_params(dense, rank=4)
      >>> conv.module.apply({"params": conv.params}, jnp.ones((2, 64))).shape
      (2, 32)
    """
    kernel, bias, _ = _common.dense_params(params)
    fields = _common.conversion_fields(params, fields)
    return cls(*kernel.shape, **fields)._convert(kernel, bias, sweeps=sweeps, input_cov=input_cov)
