"""Shape and term types: one per concept, with factorisation helpers.

- :class:`KroneckerShape`: a dense layer ``in_features -> out_features`` cut into
  factors (padded when the factors multiply past the sizes), with its counts.
- :class:`KroneckerTerm`: one term of a dense Kronecker layer: factor shapes,
  rank and, for KFC layers, the formulation whose axis groups it uses.
- :class:`KronConvShape`: a Kronecker split of a conv kernel (a conv term).
- :func:`factorize`, :func:`padded_size`, :func:`suggest_factors`: factor shapes
  for any size.

Conventions are those of ``docs/DESIGN.md`` ("Conventions"): a term's factor
``t`` has shape ``[rank, m_t, n_t]`` (dense) or ``[rank, h, w, in, out]`` (conv).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
from typing import TYPE_CHECKING, Any

import jax.numpy as jnp

from kfc_jax import _checks
from kfc_jax.ops import kron_matmul_plan

if TYPE_CHECKING:  # formulations imports decompose, which imports this module.
  from kfc_jax.formulations import Formulation


@functools.lru_cache(maxsize=4096)
def _factorizations(n: int, k: int, largest: int) -> tuple[tuple[int, ...], ...]:
  """All non-increasing k-tuples of positive ints <= largest with product n."""
  if k == 1:
    return ((n,),) if n <= largest else ()
  out = []
  for d in range(min(n, largest), 0, -1):
    if n % d == 0 and d ** k >= n:
      out.extend((d, *rest) for rest in _factorizations(n // d, k - 1, d))
  return tuple(out)


def factorize(n: int, k: int = 2) -> tuple[int, ...]:
  """The most balanced ``k`` factors of ``n``, largest first (product is ``n``).

  "Most balanced" means the smallest largest factor. A prime ``n`` gives
  ``(n, 1, ...)``; :func:`padded_size` finds a nearby size that factors well.

  Example usage::

    >>> import kfc_jax
    >>> kfc_jax.factorize(288), kfc_jax.factorize(4096, 3), kfc_jax.factorize(13)
    ((18, 16), (16, 16, 16), (13, 1))
  """
  n = _checks.positive_int(n, "n")
  k = _checks.positive_int(k, "k")
  return min(_factorizations(n, k, n), key=lambda f: (f[0], -f[-1]))


def _is_balanced(n: int, k: int, max_imbalance: float) -> bool:
  f = factorize(n, k)
  return f[0] <= max_imbalance * n ** (1.0 / k)


def padded_size(n: int, k: int = 2, *, max_imbalance: float = 2.0) -> int:
  """The smallest size ``>= n`` whose balanced ``k``-factorisation is useful.

  Useful means the largest factor is at most ``max_imbalance`` times the
  ``k``-th root of the size. Sizes that already qualify are returned as they
  are; primes (and other awkward sizes) are padded, as the KFC paper pads
  with dummy features.

  Example usage::

    >>> import kfc_jax
    >>> kfc_jax.padded_size(288), kfc_jax.padded_size(1021), kfc_jax.padded_size(10)
    (288, 1023, 10)
  """
  n = _checks.positive_int(n, "n")
  k = _checks.positive_int(k, "k")
  if max_imbalance < 1:
    raise ValueError(f"max_imbalance must be >= 1, got {max_imbalance}.")
  size = n
  while not _is_balanced(size, k, max_imbalance):
    size += 1
  return size


@dataclasses.dataclass(frozen=True)
class KroneckerShape:
  """Factor shapes of a Kronecker layer ``in_features -> out_features``.

  The factors map ``prod(in_factors) -> prod(out_factors)``; when those exceed
  ``in_features``/``out_features`` the layer pads its input with zeros and drops
  the extra outputs (see :func:`~kfc_jax.padded_kron_matmul`), which computes exactly
  ``x @ kron(...)[:in_features, :out_features]``.
  """

  in_features: int
  out_features: int
  in_factors: tuple[int, ...]
  out_factors: tuple[int, ...]
  rank: int = 1

  def __post_init__(self):
    _checks.positive_int(self.in_features, "in_features")
    _checks.positive_int(self.out_features, "out_features")
    ms = _checks.int_tuple(self.in_factors, "in_factors")
    ns = _checks.int_tuple(self.out_factors, "out_factors")
    # Frozen: store the validated tuples (hashable, equal to the tuple form).
    object.__setattr__(self, "in_factors", ms)
    object.__setattr__(self, "out_factors", ns)
    _checks.positive_int(self.rank, "rank")
    if len(ms) != len(ns):
      raise ValueError(
          f"in_factors and out_factors must have the same length, got"
          f" in_factors={ms} and out_factors={ns}.")
    if math.prod(ms) < self.in_features:
      example = suggest_factors(self.in_features, self.in_features, k=len(ms))
      raise ValueError(
          f"in_factors {ms} multiply to {math.prod(ms)}, fewer than"
          f" in_features={self.in_features}; they must multiply to at least it,"
          f" e.g. {example.in_factors}.")
    if math.prod(ns) < self.out_features:
      example = suggest_factors(self.out_features, self.out_features, k=len(ns))
      raise ValueError(
          f"out_factors {ns} multiply to {math.prod(ns)}, fewer than"
          f" out_features={self.out_features}; they must multiply to at least"
          f" it, e.g. {example.out_factors}.")

  @property
  def factor_shapes(self) -> tuple[tuple[int, int, int], ...]:
    return tuple((self.rank, m, n)
                 for m, n in zip(self.in_factors, self.out_factors, strict=True))

  @property
  def term(self) -> KroneckerTerm:
    """The factor shapes and rank, as a layer's term."""
    return KroneckerTerm(self.in_factors, self.out_factors, self.rank)

  @property
  def padded(self) -> bool:
    return (math.prod(self.in_factors) != self.in_features
            or math.prod(self.out_factors) != self.out_features)

  @property
  def params(self) -> int:
    pairs = zip(self.in_factors, self.out_factors, strict=True)
    return self.rank * sum(m * n for m, n in pairs)

  @property
  def dense_params(self) -> int:
    return self.in_features * self.out_features

  @property
  def compression(self) -> float:
    """Dense parameters over Kronecker parameters."""
    return self.dense_params / self.params

  def flops(self, batch: int = 1, dtype: Any = jnp.float32) -> int:
    """FLOPs of ``kron_matmul``'s auto plan for ``batch`` rows."""
    plan = kron_matmul_plan(
        (batch, math.prod(self.in_factors)), self.factor_shapes, dtype=dtype)
    return plan.chosen.flops

  def dense_flops(self, batch: int = 1) -> int:
    return 2 * batch * self.in_features * self.out_features


