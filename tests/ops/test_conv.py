"""kron_conv, kron_conv_sum and kron_kernel against a float64 reference.

Their plans are tested in test_conv_plan.py.

The reference kernel is built with ``np.kron`` (which works axis by axis on
4-D arrays, exactly the convention ``K[(p1,p2),(q1,q2),(i1,i2),(o1,o2)] =
A[p1,q1,i1,o1] B[p2,q2,i2,o2]``) and convolved by ``lax.conv_general_dilated``
in float64.
"""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from jax.test_util import check_grads
from references import np_conv, np_conv_kernel, random_term

import kfc_jax

DN = ("NHWC", "HWIO", "NHWC")

# (A shape, B shape) without rank, (h, w, in, out); ids name the spatial split.
SPLITS = {
  "4x4=2x2(x)2x2": ((2, 2, 2, 3), (2, 2, 3, 2)),
  "9x9=3x3(x)3x3": ((3, 3, 2, 2), (3, 3, 2, 3)),
  "6x3=2x3(x)3x1": ((2, 3, 3, 2), (3, 1, 2, 2)),
  "3x3=3x3(x)1x1": ((3, 3, 4, 4), (1, 1, 2, 3)),
  "3x3=1x1(x)3x3": ((1, 1, 2, 3), (3, 3, 3, 2)),
  "3x3=3x1(x)1x3": ((3, 1, 2, 2), (1, 3, 3, 2)),
  "1x1=1x1(x)1x1": ((1, 1, 3, 2), (1, 1, 2, 4)),
}
# (strides, padding) pairs covering stride 1 and 2, SAME/VALID/explicit.
CONV_ARGS = [
  (1, "SAME"),
  (2, "SAME"),
  (1, "VALID"),
  (2, "VALID"),
  ((2, 1), ((1, 2), (0, 1))),
]


def jitted(fn=None, **kwargs):
  """``fn`` with static keyword arguments, jitted (the path users run)."""
  return jax.jit(functools.partial(fn or kfc_jax.kron_conv, **kwargs))


def assert_close(y, expected, tol=1e-10):
  chex.assert_shape(y, expected.shape)
  err = np.abs(np.asarray(y, np.float64) - expected).max() / np.abs(expected).max()
  assert err < tol, err


@pytest.mark.parametrize("split", list(SPLITS), ids=str)
@pytest.mark.parametrize("strides,padding", CONV_ARGS, ids=str)
def test_matches_reference(x64, rng, split, strides, padding):
  a_shape, b_shape = SPLITS[split]
  case = list(SPLITS).index(split) + CONV_ARGS.index((strides, padding))
  rank = 1 + case % 4  # ranks 1..4
  size = (11, 12) if case % 2 else (12, 9)  # odd and even sizes
  a, b = random_term(rng, a_shape, b_shape, rank)
  x = rng.standard_normal((2, *size, a_shape[2] * b_shape[2]))
  expected = np_conv(x, np_conv_kernel(a, b), strides, padding)
  y = jitted(strides=strides, padding=padding, strategy="factored")(x, (a, b))
  assert_close(y, expected)


@pytest.mark.parametrize("split", ["9x9=3x3(x)3x3", "1x1=1x1(x)1x1"])
def test_materialize_and_numpy_reference_match_lax(x64, rng, split):
  a_shape, b_shape = SPLITS[split]
  a, b = random_term(rng, a_shape, b_shape, 3)
  x = rng.standard_normal((2, 11, 10, a_shape[2] * b_shape[2]))
  kernel = np_conv_kernel(a, b)
  for strides, padding in [((2, 3), ((2, 0), (1, -1))), (2, "SAME_LOWER"), (1, 2)]:
    expected = np.asarray(
      lax.conv_general_dilated(
        x,
        kernel,
        (strides,) * 2 if isinstance(strides, int) else strides,
        ((padding,) * 2,) * 2 if isinstance(padding, int) else padding,
        dimension_numbers=DN,
      )
    )
    assert_close(np_conv(x, kernel, strides, padding), expected, 1e-12)
    y = jitted(strides=strides, padding=padding, strategy="materialize")(x, (a, b))
    assert_close(y, expected)


