"""KDL: the Kronecker multi-layer block of Hogue, Kirby and Narayan."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from kfc_jax import layers
from kfc_jax.nnx import _common


class KDL(_common.KroneckerModule):
  """Kronecker multi-layer block: a right layer, then a left layer.

  ``x: [*batch, m1*m2]`` is viewed as ``X: [m1, m2]``; each of ``rank``
  parallel branches computes ``Z = σ(X R + b_R)`` (``R: [m2, n2]``, ``Z:
  [m1, n2]``), then ``Y = σ(Lᵀ Z + b_L)`` (``L: [m1, n1]``, ``Y: [n1, n2]``),
  and the branches are summed (arXiv 2204.04273; docs/DESIGN.md, "KDL block"). With
  ``activation=None`` and ``use_bias=False`` this is exactly
  ``x @ sum_r L[r] ⊗ R[r]``, a :class:`KroneckerLinear`.

  The biases are those of the "extended" dense network the block sparsifies:
  ``right_bias: [rank, m1, n2]`` (one per hidden unit) and ``left_bias:
  [rank, n1, n2]`` (one per output).

  Example usage::

    >>> import jax, jax.numpy as jnp, kfc_jax
    >>> from flax import nnx
    >>> block = kfc_jax.nnx.KDL(784, 256, in_factors=(28, 28),
    ...                         out_factors=(16, 16), rngs=nnx.Rngs(0))
    >>> jax.tree.map(jnp.shape, nnx.state(block, nnx.Param))
    State({
      'left': KroneckerFactor(
        value=(1, 28, 16)
      ),
      'left_bias': Param(
        value=(1, 16, 16)
      ),
      'right': KroneckerFactor(
        value=(1, 28, 16)
      ),
      'right_bias': Param(
        value=(1, 28, 16)
      )
    })
    >>> block(jnp.ones((8, 784))).shape
    (8, 256)

  Args:
    in_features: input size ``m1*m2``.
    out_features: output size ``n1*n2``.
    in_factors: ``(m1, m2)``.
    out_factors: ``(n1, n2)``.
    rank: number of parallel branches.
    activation: applied after each layer; ``None`` for the identity.
    use_bias: whether both layers add a bias.
    dtype: computation dtype (default: inferred from inputs and params).
    param_dtype: parameter dtype.
    precision: ``jax.lax.Precision`` of both products.
    preferred_element_type: accumulation dtype of both products.
    factor_init: initialiser of ``left`` and ``right``; by default each layer
      is lecun-normal (variance ``1 / m1``, ``1 / m2``, shared by the branches)
      so, without activations, the block's output variance matches Flax's
      default dense layer.
    bias_init: initialiser of the biases.
    factor_metadata: metadata for ``left`` and ``right``, or a pair of mappings.
    bias_metadata: metadata of the biases.
    rngs: random number generators.
  """

  def __init__(
    self,
    in_features: int,
    out_features: int,
    *,
    in_factors: Sequence[int],
    out_factors: Sequence[int],
    rank: int = 1,
    activation: Callable[[jax.Array], jax.Array] | None = jax.nn.relu,
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
    layout = layers.kdl_layout(in_features, out_features, in_factors, out_factors, rank)
    if activation is not None and not callable(activation):
      raise TypeError(f"activation must be callable or None, got {activation!r}.")
    self.activation = activation
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
    """Applies the block to ``x: [*batch, in_features]``."""
    return self.layout.apply(self.param_values, x, self.activation, **self.compute_options)

  def materialize(self) -> jax.Array:
    """``sum_r L[r] ⊗ R[r]``: the block's kernel when linear (no biases, identity)."""
    return self.layout.materialize(self.param_values, precision=self.precision)

  def cost(self, batch: int = 1) -> layers.LayerCost:
    """Parameters and FLOPs against the dense layer this block replaces."""
    return self.layout.cost(type(self).__name__, use_bias=self.use_bias, batch=batch)
