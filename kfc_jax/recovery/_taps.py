"""Seeing what a model's layers receive on calibration data (NNX and Linen).

A *tap* stands in for a layer inside a throw-away copy of the model (NNX:
``nnx.merge`` of the split state, inside ``jax.jit``; Linen:
``nn.intercept_methods``), reduces the layer's input to the statistic asked
for, and calls the layer. The statistics leave the jitted function as its
outputs, so the user's model is never modified and each batch shape traces
once. A layer that rejects its input raises an error naming its path.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, cast

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

Stat = Callable[[Any, jax.Array], Any]  # (layer, its input) -> pytree of arrays


class CalibrationError(ValueError):
  """A calibration batch the model (or one of its layers) rejected."""


# ---------------------------------------------------------------------------
# Batches and paths
# ---------------------------------------------------------------------------


def split_batch(batch: Any) -> tuple[Any, Any]:
  """``(inputs, labels)`` of a batch: an array, or a tuple ``(x, y, ...)``."""
  if isinstance(batch, (tuple, list)):
    if not batch:
      raise CalibrationError(
        "a calibration batch is an empty tuple; pass arrays or (inputs, labels) pairs."
      )
    return batch[0], (batch[1] if len(batch) > 1 else None)
  if isinstance(batch, Mapping):
    raise TypeError(
      "calibration batches must be arrays or (inputs, labels) tuples,"
      " got a mapping; pass batch['image'] (or your input key)."
    )
  return batch, None


def as_batches(batches: Any, name: str = "batches") -> list[Any]:
  """The batches as a list (one pass), checking there is at least one."""
  if hasattr(batches, "shape"):
    raise TypeError(
      f"{name} must be an iterable of batches, got a single array of"
      f" shape {tuple(batches.shape)}; wrap it in a list."
    )
  if not isinstance(batches, Iterable):
    raise TypeError(f"{name} must be an iterable of batches, got {type(batches).__name__}.")
  out = list(batches)
  if not out:
    raise ValueError(f"{name} is empty; pass at least one calibration batch.")
  return out


def path_str(parts: Sequence[Any]) -> str:
  return "/".join(str(p) for p in parts)


def get_module(model: Any, parts: Sequence[Any]) -> Any:
  node = model
  for key in parts:
    node = (
      node[key]
      if isinstance(key, int) or isinstance(node, (nnx.Dict, dict))
      else getattr(node, key)
    )
  return node


def set_module(model: Any, parts: Sequence[Any], value: Any) -> None:
  parent = get_module(model, parts[:-1])
  key = parts[-1]
  if isinstance(key, int) or isinstance(parent, (nnx.Dict, dict)):
    parent[key] = value
  else:
    setattr(parent, key, value)


def _owns_params(module: Any) -> bool:
  return any(isinstance(v, nnx.Param) for v in vars(module).values())


def nnx_layers(model: nnx.Module) -> dict[str, tuple[tuple[Any, ...], Any]]:
  """``{path: (parts, module)}`` of every param-owning submodule (and BatchNorm)."""
  return {
    path_str(parts): (tuple(parts), module)
    for parts, module in nnx.iter_modules(model)
    if parts and (_owns_params(module) or isinstance(module, nnx.BatchNorm))
  }


def select_paths(available: Iterable[str], paths: Any, what: str) -> list[str]:
  """``paths`` checked against ``available`` (``None``: all of them)."""
  available = sorted(available)
  if paths is None:
    return available
  if isinstance(paths, str):
    paths = [paths]
  missing = [p for p in paths if p not in available]
  if missing:
    raise ValueError(f"paths {missing} are not {what} of the model; it has {available or 'none'}.")
  return list(paths)


# ---------------------------------------------------------------------------
# Errors naming the layer
# ---------------------------------------------------------------------------


def _shape(x: Any) -> Any:
  return tuple(x.shape) if hasattr(x, "shape") else type(x).__name__


def _layer_failed(path: str, x: Any, e: Exception) -> CalibrationError:
  return CalibrationError(
    f"layer {path!r} rejected its calibration input of shape {_shape(x)}: {type(e).__name__}: {e}"
  )


def run_batch(fn: Callable[..., Any], index: int, x: Any, *args: Any) -> Any:
  """``fn(*args, x)``, naming the batch (and layer) if the model rejects it."""
  try:
    return fn(*args, x)
  except CalibrationError as e:
    raise CalibrationError(f"calibration batch {index}: {e}") from e
  except Exception as e:
    raise CalibrationError(
      f"calibration batch {index} of shape {_shape(x)} was rejected by the model"
      f" (outside its tapped layers): {type(e).__name__}: {e}"
    ) from e


# ---------------------------------------------------------------------------
# NNX
# ---------------------------------------------------------------------------


class _Tap:
  """Stands in for an NNX layer in a throw-away copy: reduce input, then call."""

  def __init__(
    self, inner: Any, path: str, stat: Stat | None, sink: dict, override: Callable | None = None
  ):
    self.inner, self.path, self.stat, self.sink = inner, path, stat, sink
    self.override = override

  def __call__(self, x: Any, *args: Any, **kwargs: Any) -> Any:
    if self.stat is not None:
      try:
        value = self.stat(self.inner, x)
      except Exception as e:
        raise _layer_failed(self.path, x, e) from e
      self.sink.setdefault(self.path, []).append(value)
    try:
      if self.override is not None:
        return self.override(self.inner, x, *args, **kwargs)
      return self.inner(x, *args, **kwargs)
    except CalibrationError:
      raise
    except Exception as e:
      raise _layer_failed(self.path, x, e) from e


def nnx_tapped_fn(
  model: nnx.Module,
  stats: Mapping[str, Stat | None],
  *,
  call: Callable[[Any, Any], Any] | None = None,
  override: Mapping[str, Callable] | None = None,
):
  """A jitted ``fn(state, x) -> {path: [stat per call]}`` over a copy of ``model``.

  Every param-owning layer is tapped (so errors name it); ``stats[path]``
  reduces that layer's input (``None``: no statistic).
  """
  graphdef, state = nnx.split(model)
  layers = nnx_layers(model)
  call = call or (lambda m, x: m(x))
  override = dict(override or {})

  @jax.jit
  def fn(state, x):
    copy = nnx.merge(graphdef, state)
    sink: dict[str, list] = {}
    # Deepest first, so a parent's tap wraps its already-tapped children.
    for path, (parts, _) in sorted(layers.items(), key=lambda kv: -len(kv[1][0])):
      inner = get_module(copy, parts)
      set_module(copy, parts, _Tap(inner, path, stats.get(path), sink, override.get(path)))
    call(copy, x)
    return sink

  return fn, state


def _reduce_calls(per_call: list) -> Any:
  """Sums a layer's statistic over the calls of one batch (shared layers)."""
  return jax.tree.map(lambda *xs: sum(xs[1:], xs[0]), *per_call)


