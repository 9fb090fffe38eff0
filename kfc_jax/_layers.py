"""Framework-free pieces shared by the NNX and Linen layers.

A layer here is a *layout* (sizes, terms, factor shapes; validated once) plus
pure functions over parameter arrays: forward, materialised kernel,
initialisation scales, decomposition of a dense weight, and cost. The NNX and
Linen modules only create parameters and call these, so the twins cannot drift
apart, and a new layer family (e.g. convolution) can follow the same pattern.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from kfc_jax import _checks
from kfc_jax import formulations as _formulations
from kfc_jax.decompose import KroneckerSumTerm
from kfc_jax.decompose import low_rank as _low_rank
from kfc_jax.decompose import nearest_kronecker_sum
from kfc_jax.decompose._nkp import relative_error
from kfc_jax.ops import _kron
from kfc_jax.ops import KroneckerShape
from kfc_jax.ops import factorize
from kfc_jax.ops import kron
from kfc_jax.ops import kron_matmul_plan
from kfc_jax.ops import padded_kron_matmul
from kfc_jax.ops import padded_size
from kfc_jax.ops import suggest_factors

Array = jax.Array
Initializer = Callable[..., Array]


# ---------------------------------------------------------------------------
# Terms and layouts
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class KroneckerTerm:
  """One term of a ``KroneckerLinear`` layer: factor shapes and rank.

  ``None`` factors are suggested (balanced, padded when a size factors badly);
  give ``in_factors`` alone to fix the number of factors.

  Example usage::

    >>> import kfc_jax
    >>> kfc_jax.KroneckerTerm((16, 18), (16, 16), rank=2)
    KroneckerTerm(in_factors=(16, 18), out_factors=(16, 16), rank=2)
  """

  in_factors: tuple[int, ...] | None = None
  out_factors: tuple[int, ...] | None = None
  rank: int = 1


@dataclasses.dataclass(frozen=True)
class Term:
  """A resolved term: factor shapes, rank, and (KFC) its formulation."""

  in_factors: tuple[int, ...]
  out_factors: tuple[int, ...]
  rank: int
  formulation: _formulations.Formulation | None = None

  @property
  def num_factors(self) -> int:
    return len(self.in_factors)

  @property
  def factor_shapes(self) -> tuple[tuple[int, int, int], ...]:
    return tuple((self.rank, m, n) for m, n in zip(self.in_factors, self.out_factors))

  @property
  def params(self) -> int:
    return sum(math.prod(s) for s in self.factor_shapes)

  @property
  def label(self) -> str:
    rank = f" r={self.rank}" if self.rank != 1 else ""
    if self.formulation is not None:
      return f"{self.formulation.name}{self.out_factors}{rank}"
    return f"{self.in_factors}->{self.out_factors}{rank}"


@dataclasses.dataclass(frozen=True)
class DenseLayout:
  """Sizes and terms of a layer ``y = x @ sum_t W_t + b`` with Kronecker ``W_t``.

  ``in_shape`` is set for KFC layers (the ``(H, W, C)`` feature map).
  """

  in_features: int
  out_features: int
  terms: tuple[Term, ...]
  in_shape: tuple[int, int, int] | None = None

  @property
  def params(self) -> int:
    return sum(t.params for t in self.terms)

  @property
  def padded(self) -> bool:
    return any(math.prod(t.in_factors) != self.in_features
               or math.prod(t.out_factors) != self.out_features for t in self.terms)

  @property
  def total_rank(self) -> int:
    return sum(t.rank for t in self.terms)

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
          f" {tuple(x.shape)}.")
    raise ValueError(
        f"x must have shape [*batch, {self.in_features}] (in_features), got"
        f" shape {tuple(x.shape)}.")


def _resolve_linear_term(term: Any, where: str, in_features: int,
                         out_features: int) -> Term:
  if isinstance(term, KroneckerShape):
    term = KroneckerTerm(term.in_factors, term.out_factors, term.rank)
  elif isinstance(term, Sequence) and not isinstance(term, str) and 2 <= len(term) <= 3:
    term = KroneckerTerm(*term)
  elif not isinstance(term, KroneckerTerm):
    raise TypeError(
        f"{where} must be (in_factors, out_factors), (in_factors, out_factors,"
        f" rank), a KroneckerTerm or a KroneckerShape, got {term!r}.")
  rank = _checks.positive_int(term.rank, f"{where}rank")
  ms, ns = term.in_factors, term.out_factors
  if ms is None and ns is None:
    shape = suggest_factors(in_features, out_features, rank=rank)
    ms, ns = shape.in_factors, shape.out_factors
  else:
    ms = None if ms is None else _checks.int_tuple(ms, f"{where}in_factors")
    ns = None if ns is None else _checks.int_tuple(ns, f"{where}out_factors")
    k = len(ms or ns)
    if ms is None:
      ms = factorize(padded_size(in_features, k), k)
    if ns is None:
      ns = factorize(padded_size(out_features, k), k)
  try:
    KroneckerShape(in_features, out_features, ms, ns, rank)
  except ValueError as e:
    raise ValueError(f"{where}{e}" if where else str(e)) from None
  return Term(tuple(ms), tuple(ns), rank)


def linear_layout(in_features: int, out_features: int, *, in_factors: Any = None,
                  out_factors: Any = None, rank: Any = 1, terms: Any = None
                  ) -> DenseLayout:
  """Validates ``KroneckerLinear``'s arguments."""
  in_features = _checks.positive_int(in_features, "in_features")
  out_features = _checks.positive_int(out_features, "out_features")
  if terms is None:
    term = _resolve_linear_term(KroneckerTerm(in_factors, out_factors, rank), "",
                                in_features, out_features)
    return DenseLayout(in_features, out_features, (term,))
  if in_factors is not None or out_factors is not None or rank != 1:
    raise ValueError(
        "pass either terms or in_factors/out_factors/rank, not both; got"
        f" terms={terms!r} with in_factors={in_factors!r},"
        f" out_factors={out_factors!r}, rank={rank!r}.")
  if isinstance(terms, (str, KroneckerTerm)) or not isinstance(terms, Sequence) or not terms:
    raise TypeError(
        "terms must be a non-empty list of (in_factors, out_factors[, rank])"
        f" tuples or KroneckerTerm objects, got {terms!r}.")
  resolved = tuple(_resolve_linear_term(t, f"terms[{i}] ", in_features, out_features)
                   for i, t in enumerate(terms))
  return DenseLayout(in_features, out_features, resolved)


