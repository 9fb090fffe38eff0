"""Dense Kronecker layers (``KroneckerLinear``, ``KFC``): their layout.

A :class:`DenseLayout` (sizes and resolved terms, validated once) knows its
parameters and runs the maths over them by name: forward, materialised
kernel, fit to a dense kernel, cost. The NNX and Linen layers only hold it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from kfc_jax import _checks
from kfc_jax import formulations as _formulations
from kfc_jax.decompose import KroneckerSumTerm, nearest_kronecker_sum
from kfc_jax.layers import _params
from kfc_jax.layers._cost import LayerCost, replacing_dense
from kfc_jax.ops import kron, kron_matmul_plan, padded_kron_matmul
from kfc_jax.shapes import (
  KroneckerShape,
  KroneckerTerm,
  factorize,
  padded_size,
  suggest_factors,
)

Array = jax.Array


def _factors(term: KroneckerTerm) -> tuple[tuple[int, ...], tuple[int, ...]]:
  """A resolved term's ``(in_factors, out_factors)``."""
  assert term.in_factors is not None and term.out_factors is not None
  return term.in_factors, term.out_factors


@dataclasses.dataclass(frozen=True)
class DenseLayout:
  """Sizes and terms of a layer ``y = x @ sum_t W_t + b`` with Kronecker ``W_t``.

  ``in_shape`` is set for KFC layers (the ``(H, W, C)`` feature map).
  """

  in_features: int
  out_features: int
  terms: tuple[KroneckerTerm, ...]
  in_shape: tuple[int, int, int] | None = None

  @property
  def params(self) -> int:
    return sum(t.params for t in self.terms)

  @property
  def padded(self) -> bool:
    return any(
      math.prod(ms) != self.in_features or math.prod(ns) != self.out_features
      for ms, ns in map(_factors, self.terms)
    )

  @property
  def total_rank(self) -> int:
    return sum(t.rank for t in self.terms)

  @property
  def feature_map(self) -> tuple[int, int, int]:
    """``in_shape`` of a KFC layout (its terms have formulations)."""
    assert self.in_shape is not None
    return self.in_shape

  def flatten_input(self, x: Any) -> Array:
    """Checks ``x`` and returns it as ``[*batch, in_features]``."""
    x = jnp.asarray(x) if not hasattr(x, "ndim") else x
    if self.in_shape is not None and tuple(x.shape[-3:]) == self.in_shape:
      return x.reshape(*x.shape[:-3], self.in_features)
    if x.ndim >= 1 and x.shape[-1] == self.in_features:
      return x
    if self.in_shape is not None:
      h, w, c = self.in_shape
      raise ValueError(
        f"x must have shape [*batch, {h}, {w}, {c}] (in_shape = (H, W, C)) or"
        f" [*batch, {self.in_features}] (flattened NHWC), got shape"
        f" {tuple(x.shape)}."
      )
    _params.check_features(x, self.in_features)
    return x

  def check_strategy(self, strategy: Any) -> Any:
    """Validates ``strategy`` for every term (a contraction order must fit each)."""
    for t in self.terms:
      strategy = _checks.strategy(strategy, t.num_factors)
    return strategy

  def factor_stddevs(self) -> list[list[float]]:
    """Per term and factor, the std of the default normal initialiser.

    Chosen so that each entry of the effective kernel has variance
    ``1 / in_features`` (Flax's default ``lecun_normal`` dense layer): a
    rank-one product of ``k`` factors has variance ``prod_f var_f``, and the
    ``R = sum_t rank_t`` rank-one products add up. Each factor's variance is
    ``c / m_f``, as if each factor were its own lecun-normal layer, so the
    intermediates of the factored product are well scaled too; ``c`` absorbs
    padding and ``R``.
    """
    out = []
    for t in self.terms:
      ms, _ = _factors(t)
      c = (math.prod(ms) / (self.in_features * self.total_rank)) ** (1 / len(ms))
      out.append([math.sqrt(c / m) for m in ms])
    return out

  def param_specs(
    self, factor_metadata: Any = None, bias_metadata: Any = None
  ) -> list[_params.ParamSpec]:
    """``factor_{t}_{f}`` of every term, then ``bias``."""
    metadata = _params.per_factor_metadata(factor_metadata, [t.num_factors for t in self.terms])
    stds = self.factor_stddevs()
    specs = [
      _params.ParamSpec(_params.factor_name(t, f), shape, True, stds[t][f], metadata[t][f])
      for t, term in enumerate(self.terms)
      for f, shape in enumerate(term.factor_shapes)
    ]
    return specs + _params.bias_specs({"bias": (self.out_features,)}, bias_metadata)

  def factors(self, params: Mapping[str, Any]) -> list[list[Any]]:
    """``factors[term][factor]`` from the params by name."""
    return [
      [params[_params.factor_name(t, f)] for f in range(term.num_factors)]
      for t, term in enumerate(self.terms)
    ]

  def apply(
    self,
    params: Mapping[str, Any],
    x: Any,
    *,
    dtype: Any = None,
    precision: Any = None,
    preferred_element_type: Any = None,
    strategy: Any = "auto",
  ) -> Array:
    """``x @ sum_t W_t + bias`` without forming the ``W_t``."""
    flat = self.flatten_input(x)
    factors = self.factors(params)
    arrays = _params.promote([flat, *(f for fs in factors for f in fs), params.get("bias")], dtype)
    flat, bias = arrays[0], arrays[-1]
    it = iter(arrays[1:-1])
    factors = [[next(it) for _ in fs] for fs in factors]
    kwargs = dict(
      precision=precision, preferred_element_type=preferred_element_type, strategy=strategy
    )
    ys = []
    for term, fs in zip(self.terms, factors, strict=True):
      if term.formulation is not None:
        xt = flat.reshape(*flat.shape[:-1], *self.feature_map)
        ys.append(term.formulation.apply(xt, fs, **kwargs))
      else:
        ys.append(padded_kron_matmul(flat, fs, self.out_features, **kwargs))
    return _params.add_bias(sum(ys[1:], ys[0]), bias)

  def materialize(self, params: Mapping[str, Any], **kron_kwargs: Any) -> Array:
    """The effective dense kernel ``[in_features, out_features]``."""
    ws = []
    for term, fs in zip(self.terms, self.factors(params), strict=True):
      if term.formulation is not None:
        ws.append(term.formulation.materialize(fs, self.feature_map, **kron_kwargs))
      else:
        ws.append(kron(fs, **kron_kwargs)[: self.in_features, : self.out_features])
    return sum(ws[1:], ws[0])

  def fit(
    self, w: Any, bias: Any = None, *, use_bias: bool, sweeps: int = 20, input_cov: Any = None
  ) -> tuple[dict[str, np.ndarray], float]:
    """Params nearest to a dense layer ``(w, bias)``, by name, and the error.

    Factors are float64 NumPy ``[rank, m_f, n_f]``; the bias is copied (zeros
    if the dense layer had none).
    """
    w = _checks.finite_matrix(w, "kernel")
    if w.shape != (self.in_features, self.out_features):
      raise ValueError(
        f"the dense kernel must have shape [in_features, out_features] ="
        f" {[self.in_features, self.out_features]}, got {list(w.shape)}."
      )
    sum_terms = []
    for t in self.terms:
      ms, ns = _factors(t)
      if t.formulation is not None:
        sum_terms.append(t.formulation.sum_term(self.feature_map, ns, t.rank))
      else:
        k = len(ms)
        sum_terms.append(KroneckerSumTerm(ms, ns, tuple((f, k + f) for f in range(k)), t.rank))
    # input_cov: fit the outputs on that data (the error returned stays the weight's).
    dec = nearest_kronecker_sum(w, sum_terms, sweeps=sweeps, input_cov=input_cov)
    params = {
      _params.factor_name(t, f): value.reshape(shape)
      for t, (fs, term) in enumerate(zip(dec.factors, self.terms, strict=True))
      for f, (value, shape) in enumerate(zip(fs, term.factor_shapes, strict=True))
    }
    return (_params.with_bias(params, bias, self.out_features, use_bias), dec.relative_error)

  def cost(self, kind: str, *, use_bias: bool, batch: int, strategy: Any, dtype: Any) -> LayerCost:
    """Parameters and FLOPs (the plan ``kron_matmul`` runs) against the dense layer."""
    flops = sum(
      kron_matmul_plan(
        (batch, math.prod(_factors(t)[0])),
        t.factor_shapes,
        dtype=dtype or jnp.float32,
        strategy=strategy,
      ).chosen.flops
      for t in self.terms
    )
    return replacing_dense(
      kind,
      self.in_features,
      self.out_features,
      params=self.params + (self.out_features if use_bias else 0),
      flops=flops,
      use_bias=use_bias,
      batch=batch,
      detail=" + ".join(t.label for t in self.terms),
    )


