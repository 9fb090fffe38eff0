"""Calibration: layer input covariances and BatchNorm statistics from data.

Both run the model on calibration batches without training it: the input
covariances feed the data-aware decompositions (``input_cov=``), and
recalibrated BatchNorm statistics repair the normalisation after the layers
before it changed (Kronecker surgery shifts each channel's mean and variance).
The user's model and variables are never modified: NNX functions return a new
model, Linen functions new variables.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from flax.core import meta as _meta

from kfc_jax.recovery import _taps


def _nnx_input_layers(model: nnx.Module) -> dict[str, Any]:
  return {
    path: module
    for path, (_, module) in _taps.nnx_layers(model).items()
    if isinstance(module, nnx.Linear)
    or (isinstance(module, nnx.Conv) and module.kernel[...].ndim == 4)
  }


def collect_input_covariances(
  model: nnx.Module,
  batches: Any,
  paths: Any = None,
  *,
  call: Callable[[Any, Any], Any] | None = None,
) -> dict[str, np.ndarray]:
  """Each layer's input second moment ``E[x xᵀ]`` on calibration batches (NNX).

  For an ``nnx.Linear`` the rows are its inputs (``[in, in]``); for a 2-D
  ``nnx.Conv`` its input patches, flattened in the kernel's ``(h, w, c)`` row
  order (``[kh*kw*C_in, kh*kw*C_in]``), which is what ``input_cov=`` of the
  decompositions takes. The model runs as ``call(model, x)`` (default
  ``model(x)``; pass e.g. ``lambda m, x: m(x, train=False)``) in a throw-away
  copy, once per batch, jitted.

  Args:
    model: an NNX model.
    batches: an iterable of inputs, or of ``(inputs, labels)`` tuples.
    paths: layer paths (``"fc1"``, ``"blocks/0/conv"``); default every
      ``nnx.Linear`` and 2-D ``nnx.Conv``.
    call: how to run the model on a batch.

  Returns:
    ``{path: covariance}``, float64 NumPy (accumulated over all batches; a
    layer called twice per batch pools both calls).

  Raises:
    CalibrationError (a ``ValueError``): a batch the model rejects, naming the
      batch and the layer.

  Example usage::

    >>> import jax, kfc_jax
    >>> from flax import nnx
    >>> from kfc_jax import recovery
    >>> model = nnx.Sequential(nnx.Linear(8, 4, rngs=nnx.Rngs(0)), nnx.relu,
    ...                        nnx.Linear(4, 2, rngs=nnx.Rngs(1)))
    >>> x = jax.random.normal(jax.random.key(0), (32, 8))
    >>> covs = recovery.collect_input_covariances(model, [x])
    >>> {p: c.shape for p, c in covs.items()}
    {'layers/0': (8, 8), 'layers/2': (4, 4)}
  """
  if not isinstance(model, nnx.Module):
    raise TypeError(f"model must be an nnx.Module, got {type(model).__name__}.")
  layers = _nnx_input_layers(model)
  selected = _taps.select_paths(layers, paths, "nnx.Linear or 2-D nnx.Conv layers")
  stats = {
    p: (_taps.linear_input_stat if isinstance(layers[p], nnx.Linear) else _taps.nnx_conv_input_stat)
    for p in selected
  }
  totals = _taps.nnx_collect(model, batches, stats, call=call)
  return {p: _taps.to_covariance(totals[p]) for p in selected if p in totals}


def _linen_input_stat(selected: Any) -> Callable[[str, nn.Module], Any]:
  def stat(path, m):
    if selected is not None and path not in selected:
      return None
    if isinstance(m, nn.Dense):
      return _taps.linear_input_stat
    if isinstance(m, nn.Conv) and len(cast(Sequence[int], m.kernel_size)) == 2:
      return _taps.linen_conv_input_stat
    return None

  return stat


def collect_linen_input_covariances(
  module: nn.Module, variables: Any, batches: Any, paths: Any = None, **apply_kwargs: Any
) -> dict[str, np.ndarray]:
  """The Linen counterpart of :func:`collect_input_covariances`.

  Args:
    module: the Linen model.
    variables: its variables.
    batches: an iterable of inputs, or of ``(inputs, labels)`` tuples.
    paths: layer paths (``"Dense_0"``, ``"block/Conv_0"``); default every
      ``nn.Dense`` and 2-D ``nn.Conv`` the model calls.
    **apply_kwargs: passed to ``module.apply`` (e.g. ``train=False``).

  Returns:
    ``{path: covariance}``, float64 NumPy.
  """
  if not isinstance(module, nn.Module):
    raise TypeError(f"module must be a flax.linen Module, got {type(module).__name__}.")
  selected = None if paths is None else ([paths] if isinstance(paths, str) else list(paths))
  totals = _taps.linen_collect(
    module, variables, batches, _linen_input_stat(selected), **apply_kwargs
  )
  if selected is not None:
    missing = [p for p in selected if p not in totals]
    if missing:
      raise ValueError(
        f"paths {missing} are not nn.Dense or 2-D nn.Conv layers the"
        f" model calls; it calls {sorted(totals) or 'none'}."
      )
  return {p: _taps.to_covariance(t) for p, t in sorted(totals.items())}


# ---------------------------------------------------------------------------
# BatchNorm
# ---------------------------------------------------------------------------


def _pooled(total: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
  """Mean and (biased) variance of every value seen, from summed moments."""
  count = max(float(total["count"]), 1.0)
  mean = total["sum"] / count
  return mean, np.clip(total["sum_sq"] / count - mean**2, 0.0, None)


def _nnx_bn_call(bn, x, use_running_average=None, **kwargs):
  # Batch statistics in the forward pass, as in training, whatever flag the
  # model passes; the running averages this writes belong to the copy.
  del use_running_average
  return bn(x, use_running_average=False, **kwargs)


def recalibrate_batchnorm(
  model: nnx.Module, batches: Any, *, call: Callable[[Any, Any], Any] | None = None
) -> nnx.Module:
  """A copy of ``model`` whose ``nnx.BatchNorm`` statistics are refit to data.

  The model runs on every batch with each BatchNorm normalising by the
  batch's own statistics (as in training, whatever ``use_running_average``
  the model passes); each BatchNorm's ``mean`` and ``var`` become the exact
  mean and (biased) variance of everything it received over all batches: a
  cumulative average weighted by sample count, not an exponential one.
  Nothing else changes (params, other variables, the model's flags).

  Args:
    model: an NNX model with ``nnx.BatchNorm`` layers.
    batches: an iterable of inputs, or of ``(inputs, labels)`` tuples.
    call: how to run the model on a batch (default ``model(x)``; pass e.g.
      ``lambda m, x: m(x, train=False)`` to keep dropout off).

  Returns:
    The recalibrated copy.

  Example usage::

    >>> import jax, jax.numpy as jnp, kfc_jax
    >>> from flax import nnx
    >>> from kfc_jax import recovery
    >>> model = nnx.Sequential(nnx.Linear(4, 3, rngs=nnx.Rngs(0)),
    ...                        nnx.BatchNorm(3, use_running_average=True, rngs=nnx.Rngs(0)))
    >>> x = 2.0 + jax.random.normal(jax.random.key(0), (64, 4))
    >>> new = recovery.recalibrate_batchnorm(model, [x[:32], x[32:]])
    >>> h = model.layers[0](x)
    >>> bool(jnp.allclose(new.layers[1].mean[...], h.mean(0), atol=1e-5))
    True
  """
  if not isinstance(model, nnx.Module):
    raise TypeError(f"model must be an nnx.Module, got {type(model).__name__}.")
  layers = {p: m for p, (_, m) in _taps.nnx_layers(model).items() if isinstance(m, nnx.BatchNorm)}
  if not layers:
    raise ValueError("the model has no nnx.BatchNorm layer to recalibrate.")
  stats = {p: (lambda bn, x: _taps.feature_moments(x, bn.axis)) for p in layers}
  override = {p: _nnx_bn_call for p in layers}
  totals = _taps.nnx_collect(model, batches, stats, call=call, override=override)
  new = nnx.clone(model)
  for path, (_, bn) in _taps.nnx_layers(new).items():
    if path in totals:
      mean, var = _pooled(totals[path])
      bn.mean[...] = jnp.asarray(mean.reshape(bn.mean[...].shape), bn.mean[...].dtype)
      bn.var[...] = jnp.asarray(var.reshape(bn.var[...].shape), bn.var[...].dtype)
  return new


def _linen_bn_call(bn, next_fun, x, *args, **kwargs):
  # Normalise by the batch's statistics, as in training. Computed here rather
  # than by calling with use_running_average=False, which Linen refuses when
  # the model set that flag in the constructor.
  del next_fun, args, kwargs
  axes = (bn.axis,) if isinstance(bn.axis, int) else tuple(bn.axis)
  feature_axes = tuple(a % x.ndim for a in axes)
  reduce = tuple(i for i in range(x.ndim) if i not in feature_axes)
  mean = x.mean(reduce, keepdims=True)
  var = jnp.clip((x * x).mean(reduce, keepdims=True) - mean**2, 0.0)
  y = (x - mean) * jax.lax.rsqrt(var + bn.epsilon)
  shape = [x.shape[i] if i in feature_axes else 1 for i in range(x.ndim)]
  params = bn.variables.get("params", {})
  if bn.use_scale:
    y = y * jnp.reshape(params["scale"], shape)
  if bn.use_bias:
    y = y + jnp.reshape(params["bias"], shape)
  return y.astype(bn.dtype or x.dtype)


def recalibrate_linen_batchnorm(
  module: nn.Module, variables: Any, batches: Any, **apply_kwargs: Any
) -> dict[str, Any]:
  """New variables whose ``batch_stats`` are refit on calibration batches (Linen).

  As :func:`recalibrate_batchnorm`: every ``nn.BatchNorm`` normalises by batch
  statistics during the pass, and its ``mean``/``var`` in ``batch_stats``
  become the exact pooled mean and variance over all batches. Params and
  other collections are kept; ``variables`` is not modified.

  Args:
    module: the Linen model.
    variables: ``{"params": ..., "batch_stats": ...}``.
    batches: an iterable of inputs, or of ``(inputs, labels)`` tuples.
    **apply_kwargs: passed to ``module.apply`` (e.g. ``train=False``).

  Returns:
    The new variables.
  """
  if not isinstance(module, nn.Module):
    raise TypeError(f"module must be a flax.linen Module, got {type(module).__name__}.")
  if not isinstance(variables, Mapping) or "batch_stats" not in variables:
    got = sorted(variables) if isinstance(variables, Mapping) else type(variables).__name__
    raise ValueError(f"variables must have a 'batch_stats' collection to recalibrate; got {got}.")

  def stat(path, m):
    if isinstance(m, nn.BatchNorm):
      return lambda bn, x: _taps.feature_moments(x, bn.axis)
    return None

  def override(path, m):
    return _linen_bn_call if isinstance(m, nn.BatchNorm) else None

  totals = _taps.linen_collect(
    module, variables, batches, stat, override=override, mutable=["batch_stats"], **apply_kwargs
  )
  if not totals:
    raise ValueError("the model called no nn.BatchNorm layer to recalibrate.")
  stats = dict(_meta.unbox(variables["batch_stats"]))
  for path, total in totals.items():
    node = stats
    for key in path.split("/"):
      node[key] = dict(node[key])
      node = node[key]
    mean, var = _pooled(total)
    node["mean"] = jnp.asarray(
      mean.reshape(np.shape(node["mean"])), jnp.asarray(node["mean"]).dtype
    )
    node["var"] = jnp.asarray(var.reshape(np.shape(node["var"])), jnp.asarray(node["var"]).dtype)
  return {**variables, "batch_stats": stats}
