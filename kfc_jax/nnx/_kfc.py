"""KFC: the Kronecker fully-connected layer over a feature map (formulations I-IV)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax.numpy as jnp
from flax import nnx

from kfc_jax import layers
from kfc_jax.nnx import _common


class KFC(_common.KroneckerDenseBase):
  """Kronecker fully-connected layer over ``[*batch, H, W, C]`` (Zhou & Wu).

  Each term is a formulation (which named axes ``H``, ``W``, ``C`` each factor
  owns; see :mod:`kfc_jax.formulations`), its output factors and its rank:
  ``(formulation, out_factors)``, ``(formulation, out_factors, rank)`` or a
  :class:`kfc_jax.KFCTerm`. Terms are summed (KFC-Combined). The input may
  also be the flattened map ``[*batch, H*W*C]`` (NHWC order).

  Parameters: ``factor_{t}_{f}`` (:class:`KroneckerFactor`, ``[rank_t, m_f,
  n_f]``, where ``m_f`` is the product of the sizes of factor ``f``'s axis
  group, row-major in group order) and ``bias`` (``[out_features]``).

  Example usage::

    >>> import jax, jax.numpy as jnp, kfc_jax
    >>> from flax import nnx
    >>> layer = kfc_jax.nnx.KFC(in_shape=(3, 3, 32), out_features=256,
    ...                         terms=[("II", (64, 4))], rngs=nnx.Rngs(0))
    >>> jax.tree.map(jnp.shape, nnx.state(layer, kfc_jax.nnx.KroneckerFactor))
    State({
      'factor_0_0': KroneckerFactor(
        value=(1, 32, 64)
      ),
      'factor_0_1': KroneckerFactor(
        value=(1, 9, 4)
      )
    })
    >>> layer(jnp.ones((8, 3, 3, 32))).shape
    (8, 256)
    >>> combined = kfc_jax.nnx.KFC(
    ...     (3, 3, 32), 256, terms=[("II", (64, 4)), ("III", (128, 2)), ("IV", (128, 2))],
    ...     use_bias=False, rngs=nnx.Rngs(0))
    >>> combined.cost().params
    26672

  Args:
    in_shape: ``(H, W, C)`` of the feature map.
    out_features: output size ``O``.
    terms: the terms, summed.
    use_bias: whether to add a bias.
    dtype: computation dtype (default: inferred from inputs and params).
    param_dtype: parameter dtype.
    precision: ``jax.lax.Precision`` of every contraction.
    preferred_element_type: accumulation dtype of every contraction.
    factor_init: initialiser ``init(key, (rank, m, n), dtype)`` for every
      factor; by default each factor is normal with a scale such that the
      effective kernel's entries have variance ``1 / (H*W*C)``, like Flax's
      default ``lecun_normal`` dense layer.
    bias_init: initialiser of the bias.
    factor_metadata: metadata (e.g. ``out_sharding``) for every factor, or a
      sequence of one mapping per factor position.
    bias_metadata: metadata of the bias.
    strategy: how :func:`kfc_jax.kron_matmul` computes each term.
    rngs: random number generators.
  """

  def __init__(
    self,
    in_shape: Sequence[int],
    out_features: int,
    *,
    terms: Sequence[Any],
    use_bias: bool = True,
    dtype: Any = None,
    param_dtype: Any = jnp.float32,
    precision: Any = None,
    preferred_element_type: Any = None,
    factor_init: Any = None,
    bias_init: Any = _common.default_bias_init,
    factor_metadata: Any = layers.EMPTY_METADATA,
    bias_metadata: Mapping[str, Any] = layers.EMPTY_METADATA,
    strategy: Any = "auto",
    rngs: nnx.Rngs,
  ):
    layout = layers.kfc_layout(in_shape, out_features, terms)
    self.in_shape = layout.in_shape
    self.strategy = layout.check_strategy(strategy)
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

  @classmethod
  def from_linear(
    cls,
    linear: nnx.Linear,
    in_shape: Sequence[int],
    terms: Sequence[Any],
    *,
    sweeps: int = 20,
    input_cov: Any = None,
    **kwargs: Any,
  ) -> KFC:
    """The KFC layer nearest to a trained ``nnx.Linear`` over ``[H*W*C]`` (NHWC).

    One two-factor term is the optimal decomposition over its formulation's
    axis groups (:meth:`kfc_jax.formulations.Formulation.decompose`); several
    terms are fitted greedily on the residual, then refined by ``sweeps``
    block-coordinate sweeps. The layer's ``relative_error`` attribute holds
    ``||W - W_hat||_F / ||W||_F``; the bias is copied. With ``input_cov``
    (the input's ``E[x x^T]`` over the flattened feature map) the factors
    minimise the output error on that data instead.

    Example usage::

      >>> import kfc_jax
      >>> from flax import nnx
      >>> dense = nnx.Linear(3 * 3 * 32, 256, rngs=nnx.Rngs(0))
      >>> kfc = kfc_jax.nnx.KFC.from_linear(dense, (3, 3, 32), [("II", (64, 4), 9)])
      >>> round(kfc.relative_error, 2) < 1
      True
    """
    kernel, bias, dtype = _common.linear_kernel(linear)
    kwargs = _common.from_dense_kwargs(linear, bias, dtype, kwargs)
    layer = cls(in_shape, kernel.shape[1], terms=terms, **kwargs)
    if layer.in_features != kernel.shape[0]:
      raise ValueError(
        f"in_shape {layer.in_shape} has H*W*C = {layer.in_features}, but the"
        f" linear layer has in_features={kernel.shape[0]}."
      )
    layer._fit(kernel, bias, sweeps=sweeps, input_cov=input_cov)
    return layer