def _resolve_linear_term(
  term: Any, where: str, in_features: int, out_features: int
) -> KroneckerTerm:
  if isinstance(term, KroneckerShape):
    term = KroneckerTerm(term.in_factors, term.out_factors, term.rank)
  elif isinstance(term, Sequence) and not isinstance(term, str) and 2 <= len(term) <= 3:
    term = KroneckerTerm(*term)
  elif not isinstance(term, KroneckerTerm):
    raise TypeError(
      f"{where} must be (in_factors, out_factors), (in_factors, out_factors,"
      f" rank), a KroneckerTerm or a KroneckerShape, got {term!r}."
    )
  rank = _checks.positive_int(term.rank, f"{where}rank")
  ms, ns = term.in_factors, term.out_factors
  if ms is None and ns is None:
    shape = suggest_factors(in_features, out_features, rank=rank)
    ms, ns = shape.in_factors, shape.out_factors
  else:
    ms = None if ms is None else _checks.int_tuple(ms, f"{where}in_factors")
    ns = None if ns is None else _checks.int_tuple(ns, f"{where}out_factors")
    k = len(ms) if ms is not None else len(ns or ())
    if ms is None:
      ms = factorize(padded_size(in_features, k), k)
    if ns is None:
      ns = factorize(padded_size(out_features, k), k)
  try:
    KroneckerShape(in_features, out_features, ms, ns, rank)
  except ValueError as e:
    raise ValueError(f"{where}{e}" if where else str(e)) from None
  return KroneckerTerm(tuple(ms), tuple(ns), rank)