def nnx_collect(
  model: nnx.Module,
  batches: Any,
  stats: Mapping[str, Stat | None],
  *,
  call: Callable[[Any, Any], Any] | None = None,
  override: Mapping[str, Callable] | None = None,
) -> dict[str, Any]:
  """Runs ``model`` on every batch and sums each tapped statistic (float64)."""
  fn, state = nnx_tapped_fn(model, stats, call=call, override=override)
  totals: dict[str, Any] = {}
  for i, batch in enumerate(as_batches(batches)):
    x, _ = split_batch(batch)
    sink = run_batch(fn, i, x, state)
    for path, per_call in sink.items():
      value = jax.tree.map(lambda a: np.asarray(a, np.float64), _reduce_calls(per_call))
      totals[path] = value if path not in totals else jax.tree.map(np.add, totals[path], value)
  return totals


# ---------------------------------------------------------------------------
# Linen
# ---------------------------------------------------------------------------


def linen_collect(
  module: nn.Module,
  variables: Any,
  batches: Any,
  stats: Callable[[str, nn.Module], Stat | None],
  *,
  override: Callable[[str, nn.Module], Callable | None] | None = None,
  mutable: Any = False,
  **apply_kwargs: Any,
) -> dict[str, Any]:
  """The Linen counterpart of :func:`nnx_collect`, by ``nn.intercept_methods``.

  ``stats(path, module)`` gives the statistic for a layer (``None``: none);
  ``override(path, module)`` an ``f(module, next_fun, x, *args, **kwargs)``
  that replaces its call.
  """

  def run(variables, x):
    sink: dict[str, list] = {}

    def interceptor(next_fun, args, kwargs, context):
      m = context.module
      if context.method_name != "__call__" or not m.path or not args:
        return next_fun(*args, **kwargs)
      path = path_str(m.path)
      stat = stats(path, m)
      if stat is not None:
        try:
          sink.setdefault(path, []).append(stat(m, args[0]))
        except Exception as e:
          raise _layer_failed(path, args[0], e) from e
      replace = override(path, m) if override is not None else None
      try:
        if replace is not None:
          return replace(m, next_fun, *args, **kwargs)
        return next_fun(*args, **kwargs)
      except CalibrationError:
        raise
      except Exception as e:
        raise _layer_failed(path, args[0], e) from e

    with nn.intercept_methods(interceptor):
      module.apply(variables, x, mutable=mutable, **apply_kwargs)
    return sink

  fn = jax.jit(run)
  totals: dict[str, Any] = {}
  for i, batch in enumerate(as_batches(batches)):
    x, _ = split_batch(batch)
    sink = run_batch(fn, i, x, variables)
    for path, per_call in sink.items():
      value = jax.tree.map(lambda a: np.asarray(a, np.float64), _reduce_calls(per_call))
      totals[path] = value if path not in totals else jax.tree.map(np.add, totals[path], value)
  return totals


