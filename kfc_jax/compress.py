"""Whole-model compression: replace trained dense layers by Kronecker layers.

:func:`compress` walks an NNX model, replaces each ``nnx.Linear`` (and 2-D
``nnx.Conv``) that a :class:`CompressionPolicy` selects by its Kronecker
counterpart initialised by decomposition (``from_linear`` / ``from_conv``),
and returns the model with a :class:`CompressionReport` (parameters, FLOPs and
relative weight error per layer). :func:`compress_linen_params` does the same
for a Linen model's params. Every layer is planned and decomposed before the
model is touched, so a bad rule leaves the model as it was.

Fine-tuning afterwards is plain optax. The factors are their own param type,
so training only them (freezing biases and the layers left dense) is a filter::

  optimizer = nnx.Optimizer(model, optax.adam(1e-3), wrt=kfc_jax.nnx.KroneckerFactor)
  grads = nnx.grad(loss_fn, argnums=nnx.DiffState(0, kfc_jax.nnx.KroneckerFactor))(model)
  optimizer.update(model, grads)

and :func:`distillation_loss` distils from the original model's logits.

Example usage::

  >>> import jax.numpy as jnp, kfc_jax
  >>> from flax import nnx
  >>> class MLP(nnx.Module):
  ...   def __init__(self, rngs):
  ...     self.fc1 = nnx.Linear(64, 64, rngs=rngs)
  ...     self.fc2 = nnx.Linear(64, 10, rngs=rngs)
  ...   def __call__(self, x):
  ...     return self.fc2(nnx.relu(self.fc1(x)))
  >>> model = MLP(nnx.Rngs(0))
  >>> policy = kfc_jax.CompressionPolicy([kfc_jax.LayerRule("fc1", compression=8)])
  >>> small, report = kfc_jax.compress(model, policy)
  >>> type(small.fc1).__name__, type(model.fc1).__name__   # a copy by default
  ('KroneckerLinear', 'Linear')
  >>> report.rows[0].params_before, report.rows[0].params_after
  (4160, 576)
  >>> small(jnp.ones((2, 64))).shape
  (2, 10)
"""

from __future__ import annotations

import dataclasses
import math
import re
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from flax.core import meta as _meta

from kfc_jax import _checks
from kfc_jax import _layers
from kfc_jax import formulations as _formulations
from kfc_jax import linen as _linen
from kfc_jax import nnx as _nnx
from kfc_jax.decompose import suggest_conv_factors
from kfc_jax.ops import suggest_factors

METHODS = ("kronecker", "kfc", "low_rank", "keep")


