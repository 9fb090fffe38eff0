"""The Linen driver: :func:`compress_linen_params` compresses a Linen model's params."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from flax.core import meta as _meta

from kfc_jax import _checks, recovery
from kfc_jax import linen as kfc_linen
from kfc_jax.compress._nnx import param_count
from kfc_jax.compress._plan import (
  Family,
  LayerPlan,
  TrainedLayer,
  build_layers,
  select_layers,
)
from kfc_jax.compress._policy import CompressionPolicy, rules_of
from kfc_jax.compress._report import CompressionReport, layer_path

_BUILDERS = {
  Family.KRONECKER_LINEAR: kfc_linen.KroneckerLinear.from_dense_params,
  Family.KFC: kfc_linen.KFC.from_dense_params,
  Family.LOW_RANK_LINEAR: kfc_linen.LowRankLinear.from_dense_params,
  Family.KRONECKER_CONV: kfc_linen.KroneckerConv.from_conv_params,
}


@dataclasses.dataclass(frozen=True)
class CompressedLinen:
  """A Linen model with some ``nn.Dense``/``nn.Conv`` calls run by Kronecker twins.

  ``apply`` runs ``module`` unchanged except that each replaced layer's call
  (found by its path) runs ``twins[path]`` on the params stored at that path
  (the twin's own names: ``factor_{t}_{f}``, ``bias``, ...). Build it with
  :func:`compress_linen_params`.

  Attributes:
    module: the original Linen model.
    twins: ``{path: twin module}``, paths as ``"Dense_0"``, ``"block/conv"``.

  Example usage::

    >>> import jax, jax.numpy as jnp, flax.linen as nn, kfc_jax
    >>> class MLP(nn.Module):
    ...   @nn.compact
    ...   def __call__(self, x):
    ...     return nn.Dense(4)(nn.relu(nn.Dense(64)(x)))
    >>> x, model = jnp.ones((2, 64)), MLP()
    >>> policy = kfc_jax.CompressionPolicy(
    ...     [kfc_jax.LayerRule("Dense_0", in_factors=(8, 8), out_factors=(8, 8))])
    >>> compressed, variables, report = kfc_jax.compress_linen_params(
    ...     model, model.init(jax.random.key(0), x), policy, x)
    >>> sorted(compressed.twins), compressed.apply(variables, x).shape
    (['Dense_0'], (2, 4))
  """

  module: nn.Module
  twins: Mapping[str, nn.Module]

  def apply(self, variables: Any, *args: Any, **kwargs: Any) -> Any:
    """``module.apply(variables, *args, **kwargs)`` with the twins swapped in."""

    def interceptor(next_fun, call_args, call_kwargs, context):
      m = context.module
      if context.method_name == "__call__" and isinstance(m, (nn.Dense, nn.Conv)):
        twin = self.twins.get(layer_path(m.path))
        if twin is not None:
          return twin.apply({"params": m.variables["params"]}, *call_args, **call_kwargs)
      return next_fun(*call_args, **call_kwargs)

    with nn.intercept_methods(interceptor):
      return self.module.apply(variables, *args, **kwargs)

  def __hash__(self) -> int:  # usable as a static argument of jax.jit
    return id(self)


def _linen_layers(
  module: nn.Module, variables: Any, args: Any, kwargs: Any
) -> dict[str, nn.Module]:
  """Every ``nn.Dense``/``nn.Conv``/other param-owning module called, by path."""
  found: dict[str, nn.Module] = {}

  def interceptor(next_fun, call_args, call_kwargs, context):
    m = context.module
    if context.method_name == "__call__" and m.path:
      found.setdefault(layer_path(m.path), m.clone(parent=None))
    return next_fun(*call_args, **call_kwargs)

  with nn.intercept_methods(interceptor):
    jax.eval_shape(lambda v, *a: module.apply(v, *a, **kwargs), variables, *args)
  return found


def _subtree(params: Any, parts: Sequence[str]) -> Any:
  for key in parts:
    if not isinstance(params, Mapping) or key not in params:
      return None
    params = params[key]
  return params


def _kind(m: nn.Module, p: Any) -> str | None:
  kernel = p.get("kernel") if isinstance(p, Mapping) else None
  if isinstance(m, nn.Dense) and getattr(kernel, "ndim", 0) == 2:
    return "linear"
  if (
    isinstance(m, nn.Conv)
    and getattr(kernel, "ndim", 0) == 4
    and m.feature_group_count == 1
    and m.mask is None
    and m.input_dilation in (1, (1, 1), None)
  ):
    return "conv"
  return None


def _build(layer: TrainedLayer, plan: LayerPlan) -> tuple[Any, float, Any]:
  m, p = layer.handle
  # The settings a param dict does not carry come from the layer itself.
  settings: dict[str, Any] = dict(dtype=m.dtype, precision=m.precision)
  if layer.kind == "conv":
    settings.update(
      strides=m.strides or 1, padding=m.padding, kernel_dilation=m.kernel_dilation or 1
    )
  conversion = _BUILDERS[plan.family](p, **{**settings, **plan.options})
  return conversion.module, conversion.relative_error, conversion


def _set_subtree(params: dict, parts: Sequence[str], value: Any) -> None:
  for key in parts[:-1]:
    params[key] = dict(params[key])
    params = params[key]
  params[parts[-1]] = value


def compress_linen_params(
  module: nn.Module,
  variables: Any,
  policy: Any,
  *args: Any,
  batch: int = 1,
  calibration: Any = None,
  **kwargs: Any,
) -> tuple[CompressedLinen, dict[str, Any], CompressionReport]:
  """Compresses a Linen model's params: the Linen counterpart of :func:`compress`.

  The model is traced once on ``args`` (shapes only; ``jax.ShapeDtypeStruct``
  works) to find its ``nn.Dense`` and 2-D ``nn.Conv`` layers with their paths
  and settings. Each one ``policy`` selects is replaced, in a new params tree,
  by its twin's params (``from_dense_params`` / ``from_conv_params``) at the
  same path; the returned :class:`CompressedLinen` runs the model with those
  twins. ``variables`` is not modified.

  Args:
    module: the Linen model.
    variables: its variables, ``{"params": ...}`` (other collections are kept).
    policy: a :class:`CompressionPolicy`, a :class:`LayerRule` or a list.
    *args: example inputs of ``module.apply``.
    batch: rows per call for the report's FLOPs.
    calibration: batches of inputs to fit the layers' outputs on, as for
      :func:`compress` (run with ``module.apply(variables, x, **kwargs)``).
    **kwargs: keyword arguments of ``module.apply`` for the trace.

  Returns:
    ``(compressed, new_variables, report)``; run it with
    ``compressed.apply(new_variables, x)``.

  Raises:
    TypeError, ValueError: as :func:`compress`; nothing is returned half-done.

  Example usage::

    >>> import jax, jax.numpy as jnp, flax.linen as nn, kfc_jax
    >>> class MLP(nn.Module):
    ...   @nn.compact
    ...   def __call__(self, x):
    ...     return nn.Dense(10)(nn.relu(nn.Dense(64)(x)))
    >>> x = jnp.ones((2, 64))
    >>> variables = MLP().init(jax.random.key(0), x)
    >>> small, new_vars, report = kfc_jax.compress_linen_params(
    ...     MLP(), variables, kfc_jax.LayerRule("Dense_0", "low_rank", rank=8), x)
    >>> sorted(new_vars["params"]["Dense_0"]), small.apply(new_vars, x).shape
    (['bias', 'u', 'v'], (2, 10))
  """
  if not isinstance(module, nn.Module):
    raise TypeError(f"module must be a flax.linen Module, got {type(module).__name__}.")
  policy = CompressionPolicy(rules_of(policy))
  batch = _checks.positive_int(batch, "batch")
  if not isinstance(variables, Mapping) or "params" not in variables:
    raise TypeError(
      f"variables must be a dict with a 'params' collection, got {type(variables).__name__}."
    )
  params = _meta.unbox(variables["params"])
  found = []
  for path, m in sorted(_linen_layers(module, variables, args, kwargs).items()):
    p = _subtree(params, path.split("/"))
    if isinstance(p, Mapping) and any(not isinstance(v, Mapping) for v in p.values()):
      kind = _kind(m, p)  # containers and param-free modules are left out
      kernel = None if kind is None else np.asarray(p["kernel"], np.float64)
      found.append(TrainedLayer(path, type(m).__name__, kind, kernel, (m, p)))
  selected = select_layers(
    policy,
    found,
    supported="compress_linen_params converts nn.Dense and 2-D"
    " nn.Conv (no groups, mask or input dilation) only.",
  )
  if calibration is not None:
    covs = recovery.collect_linen_input_covariances(
      module, variables, calibration, [layer.path for layer, _, _ in selected], **kwargs
    )
    selected = [
      (dataclasses.replace(layer, input_cov=covs[layer.path]), i, rule)
      for layer, i, rule in selected
    ]
  built = build_layers(
    selected,
    _build,
    batch,
    materialize=lambda conv: conv.module.apply(
      {"params": conv.params}, method=lambda m: m.materialize()
    ),
  )
  new_params = jax.tree.map(lambda x: x, dict(params))
  for layer, conversion, _ in built:
    _set_subtree(new_params, layer.path.split("/"), conversion.params)
  new_variables = {**variables, "params": new_params}
  report = CompressionReport(
    tuple(row for *_, row in built), param_count(params), param_count(new_params), batch
  )
  twins = {layer.path: conversion.module for layer, conversion, _ in built}
  return CompressedLinen(module, twins), new_variables, report