def kfc_layout(in_shape: Any, out_features: int, terms: Any) -> DenseLayout:
  """Validates ``KFC``'s arguments."""
  if isinstance(in_shape, (str, bytes)) or not isinstance(in_shape, Sequence) or len(in_shape) != 3:
    raise ValueError(
        f"in_shape must be (H, W, C), the feature map's height, width and"
        f" channels (NHWC), got {in_shape!r}.")
  in_shape = _checks.int_tuple(in_shape, "in_shape")
  out_features = _checks.positive_int(out_features, "out_features")
  kfc_terms = _formulations.resolve_terms(terms, out_features)
  resolved = tuple(
      Term(t.spec.in_factors(in_shape), t.out_factors, t.rank, t.spec)
      for t in kfc_terms)
  return DenseLayout(math.prod(in_shape), out_features, resolved, in_shape)


# ---------------------------------------------------------------------------
# Pure functions over parameters
# ---------------------------------------------------------------------------


def promote(arrays: Sequence[Any], dtype: Any) -> list[Any]:
  """Casts arrays (``None`` kept) to ``dtype``, or to their common float type."""
  present = [a for a in arrays if a is not None]
  if dtype is None:
    dtype = jnp.result_type(*present)
    if not jnp.issubdtype(dtype, jnp.inexact):
      dtype = jnp.promote_types(dtype, jnp.float32)
  return [None if a is None else jnp.asarray(a, dtype) for a in arrays]


def add_bias(y: Array, bias: Array | None) -> Array:
  return y if bias is None else y + bias


def check_strategy(strategy: Any, layout: DenseLayout) -> Any:
  """Validates ``strategy`` for every term (a contraction order must fit each)."""
  for t in layout.terms:
    strategy = _kron._check_strategy(strategy, t.num_factors)
  return strategy


def dense_apply(layout: DenseLayout, x: Any, factors: Sequence[Sequence[Any]],
                bias: Any, *, dtype: Any = None, precision: Any = None,
                preferred_element_type: Any = None, strategy: Any = "auto"
                ) -> Array:
  """``x @ sum_t W_t + bias`` without forming the ``W_t``.

  ``factors[t][f]`` is factor ``f`` of term ``t``, ``[rank_t, m_f, n_f]``.
  """
  flat = layout.flatten_input(x)
  n_factors = [len(fs) for fs in factors]
  arrays = promote([flat, *(f for fs in factors for f in fs), bias], dtype)
  flat, bias = arrays[0], arrays[-1]
  it = iter(arrays[1:-1])
  factors = [[next(it) for _ in range(k)] for k in n_factors]
  kwargs = dict(precision=precision, preferred_element_type=preferred_element_type,
                strategy=strategy)
  y = None
  for term, fs in zip(layout.terms, factors):
    if term.formulation is not None:
      xt = flat.reshape(*flat.shape[:-1], *layout.in_shape)
      yt = term.formulation.apply(xt, fs, **kwargs)
    else:
      yt = padded_kron_matmul(flat, fs, layout.out_features, **kwargs)
    y = yt if y is None else y + yt
  return add_bias(y, bias)


