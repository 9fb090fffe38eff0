"""KFC formulations (Zhou & Wu, arXiv 1507.05775, Section 3.1) as axis groups.

The FC layer after a conv stack sees a feature map ``x: [*batch, H, W, C]``
(NHWC) and has a weight ``[H*W*C, O]``. A KFC term splits the named input axes
``H``, ``W``, ``C`` into groups, gives each group a factor, and splits ``O``
into one part per factor. Formulation II, for example, is

``y[n, o1, o2] = sum_{h,w,c} x[n, h, w, c] * A[c, o1] * B[h, w, o2]``.

The output index is row-major over the factors in factor order, and within a
factor the input index is row-major over its group in group order (``B`` above
is stored as ``[rank, H*W, O2]`` with row ``h*W + w``). A term runs as: transpose
the feature map so each factor's group is contiguous in factor order (skipped
when that is the identity), flatten, and call :func:`kfc_jax.kron_matmul`.

The formulations (``FORMULATIONS``; output ``O = O1*O2`` or ``O1*O2*O3``):

=======  ================  ================  ===============  ==========================
name     factor A          factor B          factor D         parameters (rank 1)
=======  ================  ================  ===============  ==========================
I        ``C -> O``        ``H*W -> 1``                       ``C*O + H*W``
II       ``C -> O1``       ``H*W -> O2``                      ``C*O1 + H*W*O2``
III      ``C*H -> O1``     ``W -> O2``                        ``C*H*O1 + W*O2``
IV       ``C*W -> O1``     ``H -> O2``                        ``C*W*O1 + H*O2``
CHW      ``C -> O1``       ``H -> O2``       ``W -> O3``      ``C*O1 + H*O2 + W*O3``
=======  ================  ================  ===============  ==========================

The paper's text for formulation I is garbled in the copy we hold; the row
above is our reading, the only one consistent with the paper's parameter
counts (KFC-I keeps more parameters than KFC-II). CHW is our extension (the
paper lists I-IV only), named by its groups rather than as a fifth numeral.

Because the grouping is explicit, every formulation has an optimal
decomposition of a dense weight: :func:`kfc_jax.nearest_kronecker_tensor` over
the named axis groups (exactly optimal for two factors).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np

from kfc_jax import _checks
from kfc_jax.decompose import (
  KroneckerDecomposition,
  KroneckerSumTerm,
  nearest_kronecker_tensor,
)
from kfc_jax.ops import kron, kron_matmul
from kfc_jax.shapes import KroneckerTerm, factorize

AXES = ("H", "W", "C")


@dataclasses.dataclass(frozen=True)
class Formulation:
  """A KFC formulation: which named input axes each factor owns.

  Attributes:
    name: short name (``"II"``).
    groups: per factor, the input axes it owns (a permutation of ``H``, ``W``,
      ``C`` split into non-empty groups), e.g. ``(("C",), ("H", "W"))``.
    fixed_out: per factor, its output size when the formulation fixes it
      (formulation I: ``(None, 1)``), else ``None``.
    description: the paper's modelling assumption.

  Example usage::

    >>> import kfc_jax
    >>> f = kfc_jax.FORMULATIONS["II"]  # every formulation, by name
    >>> sorted(kfc_jax.FORMULATIONS), f.groups
    (['CHW', 'I', 'II', 'III', 'IV'], (('C',), ('H', 'W')))
    >>> f.in_factors((4, 4, 3))  # an HWC input: C = 3, H*W = 16
    (3, 16)
  """

  name: str
  groups: tuple[tuple[str, ...], ...]
  fixed_out: tuple[int | None, ...] | None = None
  description: str = ""

  def __post_init__(self):
    flat = [a for g in self.groups for a in g]
    if sorted(flat) != sorted(AXES) or any(not g for g in self.groups):
      raise ValueError(
        f"Formulation {self.name!r}: groups must split the axes {AXES} into"
        f" non-empty groups, each axis once, got {self.groups}."
      )
    if self.fixed_out is not None and len(self.fixed_out) != len(self.groups):
      raise ValueError(
        f"Formulation {self.name!r}: fixed_out needs one entry per group"
        f" ({len(self.groups)}), got {self.fixed_out}."
      )

  @property
  def num_factors(self) -> int:
    return len(self.groups)

  @property
  def permutation(self) -> tuple[int, ...]:
    """Positions in ``(H, W, C)`` of the axes in factor-then-group order."""
    return tuple(AXES.index(a) for g in self.groups for a in g)

  def in_factors(self, in_shape: Sequence[int]) -> tuple[int, ...]:
    """Each factor's input size: the product of its group's axis sizes."""
    sizes: dict[str, int] = dict(zip(AXES, in_shape, strict=True))
    return tuple(math.prod(sizes[a] for a in g) for g in self.groups)

  def default_out_factors(self, out_features: int) -> tuple[int, ...]:
    """The most balanced output split this formulation allows."""
    fixed = self.fixed_out or (None,) * self.num_factors
    free = [i for i, f in enumerate(fixed) if f is None]
    rest = out_features // math.prod(f for f in fixed if f is not None)
    split = iter(factorize(rest, len(free)) if free else ())
    return tuple(f if f is not None else next(split) for f in fixed)

  def factor_shapes(
    self, in_shape: Sequence[int], out_factors: Sequence[int], rank: int = 1
  ) -> tuple[tuple[int, int, int], ...]:
    """``(rank, m_f, n_f)`` of each factor."""
    return tuple((rank, m, n) for m, n in zip(self.in_factors(in_shape), out_factors, strict=True))

  def params(self, in_shape: Sequence[int], out_factors: Sequence[int], rank: int = 1) -> int:
    """Number of factor parameters of one term."""
    return sum(math.prod(s) for s in self.factor_shapes(in_shape, out_factors, rank))

  def apply(self, x: Any, factors: Sequence[Any], **kron_kwargs: Any) -> jnp.ndarray:
    """One term's output ``[*batch, prod(n_f)]`` for ``x: [*batch, H, W, C]``.

    Args:
      x: the feature map.
      factors: one array per factor, ``[rank, m_f, n_f]``.
      **kron_kwargs: passed to :func:`kfc_jax.kron_matmul` (``precision``,
        ``preferred_element_type``, ``strategy``).
    """
    x = jnp.asarray(x) if not hasattr(x, "ndim") else x
    if x.ndim < 3:
      raise ValueError(f"x must have shape [*batch, H, W, C], got shape {tuple(x.shape)}.")
    lead = x.ndim - 3
    perm = self.permutation
    if perm != (0, 1, 2):
      x = jnp.transpose(x, (*range(lead), *(lead + p for p in perm)))
    # The feature size explicitly: reshape(-1) cannot infer it for an empty batch.
    x = x.reshape(*x.shape[:lead], math.prod(x.shape[lead:]))
    return kron_matmul(x, factors, **kron_kwargs)

  def materialize(
    self, factors: Sequence[Any], in_shape: Sequence[int], **kron_kwargs: Any
  ) -> jnp.ndarray:
    """The dense weight ``[H*W*C, O]`` (rows in NHWC order) of one term."""
    w = kron(factors, **kron_kwargs)
    grouped = [in_shape[p] for p in self.permutation]
    w = w.reshape(*grouped, w.shape[-1])
    inverse = np.argsort(self.permutation)
    return jnp.transpose(w, (*inverse, 3)).reshape(math.prod(in_shape), -1)

  def sum_term(
    self, in_shape: Sequence[int], out_factors: Sequence[int], rank: int = 1
  ) -> KroneckerSumTerm:
    """This term as a cut of ``W.reshape(H, W, C, *out_factors)``."""
    axes = tuple((*(AXES.index(a) for a in g), 3 + f) for f, g in enumerate(self.groups))
    return KroneckerSumTerm(tuple(in_shape), tuple(out_factors), axes, rank)

  def decompose(
    self, w: Any, in_shape: Sequence[int], out_factors: Sequence[int], rank: int = 1
  ) -> KroneckerDecomposition:
    """Nearest ``rank``-term factors of a dense ``w: [H*W*C, O]``.

    Optimal for two factors (the truncated SVD of the weight rearranged over
    this formulation's axis groups); quasi-optimal (CP-ALS) for three.

    Returns:
      A :class:`kfc_jax.KroneckerDecomposition` with factors ``[rank, m_f, n_f]``.
    """
    in_shape = tuple(in_shape)
    w = _checks.finite_matrix(w, "w")
    if w.shape != (math.prod(in_shape), math.prod(out_factors)):
      raise ValueError(
        "w must have shape [H*W*C, O] ="
        f" {[math.prod(in_shape), math.prod(out_factors)]}"
        f" for in_shape {in_shape} and out_factors {tuple(out_factors)}, got"
        f" {list(w.shape)}."
      )
    term = self.sum_term(in_shape, out_factors, rank)
    dec = nearest_kronecker_tensor(w.reshape(*in_shape, *out_factors), term.factor_axes, rank)
    factors = tuple(
      f.reshape(rank, m, n)
      for f, (_, m, n) in zip(
        dec.factors, self.factor_shapes(in_shape, out_factors, rank), strict=True
      )
    )
    return dec._replace(factors=factors)


FORMULATION_I = Formulation(
  "I",
  (("C",), ("H", "W")),
  fixed_out=(None, 1),
  description=(
    "A: C -> O, B: H*W -> 1. The channel transform is the same at every"
    " position and B is a learned spatial weighting. The paper's text for"
    " formulation I is garbled in the copy we hold; this is our reading,"
    " the only one consistent with its parameter counts (KFC-I keeps more"
    " parameters than KFC-II). It is formulation II with O2 = 1."
  ),
)
FORMULATION_II = Formulation(
  "II",
  (("C",), ("H", "W")),
  description="A: C -> O1, B: H*W -> O2; channel transform decoupled from the spatial transform.",
)
FORMULATION_III = Formulation(
  "III", (("C", "H"), ("W",)), description="A: C*H -> O1, B: W -> O2; columns decoupled."
)
FORMULATION_IV = Formulation(
  "IV", (("C", "W"), ("H",)), description="A: C*W -> O1, B: H -> O2; rows decoupled."
)
# Named by its groups rather than "V": the paper lists I-IV only, and this
# three-factor split (every axis its own factor) is our extension.
FORMULATION_CHW = Formulation(
  "CHW",
  (("C",), ("H",), ("W",)),
  description="A: C -> O1, B: H -> O2, D: W -> O3; channels, rows and"
  " columns all decoupled (an extension; not in the paper).",
)

#: Every formulation by name (``"I"``, ``"II"``, ``"III"``, ``"IV"``, ``"CHW"``);
#: :class:`Formulation`'s example reads it.
FORMULATIONS: Mapping[str, Formulation] = {
  f.name: f
  for f in (FORMULATION_I, FORMULATION_II, FORMULATION_III, FORMULATION_IV, FORMULATION_CHW)
}


def get_formulation(formulation: str | Formulation, name: str = "formulation") -> Formulation:
  """Looks up a formulation by name (``"I"``, ``"II"``, ``"III"``, ``"IV"``, ``"CHW"``).

  Example usage::

    >>> import kfc_jax
    >>> f = kfc_jax.get_formulation("III")
    >>> f.groups, f.in_factors((3, 3, 32))
    ((('C', 'H'), ('W',)), (96, 3))
  """
  if isinstance(formulation, Formulation):
    return formulation
  if isinstance(formulation, str) and formulation.upper() in FORMULATIONS:
    return FORMULATIONS[formulation.upper()]
  raise ValueError(
    f"{name} must be one of {tuple(FORMULATIONS)} or a Formulation, got {formulation!r}."
  )


@dataclasses.dataclass(frozen=True)
class KFCTerm:
  """One term of a KFC layer: a formulation, its output split and its rank.

  ``out_factors=None`` picks the most balanced split of the layer's output.
  A layer's terms are summed (KFC-Combined); ``rank`` sums ``rank`` Kronecker
  products of the same formulation (Section 3.3).

  Example usage::

    >>> import kfc_jax
    >>> term = kfc_jax.KFCTerm("II", (64, 4))
    >>> term.params((3, 3, 32))      # 32*64 + 3*3*4
    2084
  """

  formulation: str | Formulation
  out_factors: tuple[int, ...] | None = None
  rank: int = 1

  @property
  def spec(self) -> Formulation:
    return get_formulation(self.formulation)

  @property
  def label(self) -> str:
    rank = f", rank {self.rank}" if self.rank != 1 else ""
    return f"{self.spec.name}{tuple(self.out_factors or ())}{rank}"

  def _out(self) -> tuple[int, ...]:
    if self.out_factors is None:
      raise ValueError(
        f"{self!r} has no out_factors yet; resolve_terms(terms, out_features) picks them."
      )
    return tuple(self.out_factors)

  def factor_shapes(self, in_shape: Sequence[int]) -> tuple[tuple[int, int, int], ...]:
    return self.spec.factor_shapes(in_shape, self._out(), self.rank)

  def params(self, in_shape: Sequence[int]) -> int:
    return self.spec.params(in_shape, self._out(), self.rank)

  def kronecker_term(self, in_shape: Sequence[int]) -> KroneckerTerm:
    """This term over an ``(H, W, C)`` map, as the layers hold it.

    ``out_factors`` must be set (see :func:`resolve_terms`).
    """
    spec = self.spec
    return KroneckerTerm(spec.in_factors(in_shape), self._out(), self.rank, spec)


def _resolve_term(term: Any, i: int, out_features: int) -> KFCTerm:
  """Validates one term against the layer's output size."""
  where = f"terms[{i}]"
  if isinstance(term, (str, Formulation)):
    term = KFCTerm(term)
  elif isinstance(term, Sequence) and 2 <= len(term) <= 3:
    term = KFCTerm(*term)
  elif not isinstance(term, KFCTerm):
    raise TypeError(
      f"{where} must be (formulation, out_factors), (formulation,"
      f" out_factors, rank), a formulation name or a KFCTerm, got {term!r}."
    )
  spec = get_formulation(term.formulation, f"{where} formulation")
  rank = _checks.positive_int(term.rank, f"{where} rank")
  k = spec.num_factors
  if term.out_factors is None:
    out = spec.default_out_factors(out_features)
  else:
    out = _checks.int_tuple(term.out_factors, f"{where} out_factors")
  example = spec.default_out_factors(out_features)
  if len(out) != k or math.prod(out) != out_features:
    choices = (
      f"e.g. {example}"
      if k != 2 or spec.fixed_out
      else "e.g. " + ", ".join(map(str, _checks.balanced_pairs(out_features)))
    )
    raise ValueError(
      f"{where} (formulation {spec.name}) out_factors must be {k} positive"
      f" integers multiplying to out_features={out_features}, got {out}"
      f" (product {math.prod(out)}); {choices}."
    )
  for f, fixed in enumerate(spec.fixed_out or ()):
    if fixed is not None and out[f] != fixed:
      raise ValueError(
        f"{where} (formulation {spec.name}) fixes output factor {f} to"
        f" {fixed}, got out_factors={out}; use {example}."
      )
  return KFCTerm(spec, out, rank)


def resolve_terms(terms: Any, out_features: int) -> tuple[KFCTerm, ...]:
  """Normalises a layer's ``terms`` to validated :class:`KFCTerm` objects.

  Each term may be ``(formulation, out_factors)``, ``(formulation,
  out_factors, rank)``, a formulation name or a :class:`KFCTerm`.

  Raises:
    ValueError: for an unknown formulation, output factors that do not
      multiply to ``out_features`` (the message lists splits that do), or a
      rank below 1.

  Example usage::

    >>> import kfc_jax
    >>> [t.label for t in kfc_jax.resolve_terms([("II", (64, 4), 10), "III"], 256)]
    ['II(64, 4), rank 10', 'III(16, 16)']
  """
  if isinstance(terms, (str, Formulation, KFCTerm)):
    terms = [terms]
  if not isinstance(terms, Sequence) or not terms:
    raise TypeError(
      f"terms must be a non-empty list of terms such as [('II', (64, 4))], got {terms!r}."
    )
  out_features = _checks.positive_int(out_features, "out_features")
  return tuple(_resolve_term(t, i, out_features) for i, t in enumerate(terms))