@pytest.mark.parametrize(
  "split", ["4x4=2x2(x)2x2", "3x3=3x3(x)1x1", "3x3=1x1(x)3x3", "6x3=2x3(x)3x1"]
)
@pytest.mark.parametrize("strides", [1, 2, 3])
def test_kernel_dilation(x64, rng, split, strides):
  a_shape, b_shape = SPLITS[split]
  a, b = random_term(rng, a_shape, b_shape, 2)
  x = rng.standard_normal((1, 15, 14, a_shape[2] * b_shape[2]))
  for dilation, padding in [((2, 3), "SAME"), (2, "VALID")]:
    expected = np_conv(x, np_conv_kernel(a, b), strides, padding, dilation)
    y = jitted(strides=strides, padding=padding, kernel_dilation=dilation, strategy="factored")(
      x, (a, b)
    )
    assert_close(y, expected)


@pytest.mark.parametrize(
  "split", ["3x3=3x1(x)1x3", "3x3=1x1(x)3x3", "3x3=3x3(x)1x1", "6x3=2x3(x)3x1"]
)
@pytest.mark.parametrize("strides", [3, 4, (4, 1)], ids=str)
@pytest.mark.parametrize("strategy", ["factored", "auto"])
def test_strides_beyond_a_factor(x64, rng, split, strides, strategy):
  # A stride larger than B's span on an axis where A has size 1 once gave A a
  # dilation of 0.
  a_shape, b_shape = SPLITS[split]
  a, b = random_term(rng, a_shape, b_shape, 2)
  x = rng.standard_normal((1, 13, 14, a_shape[2] * b_shape[2]))
  for padding in ("SAME", "VALID"):
    expected = np_conv(x, np_conv_kernel(a, b), strides, padding)
    y = jitted(strides=strides, padding=padding, strategy=strategy)(x, (a, b))
    assert_close(y, expected)


def test_circular_padding(x64, rng):
  a, b = random_term(rng, (2, 3, 2, 2), (2, 1, 2, 3), 2)  # K: 4x3
  x = rng.standard_normal((2, 7, 8, 4))
  pads = lax.padtype_to_pads((7, 8), (4, 3), (1, 1), "SAME")
  wrapped = np.pad(x, ((0, 0), *pads, (0, 0)), mode="wrap")
  expected = np_conv(wrapped, np_conv_kernel(a, b), 1, "VALID")
  for strategy in ("factored", "materialize"):
    assert_close(jitted(padding="circular", strategy=strategy)(x, (a, b)), expected)


@pytest.mark.parametrize("batch_shape", [(), (3,), (2, 1, 2)], ids=str)
def test_batch_axes(x64, rng, batch_shape):
  a, b = random_term(rng, (2, 2, 2, 2), (2, 1, 2, 3), 1)
  x = rng.standard_normal((*batch_shape, 6, 5, 4))
  expected = np_conv(x.reshape(-1, 6, 5, 4), np_conv_kernel(a, b))
  y = kfc_jax.kron_conv(x, (a, b))
  assert_close(y, expected.reshape(*batch_shape, *expected.shape[1:]))


def test_four_dimensional_factors_mean_rank_one(x64, rng):
  a, b = random_term(rng, (3, 3, 2, 2), (1, 1, 3, 2), 1)
  x = rng.standard_normal((2, 6, 6, 6))
  assert_close(kfc_jax.kron_conv(x, (a[0], b[0])), np_conv(x, np.kron(a[0], b[0])))


def test_kron_kernel_matches_np_kron(x64, rng):
  for a_shape, b_shape in SPLITS.values():
    a, b = random_term(rng, a_shape, b_shape, 3)
    np.testing.assert_allclose(kfc_jax.kron_kernel((a, b)), np_conv_kernel(a, b), rtol=1e-12)