def _ordered_factorizations(n: int, k: int) -> set[tuple[int, ...]]:
  return {p for f in _factorizations(n, k, n) for p in itertools.permutations(f)}


def _best_split_by_error(in_features: int, out_features: int, weight: Any, k: int,
                         max_params: int | None, rank: int | None
                         ) -> KroneckerShape | None:
  """``suggest_factors(prefer="error")``: the search's best two-factor split."""
  from kfc_jax import _search  # the search imports decompose, which imports us
  if weight is None:
    raise ValueError("prefer='error' needs the trained kernel; pass weight=.")
  w = _checks.finite_matrix(weight, "weight")
  if w.shape != (in_features, out_features):
    raise ValueError(f"weight must have shape [in_features, out_features] ="
                     f" {[in_features, out_features]}, got {list(w.shape)}.")
  if max_params is None:
    raise ValueError("prefer='error' chooses within a budget; pass max_params or"
                     " compression.")
  if k != 2:
    raise ValueError(f"prefer='error' scores two-factor splits; got k={k}. Use"
                     " prefer='params' for more factors.")
  try:
    result = _search.search_dense(w, max_params=max_params, methods=("kronecker",),
                                  rank=rank)
  except ValueError:
    return None  # no exact split fits (e.g. a prime size): pad instead
  best = result.best_of("kronecker")
  return KroneckerShape(in_features, out_features, best.in_factors, best.out_factors,
                        best.rank)


