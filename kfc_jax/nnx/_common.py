"""Pieces every NNX layer of kfc_jax shares: the factor type, ``make_params``, the base.

A layer is its fields plus a layout (``kfc_jax.layers``): the layout lists the
parameters (:class:`kfc_jax.layers.ParamSpec`), :func:`make_params` creates
them, and the layer's methods call the layout on the parameters by name.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from kfc_jax import _dtypes, layers
from kfc_jax.layers import EMPTY_METADATA, LayerCost, normal_init

Array = jax.Array
default_bias_init = nnx.initializers.zeros_init()


class KroneckerFactor(nnx.Param):
  """A Kronecker factor ``[rank, m, n]`` (or a low-rank factor).

  Its own ``nnx.Param`` subclass, so optimisers and freezing can select the
  factors apart from biases and other layers' kernels.

  Example usage::

    >>> import kfc_jax
    >>> from flax import nnx
    >>> layer = kfc_jax.nnx.KroneckerLinear(16, 16, rngs=nnx.Rngs(0))
    >>> sorted(nnx.state(layer, kfc_jax.nnx.KroneckerFactor))
    ['factor_0_0', 'factor_0_1']
  """


def make_param(
  cls: type[nnx.Variable],
  init: Any,
  key: Array,
  shape: tuple[int, ...],
  dtype: Any,
  metadata: Mapping[str, Any] = EMPTY_METADATA,
) -> nnx.Variable:
  """``cls(init(key, shape, dtype), **metadata)``, checking the result's shape."""
  value = init(key, shape, dtype)
  if tuple(value.shape) != tuple(shape):
    raise ValueError(
      f"the initializer {init!r} returned shape {tuple(value.shape)}, but the"
      f" parameter needs shape {tuple(shape)}."
    )
  return cls(value, **metadata)


def make_params(
  module: nnx.Module,
  specs: Sequence[layers.ParamSpec],
  *,
  use_bias: bool,
  factor_init: Any,
  bias_init: Any,
  param_dtype: Any,
  rngs: nnx.Rngs,
) -> None:
  """Sets one attribute of ``module`` per spec (``None`` for biases left out)."""
  for spec in specs:
    if spec.is_factor:
      value = make_param(
        KroneckerFactor,
        factor_init or normal_init(spec.stddev),
        rngs.params(),
        spec.shape,
        param_dtype,
        spec.metadata,
      )
    elif use_bias:
      value = make_param(
        nnx.Param, bias_init, rngs.params(), spec.shape, param_dtype, spec.metadata
      )
    else:
      value = nnx.data(None)
    setattr(module, spec.name, value)


def load_params(module: nnx.Module, params: Mapping[str, Any]) -> None:
  """Sets each named param of ``module`` (values cast to its dtype, same shape)."""
  for name, value in params.items():
    param = getattr(module, name)
    old = param[...]
    value = jnp.asarray(np.asarray(value), old.dtype)
    if value.shape != old.shape:  # internal invariant: layouts match
      raise AssertionError(f"{name}: shape {value.shape} != {old.shape}")
    param.set_value(value)


def linear_kernel(linear: Any) -> tuple[np.ndarray, Any, Any]:
  """The ``[in, out]`` kernel, bias (or None) and dtype of an ``nnx.Linear``."""
  kernel = getattr(linear, "kernel", None)
  if kernel is None or getattr(kernel[...], "ndim", 0) != 2:
    raise TypeError(
      f"linear must be an nnx.Linear (a module with a 2-D kernel [in_features,"
      f" out_features]), got {type(linear).__name__}."
    )
  bias = getattr(linear, "bias", None)
  bias = None if bias is None else np.asarray(bias[...])
  kernel = kernel[...]
  return np.asarray(kernel, np.float64), bias, kernel.dtype