@pytest.mark.parametrize("strategy", ["factored", "materialize", "auto"])
@pytest.mark.parametrize("strides,padding", [(1, "SAME"), (2, "VALID")], ids=str)
def test_sum_of_terms_with_different_splits(x64, rng, strategy, strides, padding):
  # Three KConv terms composing to a 6x6 kernel, 12 -> 12 channels.
  terms = [
    random_term(rng, (3, 3, 3, 4), (2, 2, 4, 3), 2),
    random_term(rng, (2, 6, 12, 1), (3, 1, 1, 12), 1),
    random_term(rng, (1, 2, 2, 6), (6, 3, 6, 2), 3),
  ]
  x = rng.standard_normal((2, 13, 10, 12))
  expected = np_conv(x, sum(np_conv_kernel(*t) for t in terms), strides, padding)
  y = jitted(kfc_jax.kron_conv_sum, strides=strides, padding=padding, strategy=strategy)(x, terms)
  assert_close(y, expected)


# Relative-error tolerances per dtype, for sums of ~100 O(1) products.
TOLERANCES = {jnp.float32: 1e-5, jnp.bfloat16: 5e-2, jnp.float16: 5e-3}


@pytest.mark.parametrize("dtype", list(TOLERANCES), ids=lambda d: jnp.dtype(d).name)
@pytest.mark.parametrize("strategy", ["factored", "materialize"])
def test_dtypes(rng, dtype, strategy):
  a, b = (jnp.asarray(f, dtype) for f in random_term(rng, (3, 3, 4, 4), (1, 1, 2, 2), 2))
  x = jnp.asarray(rng.standard_normal((2, 8, 8, 8)), dtype)
  expected = np_conv(
    np.asarray(x, np.float64), np_conv_kernel(np.asarray(a, np.float64), np.asarray(b, np.float64))
  )
  y = kfc_jax.kron_conv(x, (a, b), strategy=strategy, precision=lax.Precision.HIGHEST)
  assert y.dtype == dtype
  assert_close(y, expected, TOLERANCES[dtype])


@pytest.mark.parametrize("strategy", ["factored", "materialize", "auto"])
def test_preferred_element_type_and_promotion(rng, strategy):
  a, b = (jnp.asarray(f, jnp.bfloat16) for f in random_term(rng, (2, 2, 4, 4), (2, 2, 2, 2), 2))
  x = jnp.asarray(rng.standard_normal((2, 8, 8, 8)), jnp.bfloat16)
  y = kfc_jax.kron_conv(x, (a, b), preferred_element_type=jnp.float32, strategy=strategy)
  assert y.dtype == jnp.float32
  # Against float64 maths on the same (bf16-rounded) inputs: the bf16 kernel
  # or intermediate costs one bf16 rounding, no more.
  f64 = lambda t: np.asarray(t, np.float64)
  assert_close(y, np_conv(f64(x), np_conv_kernel(f64(a), f64(b))), 1e-2)
  assert kfc_jax.kron_conv(x.astype(jnp.float32), (a, b)).dtype == jnp.float32


@pytest.mark.parametrize(
  "split,strategy",
  [
    ("4x4=2x2(x)2x2", "factored"),
    ("3x3=3x3(x)1x1", "factored"),
    ("3x3=1x1(x)3x3", "factored"),
    ("4x4=2x2(x)2x2", "materialize"),
  ],
  ids=str,
)
def test_gradients(x64, rng, split, strategy):
  a_shape, b_shape = SPLITS[split]
  a, b = (jnp.asarray(f) for f in random_term(rng, a_shape, b_shape, 2))
  x = jnp.asarray(rng.standard_normal((2, 5, 6, a_shape[2] * b_shape[2])))

  @jax.jit
  def f(x, a, b):
    return kfc_jax.kron_conv(x, (a, b), strides=2, padding="SAME", strategy=strategy)

  check_grads(f, (x, a, b), order=1, modes=["fwd", "rev"])