# ---------------------------------------------------------------------------
# Policy
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LayerRule:
  """How to compress the layers whose path matches ``pattern``.

  A path is the layer's attribute names joined by ``/`` (``"fc1"``,
  ``"blocks/0/conv"``); ``pattern`` is a regular expression that must match
  the whole path (:func:`re.fullmatch`).

  ``method`` picks the replacement:

  * ``"kronecker"``: ``KroneckerLinear`` for an ``nnx.Linear``/``nn.Dense``
    (``in_factors``, ``out_factors``, ``rank``, ``k`` or ``terms``) and
    ``KroneckerConv`` for a 2-D conv (``a_shape``, ``b_shape``, ``rank`` or
    ``terms``).
  * ``"kfc"``: ``KFC`` over the feature map ``in_shape = (H, W, C)`` the
    linear layer reads flattened (NHWC), with KFC ``terms``.
  * ``"low_rank"``: ``LowRankLinear`` (truncated SVD) of rank ``rank``.
  * ``"keep"``: leave the matched layers dense (e.g. the output layer, ahead
    of a catch-all rule).

  Instead of shapes, a budget: ``compression`` (dense kernel parameters over
  factor parameters, biases left out) or ``max_params`` (factor parameters).
  The shapes are then chosen per layer: :func:`kfc_jax.suggest_factors` for
  ``"kronecker"`` linear layers (``k`` factors, ``rank`` fixed if given),
  :func:`kfc_jax.suggest_conv_factors` for convs, the largest rank that fits
  for ``"kfc"`` (one term, ``(formulation, out_factors)``) and ``"low_rank"``.

  Example usage::

    >>> import kfc_jax
    >>> kfc_jax.LayerRule("fc", "kfc", in_shape=(3, 3, 32), terms=[("II", (64, 4))],
    ...                   compression=20).method
    'kfc'
  """

  pattern: str
  method: str = "kronecker"
  in_factors: tuple[int, ...] | None = None
  out_factors: tuple[int, ...] | None = None
  rank: int | None = None
  terms: Any = None
  k: int = 2
  in_shape: tuple[int, int, int] | None = None
  a_shape: tuple[int, int, int, int] | None = None
  b_shape: tuple[int, int, int, int] | None = None
  compression: float | None = None
  max_params: int | None = None
  sweeps: int = 20

  def __post_init__(self):
    if not isinstance(self.pattern, str):
      raise TypeError(f"pattern must be a regular expression string, got {self.pattern!r}.")
    try:
      re.compile(self.pattern)
    except re.error as e:
      raise ValueError(f"pattern {self.pattern!r} is not a valid regular expression: {e}."
                       ) from None
    if self.method not in METHODS:
      raise ValueError(f"method must be one of {METHODS}, got {self.method!r}.")
    budget = self.compression is not None or self.max_params is not None
    if self.compression is not None and self.max_params is not None:
      raise ValueError("pass at most one of compression and max_params, got"
                       f" compression={self.compression!r} and"
                       f" max_params={self.max_params!r}.")
    if self.compression is not None and not self.compression >= 1:
      raise ValueError(f"compression must be >= 1 (dense / compressed parameters),"
                       f" got {self.compression!r}.")
    if self.max_params is not None:
      _checks.positive_int(self.max_params, "max_params")
    if self.rank is not None:
      _checks.positive_int(self.rank, "rank")
    shapes = {n: getattr(self, n) for n in ("in_factors", "out_factors", "a_shape",
                                            "b_shape")
              if getattr(self, n) is not None}
    if budget and (shapes or (self.terms is not None and self.method != "kfc")):
      raise ValueError(
          "pass either a budget (compression/max_params) or factor shapes/terms,"
          f" not both; got {sorted(shapes) or ['terms']} with a budget.")
    if self.method == "kfc":
      if self.in_shape is None or self.terms is None:
        raise ValueError(
            "method='kfc' needs in_shape=(H, W, C) (the feature map the layer reads"
            " flattened) and terms (e.g. [('II', (64, 4))]); got"
            f" in_shape={self.in_shape!r}, terms={self.terms!r}.")
    if self.method == "low_rank" and self.rank is None and not budget:
      raise ValueError("method='low_rank' needs rank, compression or max_params.")


def _rules(policy: Any) -> tuple[LayerRule, ...]:
  if isinstance(policy, CompressionPolicy):
    return policy.rules
  if isinstance(policy, LayerRule):
    return (policy,)
  if isinstance(policy, Sequence) and not isinstance(policy, str) and all(
      isinstance(r, LayerRule) for r in policy):
    return tuple(policy)
  raise TypeError("policy must be a CompressionPolicy, a LayerRule or a list of"
                  f" LayerRule, got {policy!r}.")


@dataclasses.dataclass(frozen=True)
class CompressionPolicy:
  """Ordered :class:`LayerRule` list; each layer takes the first rule it matches.

  Layers no rule matches stay as they are.

  Example usage::

    >>> import kfc_jax
    >>> policy = kfc_jax.CompressionPolicy([
    ...     kfc_jax.LayerRule("head", method="keep"),
    ...     kfc_jax.LayerRule(".*", method="low_rank", compression=4)])
    >>> policy.rule_for("head").method, policy.rule_for("blocks/0/fc").method
    ('keep', 'low_rank')
  """

  rules: tuple[LayerRule, ...]

  def __post_init__(self):
    if isinstance(self.rules, LayerRule):
      object.__setattr__(self, "rules", (self.rules,))
    if not isinstance(self.rules, Sequence) or not all(
        isinstance(r, LayerRule) for r in self.rules):
      raise TypeError(f"rules must be a sequence of LayerRule, got {self.rules!r}.")
    object.__setattr__(self, "rules", tuple(self.rules))

  def rule_for(self, path: str) -> LayerRule | None:
    """The first rule whose pattern matches ``path`` in full, or ``None``."""
    index = self._match(path)
    return None if index is None else self.rules[index]

  def _match(self, path: str) -> int | None:
    for i, rule in enumerate(self.rules):
      if re.fullmatch(rule.pattern, path):
        return i
    return None