def from_dense_kwargs(
  dense: Any,
  bias: Any,
  dtype: Any,
  kwargs: dict[str, Any],
  names: Sequence[str] = ("dtype", "precision"),
) -> dict[str, Any]:
  """Defaults for a layer built from ``dense``: its bias, dtypes and ``names``."""
  kwargs.setdefault("use_bias", bias is not None)
  kwargs.setdefault("param_dtype", dtype)
  for name in names:
    if getattr(dense, name, None) is not None:
      kwargs.setdefault(name, getattr(dense, name))
  if kwargs.get("rngs") is None:
    kwargs["rngs"] = nnx.Rngs(0)  # the values are overwritten by the fit
  return kwargs


class KroneckerModule(nnx.Module, layers.KroneckerLayer):
  """Base of the NNX layers: holds the layout, the options and the params."""

  def _init_layer(
    self,
    layout: Any,
    *,
    use_bias: bool,
    dtype: Any,
    param_dtype: Any,
    precision: Any,
    preferred_element_type: Any,
    factor_init: Any,
    bias_init: Any,
    factor_metadata: Any,
    bias_metadata: Any,
    rngs: nnx.Rngs,
  ) -> None:
    _dtypes.layer_options(
      dtype=dtype,
      param_dtype=param_dtype,
      preferred_element_type=preferred_element_type,
      rngs=rngs,
      check_rngs=True,
    )
    self.layout = layout
    self.in_features = layout.in_features
    self.out_features = layout.out_features
    self.use_bias = bool(use_bias)
    self.dtype = dtype
    self.param_dtype = param_dtype
    self.precision = precision
    self.preferred_element_type = preferred_element_type
    self.relative_error: float | None = None
    make_params(
      self,
      layout.param_specs(factor_metadata, bias_metadata),
      use_bias=self.use_bias,
      factor_init=factor_init,
      bias_init=bias_init,
      param_dtype=param_dtype,
      rngs=rngs,
    )

  @property
  def param_values(self) -> dict[str, Array]:
    """The layer's param arrays by name (biases left out are absent)."""
    return {name: v[...] for name, v in vars(self).items() if isinstance(v, nnx.Param)}

  @property
  def compute_options(self) -> dict[str, Any]:
    return dict(
      dtype=self.dtype, precision=self.precision, preferred_element_type=self.preferred_element_type
    )

  def materialize(self) -> Array:
    """The effective kernel: ``[in_features, out_features]`` (HWIO for a conv)."""
    return self.layout.materialize(self.param_values, precision=self.precision)

  def _fit(self, kernel: Any, bias: Any, **fit_kwargs: Any) -> None:
    """Sets the params nearest to a trained ``(kernel, bias)`` and the error."""
    params, self.relative_error = self.layout.fit(
      kernel, bias, use_bias=self.use_bias, **fit_kwargs
    )
    load_params(self, params)


class KroneckerDenseBase(KroneckerModule):
  """``y = x @ sum_t W_t + b`` for Kronecker-structured ``W_t`` (a dense layout)."""

  strategy: Any  # set by each subclass from its layout's check_strategy

  def __call__(self, x: Array) -> Array:
    """Applies the layer to ``x: [*batch, in_features]``."""
    return self.layout.apply(self.param_values, x, strategy=self.strategy, **self.compute_options)

  @property
  def factors(self) -> list[list[Array]]:
    """The factor arrays, ``factors[term][factor]`` of shape ``[rank, m, n]``."""
    return self.layout.factors(self.param_values)

  def cost(self, batch: int = 1) -> LayerCost:
    """Parameters and FLOPs against the dense layer this one replaces."""
    return self.layout.cost(
      type(self).__name__,
      use_bias=self.use_bias,
      batch=batch,
      strategy=self.strategy,
      dtype=self.param_dtype,
    )

  def _from_linear(self, linear: Any, sweeps: int) -> None:
    kernel, bias, _ = linear_kernel(linear)
    self._fit(kernel, bias, sweeps=sweeps)
