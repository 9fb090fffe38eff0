"""Planning: what each selected layer becomes (framework-free, shared by both drivers).

:func:`plan_layer` turns a rule and a trained layer (:class:`TrainedLayer`)
into a typed :class:`LayerPlan`: the layer family and the keyword arguments of
its ``from_*`` constructor. :func:`select_layers` and :func:`build_layers` are
the loop both drivers run around it. A data-aware planner needs only more
fields on :class:`TrainedLayer` (e.g. calibration statistics).
"""

from __future__ import annotations

import dataclasses
import enum
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from kfc_jax import formulations, layers
from kfc_jax.compress import _auto
from kfc_jax.compress._policy import CompressionPolicy, LayerRule
from kfc_jax.compress._report import LayerReport
from kfc_jax.decompose import suggest_conv_factors
from kfc_jax.shapes import suggest_factors


class Family(enum.Enum):
  """The layer family a plan builds (the value is the class name in both APIs)."""

  KRONECKER_LINEAR = "KroneckerLinear"
  KFC = "KFC"
  LOW_RANK_LINEAR = "LowRankLinear"
  KRONECKER_CONV = "KroneckerConv"


@dataclasses.dataclass(frozen=True)
class LayerPlan:
  """What one layer becomes: its family and its ``from_*`` keyword arguments.

  ``choice`` is what the error-driven search picked and its runner-up, when
  a search chose (a budget, ``method="auto"``).
  """

  family: Family
  options: Mapping[str, Any]
  choice: Any = None


@dataclasses.dataclass(frozen=True)
class TrainedLayer:
  """A layer of the model being compressed, as the planner sees it.

  Attributes:
    path: its path in the model (``"blocks/0/fc"``).
    type_name: its class name, for the report.
    kind: ``"linear"`` (a ``[in, out]`` kernel), ``"conv"`` (a 2-D HWIO
      kernel), or ``None`` when compress cannot convert it.
    kernel: the trained kernel, float64 (``None`` when ``kind`` is).
    handle: what the driver needs to build the replacement (its module, params).
    input_cov: the second moment of the layer's inputs on calibration data
      (a conv's: of its patches), or ``None`` to fit the weights.
  """

  path: str
  type_name: str
  kind: str | None
  kernel: np.ndarray | None
  handle: Any
  input_cov: np.ndarray | None = None


def _budget(rule: LayerRule, dense_params: int) -> int | None:
  if rule.max_params is not None:
    return rule.max_params
  if rule.compression is not None:
    budget = int(dense_params / rule.compression)
    if budget < 1:
      raise ValueError(
        f"no layer shape fits compression={rule.compression!r}: it leaves"
        f" int({dense_params} / {rule.compression!r}) = {budget} parameters"
        f" for a kernel of {dense_params}. Lower the compression."
      )
    return budget
  return None


