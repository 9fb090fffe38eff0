"""Per-layer parameters and FLOPs of a model against the dense layers replaced.

:func:`summarize` walks any NNX model; :func:`summarize_linen` traces a Linen
model (shapes only, nothing is computed). Every kfc_jax layer reports its own
:class:`kfc_jax.LayerCost` (its ``cost`` method); plain dense layers
(``nnx.Linear``, ``nn.Dense``) are listed as their own dense baseline so the
totals cover the whole dense part of the model.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
from flax import nnx

from kfc_jax import _checks
from kfc_jax.compress._report import format_table, layer_path, ratio
from kfc_jax.layers import KroneckerLayer, LayerCost, dense_conv_cost, dense_linear_cost


@dataclasses.dataclass(frozen=True)
class LayerSummary:
  """One row: a layer's path in the model and its cost.

  Example usage::

    >>> import kfc_jax
    >>> from flax import nnx
    >>> model = nnx.Sequential(kfc_jax.nnx.KroneckerLinear(16, 16, rngs=nnx.Rngs(0)))
    >>> row = kfc_jax.summarize(model).rows[0]
    >>> row.path, row.cost.kind, row.cost.params
    ('layers/0', 'KroneckerLinear', 48)
  """

  path: str
  cost: LayerCost


@dataclasses.dataclass(frozen=True)
class ModelSummary:
  """Rows of :class:`LayerSummary`; ``str()`` gives the table.

  FLOPs are per ``batch`` rows (multiply-adds count two, biases left out).

  Example usage::

    >>> import kfc_jax
    >>> from flax import nnx
    >>> model = nnx.Sequential(kfc_jax.nnx.KroneckerLinear(16, 16, rngs=nnx.Rngs(0)),
    ...                        nnx.Linear(16, 4, rngs=nnx.Rngs(0)))
    >>> s = kfc_jax.summarize(model)
    >>> len(s.rows), s.params, s.dense_params  # 48 + 68 against 272 + 68
    (2, 116, 340)
  """

  rows: tuple[LayerSummary, ...]
  batch: int = 1

  @property
  def params(self) -> int:
    return sum(r.cost.params for r in self.rows)

  @property
  def dense_params(self) -> int:
    return sum(r.cost.dense_params for r in self.rows)

  @property
  def flops(self) -> int:
    return sum(r.cost.flops for r in self.rows)

  @property
  def dense_flops(self) -> int:
    return sum(r.cost.dense_flops for r in self.rows)

  def table(self) -> str:
    """The summary as a text table, one row per layer and a total."""
    header = (
      "path",
      "layer",
      "in -> out",
      "params",
      "dense params",
      "saved",
      "FLOPs",
      "dense FLOPs",
      "speedup",
    )
    lines = []
    for r in self.rows:
      c = r.cost
      layer = f"{c.kind} {c.detail}".strip()
      lines.append(
        (
          r.path or "(root)",
          layer,
          f"{c.in_features} -> {c.out_features}",
          f"{c.params:,}",
          f"{c.dense_params:,}",
          ratio(c.dense_params, c.params),
          f"{c.flops:,}",
          f"{c.dense_flops:,}",
          ratio(c.dense_flops, c.flops),
        )
      )
    total = (
      "total",
      "",
      "",
      f"{self.params:,}",
      f"{self.dense_params:,}",
      ratio(self.dense_params, self.params),
      f"{self.flops:,}",
      f"{self.dense_flops:,}",
      ratio(self.dense_flops, self.flops),
    )
    return format_table(header, [lines, [total]], left_columns=3)

  def __str__(self) -> str:
    return self.table()


def _window(kernel_size: Any) -> tuple[int, ...]:
  return (kernel_size,) if isinstance(kernel_size, int) else tuple(kernel_size)


def _check_nnx_model(model: Any) -> None:
  """Raises unless ``model`` is an NNX graph node summarize can walk."""
  if isinstance(model, nn.Module):
    raise TypeError(
      "model is a Linen module; summarize takes NNX models. Use"
      " summarize_linen(module, variables, *inputs) for Linen."
    )
  if not isinstance(model, (nnx.Module, list, tuple, dict)):
    raise TypeError(
      "model must be an NNX module (or a list, tuple or dict of them), got"
      f" {model!r} of type {type(model).__name__}."
    )


def summarize(model: Any, *, batch: int = 1) -> ModelSummary:
  """Summarises the kfc_jax layers and dense layers of an NNX model.

  An NNX model carries no input shapes, so convolutions (``KroneckerConv``,
  ``nnx.Conv``) count FLOPs per ``batch`` output pixels;
  :func:`summarize_linen` traces the model and counts whole images.

  Args:
    model: any NNX graph node (a module, or a list/dict of modules).
    batch: rows per call, for FLOPs (the factored cost depends on it).

  Example usage::

    >>> import kfc_jax
    >>> from flax import nnx
    >>> class Head(nnx.Module):
    ...   def __init__(self, rngs):
    ...     self.fc = kfc_jax.nnx.KFC((3, 3, 32), 256, terms=[("II", (64, 4))], rngs=rngs)
    ...     self.out = nnx.Linear(256, 10, rngs=rngs)
    >>> s = kfc_jax.summarize(Head(nnx.Rngs(0)))
    >>> s.params, s.dense_params
    (4910, 76554)
    >>> print(s)  # doctest: +NORMALIZE_WHITESPACE
    path   layer          in -> out   params  dense params  saved   FLOPs  dense FLOPs  speedup
    -------------------------------------------------------------------------------------------
    fc     KFC II(64, 4)  288 -> 256   2,340        73,984  31.6x  18,688      147,456     7.9x
    out    Linear         256 -> 10    2,570         2,570   1.0x   5,120        5,120     1.0x
    -------------------------------------------------------------------------------------------
    total                              4,910        76,554  15.6x  23,808      152,576     6.4x
  """
  _check_nnx_model(model)
  batch = _checks.positive_int(batch, "batch")
  rows = []
  for path, module in nnx.iter_modules(model):
    if isinstance(module, KroneckerLayer):
      rows.append(LayerSummary(layer_path(path), module.cost(batch)))
    elif isinstance(module, nnx.Linear):
      rows.append(
        LayerSummary(
          layer_path(path),
          dense_linear_cost(
            "Linear", module.in_features, module.out_features, module.bias is not None, batch
          ),
        )
      )
    elif isinstance(module, nnx.Conv):
      rows.append(
        LayerSummary(
          layer_path(path),
          dense_conv_cost("Conv", module.kernel[...].shape, module.bias is not None, batch),
        )
      )
  rows.sort(key=lambda r: r.path)
  return ModelSummary(tuple(rows), batch)


def summarize_linen(
  module: nn.Module, variables: Any, *args: Any, batch: int = 1, **kwargs: Any
) -> ModelSummary:
  """Summarises the kfc_jax layers and ``nn.Dense`` layers of a Linen model.

  The model is traced with :func:`jax.eval_shape` (nothing is computed) and
  every layer called on the way is recorded.

  Args:
    module: the Linen model.
    variables: its variables (e.g. ``{"params": ...}``), or ``None`` to trace
      ``init`` instead.
    *args: example inputs (arrays or ``jax.ShapeDtypeStruct``).
    batch: rows (images, for convolutions) per call, for FLOPs.
    **kwargs: passed to ``module.apply``/``init``.

  Example usage::

    >>> import jax, jax.numpy as jnp, kfc_jax
    >>> layer = kfc_jax.linen.LowRankLinear(288, 256, rank=96)
    >>> s = kfc_jax.summarize_linen(layer, None, jnp.ones((1, 288)))
    >>> s.rows[0].cost.params, s.rows[0].cost.dense_params
    (52480, 73984)
  """
  if not isinstance(module, nn.Module):
    raise TypeError(
      f"module must be a Linen module (flax.linen.Module), got {module!r} of"
      f" type {type(module).__name__}"
      + ("; use summarize(model) for NNX models." if isinstance(module, nnx.Module) else ".")
    )
  batch = _checks.positive_int(batch, "batch")
  rows: dict[str, LayerSummary] = {}

  def interceptor(next_fun, call_args, call_kwargs, context):
    m = context.module
    out = next_fun(*call_args, **call_kwargs)
    if context.method_name == "__call__":
      path = layer_path(m.path)
      if isinstance(m, KroneckerLayer):
        rows.setdefault(path, LayerSummary(path, m.cost_for_input(batch, call_args[0].shape)))
      elif isinstance(m, nn.Dense):
        rows.setdefault(
          path,
          LayerSummary(
            path, dense_linear_cost("Dense", call_args[0].shape[-1], m.features, m.use_bias, batch)
          ),
        )
      elif isinstance(m, nn.Conv) and len(_window(m.kernel_size)) == 2:
        x = call_args[0]
        kernel = (*_window(m.kernel_size), x.shape[-1] // m.feature_group_count, m.features)
        pixels = batch * out.shape[-3] * out.shape[-2]  # output pixels per call
        cost = dense_conv_cost("Conv", kernel, m.use_bias, pixels)
        rows.setdefault(
          path,
          LayerSummary(
            path,
            dataclasses.replace(
              cost, in_features=x.shape[-1], detail=f"@{x.shape[-3]}x{x.shape[-2]}"
            ),
          ),
        )
    return out

  with nn.intercept_methods(interceptor):
    if variables is None:
      jax.eval_shape(lambda *a: module.init(jax.random.key(0), *a, **kwargs), *args)
    else:
      jax.eval_shape(lambda v, *a: module.apply(v, *a, **kwargs), variables, *args)
  return ModelSummary(tuple(sorted(rows.values(), key=lambda r: r.path)), batch)