def suggest_factors(
    in_features: int,
    out_features: int,
    *,
    k: int = 2,
    max_params: int | None = None,
    compression: float | None = None,
    rank: int | None = None,
    max_imbalance: float = 2.0,
    weight: Any = None,
    prefer: str | None = None,
) -> KroneckerShape:
  """Suggests factor shapes (and rank) for a Kronecker layer.

  Sizes without a useful ``k``-factorisation are padded (:func:`padded_size`).
  Without a budget the result is the balanced factorisation at ``rank`` (1 by
  default), which has the fewest parameters. With a budget (``max_params``, or
  ``compression`` = dense / Kronecker parameters) the suggestion is the
  factorisation and rank with the most parameters within the budget (the most
  expressive layer that fits), preferring balanced shapes on ties. Shapes with
  a ``1 x n`` or ``m x 1`` factor are taken only when no other shape fits:
  ``(m, 1) (x) (1, n)`` is an outer product, so such a "Kronecker" layer is a
  low-rank one in disguise.

  With the trained ``weight`` (``prefer="error"``, the default when it is
  given) the suggestion is instead the two-factor split and rank with the
  lowest error of the nearest Kronecker sum within the budget, each split
  scored at the largest rank that fits (or at ``rank``) from one spectrum of
  its rearranged weight (:func:`kfc_jax.search_dense`); outer-product splits
  are left to low rank. On real weights the largest balanced split is often
  the worst one. Sizes with no exact two-factor split fall back to
  ``prefer="params"`` (padding).

  Args:
    in_features: input size.
    out_features: output size.
    k: number of factors.
    max_params: parameter budget for the factors.
    compression: target ratio of dense to Kronecker parameters (>= 1).
    rank: fix the rank instead of choosing it.
    max_imbalance: see :func:`padded_size`.
    weight: the trained ``[in_features, out_features]`` kernel, for
      ``prefer="error"``.
    prefer: ``"error"`` (needs ``weight`` and a budget, ``k=2``) or
      ``"params"`` (the most parameters that fit).

  Returns:
    A :class:`KroneckerShape`.

  Raises:
    ValueError: if no factorisation meets the budget.

  Example usage::

    >>> import kfc_jax
    >>> s = kfc_jax.suggest_factors(1021, 256)
    >>> s.in_factors, s.out_factors, s.padded
    ((33, 31), (16, 16), True)
    >>> kfc_jax.suggest_factors(4096, 4096, compression=64).params <= 4096 * 4096 // 64
    True
  """
  in_features = _checks.positive_int(in_features, "in_features")
  out_features = _checks.positive_int(out_features, "out_features")
  k = _checks.positive_int(k, "k")
  if rank is not None:
    rank = _checks.positive_int(rank, "rank")
  if max_params is not None and compression is not None:
    raise ValueError("pass at most one of max_params and compression, got both.")
  if compression is not None:
    if not compression >= 1:
      raise ValueError(f"compression must be >= 1, got {compression}.")
    max_params = int(in_features * out_features / compression)
    if max_params < 1:
      raise ValueError(
          f"compression={compression} leaves less than one parameter of the"
          f" {in_features}x{out_features} layer; use at most"
          f" {in_features * out_features}.")
  if max_params is not None:
    max_params = _checks.positive_int(max_params, "max_params")
  if prefer is None:
    prefer = "error" if weight is not None else "params"
  if prefer not in ("error", "params"):
    raise ValueError(f"prefer must be 'error' or 'params', got {prefer!r}.")
  if prefer == "error":
    best = _best_split_by_error(in_features, out_features, weight, k, max_params, rank)
    if best is not None:
      return best
  m = padded_size(in_features, k, max_imbalance=max_imbalance)
  n = padded_size(out_features, k, max_imbalance=max_imbalance)
  balanced = (factorize(m, k), factorize(n, k))

  def imbalance(ms, ns):
    sizes = [a * b for a, b in zip(ms, ns, strict=True)]
    return max(sizes) / min(sizes)

  if max_params is None:
    return KroneckerShape(in_features, out_features, *balanced, rank or 1)
  in_choices = _ordered_factorizations(m, k) if k <= 3 else {balanced[0]}
  out_choices = _ordered_factorizations(n, k) if k <= 3 else {balanced[1]}
  best = None
  for ms in in_choices:
    for ns in out_choices:
      per_rank = sum(a * b for a, b in zip(ms, ns, strict=True))
      max_rank = min(per_rank and max_params // per_rank,
                     (m * n) // max(a * b for a, b in zip(ms, ns, strict=True)))
      ranks = [rank] if rank is not None else [max_rank]
      for r in ranks:
        if r < 1 or r * per_rank > max_params:
          continue
        proper = all(a > 1 and b > 1 for a, b in zip(ms, ns, strict=True))
        key = (proper, r * per_rank, -imbalance(ms, ns),
               -max(ms) - max(ns), ms, ns)
        if best is None or key > best[0]:
          best = (key, ms, ns, r)
  if best is None:
    smallest = KroneckerShape(in_features, out_features, *balanced, rank or 1)
    raise ValueError(
        f"no {k}-factor Kronecker layer {in_features}->{out_features}"
        f"{'' if rank is None else f' of rank {rank}'} fits max_params="
        f"{max_params}; the smallest has {smallest.params} parameters"
        f" (in_factors={balanced[0]}, out_factors={balanced[1]}). Raise the"
        " budget or use more factors (k).")
  _, ms, ns, r = best
  return KroneckerShape(in_features, out_features, ms, ns, r)


@dataclasses.dataclass(frozen=True, repr=False)
class KroneckerTerm:
  """One term of a dense Kronecker layer: factor shapes, rank, formulation.

  As an argument of ``KroneckerLinear``, ``None`` factors are suggested
  (balanced, padded when a size factors badly); give ``in_factors`` alone to
  fix the number of factors. A layer's resolved terms have every factor set,
  and KFC layers' terms carry the :class:`~kfc_jax.Formulation` that groups the
  feature map's axes into ``in_factors``.

  Example usage::

    >>> import kfc_jax
    >>> term = kfc_jax.KroneckerTerm((16, 18), (16, 16), rank=2)
    >>> term
    KroneckerTerm(in_factors=(16, 18), out_factors=(16, 16), rank=2)
    >>> term.factor_shapes, term.params
    (((2, 16, 16), (2, 18, 16)), 1088)
  """

  in_factors: tuple[int, ...] | None = None
  out_factors: tuple[int, ...] | None = None
  rank: int = 1
  formulation: Formulation | None = None

  def __repr__(self) -> str:
    formulation = ("" if self.formulation is None
                   else f", formulation={self.formulation.name!r}")
    return (f"KroneckerTerm(in_factors={self.in_factors}, out_factors="
            f"{self.out_factors}, rank={self.rank}{formulation})")

  def _resolved(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
    if self.in_factors is None or self.out_factors is None:
      raise ValueError(
          f"{self!r} has unset factors; a layer resolves them (see"
          " kfc_jax.suggest_factors) before they can be counted.")
    return self.in_factors, self.out_factors

  @property
  def num_factors(self) -> int:
    return len(self._resolved()[0])

  @property
  def factor_shapes(self) -> tuple[tuple[int, int, int], ...]:
    """``(rank, m_t, n_t)`` of each factor."""
    return tuple((self.rank, m, n) for m, n in zip(*self._resolved(), strict=True))

  @property
  def params(self) -> int:
    return sum(math.prod(s) for s in self.factor_shapes)

  @property
  def label(self) -> str:
    """``"II(64, 4) r=2"`` (KFC) or ``"(18, 16)->(16, 16) r=2"``, for summaries."""
    rank = f" r={self.rank}" if self.rank != 1 else ""
    if self.formulation is not None:
      return f"{self.formulation.name}{self.out_factors}{rank}"
    return f"{self.in_factors}->{self.out_factors}{rank}"


@dataclasses.dataclass(frozen=True)
class KronConvShape:
  """A Kronecker split of a conv kernel: ``K ≈ sum_r A[r] ⊗ B[r]``.

  Attributes:
    kernel_shape: ``(kh, kw, C_in, C_out)``.
    a_shape: ``(ah, aw, ai, ao)``.
    b_shape: ``(bh, bw, bi, bo)``.
    rank: number of terms.
  """

  kernel_shape: tuple[int, int, int, int]
  a_shape: tuple[int, int, int, int]
  b_shape: tuple[int, int, int, int]
  rank: int = 1

  @property
  def factor_shapes(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """``((r, *a_shape), (r, *b_shape))``, as :func:`~kfc_jax.kron_conv` takes."""
    return (self.rank, *self.a_shape), (self.rank, *self.b_shape)

  @property
  def params(self) -> int:
    return self.rank * (math.prod(self.a_shape) + math.prod(self.b_shape))

  @property
  def dense_params(self) -> int:
    return math.prod(self.kernel_shape)

  @property
  def compression(self) -> float:
    """Dense parameters over Kronecker parameters."""
    return self.dense_params / self.params

  @property
  def flops_per_pixel(self) -> int:
    """FLOPs of the factored conv per output pixel (stride 1, SAME)."""
    (ah, aw, ai, ao), (bh, bw, bi, bo), r = self.a_shape, self.b_shape, self.rank
    return 2 * r * (ai * bh * bw * bi * bo + bo * ah * aw * ai * ao)

  @property
  def dense_flops_per_pixel(self) -> int:
    return 2 * self.dense_params

  @property
  def label(self) -> str:
    """``"ahxawxaixao(x)bhxbwxbixbo r=R"``, for summaries."""
    a, b = ("x".join(map(str, s)) for s in (self.a_shape, self.b_shape))
    return f"{a}(x){b}" + (f" r={self.rank}" if self.rank != 1 else "")
