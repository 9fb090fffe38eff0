"""Linen twin of :class:`kfc_jax.nnx.KFC`."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

from kfc_jax import layers
from kfc_jax.linen import _common


class KFC(_common.KroneckerDenseBase):
  """Kronecker fully-connected layer over ``[*batch, H, W, C]`` (Linen).

  Same arguments (minus ``rngs``) and parameter names as
  :class:`kfc_jax.nnx.KFC`; bad arguments raise at the first ``init``/``apply``.

  Example usage::

    >>> import jax, jax.numpy as jnp, kfc_jax
    >>> layer = kfc_jax.linen.KFC((3, 3, 32), 256, terms=[("II", (64, 4))])
    >>> params = layer.init(jax.random.key(0), jnp.ones((1, 3, 3, 32)))["params"]
    >>> jax.tree.map(jnp.shape, params)
    {'bias': (256,), 'factor_0_0': (1, 32, 64), 'factor_0_1': (1, 9, 4)}
  """

  in_shape: Sequence[int]
  out_features: int
  terms: Sequence[Any]

  @functools.cached_property
  def layout(self) -> layers.DenseLayout:
    return layers.kfc_layout(self.in_shape, self.out_features, self.terms)

  @classmethod
  def from_dense_params(
    cls,
    params: Any,
    in_shape: Sequence[int],
    terms: Sequence[Any],
    *,
    sweeps: int = 20,
    input_cov: Any = None,
    **fields: Any,
  ) -> _common.DenseConversion:
    """The KFC twin nearest to a Linen ``Dense``'s params (see ``nnx.KFC.from_linear``).

    Example usage::

      >>> import jax, jax.numpy as jnp, flax.linen as nn, kfc_jax
      >>> dense = nn.Dense(16).init(jax.random.key(0), jnp.ones((1, 2 * 2 * 8)))
      >>> conv = kfc_jax.linen.KFC.from_dense_params(dense, (2, 2, 8), [("II", (4, 4))])
      >>> conv.module.apply({"params": conv.params}, jnp.ones((2, 2, 2, 8))).shape
      (2, 16)
    """
    kernel, bias, _ = _common.dense_params(params)
    fields = _common.conversion_fields(params, fields)
    module = cls(in_shape, kernel.shape[1], terms, **fields)
    if module.layout.in_features != kernel.shape[0]:
      raise ValueError(
        f"in_shape {tuple(in_shape)} has H*W*C = {module.layout.in_features},"
        f" but the dense kernel has in_features={kernel.shape[0]}."
      )
    return module._convert(kernel, bias, sweeps=sweeps, input_cov=input_cov)
