"""NNX layers: paper parameter counts, from_linear, initialisation, KDL, errors."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import np_kron, random_factors
from flax import nnx
from layer_cases import FAST_INIT, kfc_term_kernel, nnx_params

import kfc_jax

KFC = kfc_jax.nnx.KFC
KroneckerLinear = kfc_jax.nnx.KroneckerLinear

# ---------------------------------------------------------------------------
# docs/DESIGN.md, "KFC formulations": the paper's configurations, factor parameters (bias on top).
# ---------------------------------------------------------------------------

COMBINED = [("II", (64, 4)), ("III", (128, 2)), ("IV", (128, 2))]
PAPER_TABLE = [
  ("MNIST KFC-II", (3, 3, 32), [("II", (64, 4))], 2_084),
  ("MNIST KFC-Combined", (3, 3, 32), COMBINED, 26_672),
  ("SVHN KFC-II", (5, 5, 256), [("II", (64, 4))], 16_484),
  ("SVHN KFC-Combined", (5, 5, 256), COMBINED, 344_184),
  ("SVHN KFC-Rank10", (5, 5, 256), [("II", (64, 4), 10)], 164_840),
  ("MNIST KFC-I", (3, 3, 32), [("I", (256, 1))], 32 * 256 + 9),
]


@pytest.mark.parametrize(
  "name,in_shape,terms,factor_params", PAPER_TABLE, ids=[row[0] for row in PAPER_TABLE]
)
def test_paper_parameter_counts(name, in_shape, terms, factor_params):
  layer = nnx.eval_shape(lambda: KFC(in_shape, 256, terms=terms, rngs=nnx.Rngs(0)))
  factors = nnx.state(layer, kfc_jax.nnx.KroneckerFactor)
  assert sum(v.size for v in jax.tree.leaves(factors)) == factor_params
  assert sum(v.size for v in jax.tree.leaves(nnx.state(layer, nnx.Param))) == (factor_params + 256)
  cost = layer.cost()
  assert cost.params == factor_params + 256
  assert cost.dense_params == np.prod(in_shape) * 256 + 256  # 73,728 / 1,638,400 + bias
  assert sum(kfc_jax.KFCTerm(*t).params(in_shape) for t in terms) == factor_params


def test_baseline_dense_counts():
  assert 3 * 3 * 32 * 256 == 73_728 and 5 * 5 * 256 * 256 == 1_638_400
  low = nnx.eval_shape(lambda: kfc_jax.nnx.LowRankLinear(288, 256, rank=96, rngs=nnx.Rngs(0)))
  assert low.cost().params == 96 * (288 + 256) + 256


def test_example_signatures():
  # The MNIST example builds exactly these.
  rngs = nnx.Rngs(0)
  kfc = KFC(in_shape=(3, 3, 32), out_features=256, terms=[("II", (64, 4))], rngs=rngs)
  kfc_i = KFC(in_shape=(3, 3, 32), out_features=256, terms=[("I", (256, 1))], rngs=rngs)
  low = kfc_jax.nnx.LowRankLinear(288, 256, rank=96, rngs=rngs)
  x = jnp.ones((2, 3, 3, 32))
  for layer in (kfc, kfc_i):
    assert layer(x).shape == (2, 256)
  assert low(x.reshape(2, -1)).shape == (2, 256)


# ---------------------------------------------------------------------------
# from_linear
# ---------------------------------------------------------------------------


def _linear(kernel, bias=None):
  linear = nnx.Linear(
    *kernel.shape, use_bias=bias is not None, param_dtype=jnp.float64, rngs=nnx.Rngs(0)
  )
  linear.kernel.set_value(jnp.asarray(kernel))
  if bias is not None:
    linear.bias.set_value(jnp.asarray(bias))
  return linear


def _rearranged_singular_values(w, ms, ns):
  """Van Loan-Pitsianis, written here independently of the library."""
  (m1, m2), (n1, n2) = ms, ns
  r = w.reshape(m1, m2, n1, n2).transpose(0, 2, 1, 3).reshape(m1 * n1, m2 * n2)
  return np.linalg.svd(r, compute_uv=False)


def test_kronecker_linear_from_exact_kronecker_kernel(x64, rng):
  w = np_kron(random_factors(rng, (3, 4), (5, 2), 2))
  b = rng.standard_normal(10)
  linear = _linear(w, b)
  layer = KroneckerLinear.from_linear(linear, in_factors=(3, 4), out_factors=(5, 2), rank=2)
  assert layer.relative_error < 1e-12
  assert layer.param_dtype == jnp.float64 and layer.use_bias
  np.testing.assert_allclose(layer.materialize(), w, atol=1e-12)
  x = jnp.asarray(rng.standard_normal((4, 12)))
  np.testing.assert_allclose(layer(x), linear(x), rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("rank", [1, 3])
def test_kronecker_linear_error_is_the_discarded_spectrum(x64, rng, rank):
  w = rng.standard_normal((12, 10))
  layer = KroneckerLinear.from_linear(_linear(w), in_factors=(3, 4), out_factors=(5, 2), rank=rank)
  s = _rearranged_singular_values(w, (3, 4), (5, 2))
  expected = np.sqrt(np.sum(s[rank:] ** 2)) / np.linalg.norm(w)
  achieved = np.linalg.norm(w - np.asarray(layer.materialize())) / np.linalg.norm(w)
  np.testing.assert_allclose(layer.relative_error, expected, rtol=1e-9)
  np.testing.assert_allclose(achieved, expected, rtol=1e-9)
  assert not layer.use_bias  # the linear layer had none


def test_kronecker_linear_from_linear_padded_and_mixed_terms(x64, rng):
  # A kernel that is exactly a padded Kronecker product: the EM refinement
  # drives the error well below the zero-filled first fit.
  full = np_kron(random_factors(rng, (4, 4), (3, 3), 1))
  w = full[:13, :8]
  layer = KroneckerLinear.from_linear(_linear(w), in_factors=(4, 4), out_factors=(3, 3), sweeps=200)
  assert layer.relative_error < 1e-3
  achieved = np.linalg.norm(w - np.asarray(layer.materialize())) / np.linalg.norm(w)
  np.testing.assert_allclose(achieved, layer.relative_error, rtol=1e-9)
  mixed = KroneckerLinear.from_linear(
    _linear(w), terms=[((4, 4), (3, 3)), ((2, 8), (9, 1))], sweeps=20
  )
  achieved = np.linalg.norm(w - np.asarray(mixed.materialize())) / np.linalg.norm(w)
  np.testing.assert_allclose(achieved, mixed.relative_error, rtol=1e-9)
  assert mixed.relative_error < 0.1


def _kfc_kernel(rng, in_shape, terms):
  total = 0.0
  for name, out, rank in terms:
    spec = kfc_jax.get_formulation(name)
    fs = [rng.standard_normal(s) for s in spec.factor_shapes(in_shape, out, rank)]
    total = total + kfc_term_kernel(fs, in_shape, spec.groups)
  return total


@pytest.mark.parametrize(
  "name,out", [("I", (6, 1)), ("II", (3, 2)), ("III", (2, 3)), ("IV", (6, 1)), ("CHW", (1, 2, 3))]
)
def test_kfc_from_exact_formulation_kernel(x64, rng, name, out):
  in_shape = (3, 4, 5)
  w = _kfc_kernel(rng, in_shape, [(name, out, 1)])
  b = rng.standard_normal(6)
  linear = _linear(w, b)
  layer = KFC.from_linear(linear, in_shape, [(name, out)])
  assert layer.relative_error < 1e-9
  x = jnp.asarray(rng.standard_normal((2, *in_shape)))
  np.testing.assert_allclose(layer(x), linear(x.reshape(2, -1)), rtol=1e-8, atol=1e-8)


def test_kfc_from_linear_error_is_the_discarded_spectrum(x64, rng):
  h, w_, c, o1, o2 = 3, 4, 5, 3, 2
  w = rng.standard_normal((h * w_ * c, o1 * o2))
  layer = KFC.from_linear(_linear(w), (h, w_, c), [("II", (o1, o2), 2)])
  # Formulation II groups (C, O1) against (H, W, O2).
  r = w.reshape(h, w_, c, o1, o2).transpose(2, 3, 0, 1, 4).reshape(c * o1, -1)
  s = np.linalg.svd(r, compute_uv=False)
  expected = np.sqrt(np.sum(s[2:] ** 2)) / np.linalg.norm(w)
  np.testing.assert_allclose(layer.relative_error, expected, rtol=1e-9)


def test_kfc_combined_from_linear_refines_the_greedy_fit(x64, rng):
  in_shape = (3, 4, 5)
  w = _kfc_kernel(rng, in_shape, [("II", (3, 2), 1), ("III", (2, 3), 1)])
  terms = [("II", (3, 2)), ("III", (2, 3))]
  greedy = KFC.from_linear(_linear(w), in_shape, terms, sweeps=0)
  refined = KFC.from_linear(_linear(w), in_shape, terms, sweeps=30)
  single = KFC.from_linear(_linear(w), in_shape, terms[:1])
  assert refined.relative_error <= greedy.relative_error <= single.relative_error
  assert refined.relative_error < 0.1
  achieved = np.linalg.norm(w - np.asarray(refined.materialize())) / np.linalg.norm(w)
  np.testing.assert_allclose(achieved, refined.relative_error, rtol=1e-9)


def test_low_rank_from_linear(x64, rng):
  w = rng.standard_normal((12, 10))
  b = rng.standard_normal(10)
  layer = kfc_jax.nnx.LowRankLinear.from_linear(_linear(w, b), rank=4)
  s = np.linalg.svd(w, compute_uv=False)
  np.testing.assert_allclose(
    layer.relative_error, np.sqrt(np.sum(s[4:] ** 2)) / np.linalg.norm(w), rtol=1e-9
  )
  np.testing.assert_allclose(layer.bias[...], b)
  exact = kfc_jax.nnx.LowRankLinear.from_linear(_linear(w, b), rank=10)
  assert exact.relative_error < 1e-12


def test_from_linear_keeps_float32_and_overrides(rng):
  linear = nnx.Linear(12, 10, rngs=nnx.Rngs(0))
  layer = KroneckerLinear.from_linear(
    linear, in_factors=(3, 4), out_factors=(5, 2), use_bias=False, precision="highest"
  )
  assert layer.factor_0_0[...].dtype == jnp.float32
  assert layer.bias is None and layer.precision == "highest"


# ---------------------------------------------------------------------------
# Initialisation: output variance of Flax's default (lecun_normal) dense layer
# ---------------------------------------------------------------------------

INIT_LAYERS = [
  ("linear", lambda r: KroneckerLinear(256, 256, use_bias=False, rngs=r)),
  ("linear-padded-r3", lambda r: KroneckerLinear(97, 50, rank=3, use_bias=False, rngs=r)),
  (
    "linear-terms",
    lambda r: KroneckerLinear(
      64, 64, terms=[((8, 8), (8, 8), 2), ((4, 4, 4), (4, 4, 4))], use_bias=False, rngs=r
    ),
  ),
  ("kfc-combined", lambda r: KFC((3, 3, 32), 256, terms=COMBINED, use_bias=False, rngs=r)),
  (
    "kfc-chw-r2",
    lambda r: KFC((4, 4, 16), 64, terms=[("CHW", (4, 4, 4), 2)], use_bias=False, rngs=r),
  ),
  ("low-rank", lambda r: kfc_jax.nnx.LowRankLinear(288, 256, rank=96, use_bias=False, rngs=r)),
  (
    "kdl-linear-r2",
    lambda r: kfc_jax.nnx.KDL(
      256,
      256,
      in_factors=(16, 16),
      out_factors=(16, 16),
      rank=2,
      activation=None,
      use_bias=False,
      rngs=r,
    ),
  ),
  ("dense", lambda r: nnx.Linear(256, 256, use_bias=False, rngs=r)),
]


@pytest.mark.parametrize("make", [m for _, m in INIT_LAYERS], ids=[n for n, _ in INIT_LAYERS])
def test_default_init_matches_lecun_dense_output_variance(make):
  # For x ~ N(0, I), E[y_j^2] = ||W[:, j]||^2; lecun_normal gives E = 1.
  # Averaged over seeds, the Kronecker layers must give 1 too.
  seeds = 24
  variances = []
  for seed in range(seeds):
    layer = make(nnx.Rngs(seed))
    w = layer.kernel[...] if isinstance(layer, nnx.Linear) else layer.materialize()
    variances.append(float(jnp.mean(jnp.sum(w.astype(jnp.float32) ** 2, axis=0))))
  mean = np.mean(variances)
  stderr = np.std(variances) / np.sqrt(seeds)
  assert abs(mean - 1.0) < max(4 * stderr, 0.02), (mean, stderr)


def test_default_init_output_variance_on_data():
  layer = KFC((3, 3, 32), 256, terms=[("II", (64, 4), 4)], rngs=nnx.Rngs(3))
  x = jax.random.normal(jax.random.key(1), (4096, 3, 3, 32))
  # One draw of the weights: loose, but catches a wrong scale by sqrt(rank).
  assert 0.6 < float(jnp.var(layer(x))) < 1.6


# ---------------------------------------------------------------------------
# KDL
# ---------------------------------------------------------------------------


def test_kdl_without_activation_or_bias_is_kronecker_linear(x64, rng):
  kw = dict(
    in_factors=(3, 4),
    out_factors=(5, 2),
    rank=3,
    use_bias=False,
    param_dtype=jnp.float64,
    **FAST_INIT,
  )
  kdl = kfc_jax.nnx.KDL(12, 10, activation=None, rngs=nnx.Rngs(0), **kw)
  lin = KroneckerLinear(12, 10, rngs=nnx.Rngs(1), **kw)
  lin.factor_0_0.set_value(kdl.left[...])
  lin.factor_0_1.set_value(kdl.right[...])
  x = jnp.asarray(rng.standard_normal((7, 12)))
  np.testing.assert_allclose(kdl(x), lin(x), rtol=1e-12, atol=1e-12)
  np.testing.assert_allclose(kdl.materialize(), lin.materialize(), rtol=1e-12)
  reference = np.asarray(x) @ np_kron([np.asarray(kdl.left[...]), np.asarray(kdl.right[...])])
  np.testing.assert_allclose(kdl(x), reference, rtol=1e-11, atol=1e-11)


def test_kdl_activation_applies_to_both_layers(x64):
  kdl = kfc_jax.nnx.KDL(
    4,
    4,
    in_factors=(2, 2),
    out_factors=(2, 2),
    use_bias=False,
    param_dtype=jnp.float64,
    rngs=nnx.Rngs(0),
  )
  kdl.right.set_value(jnp.ones_like(kdl.right[...]))
  kdl.left.set_value(-jnp.ones_like(kdl.left[...]))
  # The right layer's output is positive (relu keeps it); the left layer's is
  # negative, so only a relu after the left layer makes the output 0.
  np.testing.assert_array_equal(kdl(jnp.ones((4,))), np.zeros(4))
  kdl.left.set_value(jnp.ones_like(kdl.left[...]))
  assert (np.asarray(kdl(jnp.ones((4,)))) > 0).all()


# ---------------------------------------------------------------------------
# Errors: argument, what it got, what it needed (and choices that work)
# ---------------------------------------------------------------------------

R = nnx.Rngs(0)
ERRORS = [
  (
    "in_shape-rank",
    lambda: KFC((3, 3), 256, terms=["II"], rngs=R),
    ValueError,
    [r"in_shape must be \(H, W, C\)", r"got \(3, 3\)"],
  ),
  (
    "in_shape-zero",
    lambda: KFC((3, 0, 32), 256, terms=["II"], rngs=R),
    ValueError,
    [r"in_shape\[1\]", "got 0"],
  ),
  (
    "unknown-formulation",
    lambda: KFC((3, 3, 32), 256, terms=[("V", (64, 4))], rngs=R),
    ValueError,
    [r"terms\[0\] formulation", r"\('I', 'II', 'III', 'IV', 'CHW'\)", "got 'V'"],
  ),
  (
    "out-factors-product",
    lambda: KFC((3, 3, 32), 256, terms=[("II", (64, 8))], rngs=R),
    ValueError,
    [
      r"terms\[0\] \(formulation II\) out_factors",
      "out_features=256",
      r"got \(64, 8\) \(product 512\)",
      r"e\.g\. \(16, 16\), \(8, 32\), \(32, 8\)",
    ],
  ),
  (
    "out-factors-count",
    lambda: KFC((3, 3, 32), 256, terms=[("CHW", (64, 4))], rngs=R),
    ValueError,
    ["must be 3 positive integers", r"e\.g\. \(8, 8, 4\)"],
  ),
  (
    "formulation-I-fixed",
    lambda: KFC((3, 3, 32), 256, terms=[("I", (128, 2))], rngs=R),
    ValueError,
    ["fixes output factor 1 to 1", r"use \(256, 1\)"],
  ),
  (
    "kfc-rank",
    lambda: KFC((3, 3, 32), 256, terms=[("II", (64, 4), 0)], rngs=R),
    ValueError,
    [r"terms\[0\] rank must be a positive integer", "got 0"],
  ),
  (
    "kfc-terms-empty",
    lambda: KFC((3, 3, 32), 256, terms=[], rngs=R),
    TypeError,
    ["terms must be a non-empty list"],
  ),
  (
    "kfc-term-malformed",
    lambda: KFC((3, 3, 32), 256, terms=[("II",)], rngs=R),
    TypeError,
    [r"terms\[0\] must be \(formulation, out_factors\)"],
  ),
  (
    "in-factors-too-small",
    lambda: KroneckerLinear(20, 16, in_factors=(4, 4), out_factors=(4, 4), rngs=R),
    ValueError,
    [r"in_factors \(4, 4\) multiply to 16", "in_features=20", r"e\.g\. \(5, 4\)"],
  ),
  (
    "out-factors-too-small",
    lambda: KroneckerLinear(16, 20, in_factors=(4, 4), out_factors=(4, 4), rngs=R),
    ValueError,
    [r"out_factors \(4, 4\) multiply to 16", "out_features=20"],
  ),
  (
    "factor-lengths",
    lambda: KroneckerLinear(16, 16, in_factors=(4, 4), out_factors=(2, 2, 4), rngs=R),
    ValueError,
    ["same length", r"in_factors=\(4, 4\)", r"out_factors=\(2, 2, 4\)"],
  ),
  (
    "linear-rank",
    lambda: KroneckerLinear(16, 16, rank=0, rngs=R),
    ValueError,
    ["rank must be a positive integer", "got 0"],
  ),
  (
    "linear-rank-type",
    lambda: KroneckerLinear(16, 16, rank="2", rngs=R),
    TypeError,
    ["rank must be a positive integer", "'2'", "str"],
  ),
  (
    "in-features",
    lambda: KroneckerLinear(0, 16, rngs=R),
    ValueError,
    ["in_features must be a positive integer", "got 0"],
  ),
  (
    "terms-and-rank",
    lambda: KroneckerLinear(16, 16, rank=2, terms=[((4, 4), (4, 4))], rngs=R),
    ValueError,
    ["either terms or in_factors/out_factors/rank"],
  ),
  (
    "bad-term",
    lambda: KroneckerLinear(16, 16, terms=[((4, 4), (4, 4)), ((2, 2), (4, 4))], rngs=R),
    ValueError,
    [r"terms\[1\] in_factors \(2, 2\) multiply to 4"],
  ),
  (
    "strategy",
    lambda: KroneckerLinear(16, 16, strategy="fast", rngs=R),
    ValueError,
    ["strategy must be one of", "'fast'"],
  ),
  (
    "strategy-order",
    lambda: KroneckerLinear(
      16, 16, terms=[((4, 4), (4, 4)), ((2, 2, 4), (2, 2, 4))], strategy=(1, 0), rngs=R
    ),
    ValueError,
    ["strategy must be", r"\(0, 1, 2\)"],
  ),
  (
    "low-rank-too-high",
    lambda: kfc_jax.nnx.LowRankLinear(12, 10, rank=11, rngs=R),
    ValueError,
    [r"rank must be at most min\(in_features, out_features\) = 10", "rank=11"],
  ),
  (
    "kdl-factors",
    lambda: kfc_jax.nnx.KDL(12, 10, in_factors=(3, 5), out_factors=(5, 2), rngs=R),
    ValueError,
    ["in_factors must be two positive integers multiplying to 12", r"got \(3, 5\)", r"\(3, 4\)"],
  ),
  (
    "kdl-activation",
    lambda: kfc_jax.nnx.KDL(
      12, 10, in_factors=(3, 4), out_factors=(5, 2), activation="relu", rngs=R
    ),
    TypeError,
    ["activation must be callable or None", "'relu'"],
  ),
  (
    "metadata",
    lambda: KroneckerLinear(16, 16, factor_metadata=[{}], rngs=R),
    TypeError,
    ["factor_metadata must be a mapping", r"\[2\] factors"],
  ),
  (
    "init-shape",
    lambda: KroneckerLinear(16, 16, factor_init=lambda k, s, d: jnp.zeros((3,), d), rngs=R),
    ValueError,
    [r"returned shape \(3,\)", r"needs shape \(1, 4, 4\)"],
  ),
  (
    "from-linear-type",
    lambda: KroneckerLinear.from_linear(object()),
    TypeError,
    ["linear must be an nnx.Linear", "object"],
  ),
  (
    "from-linear-in-shape",
    lambda: KFC.from_linear(nnx.Linear(100, 256, rngs=R), (3, 3, 32), ["II"]),
    ValueError,
    [r"H\*W\*C = 288", "in_features=100"],
  ),
]


@pytest.mark.parametrize(
  "build,error,fragments", [e[1:] for e in ERRORS], ids=[e[0] for e in ERRORS]
)
def test_error_messages(build, error, fragments):
  with pytest.raises(error) as info:
    build()
  for fragment in fragments:
    assert re.search(fragment, str(info.value)), (fragment, str(info.value))


@pytest.mark.parametrize(
  "layer,x_shape,fragments",
  [
    (
      lambda: KFC((3, 3, 32), 256, terms=["II"], rngs=R),
      (2, 100),
      [r"\[\*batch, 3, 3, 32\]", r"\[\*batch, 288\]", r"got shape \(2, 100\)"],
    ),
    (
      lambda: KroneckerLinear(12, 10, rngs=R),
      (2, 13),
      [r"\[\*batch, 12\]", r"got shape \(2, 13\)"],
    ),
    (
      lambda: kfc_jax.nnx.LowRankLinear(12, 10, rank=2, rngs=R),
      (13,),
      [r"\[\*batch, 12\]", r"got shape \(13,\)"],
    ),
    (
      lambda: kfc_jax.nnx.KDL(12, 10, in_factors=(3, 4), out_factors=(5, 2), rngs=R),
      (3, 11),
      [r"\[\*batch, 12\]", r"got shape \(3, 11\)"],
    ),
  ],
  ids=["kfc", "linear", "low-rank", "kdl"],
)
def test_wrong_input_shape(layer, x_shape, fragments):
  with pytest.raises(ValueError) as info:
    layer()(jnp.ones(x_shape))
  for fragment in fragments:
    assert re.search(fragment, str(info.value)), (fragment, str(info.value))


def test_padding_is_invisible(rng):
  layer = KroneckerLinear(13, 7, rngs=nnx.Rngs(0))  # prime in, prime out
  assert layer.layout.padded
  assert layer.materialize().shape == (13, 7)
  assert layer(jnp.ones((2, 13))).shape == (2, 7)
  assert set(nnx_params(layer)) == {"bias", "factor_0_0", "factor_0_1"}


def test_factor_shapes_suggested_or_partly_given():
  make = lambda **kw: nnx.eval_shape(lambda: KroneckerLinear(288, 256, rngs=nnx.Rngs(0), **kw))
  suggested = kfc_jax.suggest_factors(288, 256)
  assert make().layout.terms[0].in_factors == suggested.in_factors
  three = make(in_factors=(2, 12, 12)).layout.terms[0]
  assert three.out_factors == kfc_jax.factorize(256, 3)
  shaped = make(
    terms=[
      kfc_jax.KroneckerTerm((16, 18), None, 2),
      kfc_jax.KroneckerShape(288, 256, (18, 16), (16, 16)),
    ]
  )
  assert [(t.in_factors, t.out_factors, t.rank) for t in shaped.layout.terms] == [
    ((16, 18), (16, 16), 2),
    ((18, 16), (16, 16), 1),
  ]