def linear_layout(
  in_features: int,
  out_features: int,
  *,
  in_factors: Any = None,
  out_factors: Any = None,
  rank: Any = 1,
  terms: Any = None,
) -> DenseLayout:
  """Validates ``KroneckerLinear``'s arguments."""
  in_features = _checks.positive_int(in_features, "in_features")
  out_features = _checks.positive_int(out_features, "out_features")
  if terms is None:
    term = _resolve_linear_term(
      KroneckerTerm(in_factors, out_factors, rank), "", in_features, out_features
    )
    return DenseLayout(in_features, out_features, (term,))
  if in_factors is not None or out_factors is not None or rank != 1:
    raise ValueError(
      "pass either terms or in_factors/out_factors/rank, not both; got"
      f" terms={terms!r} with in_factors={in_factors!r},"
      f" out_factors={out_factors!r}, rank={rank!r}."
    )
  if isinstance(terms, (str, KroneckerTerm)) or not isinstance(terms, Sequence) or not terms:
    raise TypeError(
      "terms must be a non-empty list of (in_factors, out_factors[, rank])"
      f" tuples or KroneckerTerm objects, got {terms!r}."
    )
  resolved = tuple(
    _resolve_linear_term(t, f"terms[{i}] ", in_features, out_features) for i, t in enumerate(terms)
  )
  return DenseLayout(in_features, out_features, resolved)


def kfc_layout(in_shape: Any, out_features: int, terms: Any) -> DenseLayout:
  """Validates ``KFC``'s arguments."""
  if isinstance(in_shape, (str, bytes)) or not isinstance(in_shape, Sequence) or len(in_shape) != 3:
    raise ValueError(
      f"in_shape must be (H, W, C), the feature map's height, width and"
      f" channels (NHWC), got {in_shape!r}."
    )
  in_shape = _checks.int_tuple(in_shape, "in_shape")
  out_features = _checks.positive_int(out_features, "out_features")
  kfc_terms = _formulations.resolve_terms(terms, out_features)
  resolved = tuple(
    KroneckerTerm(t.spec.in_factors(in_shape), t.out_factors, t.rank, t.spec) for t in kfc_terms
  )
  return DenseLayout(math.prod(in_shape), out_features, resolved, in_shape)
