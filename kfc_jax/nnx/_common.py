"""Pieces every NNX layer of kfc_jax shares: the factor type and the dense base.

A new layer family follows the same pattern: validate its arguments into a
layout (``kfc_jax._layers``), create ``KroneckerFactor`` params with
:func:`make_param`, and call the pure functions of the layout in
``__call__``, ``materialize`` and ``cost``.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from kfc_jax import _layers

Array = jax.Array
_EMPTY: Mapping[str, Any] = MappingProxyType({})
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


def make_param(cls: type[nnx.Variable], init: Any, key: Array, shape: tuple[int, ...],
               dtype: Any, metadata: Mapping[str, Any] = _EMPTY) -> nnx.Variable:
  """``cls(init(key, shape, dtype), **metadata)``, checking the result's shape."""
  value = init(key, shape, dtype)
  if tuple(value.shape) != tuple(shape):
    raise ValueError(
        f"the initializer {init!r} returned shape {tuple(value.shape)}, but the"
        f" parameter needs shape {tuple(shape)}.")
  return cls(value, **metadata)


def set_param(param: nnx.Variable, value: Any) -> None:
  """Overwrites ``param`` with ``value`` cast to its dtype (same shape)."""
  old = param[...]
  value = jnp.asarray(np.asarray(value), old.dtype)
  if value.shape != old.shape:  # internal invariant: layouts match
    raise AssertionError(f"shape {value.shape} != {old.shape}")
  param.set_value(value)


def load_params(module: nnx.Module, params: Mapping[str, Any]) -> None:
  """Sets each named param of ``module`` (values cast to its dtype)."""
  for name, value in params.items():
    set_param(getattr(module, name), value)


def linear_kernel(linear: Any) -> tuple[np.ndarray, Any, Any]:
  """The ``[in, out]`` kernel, bias (or None) and dtype of an ``nnx.Linear``."""
  kernel = getattr(linear, "kernel", None)
  if kernel is None or getattr(kernel[...], "ndim", 0) != 2:
    raise TypeError(
        f"linear must be an nnx.Linear (a module with a 2-D kernel [in_features,"
        f" out_features]), got {type(linear).__name__}.")
  bias = getattr(linear, "bias", None)
  bias = None if bias is None else np.asarray(bias[...])
  kernel = kernel[...]
  return np.asarray(kernel, np.float64), bias, kernel.dtype


class KroneckerDenseBase(nnx.Module):
  """``y = x @ sum_t W_t + b`` for Kronecker-structured ``W_t`` (a layout)."""

  def _setup(self, layout: _layers.DenseLayout, *, use_bias: bool, dtype: Any,
             param_dtype: Any, precision: Any, preferred_element_type: Any,
             factor_init: Any, bias_init: Any, factor_metadata: Any,
             bias_metadata: Mapping[str, Any], strategy: Any, rngs: nnx.Rngs):
    self.layout = layout
    self.in_features = layout.in_features
    self.out_features = layout.out_features
    self.use_bias = bool(use_bias)
    self.dtype = dtype
    self.param_dtype = param_dtype
    self.precision = precision
    self.preferred_element_type = preferred_element_type
    self.strategy = _layers.check_strategy(strategy, layout)
    self.relative_error: float | None = None
    metadata = _layers.per_factor_metadata(factor_metadata, layout)
    stds = _layers.default_factor_stddevs(layout)
    for t, term in enumerate(layout.terms):
      for f, shape in enumerate(term.factor_shapes):
        init = factor_init or _layers.normal_init(stds[t][f])
        setattr(self, _layers.factor_name(t, f),
                make_param(KroneckerFactor, init, rngs.params(), shape,
                           param_dtype, metadata[t][f]))
    self.bias = (make_param(nnx.Param, bias_init, rngs.params(),
                            (layout.out_features,), param_dtype, bias_metadata)
                 if use_bias else nnx.data(None))

  @property
  def factors(self) -> list[list[Array]]:
    """The factor arrays, ``factors[term][factor]`` of shape ``[rank, m, n]``."""
    return [[getattr(self, _layers.factor_name(t, f))[...]
             for f in range(term.num_factors)]
            for t, term in enumerate(self.layout.terms)]

  def __call__(self, x: Array) -> Array:
    """Applies the layer to ``x: [*batch, in_features]``."""
    bias = None if self.bias is None else self.bias[...]
    return _layers.dense_apply(
        self.layout, x, self.factors, bias, dtype=self.dtype,
        precision=self.precision,
        preferred_element_type=self.preferred_element_type,
        strategy=self.strategy)

  def materialize(self) -> Array:
    """The effective dense kernel ``[in_features, out_features]`` (via ``kron``)."""
    return _layers.dense_materialize(self.layout, self.factors,
                                     precision=self.precision)

  def cost(self, batch: int = 1) -> _layers.LayerCost:
    """Parameters and FLOPs against the dense layer this one replaces."""
    return _layers.dense_cost(type(self).__name__, self.layout,
                              use_bias=self.use_bias, batch=batch,
                              strategy=self.strategy, dtype=self.param_dtype)

  def _load_dense(self, linear: Any, sweeps: int) -> None:
    """Fits the factors to ``linear``'s kernel and copies its bias."""
    kernel, bias, _ = linear_kernel(linear)
    params, self.relative_error = _layers.fit_dense(
        self.layout, kernel, bias, use_bias=self.use_bias, sweeps=sweeps)
    load_params(self, params)


def from_linear_kwargs(linear: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
  """Defaults for a layer built from ``linear``: its bias, dtypes, precision."""
  _, bias, dtype = linear_kernel(linear)
  kwargs.setdefault("use_bias", bias is not None)
  kwargs.setdefault("param_dtype", dtype)
  for name in ("dtype", "precision"):
    if hasattr(linear, name):
      kwargs.setdefault(name, getattr(linear, name))
  if kwargs.get("rngs") is None:
    kwargs["rngs"] = nnx.Rngs(0)  # the values are overwritten by the fit
  return kwargs