# ---------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LayerReport:
  """One compressed layer: what it was, what it became, and what it cost.

  FLOPs are per ``batch`` rows (per output pixel for convs), multiply-adds
  counting two and biases left out; parameters include biases.
  """

  path: str
  before: str
  after: str
  shape: str
  params_before: int
  params_after: int
  flops_before: int
  flops_after: int
  relative_error: float


def _ratio(before: int, after: int) -> str:
  return f"{before / after:.1f}x" if after else "-"


@dataclasses.dataclass(frozen=True)
class CompressionReport:
  """Per-layer results of :func:`compress`; ``str()`` gives the table.

  ``model_params_before`` / ``model_params_after`` count every ``Param`` of the
  whole model (layers left alone included).
  """

  rows: tuple[LayerReport, ...]
  model_params_before: int
  model_params_after: int
  batch: int = 1

  @property
  def params_before(self) -> int:
    return sum(r.params_before for r in self.rows)

  @property
  def params_after(self) -> int:
    return sum(r.params_after for r in self.rows)

  @property
  def flops_before(self) -> int:
    return sum(r.flops_before for r in self.rows)

  @property
  def flops_after(self) -> int:
    return sum(r.flops_after for r in self.rows)

  def table(self) -> str:
    """The report as a text table: one row per layer, the total, the model."""
    header = ("path", "before", "after", "shape", "params", "->", "saved",
              "FLOPs", "->", "speedup", "rel. error")
    lines = [(r.path or "(root)", r.before, r.after, r.shape, f"{r.params_before:,}",
              f"{r.params_after:,}", _ratio(r.params_before, r.params_after),
              f"{r.flops_before:,}", f"{r.flops_after:,}",
              _ratio(r.flops_before, r.flops_after), f"{r.relative_error:.3g}")
             for r in self.rows]
    total = ("total", "", "", "", f"{self.params_before:,}", f"{self.params_after:,}",
             _ratio(self.params_before, self.params_after), f"{self.flops_before:,}",
             f"{self.flops_after:,}", _ratio(self.flops_before, self.flops_after), "")
    model = ("model", "", "", "", f"{self.model_params_before:,}",
             f"{self.model_params_after:,}",
             _ratio(self.model_params_before, self.model_params_after), "", "", "", "")
    rows = [header, *lines, total, model]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]

    def fmt(row):
      return "  ".join(c.ljust(w) if i < 4 else c.rjust(w)
                       for i, (c, w) in enumerate(zip(row, widths))).rstrip()

    rule = "-" * len(fmt(header))
    return "\n".join([fmt(header), rule, *map(fmt, lines), rule, fmt(total), fmt(model)])

  def __str__(self) -> str:
    return self.table()


# ---------------------------------------------------------------------------
# Planning (framework-free: shared by NNX and Linen)
# ---------------------------------------------------------------------------


def _budget(rule: LayerRule, dense_params: int) -> int | None:
  if rule.max_params is not None:
    return rule.max_params
  if rule.compression is not None:
    return int(dense_params / rule.compression)
  return None


