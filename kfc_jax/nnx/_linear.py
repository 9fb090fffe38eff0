"""KroneckerLinear: a dense layer whose kernel is a sum of Kronecker products."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax.numpy as jnp
from flax import nnx

from kfc_jax import layers
from kfc_jax.nnx import _common


class KroneckerLinear(_common.KroneckerDenseBase):
  """``y = x @ W + b`` with ``W = sum_r F_1[r] ⊗ ... ⊗ F_k[r]`` (the paper's KFCM).

  Factor shapes are given (``in_factors``, ``out_factors``) or suggested
  (:func:`kfc_jax.suggest_factors`: balanced, ``k = len(in_factors)`` or 2).
  Factors may multiply past ``in_features``/``out_features``: the input is
  padded with zeros and the extra outputs dropped, invisibly to the caller
  (so awkward sizes such as primes work). ``terms`` sums several terms with
  *different* factor shapes in one layer.

  Parameters: ``factor_{t}_{f}`` (:class:`KroneckerFactor`, ``[rank_t, m_f,
  n_f]``, factor ``f`` of term ``t``) and ``bias`` (``[out_features]``).

  Example usage::

    >>> import jax, jax.numpy as jnp, kfc_jax
    >>> from flax import nnx
    >>> layer = kfc_jax.nnx.KroneckerLinear(
    ...     288, 256, in_factors=(16, 18), out_factors=(16, 16), rank=2,
    ...     rngs=nnx.Rngs(0))
    >>> jax.tree.map(jnp.shape, nnx.state(layer, nnx.Param))
    State({
      'bias': Param(
        value=(256,)
      ),
      'factor_0_0': KroneckerFactor(
        value=(2, 16, 16)
      ),
      'factor_0_1': KroneckerFactor(
        value=(2, 18, 16)
      )
    })
    >>> layer(jnp.ones((4, 288))).shape, layer.materialize().shape
    ((4, 256), (288, 256))
    >>> mixed = kfc_jax.nnx.KroneckerLinear(
    ...     1021, 100, terms=[((32, 32), (10, 10)), ((4, 16, 16), (5, 5, 4), 2)],
    ...     rngs=nnx.Rngs(0))
    >>> mixed(jnp.ones((1021,))).shape
    (100,)

  Args:
    in_features: input size.
    out_features: output size.
    in_factors: ``(m_1, ..., m_k)``, ``prod >= in_features``; ``None`` suggests.
    out_factors: ``(n_1, ..., n_k)``, ``prod >= out_features``; ``None`` suggests.
    rank: number of Kronecker products summed.
    terms: instead of the three above, a list of terms ``(in_factors,
      out_factors)``, ``(in_factors, out_factors, rank)`` or
      :class:`kfc_jax.KroneckerTerm`, summed.
    use_bias: whether to add a bias.
    dtype: computation dtype (default: inferred from inputs and params).
    param_dtype: parameter dtype.
    precision: ``jax.lax.Precision`` of every contraction.
    preferred_element_type: accumulation dtype of every contraction.
    factor_init: initialiser ``init(key, (rank, m, n), dtype)`` for every
      factor; by default each factor is normal with a scale such that ``W``'s
      entries have variance ``1 / in_features``, like Flax's default
      ``lecun_normal`` dense layer.
    bias_init: initialiser of the bias.
    factor_metadata: metadata (e.g. ``out_sharding``) for every factor, or a
      sequence of one mapping per factor position, as ``nnx.Linear``'s
      ``kernel_metadata``.
    bias_metadata: metadata of the bias.
    strategy: how :func:`kfc_jax.kron_matmul` computes (``"auto"``,
      ``"factored"``, ``"materialize"`` or a contraction order).
    rngs: random number generators.
  """

  def __init__(
    self,
    in_features: int,
    out_features: int,
    *,
    in_factors: Sequence[int] | None = None,
    out_factors: Sequence[int] | None = None,
    rank: int = 1,
    terms: Sequence[Any] | None = None,
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
    layout = layers.linear_layout(
      in_features,
      out_features,
      in_factors=in_factors,
      out_factors=out_factors,
      rank=rank,
      terms=terms,
    )
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
    *,
    in_factors: Sequence[int] | None = None,
    out_factors: Sequence[int] | None = None,
    rank: int = 1,
    terms: Sequence[Any] | None = None,
    sweeps: int = 20,
    input_cov: Any = None,
    **kwargs: Any,
  ) -> KroneckerLinear:
    """The layer nearest to a trained ``nnx.Linear``; see ``relative_error``.

    One unpadded term is the optimal (two factors) nearest Kronecker sum of
    the kernel; several terms, padding or more factors are fitted greedily
    and refined (:func:`kfc_jax.decompose.nearest_kronecker_sum`). The bias is
    copied; ``dtype``, ``param_dtype`` and ``precision`` default to the
    linear layer's. The layer's ``relative_error`` attribute holds
    ``||W - W_hat||_F / ||W||_F``. With ``input_cov`` (the input's ``E[x x^T]``,
    e.g. from :func:`kfc_jax.recovery.collect_input_covariances`) the factors
    minimise the output error on that data instead (data-aware decomposition).

    Example usage::

      >>> import kfc_jax
      >>> from flax import nnx
      >>> dense = nnx.Linear(64, 32, rngs=nnx.Rngs(0))
      >>> layer = kfc_jax.nnx.KroneckerLinear.from_linear(dense, rank=4)
      >>> 0 < layer.relative_error < 1
      True
    """
    kernel, bias, dtype = _common.linear_kernel(linear)
    kwargs = _common.from_dense_kwargs(linear, bias, dtype, kwargs)
    layer = cls(
      *kernel.shape,
      in_factors=in_factors,
      out_factors=out_factors,
      rank=rank,
      terms=terms,
      **kwargs,
    )
    layer._fit(kernel, bias, sweeps=sweeps, input_cov=input_cov)
    return layer
