"""factorize, padded_size, suggest_factors, KroneckerShape, KroneckerTerm, KronConvShape."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import kfc_jax


def _all_factorizations(n, k):
  """Brute force: every ordered k-tuple with product n."""
  divisors = [d for d in range(1, n + 1) if n % d == 0]
  return [f for f in itertools.product(divisors, repeat=k) if math.prod(f) == n]


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 400), k=st.integers(1, 3))
def test_factorize_is_most_balanced(n, k):
  f = kfc_jax.factorize(n, k)
  assert len(f) == k and math.prod(f) == n and list(f) == sorted(f, reverse=True)
  assert f[0] == min(max(g) for g in _all_factorizations(n, k))


def test_factorize_examples():
  assert kfc_jax.factorize(4096, 2) == (64, 64)
  assert kfc_jax.factorize(288, 3) == (8, 6, 6)
  assert kfc_jax.factorize(97, 2) == (97, 1)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 3000), k=st.integers(2, 3))
def test_padded_size_is_smallest_balanced(n, k):
  p = kfc_jax.padded_size(n, k)
  assert p >= n
  assert kfc_jax.factorize(p, k)[0] <= 2.0 * p ** (1 / k)
  for smaller in range(n, p):
    assert kfc_jax.factorize(smaller, k)[0] > 2.0 * smaller ** (1 / k)


def test_suggest_without_budget_is_balanced():
  s = kfc_jax.suggest_factors(4096, 1024)
  assert (s.in_factors, s.out_factors, s.rank) == ((64, 64), (32, 32), 1)
  assert not s.padded and s.params == 2 * 64 * 32


@pytest.mark.parametrize(
  "in_features,out_features,budget", [(64, 36, 200), (48, 30, 97), (100, 100, 1000)]
)
def test_suggest_with_budget_is_best_that_fits(in_features, out_features, budget):
  s = kfc_jax.suggest_factors(in_features, out_features, max_params=budget)
  assert s.params <= budget
  best = {True: 0, False: 0}  # by whether every factor is at least 2 x 2
  for ms in _all_factorizations(in_features, 2):
    for ns in _all_factorizations(out_features, 2):
      per_rank = ms[0] * ns[0] + ms[1] * ns[1]
      max_rank = min(ms[0] * ns[0], ms[1] * ns[1])
      r = min(budget // per_rank, max_rank)
      proper = min(ms + ns) > 1
      if r >= 1:
        best[proper] = max(best[proper], r * per_rank)
  assert s.params == (best[True] or best[False])


def test_suggest_avoids_outer_product_factors():
  # (256, 1) (x) (1, 256) at rank 8 has the same 4,096 parameters as
  # (16, 16) (x) (16, 16) at rank 8, but it is a rank-8 matrix: low rank.
  s = kfc_jax.suggest_factors(256, 256, compression=16)
  assert min(s.in_factors + s.out_factors) > 1
  assert (s.in_factors, s.out_factors, s.params) == ((16, 16), (16, 16), 4096)
  # When only a degenerate shape fits the budget, it is still returned.
  s = kfc_jax.suggest_factors(2, 64, max_params=40)
  assert s.params <= 40 and min(s.in_factors + s.out_factors) == 1


def test_suggest_compression_and_rank():
  s = kfc_jax.suggest_factors(1024, 1024, compression=32)
  assert s.compression >= 32
  s = kfc_jax.suggest_factors(1024, 1024, compression=32, rank=4)
  assert s.rank == 4 and s.compression >= 32


def test_suggest_pads_primes():
  s = kfc_jax.suggest_factors(97, 101)
  assert s.padded
  assert math.prod(s.in_factors) >= 97 and math.prod(s.out_factors) >= 101
  assert max(s.in_factors) <= 2 * math.sqrt(math.prod(s.in_factors))


def test_shape_counts():
  s = kfc_jax.KroneckerShape(288, 256, (18, 16), (16, 16), rank=3)
  assert s.params == 3 * (18 * 16 + 16 * 16)
  assert s.dense_params == 288 * 256
  assert s.dense_flops(10) == 2 * 10 * 288 * 256
  assert 0 < s.flops(10) < s.dense_flops(10)


def test_kronecker_term_counts_and_label():
  term = kfc_jax.KroneckerTerm((16, 18), (16, 16), rank=2)
  assert term.num_factors == 2
  assert term.factor_shapes == ((2, 16, 16), (2, 18, 16))
  assert term.params == 2 * (16 * 16 + 18 * 16)
  assert term.label == "(16, 18)->(16, 16) r=2"
  assert repr(term) == "KroneckerTerm(in_factors=(16, 18), out_factors=(16, 16), rank=2)"


def test_kronecker_term_with_a_formulation():
  # KFC's II over a 3x3x32 map: A takes C (32), B takes H*W (9).
  spec = kfc_jax.get_formulation("II")
  term = kfc_jax.KroneckerTerm(spec.in_factors((3, 3, 32)), (64, 4), 1, spec)
  assert term.in_factors == (32, 9)
  assert term.params == 32 * 64 + 9 * 4 == kfc_jax.KFCTerm("II", (64, 4)).params((3, 3, 32))
  assert term.label == "II(64, 4)"
  assert repr(term).endswith("rank=1, formulation='II')")


def test_terms_from_a_shape_and_a_kfc_term():
  shape = kfc_jax.KroneckerShape(288, 256, (18, 16), (16, 16), rank=3)
  assert shape.term == kfc_jax.KroneckerTerm((18, 16), (16, 16), 3)
  assert shape.term.params == shape.params
  term = kfc_jax.KFCTerm("III", (16, 16), 2).kronecker_term((3, 4, 8))
  assert term.in_factors == (8 * 3, 4) and term.formulation.name == "III"
  assert term.params == kfc_jax.KFCTerm("III", (16, 16), 2).params((3, 4, 8))


def test_kron_conv_shape_counts_and_label():
  s = kfc_jax.KronConvShape((3, 3, 64, 32), (3, 1, 8, 4), (1, 3, 8, 8), rank=2)
  assert s.factor_shapes == ((2, 3, 1, 8, 4), (2, 1, 3, 8, 8))
  assert s.params == 2 * (3 * 8 * 4 + 3 * 8 * 8)
  assert s.dense_params == 9 * 64 * 32
  assert s.label == "3x1x8x4(x)1x3x8x8 r=2"
  assert kfc_jax.decompose.KronConvShape is kfc_jax.KronConvShape


class TestErrors:
  def test_suggest_budget_too_small(self):
    with pytest.raises(ValueError, match=r"fits max_params=10; the smallest has 128"):
      kfc_jax.suggest_factors(64, 64, max_params=10)

  def test_suggest_compression_beyond_the_layer(self):
    with pytest.raises(
      ValueError,
      match=r"compression=1000000.0 leaves less than one"
      r" parameter of the 64x64 layer; use at most 4096",
    ):
      kfc_jax.suggest_factors(64, 64, compression=1e6)

  def test_shape_stores_tuples(self):
    s = kfc_jax.KroneckerShape(8, 8, [2, 4], [4, 2])
    assert s.in_factors == (2, 4) and s == kfc_jax.KroneckerShape(8, 8, (2, 4), (4, 2))
    assert hash(s) == hash(kfc_jax.KroneckerShape(8, 8, (2, 4), (4, 2)))

  def test_suggest_both_budgets(self):
    with pytest.raises(ValueError, match="at most one of max_params and compression"):
      kfc_jax.suggest_factors(64, 64, max_params=100, compression=4)

  @pytest.mark.parametrize(
    "n,exc", [(0, ValueError), (-3, ValueError), (2.5, TypeError), (True, TypeError)]
  )
  def test_factorize_bad_n(self, n, exc):
    with pytest.raises(exc, match="n must be a positive integer"):
      kfc_jax.factorize(n)

  def test_shape_factors_too_small(self):
    with pytest.raises(
      ValueError,
      match=r"in_factors \(4, 4\) multiply to 16,"
      r" fewer than in_features=20",
    ):
      kfc_jax.KroneckerShape(20, 16, (4, 4), (4, 4))

  def test_unresolved_term_cannot_be_counted(self):
    with pytest.raises(ValueError, match="has unset factors"):
      _ = kfc_jax.KroneckerTerm((4, 4)).params


def test_old_homes_still_work():
  assert kfc_jax.decompose.KronConvShape is kfc_jax.shapes.KronConvShape
  with pytest.warns(DeprecationWarning, match="moved to kfc_jax.shapes"):
    from kfc_jax.ops import suggest_factors
  assert suggest_factors is kfc_jax.suggest_factors
