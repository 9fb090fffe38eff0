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

import itertools
from typing import Any

from kfc_jax import _checks
from kfc_jax._shape_types import KronConvShape as KronConvShape
from kfc_jax._shape_types import KroneckerShape as KroneckerShape
from kfc_jax._shape_types import KroneckerTerm as KroneckerTerm
from kfc_jax._shape_types import _factorizations
from kfc_jax._shape_types import factorize as factorize
from kfc_jax._shape_types import padded_size as padded_size


def _ordered_factorizations(n: int, k: int) -> set[tuple[int, ...]]:
  return {p for f in _factorizations(n, k, n) for p in itertools.permutations(f)}


def _best_split_by_error(
  in_features: int, out_features: int, weight: Any, k: int, max_params: int | None, rank: int | None
) -> KroneckerShape | None:
  """``suggest_factors(prefer="error")``: the search's best two-factor split."""
  from kfc_jax import _search  # the search imports decompose, which imports us

  if weight is None:
    raise ValueError("prefer='error' needs the trained kernel; pass weight=.")
  w = _checks.finite_matrix(weight, "weight")
  if w.shape != (in_features, out_features):
    raise ValueError(
      f"weight must have shape [in_features, out_features] ="
      f" {[in_features, out_features]}, got {list(w.shape)}."
    )
  if max_params is None:
    raise ValueError("prefer='error' chooses within a budget; pass max_params or compression.")
  if k != 2:
    raise ValueError(
      f"prefer='error' scores two-factor splits; got k={k}. Use prefer='params' for more factors."
    )
  try:
    result = _search.search_dense(w, max_params=max_params, methods=("kronecker",), rank=rank)
  except ValueError:
    return None  # no exact split fits (e.g. a prime size): pad instead
  best = result.best_of("kronecker")
  if best is None or best.in_factors is None or best.out_factors is None:
    return None
  return KroneckerShape(in_features, out_features, best.in_factors, best.out_factors, best.rank)


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
    compression: target ratio of dense to Kronecker parameters (> 1).
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
    compression = _checks.compression_ratio(compression)
    max_params = int(in_features * out_features / compression)
    if max_params < 1:
      raise ValueError(
        f"compression={compression} leaves less than one parameter of the"
        f" {in_features}x{out_features} layer; use at most"
        f" {in_features * out_features}."
      )
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
      max_rank = min(
        per_rank and max_params // per_rank,
        (m * n) // max(a * b for a, b in zip(ms, ns, strict=True)),
      )
      ranks = [rank] if rank is not None else [max_rank]
      for r in ranks:
        if r < 1 or r * per_rank > max_params:
          continue
        proper = all(a > 1 and b > 1 for a, b in zip(ms, ns, strict=True))
        key = (proper, r * per_rank, -imbalance(ms, ns), -max(ms) - max(ns), ms, ns)
        if best is None or key > best[0]:
          best = (key, ms, ns, r)
  if best is None:
    smallest = KroneckerShape(in_features, out_features, *balanced, rank or 1)
    raise ValueError(
      f"no {k}-factor Kronecker layer {in_features}->{out_features}"
      f"{'' if rank is None else f' of rank {rank}'} fits max_params="
      f"{max_params}; the smallest has {smallest.params} parameters"
      f" (in_factors={balanced[0]}, out_factors={balanced[1]}). Raise the"
      " budget or use more factors (k)."
    )
  _, ms, ns, r = best
  return KroneckerShape(in_features, out_features, ms, ns, r)