def test_sum_gradients(x64, rng):
  t1 = tuple(jnp.asarray(f) for f in random_term(rng, (3, 3, 2, 2), (1, 1, 2, 2), 1))
  t2 = tuple(jnp.asarray(f) for f in random_term(rng, (3, 1, 4, 1), (1, 3, 1, 4), 2))
  x = jnp.asarray(rng.standard_normal((1, 5, 5, 4)))
  f = jax.jit(lambda x, t1, t2: kfc_jax.kron_conv_sum(x, [t1, t2], strategy="factored"))
  check_grads(f, (x, t1, t2), order=1, modes=["rev"])


def test_jit_and_no_retracing(rng):
  a, b = (jnp.asarray(f, jnp.float32) for f in random_term(rng, (2, 2, 4, 4), (2, 2, 2, 2), 3))
  xs = [jnp.asarray(rng.standard_normal((2, 8, 8, 8)), jnp.float32) for _ in range(3)]

  @jax.jit
  @chex.assert_max_traces(n=1)
  def f(x, a, b):
    return kfc_jax.kron_conv(x, (a, b), strides=2)

  kernel = np_conv_kernel(a, b)
  for x in xs:
    assert_close(f(x, a, b), np_conv(x, kernel, 2), 1e-5)


class TestErrors:
  A, B = jnp.ones((2, 2, 2, 3)), jnp.ones((1, 1, 3, 2))  # K: [2, 2, 6, 6]

  def test_channel_mismatch(self):
    with pytest.raises(
      ValueError,
      match=r"x must have shape \[\*batch, height, width, 6\]"
      r".*ai\*bi = 2\*3.*\(1, 5, 5, 4\)",
    ):
      kfc_jax.kron_conv(jnp.ones((1, 5, 5, 4)), (self.A, self.B))

  def test_x_too_few_axes(self):
    with pytest.raises(ValueError, match="x must have shape"):
      kfc_jax.kron_conv(jnp.ones((5, 6)), (self.A, self.B))

  def test_input_smaller_than_kernel(self):
    with pytest.raises(
      ValueError,
      match=r"x's height 1 padded by \(0, 0\) is 1, smaller"
      r" than the \(dilated\) kernel height 2.*padding='VALID'",
    ):
      kfc_jax.kron_conv(jnp.ones((1, 1, 5, 6)), (self.A, self.B), padding="VALID")

  def test_integer_x_promotes(self):
    y = kfc_jax.kron_conv(jnp.ones((1, 4, 4, 6), jnp.int32), (self.A, self.B))
    assert y.dtype == jnp.float32

  def test_integer_factor(self):
    with pytest.raises(TypeError, match=r"factors\[1\] \(B\) must have a real floating dtype"):
      kfc_jax.kron_conv(jnp.ones((1, 4, 4, 6)), (self.A, self.B.astype(jnp.int32)))

  def test_factor_ndim(self):
    with pytest.raises(
      ValueError,
      match=r"factors\[0\] \(A\) must have shape \[rank, h, w,"
      r" in, out\] or \[h, w, in, out\].*\(2, 2, 2\) \(3-D\)",
    ):
      kfc_jax.kron_conv(jnp.ones((1, 4, 4, 6)), (jnp.ones((2, 2, 2)), self.B))

  def test_rank_mismatch(self):
    with pytest.raises(ValueError, match=r"same rank.*A \(2, 2, 2, 2, 3\) and B \(3, 1, 1, 3, 2\)"):
      kfc_jax.kron_conv(
        jnp.ones((1, 4, 4, 6)), (jnp.ones((2, 2, 2, 2, 3)), jnp.ones((3, 1, 1, 3, 2)))
      )

  def test_not_a_pair(self):
    with pytest.raises(TypeError, match=r"factors must be a pair \(A, B\).*got ArrayImpl"):
      kfc_jax.kron_conv(jnp.ones((1, 4, 4, 6)), jnp.ones((2, 2, 6, 6)))
    with pytest.raises(ValueError, match=r"must be a pair.*got 3 factors"):
      kfc_jax.kron_conv(jnp.ones((1, 4, 4, 6)), (self.A, self.B, self.B))

  def test_list_of_pairs_points_to_kron_conv_sum(self):
    with pytest.raises(TypeError, match="got a sequence of 3 pairs; use kron_conv_sum"):
      kfc_jax.kron_conv(jnp.ones((1, 4, 4, 6)), [(self.A, self.B)] * 3)

  @pytest.mark.parametrize("strides", [0, (1, 2, 3), (1, -1)], ids=str)
  def test_bad_strides(self, strides):
    with pytest.raises(ValueError, match="strides"):
      kfc_jax.kron_conv(jnp.ones((1, 4, 4, 6)), (self.A, self.B), strides=strides)

  def test_strides_type(self):
    with pytest.raises(TypeError, match=r"strides\[0\] must be a positive integer, got 1.5"):
      kfc_jax.kron_conv(jnp.ones((1, 4, 4, 6)), (self.A, self.B), strides=(1.5, 1))

  def test_bad_dilation(self):
    with pytest.raises(
      ValueError,
      match=r"kernel_dilation must be a positive integer"
      r" \(>= 1\), got 0",
    ):
      kfc_jax.kron_conv(jnp.ones((1, 4, 4, 6)), (self.A, self.B), kernel_dilation=0)

  @pytest.mark.parametrize("padding", ["FULL", (1, 2, 3), ((1, 2), (3,)), 1.5], ids=str)
  def test_bad_padding(self, padding):
    with pytest.raises(
      ValueError,
      match=r"padding must be one of \('SAME', 'VALID',"
      r" 'SAME_LOWER', 'CIRCULAR'\), an int p.*got",
    ):
      kfc_jax.kron_conv(jnp.ones((1, 4, 4, 6)), (self.A, self.B), padding=padding)

  def test_bad_strategy(self):
    with pytest.raises(
      ValueError,
      match=r"strategy must be one of \('auto', 'factored',"
      r" 'materialize', 'autotune'\), got 'fast'",
    ):
      kfc_jax.kron_conv(jnp.ones((1, 4, 4, 6)), (self.A, self.B), strategy="fast")

  def test_sum_terms_must_agree(self):
    other = (jnp.ones((3, 3, 2, 3)), jnp.ones((1, 1, 3, 2)))
    with pytest.raises(
      ValueError,
      match=r"same kernel shape.*terms\[0\] gives \(2, 2, 6, 6\)"
      r" but terms\[1\] gives \(3, 3, 6, 6\)",
    ):
      kfc_jax.kron_conv_sum(jnp.ones((1, 4, 4, 6)), [(self.A, self.B), other])

  def test_sum_needs_terms(self):
    with pytest.raises(TypeError, match="terms must be a non-empty sequence of"):
      kfc_jax.kron_conv_sum(jnp.ones((1, 4, 4, 6)), [])
    with pytest.raises(TypeError, match=r"terms\[0\] must be a pair"):
      kfc_jax.kron_conv_sum(jnp.ones((1, 4, 4, 6)), [self.A])

  def test_plan_bad_shapes(self):
    with pytest.raises(ValueError, match=r"factor_shapes must be a pair"):
      kfc_jax.kron_conv_plan((1, 4, 4, 6), [(2, 2, 2, 3)])
    with pytest.raises(ValueError, match=r"factor_shapes A must be \(rank, h, w, in, out\)"):
      kfc_jax.kron_conv_plan((1, 4, 4, 6), [(2, 2, 3), (1, 1, 3, 2)])
    with pytest.raises(ValueError, match=r"factor_shapes A and B must have the same rank"):
      kfc_jax.kron_conv_plan((1, 4, 4, 6), [(2, 2, 2, 2, 3), (1, 1, 1, 3, 2)])
    with pytest.raises(ValueError, match=r"x_shape must have shape \[\*batch, height, width, 6\]"):
      kfc_jax.kron_conv_plan((1, 4, 4, 5), [(2, 2, 2, 3), (1, 1, 3, 2)])
