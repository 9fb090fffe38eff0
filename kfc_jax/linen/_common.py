"""Pieces every Linen twin shares: metadata boxing, dense params, the dense base.

The twins take the NNX layers' arguments (minus ``rngs``) and create
parameters with identical names; arguments are validated in ``setup``, i.e.
at the first ``init`` or ``apply``, as Linen layers do.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from kfc_jax import _layers

Array = jax.Array
default_bias_init = nn.initializers.zeros_init()

_SHARDING_KEYS = ("out_sharding", "sharding", "sharding_names")


class DenseConversion(NamedTuple):
  """A Linen twin built from a dense layer's params.

  Attributes:
    module: the layer definition.
    params: its ``params`` collection, ready for ``module.apply({"params": ...})``.
    relative_error: ``||W - W_hat||_F / ||W||_F`` of the effective kernel.
  """

  module: nn.Module
  params: dict[str, Array]
  relative_error: float


def boxed_init(init: Any, metadata: Mapping[str, Any], name: str) -> Any:
  """``init`` wrapped by ``nn.with_partitioning`` when metadata names a sharding.

  Linen parameters carry no other metadata, so any other key is an error.
  """
  metadata = dict(metadata or {})
  names = None
  for key in _SHARDING_KEYS:
    if key in metadata:
      names = metadata.pop(key)
  if metadata:
    raise ValueError(
        f"{name}: Linen layers accept only a sharding ({' / '.join(_SHARDING_KEYS)})"
        f" as parameter metadata, got the keys {sorted(metadata)}.")
  return init if names is None else nn.with_partitioning(init, tuple(names))


def dense_params(params: Any) -> tuple[np.ndarray, np.ndarray | None, Any]:
  """Kernel (float64), bias and kernel dtype of a Linen ``Dense`` param dict."""
  if isinstance(params, Mapping) and "params" in params and "kernel" not in params:
    params = params["params"]
  params = nn.unbox(params) if isinstance(params, Mapping) else params
  if not isinstance(params, Mapping) or "kernel" not in params:
    raise TypeError(
        "params must be a Linen Dense param dict {'kernel': [in_features,"
        f" out_features], 'bias': [out_features]}}, got {type(params).__name__}"
        f" with keys {sorted(params) if isinstance(params, Mapping) else '-'}.")
  kernel = params["kernel"]
  if getattr(kernel, "ndim", 0) != 2:
    raise ValueError(
        f"params['kernel'] must be 2-D [in_features, out_features], got shape"
        f" {tuple(np.shape(kernel))}.")
  bias = params.get("bias")
  return (np.asarray(kernel, np.float64),
          None if bias is None else np.asarray(bias), kernel.dtype)


def conversion_fields(params: Any, fields: dict[str, Any]) -> dict[str, Any]:
  """Defaults of a twin built from dense params: its bias and dtype."""
  _, bias, dtype = dense_params(params)
  fields.setdefault("use_bias", bias is not None)
  fields.setdefault("param_dtype", dtype)
  return fields


def cast_params(module: nn.Module, params: Mapping[str, Any]) -> dict[str, Array]:
  return {k: jnp.asarray(v, module.param_dtype) for k, v in params.items()}


class KroneckerDenseBase(nn.Module):
  """Linen twin of ``kfc_jax.nnx``'s dense Kronecker base; subclasses add fields."""

  def layout(self) -> _layers.DenseLayout:
    raise NotImplementedError

  def setup(self):
    layout = self.layout()
    _layers.check_strategy(self.strategy, layout)
    metadata = _layers.per_factor_metadata(self.factor_metadata, layout)
    stds = _layers.default_factor_stddevs(layout)
    factors = []
    for t, term in enumerate(layout.terms):
      row = []
      for f, shape in enumerate(term.factor_shapes):
        name = _layers.factor_name(t, f)
        init = boxed_init(self.factor_init or _layers.normal_init(stds[t][f]),
                          metadata[t][f], "factor_metadata")
        row.append(self.param(name, init, shape, self.param_dtype))
      factors.append(row)
    self.factors = factors
    self.bias = (self.param("bias", boxed_init(self.bias_init, self.bias_metadata,
                                               "bias_metadata"),
                            (layout.out_features,), self.param_dtype)
                 if self.use_bias else None)
    self._dense_layout = layout

  def __call__(self, x: Array) -> Array:
    """Applies the layer to ``x: [*batch, in_features]``."""
    return _layers.dense_apply(
        self._dense_layout, x, self.factors, self.bias, dtype=self.dtype,
        precision=self.precision, preferred_element_type=self.preferred_element_type,
        strategy=self.strategy)

  def materialize(self) -> Array:
    """The effective dense kernel ``[in_features, out_features]``.

    Use as ``module.apply(variables, method="materialize")``.
    """
    return _layers.dense_materialize(self._dense_layout, self.factors,
                                     precision=self.precision)

  def cost(self, batch: int = 1) -> _layers.LayerCost:
    """Parameters and FLOPs against the dense layer this one replaces."""
    return _layers.dense_cost(type(self).__name__, self.layout(),
                              use_bias=self.use_bias, batch=batch,
                              strategy=self.strategy, dtype=self.param_dtype)

  def _convert(self, params: Any, sweeps: int) -> DenseConversion:
    kernel, bias, _ = dense_params(params)
    new, error = _layers.fit_dense(self.layout(), kernel, bias,
                                   use_bias=self.use_bias, sweeps=sweeps)
    return DenseConversion(self, cast_params(self, new), error)
