"""The NNX driver: :func:`compress` replaces layers of an NNX model."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from flax import nnx

from kfc_jax import _checks, layers, recovery
from kfc_jax import nnx as kfc_nnx
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
  Family.KRONECKER_LINEAR: kfc_nnx.KroneckerLinear.from_linear,
  Family.KFC: kfc_nnx.KFC.from_linear,
  Family.LOW_RANK_LINEAR: kfc_nnx.LowRankLinear.from_linear,
  Family.KRONECKER_CONV: kfc_nnx.KroneckerConv.from_conv,
}


def _kind_and_kernel(module: Any) -> tuple[str | None, np.ndarray | None]:
  """``"linear"`` or ``"conv"`` (2-D) and the kernel; ``(None, None)`` when
  compress cannot convert the layer."""
  if isinstance(module, layers.KroneckerLayer):
    return None, None  # already compressed
  if isinstance(module, (nnx.Linear, nnx.Conv)):
    kernel = np.asarray(module.kernel[...], np.float64)
    if kernel.ndim == 2 and isinstance(module, nnx.Linear):
      return "linear", kernel
    if kernel.ndim == 4 and isinstance(module, nnx.Conv):
      return "conv", kernel
  return None, None


def _owns_params(module: Any) -> bool:
  return any(isinstance(v, nnx.Param) for v in vars(module).values())


def param_count(tree: Any) -> int:
  return sum(int(np.size(x)) for x in jax.tree.leaves(tree))


def _replace(model: Any, parts: tuple[Any, ...], new: Any) -> None:
  def indexed(parent, key):
    return isinstance(key, int) or isinstance(parent, (nnx.Dict, dict))

  parent = model
  for key in parts[:-1]:
    parent = parent[key] if indexed(parent, key) else getattr(parent, key)
  if indexed(parent, parts[-1]):
    parent[parts[-1]] = new
  else:
    setattr(parent, parts[-1], new)


def _build(layer: TrainedLayer, plan: LayerPlan) -> tuple[Any, float, Any]:
  new = _BUILDERS[plan.family](layer.handle[1], **plan.options)
  return new, new.relative_error, new


def compress(
  model: Any,
  policy: Any,
  *,
  inplace: bool = False,
  batch: int = 1,
  calibration: Any = None,
  call: Callable[[Any, Any], Any] | None = None,
) -> tuple[Any, CompressionReport]:
  """Replaces the layers ``policy`` selects by Kronecker layers fitted to them.

  Each selected ``nnx.Linear`` becomes a ``KroneckerLinear``, ``KFC`` or
  ``LowRankLinear`` built by ``from_linear`` (the nearest layer of that shape:
  nearest Kronecker sum or truncated SVD), each selected 2-D ``nnx.Conv`` a
  ``KroneckerConv`` built by ``from_conv`` (GKPD); biases and dtypes are kept.
  Every replacement is planned and fitted before the model is modified, so
  any error leaves it untouched.

  Args:
    model: an NNX module.
    policy: a :class:`CompressionPolicy`, a :class:`LayerRule` or a list of them.
    inplace: modify ``model`` itself; by default a copy (``nnx.clone``) is
      compressed and ``model`` is left as it was.
    batch: rows per call for the report's FLOPs.
    calibration: batches of the model's inputs (or ``(inputs, labels)``
      pairs). Each selected layer's input covariance is collected on them
      (:func:`kfc_jax.recovery.collect_input_covariances`); the choice and
      the decompositions then minimise the error of the layer's outputs on
      that data, and the report adds that output error.
    call: how to run the model on a calibration batch (default ``model(x)``).

  Returns:
    ``(compressed_model, report)``. With ``inplace`` the model is ``model``.
    A model that is itself a selected layer is returned replaced (not
    possible in place).

  Raises:
    TypeError: a rule matches a layer compress cannot convert (only
      ``nnx.Linear`` and 2-D ``nnx.Conv`` are), or a conv for a dense-only
      method.
    ValueError: a rule's budget or shapes fit no layer of that size (the
      message names the layer and the rule).

  A rule that matches no layer warns, listing the model's layer paths.

  Example usage::

    >>> import jax, jax.numpy as jnp, kfc_jax
    >>> from flax import nnx
    >>> model = nnx.Sequential(nnx.Linear(64, 64, rngs=nnx.Rngs(0)), nnx.relu,
    ...                        nnx.Linear(64, 10, rngs=nnx.Rngs(1)))
    >>> exact = kfc_jax.LayerRule("layers/0", in_factors=(8, 8), out_factors=(8, 8),
    ...                           rank=64)   # full rank: an exact decomposition
    >>> new, _ = kfc_jax.compress(model, exact)
    >>> x = jax.random.normal(jax.random.key(0), (3, 64))
    >>> bool(jnp.allclose(new(x), model(x), atol=1e-5))
    True
    >>> new, report = kfc_jax.compress(model, kfc_jax.LayerRule("layers/0", compression=8))
    >>> print(report)  # doctest: +NORMALIZE_WHITESPACE
    path      before  after                                 shape     params     ->  saved  FLOPs     ->  speedup  rel. error
    -------------------------------------------------------------------------------------------------------------------------
    layers/0  Linear  KroneckerLinear (2, 32)->(32, 2) r=4  64 -> 64   4,160    576   7.2x  8,192  2,048     4.0x       0.882
    -------------------------------------------------------------------------------------------------------------------------
    total                                                              4,160    576   7.2x  8,192  2,048     4.0x
    model                                                              4,810  1,226   3.9x
    <BLANKLINE>
    layers/0: chose kronecker (2, 32)->(32, 2) r=4 (weight error 0.882); runner-up kronecker (16, 4)->(4, 16) r=4 (0.886)
  """
  if not isinstance(model, nnx.Module):
    raise TypeError(f"model must be an nnx.Module, got {type(model).__name__}.")
  policy = CompressionPolicy(rules_of(policy))
  batch = _checks.positive_int(batch, "batch")
  target = model if inplace else nnx.clone(model)
  found = []
  for parts, module in nnx.iter_modules(target):
    if _owns_params(module):  # containers: their layers are visited themselves
      kind, kernel = _kind_and_kernel(module)
      found.append(
        TrainedLayer(layer_path(parts), type(module).__name__, kind, kernel, (tuple(parts), module))
      )
  found.sort(key=lambda layer: layer.path)
  selected = select_layers(
    policy,
    found,
    supported="compress converts nnx.Linear and 2-D nnx.Conv"
    " layers only. Narrow the pattern or add a method='keep' rule for it first.",
  )
  if inplace and any(not layer.handle[0] for layer, _, _ in selected):
    raise ValueError(
      "the model is itself the selected layer and cannot be replaced"
      " in place; pass inplace=False to get the new layer."
    )
  if calibration is not None:
    covs = recovery.collect_input_covariances(
      target, calibration, [layer.path for layer, _, _ in selected], call=call
    )
    selected = [
      (dataclasses.replace(layer, input_cov=covs[layer.path]), i, rule)
      for layer, i, rule in selected
    ]
  params_before = param_count(nnx.state(target, nnx.Param))
  built = build_layers(selected, _build, batch, materialize=lambda new: new.materialize())
  # Everything fitted: only now touch the model.
  for layer, new, _ in built:
    parts = layer.handle[0]
    if parts:
      _replace(target, parts, new)
    else:
      target = new
  report = CompressionReport(
    tuple(row for *_, row in built), params_before, param_count(nnx.state(target, nnx.Param)), batch
  )
  return target, report