def _fit_rank(budget: int, per_rank: int, full_rank: int, what: str) -> int:
  rank = min(budget // per_rank, full_rank)
  if rank < 1:
    raise ValueError(
      f"no {what} fits the budget of {budget} parameters: rank 1 already has"
      f" {per_rank}. Raise the budget (lower compression / higher max_params)."
    )
  return rank


def _plan_conv(rule: LayerRule, kernel: np.ndarray, budget: int | None) -> LayerPlan:
  if rule.method != "kronecker":
    raise TypeError(
      f"method={rule.method!r} converts dense layers only; this"
      " layer is a 2-D convolution (use method='kronecker')."
    )
  options: dict[str, Any] = dict(sweeps=rule.sweeps)
  if budget is not None:
    s = suggest_conv_factors(
      kernel.shape, compression=None, max_params=budget, rank=rule.rank, kernel=kernel
    )
    options["terms"] = [(s.a_shape, s.b_shape, s.rank)]
  else:
    options.update(a_shape=rule.a_shape, b_shape=rule.b_shape, terms=rule.terms)
    if rule.rank is not None:
      options["rank"] = rule.rank
  return LayerPlan(Family.KRONECKER_CONV, options)


def _plan_kfc(rule: LayerRule, n_out: int, budget: int | None) -> LayerPlan:
  if budget is None:
    return LayerPlan(Family.KFC, dict(in_shape=rule.in_shape, terms=rule.terms, sweeps=rule.sweeps))
  terms = formulations.resolve_terms(rule.terms, n_out)
  if len(terms) != 1:
    raise ValueError(
      "a KFC budget needs exactly one term (formulation,"
      f" out_factors) to choose the rank of, got {rule.terms!r}."
    )
  term = dataclasses.replace(terms[0], rank=1)
  layout = layers.kfc_layout(rule.in_shape, n_out, [term])
  sizes = [m * n for _, m, n in layout.terms[0].factor_shapes]
  full = min(sizes) if len(sizes) == 2 else layout.in_features * n_out
  rank = _fit_rank(budget, layout.params, full, f"KFC {term.label} layer")
  return LayerPlan(
    Family.KFC,
    dict(in_shape=rule.in_shape, terms=[dataclasses.replace(term, rank=rank)], sweeps=rule.sweeps),
  )


def _plan_kronecker(rule: LayerRule, n_in: int, n_out: int, budget: int | None) -> LayerPlan:
  if budget is not None or (
    rule.in_factors is None and rule.out_factors is None and rule.terms is None
  ):
    if budget is not None:
      s = suggest_factors(n_in, n_out, k=rule.k, max_params=budget, rank=rule.rank)
    else:
      s = suggest_factors(n_in, n_out, k=rule.k, rank=rule.rank or 1)
    return LayerPlan(
      Family.KRONECKER_LINEAR,
      dict(in_factors=s.in_factors, out_factors=s.out_factors, rank=s.rank, sweeps=rule.sweeps),
    )
  options = dict(
    in_factors=rule.in_factors, out_factors=rule.out_factors, terms=rule.terms, sweeps=rule.sweeps
  )
  if rule.rank is not None:
    options["rank"] = rule.rank
  return LayerPlan(Family.KRONECKER_LINEAR, options)


def plan_layer(rule: LayerRule, layer: TrainedLayer) -> LayerPlan:
  """The replacement ``rule`` asks for ``layer``: method and factor shapes.

  Budgets for two-factor Kronecker layers and ``method="auto"`` are chosen by
  the error search (data-aware with ``layer.input_cov``); with an input
  covariance the decomposition fits the outputs on that data too.
  """
  plan = _plan_by_error(rule, layer) or _plan_by_rule(rule, layer)
  if layer.input_cov is not None:
    plan = dataclasses.replace(plan, options={**plan.options, "input_cov": layer.input_cov})
  return plan


def _plan_by_error(rule: LayerRule, layer: TrainedLayer) -> LayerPlan | None:
  """The search's best candidate, or ``None`` when the rule leaves no choice."""
  kernel = layer.kernel
  if kernel is None:
    return None
  budget = _budget(rule, math.prod(kernel.shape))
  if budget is None or rule.method not in ("auto", "kronecker"):
    return None
  if rule.method == "kronecker" and (
    (layer.kind == "conv" and layer.input_cov is None)  # suggest_conv_factors
    or (layer.kind == "linear" and rule.k != 2)
  ):
    return None
  try:
    family, options, choice = _auto.choose(rule, kernel, budget, layer.input_cov)
  except ValueError:
    if rule.method == "auto":
      raise
    return None  # no exact split (e.g. a prime size): the padded suggestion
  return LayerPlan(Family(family), options, choice)


def _plan_by_rule(rule: LayerRule, layer: TrainedLayer) -> LayerPlan:
  kernel = layer.kernel
  if kernel is None:
    raise TypeError(f"layer {layer.path!r} ({layer.type_name}) has no kernel to plan from.")
  budget = _budget(rule, math.prod(kernel.shape))
  if layer.kind == "conv":
    return _plan_conv(rule, kernel, budget)
  n_in, n_out = kernel.shape
  if rule.method == "low_rank":
    rank = (
      rule.rank
      if budget is None
      else _fit_rank(budget, n_in + n_out, min(n_in, n_out), f"rank-r layer {n_in}->{n_out}")
    )
    return LayerPlan(Family.LOW_RANK_LINEAR, dict(rank=rank))
  if rule.method == "kfc":
    return _plan_kfc(rule, n_out, budget)
  return _plan_kronecker(rule, n_in, n_out, budget)


def _layer_error(layer: TrainedLayer, index: int, rule: LayerRule, e: Exception) -> Exception:
  where = f"layer {layer.path!r} (rule {index}, pattern {rule.pattern!r})"
  return type(e)(f"{where}: {e}")


def select_layers(
  policy: CompressionPolicy, found: Sequence[TrainedLayer], *, supported: str
) -> list[tuple[TrainedLayer, int, LayerRule]]:
  """The layers a rule selects for replacement, with the rule and its index.

  ``"keep"`` rules take their layers out. A selected layer compress cannot
  convert raises ``TypeError`` (``supported`` says what it can); a rule that
  matches nothing warns, listing the model's layers.
  """
  selected, used = [], set()
  for layer in found:
    index = policy.match(layer.path)
    if index is None:
      continue
    used.add(index)
    rule = policy.rules[index]
    if rule.method == "keep":
      continue
    if layer.kind is None:
      raise TypeError(
        f"layer {layer.path!r} (rule {index}, pattern {rule.pattern!r}) is a"
        f" {layer.type_name}; {supported}"
      )
    selected.append((layer, index, rule))
  listing = (
    ", ".join(
      f"{layer.path or '(root)'} ({layer.type_name})"
      for layer in sorted(found, key=lambda f: f.path)
    )
    or "none"
  )
  for i, rule in enumerate(policy.rules):
    if i not in used:
      warnings.warn(
        f"compress: rule {i} (pattern {rule.pattern!r}) matched no layer (or only"
        f" layers an earlier rule took). The model's layers: {listing}.",
        UserWarning,
        stacklevel=3,
      )
  return selected


Built = tuple[layers.KroneckerLayer, float, Any]


def _shape_label(kernel: np.ndarray) -> str:
  if kernel.ndim == 2:
    return f"{kernel.shape[0]} -> {kernel.shape[1]}"
  return "x".join(map(str, kernel.shape))


def build_layers(
  selected: Sequence[tuple[TrainedLayer, int, LayerRule]],
  build: Callable[[TrainedLayer, LayerPlan], Built],
  batch: int,
  materialize: Callable[[Any], Any] | None = None,
) -> list[tuple[TrainedLayer, Any, LayerReport]]:
  """Plans and builds every replacement before anything is touched.

  ``build(layer, plan)`` returns ``(new_layer, relative_error, value)``: the
  :class:`kfc_jax.layers.KroneckerLayer` (for its cost), its weight error, and
  what the driver installs. Any error names the layer and its rule. With an
  input covariance, ``materialize(value)`` (the new kernel) gives the report's
  output error on the calibration data.
  """
  built = []
  for layer, index, rule in selected:
    try:
      plan = plan_layer(rule, layer)
      new_layer, error, value = build(layer, plan)
      cost = new_layer.cost(batch)
      data_error = None
      if layer.input_cov is not None and materialize is not None:
        assert layer.kernel is not None  # a layer with an input_cov has a kernel
        data_error = _auto.output_error(layer.kernel, materialize(value), layer.input_cov)
    except (ValueError, TypeError) as e:
      raise _layer_error(layer, index, rule, e) from e
    row = LayerReport.of(
      layer.path,
      layer.type_name,
      "" if layer.kernel is None else _shape_label(layer.kernel),
      cost,
      error,
      data_error=data_error,
      choice="" if plan.choice is None else str(plan.choice),
    )
    built.append((layer, value, row))
  return built
