"""The shared argument checks (kfc_jax/_checks.py): what they accept and say."""

from __future__ import annotations

import numpy as np
import pytest

from kfc_jax import _checks


class TestStrategy:
  @pytest.mark.parametrize("name", ["auto", "factored", "materialize"])
  def test_names(self, name):
    assert _checks.strategy(name) == name == _checks.strategy(name, 3)

  def test_an_order_needs_the_number_of_factors(self):
    assert _checks.strategy([2, 0, 1], 3) == (2, 0, 1)
    with pytest.raises(
      ValueError,
      match=r"one of \('auto', 'factored', 'materialize', 'autotune'\),"
      r" got \(1, 0\)",
    ):
      _checks.strategy((1, 0))

  @pytest.mark.parametrize("bad", ["fast", (0, 0), (0, 1, 2), ("a", "b"), 1.5])
  def test_bad(self, bad):
    with pytest.raises(
      ValueError,
      match=r"or a permutation of \(0, 1\) \(the factor"
      r" contraction order\), got",
    ):
      _checks.strategy(bad, 2)


def test_pair():
  assert _checks.pair(3, "strides") == (3, 3)
  assert _checks.pair((2, 1), "strides") == (2, 1)
  with pytest.raises(
    ValueError,
    match=r"strides must be a positive int or a pair"
    r" \(height, width\) of positive ints, got \(1, 2, 3\)",
  ):
    _checks.pair((1, 2, 3), "strides")
  with pytest.raises(ValueError, match=r"strides\[1\] must be a positive integer"):
    _checks.pair((1, 0), "strides")


@pytest.mark.parametrize(
  "padding,expected",
  [
    ("same", "SAME"),
    ("Circular", "CIRCULAR"),
    (2, ((2, 2), (2, 2))),
    ((1, 0), ((1, 1), (0, 0))),
    (((1, 2), (0, 3)), ((1, 2), (0, 3))),
  ],
)
def test_normalize_padding(padding, expected):
  assert _checks.normalize_padding(padding) == expected


@pytest.mark.parametrize("bad", ["FULL", True, (1, 2, 3), ((1, 2), (3,)), 1.0])
def test_bad_padding(bad):
  with pytest.raises(
    ValueError,
    match=r"padding must be one of \('SAME', 'VALID',"
    r" 'SAME_LOWER', 'CIRCULAR'\), an int p",
  ):
    _checks.normalize_padding(bad)


def test_divisor_and_balanced_pairs():
  assert _checks.divisor_pairs(12) == [(1, 12), (2, 6), (3, 4), (4, 3), (6, 2), (12, 1)]
  assert _checks.balanced_pairs(36, limit=3) == [(6, 6), (4, 9), (9, 4)]
  assert _checks.divisor_pairs(7) == [(1, 7), (7, 1)]


def test_relative_error(rng):
  t = rng.standard_normal((5, 4))
  noise = rng.standard_normal((5, 4))
  expected = np.sqrt((noise**2).sum() / (t**2).sum())
  assert _checks.relative_error(t, t + noise) == pytest.approx(expected, rel=1e-12)
  assert _checks.relative_error(np.zeros(3), np.ones(3)) == 0.0
