"""Linen twin of :class:`kfc_jax.nnx.KroneckerConv`."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from kfc_jax import layers
from kfc_jax.linen import _common

Array = jax.Array


def conv_params(params: Any) -> tuple[np.ndarray, np.ndarray | None, Any]:
  """Kernel (float64), bias and kernel dtype of a Linen ``Conv`` param dict."""
  return _common.layer_params(
    params, 4, "Conv", "[kh, kw, in_features, out_features]", " (a 2-D conv)"
  )


class KroneckerConv(_common.KroneckerModule):
  """2-D conv with kernel ``K = sum_r A[r] ⊗ B[r]`` (Linen).

  Same arguments (minus ``rngs``) and parameter names (``factor_{t}_0``,
  ``factor_{t}_1``, ``bias``) as :class:`kfc_jax.nnx.KroneckerConv`; bad
  arguments raise at the first ``init``/``apply``.

  Example usage::

    >>> import jax, jax.numpy as jnp, kfc_jax
    >>> layer = kfc_jax.linen.KroneckerConv(64, 64, (3, 3), a_shape=(3, 3, 16, 16),
    ...                                     b_shape=(1, 1, 4, 4), rank=3)
    >>> params = layer.init(jax.random.key(0), jnp.ones((1, 8, 8, 64)))["params"]
    >>> jax.tree.map(jnp.shape, params)
    {'bias': (64,), 'factor_0_0': (3, 3, 3, 16, 16), 'factor_0_1': (3, 1, 1, 4, 4)}
  """

  in_features: int
  out_features: int
  kernel_size: int | Sequence[int]
  strides: int | Sequence[int] = 1
  padding: Any = "SAME"
  kernel_dilation: int | Sequence[int] = 1
  a_shape: Sequence[int] | None = None
  b_shape: Sequence[int] | None = None
  rank: int = 1
  terms: Sequence[Any] | None = None
  strategy: Any = "auto"

  replaces = "conv"

  @functools.cached_property
  def layout(self) -> layers.ConvLayout:
    return layers.conv_layout(
      self.in_features,
      self.out_features,
      self.kernel_size,
      self.strides,
      padding=self.padding,
      kernel_dilation=self.kernel_dilation,
      a_shape=self.a_shape,
      b_shape=self.b_shape,
      rank=self.rank,
      terms=self.terms,
    )

  def _check_options(self) -> None:
    self.layout.check_strategy(self.strategy)

  def __call__(self, x: Array) -> Array:
    """Applies the conv to ``x: [*batch, H, W, in_features]``."""
    return self.layout.apply(self.param_values, x, strategy=self.strategy, **self.compute_options)

  def cost(self, batch: int = 1, input_size: Sequence[int] | None = None) -> layers.LayerCost:
    """Parameters and FLOPs against the dense conv (see the NNX ``cost``)."""
    return self.layout.cost(
      type(self).__name__,
      use_bias=self.use_bias,
      batch=batch,
      input_size=input_size,
      strategy=self.strategy,
      dtype=self.param_dtype,
    )

  def cost_for_input(self, batch: int, input_shape: Sequence[int]) -> layers.LayerCost:
    """The cost of ``batch`` images of ``input_shape = [..., H, W, C]``."""
    return self.cost(batch, input_size=tuple(input_shape[-3:-1]))

  @classmethod
  def from_conv_params(
    cls,
    params: Any,
    *,
    strides: Any = 1,
    padding: Any = "SAME",
    kernel_dilation: Any = 1,
    a_shape: Any = None,
    b_shape: Any = None,
    rank: int = 1,
    terms: Any = None,
    compression: float | None = None,
    sweeps: int = 20,
    input_cov: Any = None,
    **fields: Any,
  ) -> _common.DenseConversion:
    """The twin nearest to a Linen ``Conv``'s params (see the NNX ``from_conv``).

    A param dict carries no strides or padding: pass the ``nn.Conv``'s.

    Example usage::

      >>> import jax, jax.numpy as jnp, flax.linen as nn, kfc_jax
      >>> conv = nn.Conv(32, (3, 3)).init(jax.random.key(0), jnp.ones((1, 8, 8, 16)))
      >>> new = kfc_jax.linen.KroneckerConv.from_conv_params(conv, compression=4)
      >>> new.module.apply({"params": new.params}, jnp.ones((2, 8, 8, 16))).shape
      (2, 8, 8, 32)
    """
    kernel, bias, dtype = conv_params(params)
    fields.setdefault("use_bias", bias is not None)
    fields.setdefault("param_dtype", dtype)
    terms = layers.compression_terms(kernel, compression, a_shape, b_shape, rank, terms)
    kh, kw, c, o = kernel.shape
    module = cls(
      c,
      o,
      (kh, kw),
      strides,
      padding=padding,
      kernel_dilation=kernel_dilation,
      a_shape=a_shape,
      b_shape=b_shape,
      rank=rank,
      terms=terms,
      **fields,
    )
    return module._convert(kernel, bias, sweeps=sweeps, input_cov=input_cov)