# ---------------------------------------------------------------------------
# Statistics
# ---------------------------------------------------------------------------


def _pairs(value: Any, n: int, name: str) -> tuple[int, ...]:
  if value is None:
    return (1,) * n
  if isinstance(value, int):
    return (value,) * n
  return tuple(value)


def conv_patches(
  x: jax.Array,
  kernel_size: Sequence[int],
  *,
  strides: Any = 1,
  padding: Any = "SAME",
  kernel_dilation: Any = 1,
  input_dilation: Any = 1,
) -> jax.Array:
  """The conv's input patches ``[N, kh*kw*C_in]``, flattened in HWIO row order.

  Row ``p`` is the receptive field of output pixel ``p``, so ``patches @
  kernel.reshape(-1, C_out)`` is the convolution (2-D, NHWC, no groups).
  """
  if x.ndim == 3:
    x = x[None]
  if x.ndim != 4:
    raise ValueError(f"a 2-D conv input must be [N, H, W, C], got shape {x.shape}.")
  kh, kw = kernel_size
  if isinstance(padding, str):
    if padding.upper() not in ("SAME", "VALID"):
      raise ValueError(
        f"padding {padding!r} is not supported for calibration"
        " statistics; use 'SAME', 'VALID' or explicit pads."
      )
    pad = padding.upper()
  elif isinstance(padding, int):
    pad = [(padding, padding)] * 2
  else:
    pad = [(p, p) if isinstance(p, int) else tuple(p) for p in padding]
  patches = jax.lax.conv_general_dilated_patches(
    x,
    (kh, kw),
    _pairs(strides, 2, "strides"),
    pad,
    lhs_dilation=_pairs(input_dilation, 2, "input_dilation"),
    rhs_dilation=_pairs(kernel_dilation, 2, "kernel_dilation"),
    dimension_numbers=("NHWC", "HWIO", "NHWC"),
  )
  c = x.shape[-1]
  # conv_general_dilated_patches orders features (C, kh, kw); kernels are (kh, kw, C).
  patches = patches.reshape(*patches.shape[:3], c, kh, kw)
  patches = jnp.moveaxis(patches, 3, -1)
  return patches.reshape(-1, kh * kw * c)


def _second_moment(rows: jax.Array) -> dict[str, jax.Array]:
  rows = rows.astype(jnp.float32)
  return {"xtx": rows.T @ rows, "count": jnp.asarray(rows.shape[0], jnp.float32)}


def linear_input_stat(layer: Any, x: jax.Array) -> dict[str, jax.Array]:
  """``sum x xᵀ`` and the row count of a dense layer's input."""
  return _second_moment(x.reshape(-1, x.shape[-1]))


def nnx_conv_input_stat(layer: nnx.Conv, x: jax.Array) -> dict[str, jax.Array]:
  """``sum p pᵀ`` over the input patches of an ``nnx.Conv``."""
  if getattr(layer, "feature_group_count", 1) != 1:
    raise ValueError("grouped convolutions have no single patch covariance.")
  kernel = layer.kernel[...]
  return _second_moment(
    conv_patches(
      x,
      kernel.shape[:2],
      strides=layer.strides,
      padding=layer.padding,
      kernel_dilation=layer.kernel_dilation,
      input_dilation=layer.input_dilation,
    )
  )


def linen_conv_input_stat(layer: nn.Conv, x: jax.Array) -> dict[str, jax.Array]:
  """``sum p pᵀ`` over the input patches of an ``nn.Conv``."""
  if layer.feature_group_count != 1:
    raise ValueError("grouped convolutions have no single patch covariance.")
  return _second_moment(
    conv_patches(
      x,
      tuple(cast(Sequence[int], layer.kernel_size)),
      strides=layer.strides,
      padding=layer.padding,
      kernel_dilation=layer.kernel_dilation,
      input_dilation=layer.input_dilation,
    )
  )


def to_covariance(total: Mapping[str, np.ndarray]) -> np.ndarray:
  """``E[x xᵀ]`` from summed statistics."""
  return total["xtx"] / max(float(total["count"]), 1.0)


def feature_moments(x: jax.Array, axis: Any) -> dict[str, jax.Array]:
  """Per-feature sums of ``x`` and ``x²`` and the count, over the other axes."""
  axes = (axis,) if isinstance(axis, int) else tuple(axis)
  feature_axes = tuple(a % x.ndim for a in axes)
  reduce = tuple(i for i in range(x.ndim) if i not in feature_axes)
  x = x.astype(jnp.float32)
  count = math.prod(x.shape[i] for i in reduce)
  return {
    "sum": x.sum(reduce),
    "sum_sq": (x * x).sum(reduce),
    "count": jnp.asarray(count, jnp.float32),
  }
