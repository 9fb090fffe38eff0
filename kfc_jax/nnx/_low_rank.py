"""LowRankLinear: the KFC paper's LowRank-k baseline, ``x @ U @ V + b``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from kfc_jax import layers
from kfc_jax.nnx import _common


class LowRankLinear(_common.KroneckerModule):
  """``y = (x @ u) @ v + b`` with ``u: [in, rank]``, ``v: [rank, out]``.

  The paper's LowRank-k baseline: two stacked dense maps ``in -> k -> out``
  with no nonlinearity between them (a bias on the hidden map would only add
  a constant to ``b``, so there is none). ``u`` and ``v`` are
  :class:`KroneckerFactor` params: ``U V = sum_r u_r ⊗ v_r`` is a rank-r sum
  of Kronecker products of a column and a row.

  Example usage::

    >>> import jax, jax.numpy as jnp, kfc_jax
    >>> from flax import nnx
    >>> layer = kfc_jax.nnx.LowRankLinear(288, 256, rank=96, rngs=nnx.Rngs(0))
    >>> jax.tree.map(jnp.shape, nnx.state(layer, kfc_jax.nnx.KroneckerFactor))
    State({
      'u': KroneckerFactor(
        value=(288, 96)
      ),
      'v': KroneckerFactor(
        value=(96, 256)
      )
    })
    >>> layer(jnp.ones((8, 288))).shape
    (8, 256)

  Args:
    in_features: input size.
    out_features: output size.
    rank: the hidden size ``k`` (at most ``min(in_features, out_features)``).
    use_bias: whether to add a bias to the output.
    dtype: computation dtype (default: inferred from inputs and params).
    param_dtype: parameter dtype.
    precision: ``jax.lax.Precision`` of both products.
    preferred_element_type: accumulation dtype of both products.
    factor_init: initialiser for ``u`` and ``v``; by default each is
      lecun-normal on its own, so ``u @ v`` has entries of variance
      ``1 / in_features`` like Flax's default dense layer.
    bias_init: initialiser of the bias.
    factor_metadata: metadata (e.g. ``out_sharding``) for ``u`` and ``v``,
      or a pair of mappings.
    bias_metadata: metadata of the bias.
    rngs: random number generators.
  """

  def __init__(
    self,
    in_features: int,
    out_features: int,
    *,
    rank: int,
    use_bias: bool = True,
    dtype: Any = None,
    param_dtype: Any = jnp.float32,
    precision: Any = None,
    preferred_element_type: Any = None,
    factor_init: Any = None,
    bias_init: Any = _common.default_bias_init,
    factor_metadata: Any = layers.EMPTY_METADATA,
    bias_metadata: Mapping[str, Any] = layers.EMPTY_METADATA,
    rngs: nnx.Rngs,
  ):
    layout = layers.low_rank_layout(in_features, out_features, rank)
    self.rank = layout.rank
    self._init_layer(
      layout,
      use_bias=use_bias,
      dtype=dtype,
      param_dtype=param_dtype,
      precision=precision,
      preferred_element_type=preferred_element_type,
      factor_init=factor_init,
      bias_init=bias_init,
      factor_metadata=factor_metadata,
      bias_metadata=bias_metadata,
      rngs=rngs,
    )

  def __call__(self, x: jax.Array) -> jax.Array:
    """Applies the layer to ``x: [*batch, in_features]``."""
    return self.layout.apply(self.param_values, x, **self.compute_options)

  def cost(self, batch: int = 1) -> layers.LayerCost:
    """Parameters and FLOPs against the dense layer this one replaces."""
    return self.layout.cost(type(self).__name__, use_bias=self.use_bias, batch=batch)

  @classmethod
  def from_linear(
    cls, linear: nnx.Linear, *, rank: int, input_cov: Any = None, **kwargs: Any
  ) -> LowRankLinear:
    """The truncated-SVD layer nearest to a trained ``nnx.Linear`` (optimal).

    The layer's ``relative_error`` attribute holds ``||W - u v||_F / ||W||_F``.
    With ``input_cov`` (the input's ``E[x x^T]``) the factors minimise the
    output error on that data instead (whitened SVD, optimal).

    Example usage::

      >>> import kfc_jax
      >>> from flax import nnx
      >>> dense = nnx.Linear(64, 32, rngs=nnx.Rngs(0))
      >>> low = kfc_jax.nnx.LowRankLinear.from_linear(dense, rank=32)
      >>> low.relative_error < 1e-5
      True
    """
    kernel, bias, dtype = _common.linear_kernel(linear)
    kwargs = _common.from_dense_kwargs(linear, bias, dtype, kwargs)
    layer = cls(*kernel.shape, rank=rank, **kwargs)
    layer._fit(kernel, bias, input_cov=input_cov)
    return layer
