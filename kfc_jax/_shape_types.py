"""The shape and term types of :mod:`kfc_jax.shapes`, and the factorisation they use.

``shapes.py`` re-exports them beside :func:`~kfc_jax.suggest_factors`; see its
docstring for the conventions.
"""

from __future__ import annotations

import dataclasses
import functools
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
    if n % d == 0 and d**k >= n:
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

  Example usage::

    >>> import kfc_jax
    >>> s = kfc_jax.KroneckerShape(1000, 256, (32, 32), (16, 16))
    >>> s.padded, s.factor_shapes, s.params
    (True, ((1, 32, 16), (1, 32, 16)), 1024)
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
        f" in_factors={ms} and out_factors={ns}."
      )
    if math.prod(ms) < self.in_features:
      example = factorize(padded_size(self.in_features, len(ms)), len(ms))
      raise ValueError(
        f"in_factors {ms} multiply to {math.prod(ms)}, fewer than"
        f" in_features={self.in_features}; they must multiply to at least it,"
        f" e.g. {example}."
      )
    if math.prod(ns) < self.out_features:
      example = factorize(padded_size(self.out_features, len(ns)), len(ns))
      raise ValueError(
        f"out_factors {ns} multiply to {math.prod(ns)}, fewer than"
        f" out_features={self.out_features}; they must multiply to at least"
        f" it, e.g. {example}."
      )

  @property
  def factor_shapes(self) -> tuple[tuple[int, int, int], ...]:
    return tuple((self.rank, m, n) for m, n in zip(self.in_factors, self.out_factors, strict=True))

  @property
  def term(self) -> KroneckerTerm:
    """The factor shapes and rank, as a layer's term."""
    return KroneckerTerm(self.in_factors, self.out_factors, self.rank)

  @property
  def padded(self) -> bool:
    return (
      math.prod(self.in_factors) != self.in_features
      or math.prod(self.out_factors) != self.out_features
    )

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
    plan = kron_matmul_plan((batch, math.prod(self.in_factors)), self.factor_shapes, dtype=dtype)
    return plan.chosen.flops

  def dense_flops(self, batch: int = 1) -> int:
    return 2 * batch * self.in_features * self.out_features


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
    formulation = "" if self.formulation is None else f", formulation={self.formulation.name!r}"
    return (
      f"KroneckerTerm(in_factors={self.in_factors}, out_factors="
      f"{self.out_factors}, rank={self.rank}{formulation})"
    )

  def _resolved(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
    if self.in_factors is None or self.out_factors is None:
      raise ValueError(
        f"{self!r} has unset factors; a layer resolves them (see"
        " kfc_jax.suggest_factors) before they can be counted."
      )
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

  Example usage::

    >>> import kfc_jax
    >>> s = kfc_jax.KronConvShape((3, 3, 64, 64), (3, 3, 8, 8), (1, 1, 8, 8), rank=2)
    >>> s.factor_shapes, s.params, s.dense_params
    (((2, 3, 3, 8, 8), (2, 1, 1, 8, 8)), 1280, 36864)
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