def dense_materialize(layout: DenseLayout, factors: Sequence[Sequence[Any]],
                      **kron_kwargs: Any) -> Array:
  """The effective dense kernel ``[in_features, out_features]``."""
  total = None
  for term, fs in zip(layout.terms, factors):
    if term.formulation is not None:
      w = term.formulation.materialize(fs, layout.in_shape, **kron_kwargs)
    else:
      w = kron(fs, **kron_kwargs)[:layout.in_features, :layout.out_features]
    total = w if total is None else total + w
  return total


def default_factor_stddevs(layout: DenseLayout) -> list[list[float]]:
  """Per term and factor, the std of the default normal initialiser.

  Chosen so that each entry of the effective kernel has variance
  ``1 / in_features`` (Flax's default ``lecun_normal`` dense layer): a rank-one
  product of ``k`` factors has variance ``prod_f var_f``, and the
  ``R = sum_t rank_t`` rank-one products add up. Each factor's variance is
  ``c / m_f``, as if each factor were its own lecun-normal layer, so the
  intermediates of the factored product are well scaled too; ``c`` absorbs
  padding and ``R``.
  """
  out = []
  total_rank = layout.total_rank
  for t in layout.terms:
    k = t.num_factors
    c = (math.prod(t.in_factors) / (layout.in_features * total_rank)) ** (1 / k)
    out.append([math.sqrt(c / m) for m in t.in_factors])
  return out


def normal_init(stddev: float) -> Initializer:
  """``N(0, stddev^2)`` entries."""

  def init(key, shape, dtype=jnp.float32):
    # Drawn flat: XLA on CPU compiles the 3-D random kernel several times
    # slower than the 1-D one, and layers are built eagerly.
    flat = jax.random.normal(key, (math.prod(shape),), dtype)
    return (stddev * flat).reshape(shape)

  return init


def _with_bias(params: dict[str, np.ndarray], bias: Any, out_features: int,
               use_bias: bool) -> dict[str, np.ndarray]:
  if use_bias:
    params["bias"] = np.zeros(out_features) if bias is None else np.asarray(bias)
  return params


def fit_dense(layout: DenseLayout, w: Any, bias: Any = None, *, use_bias: bool,
              sweeps: int = 20) -> tuple[dict[str, np.ndarray], float]:
  """Params nearest to a dense layer ``(w, bias)``, by name, and the error.

  The names are the layers' (NNX and Linen alike); factors are float64 NumPy
  ``[rank, m_f, n_f]``; the bias is copied (zeros if the dense layer had none).
  """
  w = _checks.finite_matrix(w, "kernel")
  if w.shape != (layout.in_features, layout.out_features):
    raise ValueError(
        f"the dense kernel must have shape [in_features, out_features] ="
        f" {[layout.in_features, layout.out_features]}, got {list(w.shape)}.")
  sum_terms = []
  for t in layout.terms:
    if t.formulation is not None:
      sum_terms.append(t.formulation.sum_term(layout.in_shape, t.out_factors, t.rank))
    else:
      k = t.num_factors
      sum_terms.append(KroneckerSumTerm(
          t.in_factors, t.out_factors, tuple((f, k + f) for f in range(k)), t.rank))
  dec = nearest_kronecker_sum(w, sum_terms, sweeps=sweeps)
  params = {factor_name(t, f): value.reshape(shape)
            for t, (fs, term) in enumerate(zip(dec.factors, layout.terms))
            for f, (value, shape) in enumerate(zip(fs, term.factor_shapes))}
  return (_with_bias(params, bias, layout.out_features, use_bias),
          dec.relative_error)


# ---------------------------------------------------------------------------
# Low rank and KDL
# ---------------------------------------------------------------------------


def low_rank_check(in_features: Any, out_features: Any, rank: Any) -> tuple[int, int, int]:
  in_features = _checks.positive_int(in_features, "in_features")
  out_features = _checks.positive_int(out_features, "out_features")
  rank = _checks.positive_int(rank, "rank")
  if rank > min(in_features, out_features):
    raise ValueError(
        f"rank must be at most min(in_features, out_features) ="
        f" {min(in_features, out_features)} (a higher rank stores more than the"
        f" dense {in_features}x{out_features} layer it replaces), got rank={rank}.")
  return in_features, out_features, rank


