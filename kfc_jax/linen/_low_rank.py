"""Linen twin of :class:`kfc_jax.nnx.LowRankLinear`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from kfc_jax import _layers
from kfc_jax.linen import _common


class LowRankLinear(nn.Module):
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
    n_in, n_out, rank = _layers.low_rank_check(self.in_features, self.out_features,
                                               self.rank)
    metadata = _layers.pair_metadata(self.factor_metadata)
    stds = _layers.low_rank_stddevs(n_in, rank)
    shapes = [(n_in, rank), (rank, n_out)]
    self.u, self.v = (
        self.param(name, _common.boxed_init(self.factor_init or _layers.normal_init(s),
                                            m, "factor_metadata"),
                   shape, self.param_dtype)
        for name, s, shape, m in zip("uv", stds, shapes, metadata))
    self.bias = (self.param("bias", _common.boxed_init(self.bias_init, self.bias_metadata,
                                                       "bias_metadata"),
                            (n_out,), self.param_dtype)
                 if self.use_bias else None)

  def __call__(self, x: jax.Array) -> jax.Array:
    """Applies the layer to ``x: [*batch, in_features]``."""
    return _layers.low_rank_apply(
        x, self.u, self.v, self.bias, dtype=self.dtype, precision=self.precision,
        preferred_element_type=self.preferred_element_type)

  def materialize(self) -> jax.Array:
    """The effective dense kernel ``u @ v``."""
    return jnp.matmul(self.u, self.v, precision=self.precision)

  def cost(self, batch: int = 1) -> _layers.LayerCost:
    """Parameters and FLOPs against the dense layer this one replaces."""
    n_in, n_out, rank = _layers.low_rank_check(self.in_features, self.out_features,
                                               self.rank)
    return _layers.low_rank_cost(n_in, n_out, rank, use_bias=self.use_bias,
                                 batch=batch)

  @classmethod
  def from_dense_params(cls, params: Any, *, rank: int, **fields: Any
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
    module = cls(*kernel.shape, rank=rank, **fields)
    _, _, rank = _layers.low_rank_check(*kernel.shape, rank)
    new, error = _layers.fit_low_rank(kernel, bias, rank=rank,
                                      use_bias=module.use_bias)
    return _common.DenseConversion(module, _common.cast_params(module, new), error)
