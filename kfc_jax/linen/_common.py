"""Pieces every Linen twin shares: metadata boxing, dense params, the dense base.

The twins take the NNX layers' arguments (minus ``rngs``) and create
parameters with identical names; arguments are validated in ``setup``, i.e.
at the first ``init`` or ``apply``, as Linen layers do.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from kfc_jax import _dtypes, layers

Array = jax.Array
default_bias_init = nn.initializers.zeros_init()

_SHARDING_KEYS = ("out_sharding", "sharding", "sharding_names")


class DenseConversion(NamedTuple):
  """A Linen twin built from a dense layer's params.

  Attributes:
    module: the layer definition.
    params: its ``params`` collection, ready for ``module.apply({"params": ...})``.
    relative_error: ``||W - W_hat||_F / ||W||_F`` of the effective kernel.

  Example usage::

    >>> import jax, jax.numpy as jnp, flax.linen as nn, kfc_jax
    >>> x = jnp.ones((2, 64))
    >>> dense = nn.Dense(64).init(jax.random.key(0), x)["params"]
    >>> twin = kfc_jax.linen.KroneckerLinear.from_dense_params(
    ...     dense, in_factors=(8, 8), out_factors=(8, 8))
    >>> twin.module.apply({"params": twin.params}, x).shape, 0 < twin.relative_error < 1
    ((2, 64), True)
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
      f" as parameter metadata, got the keys {sorted(metadata)}."
    )
  return init if names is None else nn.with_partitioning(init, tuple(names))


def layer_params(
  params: Any, ndim: int, what: str, kernel_layout: str, note: str = ""
) -> tuple[np.ndarray, np.ndarray | None, Any]:
  """Kernel (float64), bias and kernel dtype of a Linen layer's param dict."""
  if isinstance(params, Mapping) and "params" in params and "kernel" not in params:
    params = params["params"]
  params = nn.unbox(params) if isinstance(params, Mapping) else params
  if not isinstance(params, Mapping) or "kernel" not in params:
    raise TypeError(
      f"params must be a Linen {what} param dict {{'kernel': {kernel_layout},"
      f" 'bias': [out_features]}}, got {type(params).__name__}"
      f" with keys {sorted(params) if isinstance(params, Mapping) else '-'}."
    )
  kernel = params["kernel"]
  if getattr(kernel, "ndim", 0) != ndim:
    raise ValueError(
      f"params['kernel'] must be {ndim}-D {kernel_layout}{note}, got shape"
      f" {tuple(np.shape(kernel))}."
    )
  bias = params.get("bias")
  return (np.asarray(kernel, np.float64), None if bias is None else np.asarray(bias), kernel.dtype)


def dense_params(params: Any) -> tuple[np.ndarray, np.ndarray | None, Any]:
  """Kernel (float64), bias and kernel dtype of a Linen ``Dense`` param dict."""
  return layer_params(params, 2, "Dense", "[in_features, out_features]")


def conversion_fields(params: Any, fields: dict[str, Any]) -> dict[str, Any]:
  """Defaults of a twin built from dense params: its bias and dtype."""
  _, bias, dtype = dense_params(params)
  fields.setdefault("use_bias", bias is not None)
  fields.setdefault("param_dtype", dtype)
  return fields


def cast_params(module: nn.Module, params: Mapping[str, Any]) -> dict[str, Array]:
  return {k: jnp.asarray(v, module.param_dtype) for k, v in params.items()}


def make_params(module: nn.Module, specs: Sequence[layers.ParamSpec]) -> dict[str, Array]:
  """Creates one param of ``module`` per spec (biases only with ``use_bias``)."""
  params = {}
  for spec in specs:
    if spec.is_factor:
      init = boxed_init(
        module.factor_init or layers.normal_init(spec.stddev), spec.metadata, "factor_metadata"
      )
    elif module.use_bias:
      init = boxed_init(module.bias_init, spec.metadata, "bias_metadata")
    else:
      continue
    params[spec.name] = module.param(spec.name, init, spec.shape, module.param_dtype)
  return params


class KroneckerModule(nn.Module, layers.KroneckerLayer):
  """Base of the Linen twins; subclasses add the fields and a cached ``layout``.

  Arguments are validated when ``layout`` is first read: in ``setup``, i.e.
  at the first ``init`` or ``apply``, as Linen layers do.
  """

  # Subclasses define `layout` as a functools.cached_property (not a field).
  # The options every layer shares, keyword-only (after the subclass's fields).
  _: dataclasses.KW_ONLY
  use_bias: bool = True
  dtype: Any = None
  param_dtype: Any = jnp.float32
  precision: Any = None
  preferred_element_type: Any = None
  factor_init: Any = None
  bias_init: Any = default_bias_init
  factor_metadata: Any = None
  bias_metadata: Mapping[str, Any] | None = None

  def _check_options(self) -> None:
    """Validates the fields the layout does not hold (strategy, activation)."""

  def setup(self):
    layout = self.layout
    _dtypes.layer_options(
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      preferred_element_type=self.preferred_element_type,
    )
    self._check_options()
    self.param_values = make_params(
      self, layout.param_specs(self.factor_metadata, self.bias_metadata)
    )

  @property
  def compute_options(self) -> dict[str, Any]:
    return dict(
      dtype=self.dtype, precision=self.precision, preferred_element_type=self.preferred_element_type
    )

  def materialize(self) -> Array:
    """The effective kernel: ``[in_features, out_features]`` (HWIO for a conv).

    Use as ``module.apply(variables, method="materialize")``.
    """
    return self.layout.materialize(self.param_values, precision=self.precision)

  def _convert(self, kernel: Any, bias: Any, **fit_kwargs: Any) -> DenseConversion:
    """This module with the params nearest to a trained ``(kernel, bias)``."""
    new, error = self.layout.fit(kernel, bias, use_bias=self.use_bias, **fit_kwargs)
    return DenseConversion(self, cast_params(self, new), error)


class KroneckerDenseBase(KroneckerModule):
  """Linen twin of ``kfc_jax.nnx``'s dense Kronecker base; subclasses add fields."""

  _: dataclasses.KW_ONLY
  strategy: Any = "auto"

  def _check_options(self) -> None:
    self.layout.check_strategy(self.strategy)

  def __call__(self, x: Array) -> Array:
    """Applies the layer to ``x: [*batch, in_features]``."""
    return self.layout.apply(self.param_values, x, strategy=self.strategy, **self.compute_options)

  def cost(self, batch: int = 1) -> layers.LayerCost:
    """Parameters and FLOPs against the dense layer this one replaces."""
    return self.layout.cost(
      type(self).__name__,
      use_bias=self.use_bias,
      batch=batch,
      strategy=self.strategy,
      dtype=self.param_dtype,
    )