def low_rank_apply(x: Any, u: Any, v: Any, bias: Any, *, dtype: Any = None,
                   precision: Any = None, preferred_element_type: Any = None
                   ) -> Array:
  """``(x @ u) @ v + bias``."""
  x, u, v, bias = promote([x, u, v, bias], dtype)
  if x.ndim < 1 or x.shape[-1] != u.shape[0]:
    raise ValueError(
        f"x must have shape [*batch, {u.shape[0]}] (in_features), got shape"
        f" {tuple(x.shape)}.")
  dot = lambda a, b: jax.lax.dot_general(
      a, b, (((a.ndim - 1,), (0,)), ((), ())), precision=precision,
      preferred_element_type=preferred_element_type)
  return add_bias(dot(dot(x, u), v), bias)


def low_rank_stddevs(in_features: int, rank: int) -> tuple[float, float]:
  # Each map lecun-normal on its own: the product's entries have variance
  # rank * (1 / in) * (1 / rank) = 1 / in, as for a dense lecun layer.
  return 1 / math.sqrt(in_features), 1 / math.sqrt(rank)


def fit_low_rank(w: Any, bias: Any = None, *, rank: int, use_bias: bool
                 ) -> tuple[dict[str, np.ndarray], float]:
  """``u``, ``v`` (truncated SVD) and bias nearest to a dense layer, and the error."""
  w = _checks.finite_matrix(w, "kernel")
  u, v = _low_rank(w, rank)
  return (_with_bias({"u": u, "v": v}, bias, w.shape[1], use_bias),
          relative_error(w, u @ v))


@dataclasses.dataclass(frozen=True)
class KDLLayout:
  """Sizes of a KDL block ``[m1*m2] -> [n1*n2]`` with ``rank`` branches."""

  in_factors: tuple[int, int]
  out_factors: tuple[int, int]
  rank: int

  @property
  def in_features(self) -> int:
    return math.prod(self.in_factors)

  @property
  def out_features(self) -> int:
    return math.prod(self.out_factors)

  @property
  def left_shape(self) -> tuple[int, int, int]:
    return (self.rank, self.in_factors[0], self.out_factors[0])

  @property
  def right_shape(self) -> tuple[int, int, int]:
    return (self.rank, self.in_factors[1], self.out_factors[1])

  @property
  def right_bias_shape(self) -> tuple[int, int, int]:
    return (self.rank, self.in_factors[0], self.out_factors[1])

  @property
  def left_bias_shape(self) -> tuple[int, int, int]:
    return (self.rank, *self.out_factors)


def _two_factors(value: Any, name: str, size: int) -> tuple[int, int]:
  f = _checks.int_tuple(value, name)
  if len(f) != 2 or math.prod(f) != size:
    pairs = _formulations._balanced_pairs(size)
    raise ValueError(
        f"{name} must be two positive integers multiplying to {size}, got"
        f" {f!r}; e.g. {', '.join(map(str, pairs))}.")
  return f


def kdl_layout(in_features: Any, out_features: Any, in_factors: Any,
               out_factors: Any, rank: Any) -> KDLLayout:
  in_features = _checks.positive_int(in_features, "in_features")
  out_features = _checks.positive_int(out_features, "out_features")
  return KDLLayout(_two_factors(in_factors, "in_factors", in_features),
                   _two_factors(out_factors, "out_factors", out_features),
                   _checks.positive_int(rank, "rank"))


def kdl_apply(layout: KDLLayout, x: Any, left: Any, right: Any, left_bias: Any,
              right_bias: Any, activation: Callable[[Array], Array] | None, *,
              dtype: Any = None, precision: Any = None,
              preferred_element_type: Any = None) -> Array:
  """Right layer then left layer per branch, branches summed (docs/DESIGN.md §7)."""
  x, left, right, left_bias, right_bias = promote(
      [x, left, right, left_bias, right_bias], dtype)
  m1, m2 = layout.in_factors
  if x.ndim < 1 or x.shape[-1] != m1 * m2:
    raise ValueError(
        f"x must have shape [*batch, {m1 * m2}] (in_features), got shape"
        f" {tuple(x.shape)}.")
  act = activation or (lambda z: z)
  xm = x.reshape(*x.shape[:-1], m1, m2)
  kw = dict(precision=precision, preferred_element_type=preferred_element_type)
  z = act(add_bias(jnp.einsum("...ij,rjk->...rik", xm, right, **kw), right_bias))
  y = act(add_bias(jnp.einsum("rip,...rik->...rpk", left, z, **kw), left_bias))
  return y.sum(axis=-3).reshape(*x.shape[:-1], layout.out_features)