def _fit_rank(budget: int, per_rank: int, full_rank: int, what: str) -> int:
  rank = min(budget // per_rank, full_rank)
  if rank < 1:
    raise ValueError(
        f"no {what} fits the budget of {budget} parameters: rank 1 already has"
        f" {per_rank}. Raise the budget (lower compression / higher max_params).")
  return rank


def _plan(rule: LayerRule, kind: str, kernel: np.ndarray) -> tuple[str, dict[str, Any]]:
  """The replacement's class name and its ``from_*`` keyword arguments."""
  budget = _budget(rule, math.prod(kernel.shape))
  if kind == "conv":
    if rule.method != "kronecker":
      raise TypeError(f"method={rule.method!r} converts dense layers only; this"
                      " layer is a 2-D convolution (use method='kronecker').")
    kw: dict[str, Any] = dict(sweeps=rule.sweeps)
    if budget is not None:
      s = suggest_conv_factors(kernel.shape, compression=None, max_params=budget,
                               rank=rule.rank, kernel=kernel)
      kw["terms"] = [(s.a_shape, s.b_shape, s.rank)]
    else:
      kw.update(a_shape=rule.a_shape, b_shape=rule.b_shape, terms=rule.terms)
      if rule.rank is not None:
        kw["rank"] = rule.rank
    return "KroneckerConv", kw
  n_in, n_out = kernel.shape
  if rule.method == "low_rank":
    rank = rule.rank if budget is None else _fit_rank(
        budget, n_in + n_out, min(n_in, n_out), f"rank-r layer {n_in}->{n_out}")
    return "LowRankLinear", dict(rank=rank)
  if rule.method == "kfc":
    if budget is not None:
      terms = _formulations.resolve_terms(rule.terms, n_out)
      if len(terms) != 1:
        raise ValueError("a KFC budget needs exactly one term (formulation,"
                         f" out_factors) to choose the rank of, got {rule.terms!r}.")
      term = dataclasses.replace(terms[0], rank=1)
      layout = _layers.kfc_layout(rule.in_shape, n_out, [term])
      sizes = [m * n for m, n in zip(layout.terms[0].in_factors,
                                     layout.terms[0].out_factors)]
      full = min(sizes) if len(sizes) == 2 else layout.in_features * n_out
      rank = _fit_rank(budget, layout.params, full, f"KFC {term.label} layer")
      return "KFC", dict(in_shape=rule.in_shape,
                         terms=[dataclasses.replace(term, rank=rank)],
                         sweeps=rule.sweeps)
    return "KFC", dict(in_shape=rule.in_shape, terms=rule.terms, sweeps=rule.sweeps)
  if budget is not None:
    s = suggest_factors(n_in, n_out, k=rule.k, max_params=budget, rank=rule.rank)
    return "KroneckerLinear", dict(in_factors=s.in_factors, out_factors=s.out_factors,
                                   rank=s.rank, sweeps=rule.sweeps)
  if rule.in_factors is None and rule.out_factors is None and rule.terms is None:
    s = suggest_factors(n_in, n_out, k=rule.k, rank=rule.rank or 1)
    return "KroneckerLinear", dict(in_factors=s.in_factors, out_factors=s.out_factors,
                                   rank=s.rank, sweeps=rule.sweeps)
  kw = dict(in_factors=rule.in_factors, out_factors=rule.out_factors,
            terms=rule.terms, sweeps=rule.sweeps)
  if rule.rank is not None:
    kw["rank"] = rule.rank
  return "KroneckerLinear", kw


def _layer_error(path: str, rule_index: int, rule: LayerRule, e: Exception) -> Exception:
  where = f"layer {path!r} (rule {rule_index}, pattern {rule.pattern!r})"
  return type(e)(f"{where}: {e}")


def _warn_unmatched(rules: Sequence[LayerRule], used: set[int],
                    layers: Sequence[tuple[str, str]]) -> None:
  listing = ", ".join(f"{p or '(root)'} ({kind})" for p, kind in layers) or "none"
  for i, rule in enumerate(rules):
    if i not in used:
      warnings.warn(
          f"compress: rule {i} (pattern {rule.pattern!r}) matched no layer (or only"
          f" layers an earlier rule took). The model's layers: {listing}.",
          UserWarning, stacklevel=3)


def _report_row(path: str, before: str, shape: str, cost: _layers.LayerCost,
                error: float | None) -> LayerReport:
  after = f"{cost.kind} {cost.detail}".strip()
  return LayerReport(path, before, after, shape, cost.dense_params, cost.params,
                     cost.dense_flops, cost.flops, float(error or 0.0))


def _shape_label(kernel: np.ndarray) -> str:
  if kernel.ndim == 2:
    return f"{kernel.shape[0]} -> {kernel.shape[1]}"
  return "x".join(map(str, kernel.shape))


# ---------------------------------------------------------------------------
# NNX
# ---------------------------------------------------------------------------


def _path(parts: Sequence[Any]) -> str:
  return "/".join(str(p) for p in parts)


def _owns_params(module: Any) -> bool:
  return any(isinstance(v, nnx.Param) for v in vars(module).values())


def _nnx_kind(module: Any) -> str | None:
  """``"linear"``, ``"conv"`` (2-D), or ``None`` when compress cannot convert it."""
  if type(module).__module__.startswith("kfc_jax."):
    return None
  if isinstance(module, nnx.Linear):
    return "linear"
  if isinstance(module, nnx.Conv) and module.kernel[...].ndim == 4:
    return "conv"
  return None


def _build_nnx(module: Any, kind: str, name: str, kw: dict[str, Any]) -> Any:
  cls = getattr(_nnx, name)
  if kind == "conv":
    return cls.from_conv(module, **kw)
  if name == "KFC":
    kw = dict(kw)
    return cls.from_linear(module, kw.pop("in_shape"), kw.pop("terms"), **kw)
  return cls.from_linear(module, **kw)


def _nnx_kernel(module: Any) -> np.ndarray:
  return np.asarray(module.kernel[...], np.float64)


def _param_count(tree: Any) -> int:
  return sum(int(np.size(x)) for x in jax.tree.leaves(tree))


def _replace(model: Any, parts: tuple[Any, ...], new: Any) -> None:
  parent = model
  for key in parts[:-1]:
    parent = parent[key] if isinstance(key, int) or isinstance(parent, (nnx.Dict, dict)) \
        else getattr(parent, key)
  key = parts[-1]
  if isinstance(key, int) or isinstance(parent, (nnx.Dict, dict)):
    parent[key] = new
  else:
    setattr(parent, key, new)


def compress(model: Any, policy: Any, *, inplace: bool = False, batch: int = 1
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
    path      before  after                               shape     params     ->  saved  FLOPs     ->  speedup  rel. error
    -----------------------------------------------------------------------------------------------------------------------
    layers/0  Linear  KroneckerLinear (8, 8)->(8, 8) r=4  64 -> 64   4,160    576   7.2x  8,192  8,192     1.0x       0.891
    -----------------------------------------------------------------------------------------------------------------------
    total                                                            4,160    576   7.2x  8,192  8,192     1.0x
    model                                                            4,810  1,226   3.9x
  """
  if not isinstance(model, nnx.Module):
    raise TypeError(f"model must be an nnx.Module, got {type(model).__name__}.")
  rules = _rules(policy)
  policy = CompressionPolicy(rules)
  batch = _checks.positive_int(batch, "batch")
  target = model if inplace else nnx.clone(model)
  layers, plans, used = [], [], set()
  for parts, module in nnx.iter_modules(target):
    if not _owns_params(module):
      continue  # containers: their layers are visited themselves
    path = _path(parts)
    layers.append((path, type(module).__name__))
    index = policy._match(path)
    if index is None:
      continue
    used.add(index)
    rule = rules[index]
    if rule.method == "keep":
      continue
    kind = _nnx_kind(module)
    if kind is None:
      raise TypeError(
          f"layer {path!r} (rule {index}, pattern {rule.pattern!r}) is a"
          f" {type(module).__name__}; compress converts nnx.Linear and 2-D"
          " nnx.Conv layers only. Narrow the pattern or add a method='keep' rule"
          " for it first.")
    if inplace and not parts:
      raise ValueError("the model is itself the selected layer and cannot be replaced"
                       " in place; pass inplace=False to get the new layer.")
    plans.append((parts, path, index, rule, module, kind))
  layers.sort()
  _warn_unmatched(rules, used, layers)
  params_before = _param_count(nnx.state(target, nnx.Param))
  built = []
  for parts, path, index, rule, module, kind in plans:
    kernel = _nnx_kernel(module)
    try:
      name, kw = _plan(rule, kind, kernel)
      new = _build_nnx(module, kind, name, kw)
    except (ValueError, TypeError) as e:
      raise _layer_error(path, index, rule, e) from e
    row = _report_row(path, type(module).__name__, _shape_label(kernel),
                      new.cost(batch), new.relative_error)
    built.append((parts, new, row))
  # Everything fitted: only now touch the model.
  for parts, new, _ in built:
    if parts:
      _replace(target, parts, new)
    else:
      target = new
  report = CompressionReport(tuple(sorted((r for *_, r in built), key=lambda r: r.path)),
                             params_before, _param_count(nnx.state(target, nnx.Param)),
                             batch)
  return target, report


# ---------------------------------------------------------------------------
# Linen
# ---------------------------------------------------------------------------


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
  """

  module: nn.Module
  twins: Mapping[str, nn.Module]

  def apply(self, variables: Any, *args: Any, **kwargs: Any) -> Any:
    """``module.apply(variables, *args, **kwargs)`` with the twins swapped in."""

    def interceptor(next_fun, call_args, call_kwargs, context):
      m = context.module
      if context.method_name == "__call__" and isinstance(m, (nn.Dense, nn.Conv)):
        twin = self.twins.get(_path(m.path))
        if twin is not None:
          return twin.apply({"params": m.variables["params"]}, *call_args,
                            **call_kwargs)
      return next_fun(*call_args, **call_kwargs)

    with nn.intercept_methods(interceptor):
      return self.module.apply(variables, *args, **kwargs)

  def __hash__(self) -> int:  # usable as a static argument of jax.jit
    return id(self)


def _linen_layers(module: nn.Module, variables: Any, args: Any, kwargs: Any
                  ) -> dict[str, nn.Module]:
  """Every ``nn.Dense``/``nn.Conv``/other param-owning module called, by path."""
  found: dict[str, nn.Module] = {}

  def interceptor(next_fun, call_args, call_kwargs, context):
    m = context.module
    if context.method_name == "__call__" and m.path:
      found.setdefault(_path(m.path), m.clone(parent=None))
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


def _linen_kind(m: nn.Module, p: Any) -> str | None:
  kernel = p.get("kernel") if isinstance(p, Mapping) else None
  if isinstance(m, nn.Dense) and getattr(kernel, "ndim", 0) == 2:
    return "linear"
  if (isinstance(m, nn.Conv) and getattr(kernel, "ndim", 0) == 4
      and m.feature_group_count == 1 and m.mask is None
      and m.input_dilation in (1, (1, 1), None)):
    return "conv"
  return None


def _build_linen(m: nn.Module, p: Any, kind: str, name: str, kw: dict[str, Any]
                 ) -> _linen.DenseConversion:
  cls = getattr(_linen, name)
  kw = dict(kw)
  if kind == "conv":
    return cls.from_conv_params(p, strides=m.strides or 1, padding=m.padding,
                                kernel_dilation=m.kernel_dilation or 1,
                                dtype=m.dtype, precision=m.precision, **kw)
  kw.setdefault("dtype", m.dtype)
  kw.setdefault("precision", m.precision)
  if name == "KFC":
    return cls.from_dense_params(p, kw.pop("in_shape"), kw.pop("terms"), **kw)
  if name == "LowRankLinear":
    return cls.from_dense_params(p, rank=kw.pop("rank"), **kw)
  return cls.from_dense_params(p, **kw)


def _set_subtree(params: dict, parts: Sequence[str], value: Any) -> None:
  for key in parts[:-1]:
    params[key] = dict(params[key])
    params = params[key]
  params[parts[-1]] = value


def compress_linen_params(module: nn.Module, variables: Any, policy: Any, *args: Any,
                          batch: int = 1, **kwargs: Any
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
  rules = _rules(policy)
  policy = CompressionPolicy(rules)
  batch = _checks.positive_int(batch, "batch")
  if not isinstance(variables, Mapping) or "params" not in variables:
    raise TypeError("variables must be a dict with a 'params' collection, got"
                    f" {type(variables).__name__}.")
  params = _meta.unbox(variables["params"])
  found = _linen_layers(module, variables, args, kwargs)
  layers, plans, used = [], [], set()
  for path, m in sorted(found.items()):
    parts = path.split("/")
    p = _subtree(params, parts)
    if not (isinstance(p, Mapping) and any(not isinstance(v, Mapping)
                                           for v in p.values())):
      continue  # containers and param-free modules
    layers.append((path, type(m).__name__))
    index = policy._match(path)
    if index is None:
      continue
    used.add(index)
    rule = rules[index]
    if rule.method == "keep":
      continue
    kind = _linen_kind(m, p)
    if kind is None:
      raise TypeError(
          f"layer {path!r} (rule {index}, pattern {rule.pattern!r}) is a"
          f" {type(m).__name__}; compress_linen_params converts nn.Dense and 2-D"
          " nn.Conv (no groups, mask or input dilation) only.")
    plans.append((parts, path, index, rule, m, p, kind))
  _warn_unmatched(rules, used, layers)
  twins, rows, new_params = {}, [], jax.tree.map(lambda x: x, dict(params))
  built = []
  for parts, path, index, rule, m, p, kind in plans:
    kernel = np.asarray(p["kernel"], np.float64)
    try:
      name, kw = _plan(rule, kind, kernel)
      conv = _build_linen(m, p, kind, name, kw)
      cost = conv.module.cost(batch)
    except (ValueError, TypeError) as e:
      raise _layer_error(path, index, rule, e) from e
    rows.append(_report_row(path, type(m).__name__, _shape_label(kernel), cost,
                            conv.relative_error))
    built.append((parts, path, conv))
  for parts, path, conv in built:
    twins[path] = conv.module
    _set_subtree(new_params, parts, conv.params)
  new_variables = {**variables, "params": new_params}
  report = CompressionReport(tuple(rows), _param_count(params), _param_count(new_params),
                             batch)
  return CompressedLinen(module, twins), new_variables, report


# ---------------------------------------------------------------------------
# Fine-tuning
# ---------------------------------------------------------------------------


def distillation_loss(student_logits: Any, teacher_logits: Any,
                      temperature: float = 1.0) -> jax.Array:
  """``T^2 * KL(softmax(teacher / T) || softmax(student / T))``, batch mean.

  Hinton et al.'s soft-target loss: the ``T^2`` keeps its gradients on the
  scale of the hard-label loss as ``T`` changes. The teacher is not
  differentiated (``stop_gradient``).

  Args:
    student_logits: ``[*batch, num_classes]``.
    teacher_logits: same shape.
    temperature: softening ``T > 0``.

  Returns:
    The scalar loss.

  Example usage::

    >>> import jax.numpy as jnp, kfc_jax
    >>> logits = jnp.array([[2.0, 0.5, -1.0]])
    >>> float(kfc_jax.distillation_loss(logits, logits, temperature=4.0))
    0.0
    >>> bool(kfc_jax.distillation_loss(-logits, logits, 2.0) > 0)
    True
  """
  if not temperature > 0:
    raise ValueError(f"temperature must be > 0, got {temperature!r}.")
  s, t = jnp.asarray(student_logits), jnp.asarray(teacher_logits)
  if s.shape != t.shape or s.ndim < 1:
    raise ValueError(
        "student_logits and teacher_logits must have the same shape [*batch,"
        f" num_classes], got {tuple(s.shape)} and {tuple(t.shape)}.")
  t = jax.lax.stop_gradient(t)
  log_p = jax.nn.log_softmax(t / temperature, axis=-1)
  log_q = jax.nn.log_softmax(s / temperature, axis=-1)
  kl = jnp.sum(jnp.exp(log_p) * (log_p - log_q), axis=-1)
  return temperature ** 2 * jnp.mean(kl)