def kdl_stddevs(layout: KDLLayout) -> tuple[float, float]:
  # Lecun-normal for each of the two layers, the branches sharing the variance.
  c = math.sqrt(1 / layout.rank)
  return (math.sqrt(c / layout.in_factors[0]), math.sqrt(c / layout.in_factors[1]))


# ---------------------------------------------------------------------------
# Cost
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LayerCost:
  """Parameters and FLOPs of a layer, next to the dense layer it replaces.

  FLOPs count multiply-adds as two, per ``batch`` rows, bias additions left
  out (as for the dense layer).
  """

  kind: str
  in_features: int
  out_features: int
  params: int
  flops: int
  dense_params: int
  dense_flops: int
  detail: str = ""


def dense_cost(kind: str, layout: DenseLayout, *, use_bias: bool, batch: int,
               strategy: Any, dtype: Any) -> LayerCost:
  flops = 0
  for t in layout.terms:
    plan = kron_matmul_plan((batch, math.prod(t.in_factors)), t.factor_shapes,
                            dtype=dtype or jnp.float32, strategy=strategy)
    flops += plan.chosen.flops
  bias = layout.out_features if use_bias else 0
  return LayerCost(kind, layout.in_features, layout.out_features,
                   layout.params + bias, flops,
                   layout.in_features * layout.out_features + bias,
                   2 * batch * layout.in_features * layout.out_features,
                   " + ".join(t.label for t in layout.terms))


def low_rank_cost(in_features: int, out_features: int, rank: int, *,
                  use_bias: bool, batch: int) -> LayerCost:
  bias = out_features if use_bias else 0
  return LayerCost("LowRankLinear", in_features, out_features,
                   rank * (in_features + out_features) + bias,
                   2 * batch * rank * (in_features + out_features),
                   in_features * out_features + bias,
                   2 * batch * in_features * out_features, f"rank {rank}")


def kdl_cost(layout: KDLLayout, *, use_bias: bool, batch: int) -> LayerCost:
  (r, m1, n1), (_, m2, n2) = layout.left_shape, layout.right_shape
  weights = r * (m1 * n1 + m2 * n2)
  biases = r * (m1 * n2 + n1 * n2) if use_bias else 0
  flops = 2 * batch * r * (m1 * m2 * n2 + m1 * n1 * n2)
  dense_bias = layout.out_features if use_bias else 0
  return LayerCost("KDL", layout.in_features, layout.out_features,
                   weights + biases, flops,
                   layout.in_features * layout.out_features + dense_bias,
                   2 * batch * layout.in_features * layout.out_features,
                   f"{layout.in_factors}->{layout.out_factors} r={r}")


# ---------------------------------------------------------------------------
# Metadata
# ---------------------------------------------------------------------------


def per_factor_metadata(metadata: Any, layout: DenseLayout,
                        name: str = "factor_metadata") -> list[list[Mapping[str, Any]]]:
  """Expands ``factor_metadata`` to one mapping per term and factor.

  A mapping applies to every factor; a sequence gives one mapping per factor
  position (every term must then have that many factors).
  """
  if metadata is None:
    metadata = {}
  if isinstance(metadata, Mapping):
    return [[dict(metadata)] * t.num_factors for t in layout.terms]
  ks = {t.num_factors for t in layout.terms}
  if (not isinstance(metadata, Sequence) or len(ks) != 1
      or len(metadata) != next(iter(ks))
      or not all(isinstance(m, Mapping) for m in metadata)):
    raise TypeError(
        f"{name} must be a mapping (applied to every factor) or a sequence of"
        f" one mapping per factor ({sorted(ks)} factors per term), got"
        f" {metadata!r}.")
  return [[dict(m) for m in metadata] for _ in layout.terms]


def pair_metadata(metadata: Any, name: str = "factor_metadata"
                  ) -> tuple[Mapping[str, Any], Mapping[str, Any]]:
  """``factor_metadata`` of a two-factor layer: one mapping for both, or a pair."""
  if metadata is None:
    return {}, {}
  if isinstance(metadata, Mapping):
    return dict(metadata), dict(metadata)
  if (isinstance(metadata, Sequence) and len(metadata) == 2
      and all(isinstance(m, Mapping) for m in metadata)):
    return dict(metadata[0]), dict(metadata[1])
  raise TypeError(
      f"{name} must be a mapping (applied to both factors) or a pair of"
      f" mappings, got {metadata!r}.")


def factor_name(term: int, factor: int) -> str:
  """Parameter name of factor ``factor`` of term ``term`` (NNX and Linen)."""
  return f"factor_{term}_{factor}"
