"""Bad inputs across the public API: the exception type and a message naming the argument.

One row per bad call: ``(id, call, exception type, regex)``. The regex names the
offending argument (and usually what it got), so a regression in wording, or
an error that blames the wrong argument, fails here. The rows cover issue 15's
cases (ambiguous term lists, integer accumulators, complex inputs, compression
budgets, plans of negative batches, summaries of non-models) and a broad sample
of every public function and layer constructor.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import kfc_jax
from kfc_jax import linen as klinen
from kfc_jax import nnx as knnx

ones = jnp.ones
X = ones((2, 6))
F = [ones((2, 3)), ones((3, 2))]  # W: [6, 6]
IMG = ones((1, 4, 4, 4))
A = ones((1, 1, 2, 2))  # 1x1 HWIO factors, K: [1, 1, 4, 4]
B = ones((1, 1, 2, 2))
C3 = ones((3, 3, 2, 2))  # K: [3, 3, 4, 4] with B
W66 = np.ones((6, 6))
KEY = jax.random.key(0)
REAL_FLOAT = r"real floating dtype \(one of \('float16', 'bfloat16', 'float32', 'float64'\)\)"


def rngs():
  return nnx.Rngs(0)


class _Model(nnx.Module):
  def __init__(self):
    self.fc1 = nnx.Linear(64, 64, rngs=rngs())
    self.conv = nnx.Conv(16, 16, (3, 3), rngs=rngs())


def _compress(pattern, **rule):
  return kfc_jax.compress(_Model(), kfc_jax.LayerRule(pattern, **rule))


ROWS = [
  # --- issue 15, case 2: a list of (A, B) pairs is not one term -------------
  (
    "conv-pairs-same-shape",
    lambda: kfc_jax.kron_conv(IMG, [(A, B), (A, B)]),
    TypeError,
    r"factors\[0\] \(A\) must be one kernel factor array, got a tuple of"
    r" 2 arrays.*use kron_conv_sum\(x, terms\)",
  ),
  (
    "conv-pairs-different-shapes",
    lambda: kfc_jax.kron_conv(IMG, [(A, B), (ones((1, 1, 4, 1)), ones((1, 1, 1, 4)))]),
    TypeError,
    r"factors\[0\] \(A\).*kron_conv_sum",
  ),
  (
    "conv-three-pairs",
    lambda: kfc_jax.kron_conv(IMG, [(A, B)] * 3),
    TypeError,
    r"factors must be one pair \(A, B\), got a sequence of 3 pairs;"
    r" use kron_conv_sum",
  ),
  (
    "kernel-pairs",
    lambda: kfc_jax.kron_kernel([(A, B), (A, B)]),
    TypeError,
    r"factors\[0\] \(A\) must be one kernel factor array",
  ),
  (
    "conv-sum-nested-pairs",
    lambda: kfc_jax.kron_conv_sum(IMG, [[(A, B), (A, B)]]),
    TypeError,
    r"terms\[0\]\[0\] \(A\) must be one kernel factor array",
  ),
  (
    "matmul-factor-as-list",
    lambda: kfc_jax.kron_matmul(X, [[F[0], F[0]], F[1]]),
    TypeError,
    r"factors\[0\] must be one array \[rank, m, n\] or \[m, n\], got a"
    r" list of 2 arrays; stack rank terms with jnp.stack",
  ),
  # --- case 3: integer accumulators ------------------------------------------
  (
    "matmul-int-pet",
    lambda: kfc_jax.kron_matmul(X, F, preferred_element_type=jnp.int32),
    TypeError,
    r"preferred_element_type must be None or a " + REAL_FLOAT + ", got int32",
  ),
  (
    "matmul-int-pet-materialize",
    lambda: kfc_jax.kron_matmul(X, F, preferred_element_type=jnp.int32, strategy="materialize"),
    TypeError,
    r"preferred_element_type must be None or a real floating.*got int32",
  ),
  (
    "matmul-int-pet-empty-batch",
    lambda: kfc_jax.kron_matmul(ones((0, 6)), F, preferred_element_type=jnp.int32),
    TypeError,
    r"preferred_element_type must be None or a real floating.*got int32",
  ),
  (
    "conv-int-pet",
    lambda: kfc_jax.kron_conv(IMG, (A, B), preferred_element_type=jnp.int32),
    TypeError,
    r"preferred_element_type must be None or a real floating.*got int32",
  ),
  (
    "conv-sum-int-pet",
    lambda: kfc_jax.kron_conv_sum(IMG, [(A, B)], preferred_element_type=jnp.int8),
    TypeError,
    r"preferred_element_type must be None or a real floating.*got int8",
  ),
  (
    "kron-int-pet",
    lambda: kfc_jax.kron(F, preferred_element_type=jnp.int32),
    TypeError,
    r"preferred_element_type must be None or a real floating.*got int32",
  ),
  (
    "kernel-int-pet",
    lambda: kfc_jax.kron_kernel((A, B), preferred_element_type=jnp.int32),
    TypeError,
    r"preferred_element_type must be None or a real floating.*got int32",
  ),
  (
    "matmul-complex-pet",
    lambda: kfc_jax.kron_matmul(X, F, preferred_element_type=jnp.complex64),
    TypeError,
    r"preferred_element_type must be None or a real floating.*got complex64",
  ),
  (
    "matmul-pet-not-a-dtype",
    lambda: kfc_jax.kron_matmul(X, F, preferred_element_type="fast"),
    TypeError,
    r"preferred_element_type must be None or a real floating.*got 'fast'",
  ),
  # --- case 4: complex inputs blame the complex argument ---------------------
  *[
    (
      f"matmul-complex-x-{s}",
      lambda s=s: kfc_jax.kron_matmul(X.astype(jnp.complex64), F, strategy=s),
      TypeError,
      r"x must have a real floating, integer or bool dtype, got complex64"
      r" \(complex inputs are not supported",
    )
    for s in ("auto", "factored", "materialize", "autotune", (1, 0))
  ],
  *[
    (
      f"matmul-complex-factor-{s}",
      lambda s=s: kfc_jax.kron_matmul(X, [F[0], F[1].astype(jnp.complex64)], strategy=s),
      TypeError,
      r"factors\[1\] must have a " + REAL_FLOAT + r", got complex64 \(complex"
      r" factors are not supported",
    )
    for s in ("auto", "factored", "materialize", "autotune", (1, 0))
  ],
  *[
    (
      f"conv-complex-x-{s}",
      lambda s=s: kfc_jax.kron_conv(IMG.astype(jnp.complex64), (A, B), strategy=s),
      TypeError,
      r"x must have a real floating, integer or bool dtype, got complex64",
    )
    for s in ("auto", "factored", "materialize")
  ],
  (
    "conv-complex-factor",
    lambda: kfc_jax.kron_conv(IMG, (A, B.astype(jnp.complex64))),
    TypeError,
    r"factors\[1\] \(B\) must have a real floating dtype.*got complex64",
  ),
  (
    "conv-sum-complex-factor",
    lambda: kfc_jax.kron_conv_sum(IMG, [(A, B), (A.astype(jnp.complex64), B)]),
    TypeError,
    r"terms\[1\]\[0\] \(A\) must have a real floating dtype.*complex64",
  ),
  (
    "padded-complex-x",
    lambda: kfc_jax.padded_kron_matmul(ones((2, 5), jnp.complex64), F, 5),
    TypeError,
    r"x must have a real floating, integer or bool dtype, got complex64",
  ),
  (
    "matmul-integer-factor",
    lambda: kfc_jax.kron_matmul(X, [F[0].astype(jnp.int32), F[1]]),
    TypeError,
    r"factors\[0\] must have a real floating dtype.*got int32",
  ),
  # --- case 6: compression budgets --------------------------------------------
  (
    "compress-kronecker-too-high",
    lambda: _compress("fc1", compression=1e9),
    ValueError,
    r"layer 'fc1'.*no layer shape fits compression=1000000000.0.*= 0"
    r" parameters for a kernel of 4096",
  ),
  (
    "compress-conv-too-high",
    lambda: _compress("conv", compression=1e9),
    ValueError,
    r"layer 'conv'.*no layer shape fits compression=1000000000.0",
  ),
  (
    "compress-low-rank-too-high",
    lambda: _compress("fc1", method="low_rank", compression=1e9),
    ValueError,
    r"no layer shape fits compression=",
  ),
  (
    "rule-compression-inf",
    lambda: kfc_jax.LayerRule("fc", compression=float("inf")),
    ValueError,
    r"compression must be a finite number > 1 .*got inf",
  ),
  (
    "rule-compression-nan",
    lambda: kfc_jax.LayerRule("fc", compression=float("nan")),
    ValueError,
    r"compression must be a finite number > 1 .*got nan",
  ),
  (
    "rule-compression-one",
    lambda: kfc_jax.LayerRule("fc", compression=1),
    ValueError,
    r"compression must be a finite number > 1 .*got 1",
  ),
  (
    "rule-compression-half",
    lambda: kfc_jax.LayerRule("fc", compression=0.5),
    ValueError,
    r"compression must be a finite number > 1 .*got 0.5",
  ),
  (
    "rule-compression-str",
    lambda: kfc_jax.LayerRule("fc", compression="4"),
    TypeError,
    r"compression must be a real number > 1 .*got '4' of type str",
  ),
  (
    "rule-compression-bool",
    lambda: kfc_jax.LayerRule("fc", compression=True),
    TypeError,
    r"compression must be a real number > 1 .*got True of type bool",
  ),
  (
    "suggest-compression-one",
    lambda: kfc_jax.suggest_factors(64, 64, compression=1),
    ValueError,
    r"compression must be a finite number > 1 .*got 1",
  ),
  (
    "suggest-compression-str",
    lambda: kfc_jax.suggest_factors(64, 64, compression="4"),
    TypeError,
    r"compression must be a real number > 1 .*got '4' of type str",
  ),
  (
    "search-compression-half",
    lambda: kfc_jax.search_dense(np.ones((8, 8)), compression=0.5),
    ValueError,
    r"compression must be a finite number > 1 .*got 0.5",
  ),
  # --- case 7: plans, summaries, images, messages -----------------------------
  (
    "plan-negative-batch",
    lambda: kfc_jax.kron_matmul_plan((-4, 6), [(2, 3), (3, 2)]),
    ValueError,
    r"x_shape must have sizes >= 0, got \(-4, 6\)",
  ),
  (
    "plan-shape-not-ints",
    lambda: kfc_jax.kron_matmul_plan("ab", [(2, 3), (3, 2)]),
    TypeError,
    r"x_shape must be a non-empty sequence of integers",
  ),
  (
    "plan-integer-dtype",
    lambda: kfc_jax.kron_matmul_plan((4, 6), [(2, 3), (3, 2)], dtype=jnp.int32),
    TypeError,
    r"dtype must be a real floating dtype.*got int32",
  ),
  (
    "summarize-int",
    lambda: kfc_jax.summarize(42),
    TypeError,
    r"model must be an NNX module \(or a list, tuple or dict of them\), got"
    r" 42 of type int",
  ),
  (
    "summarize-linen-model",
    lambda: kfc_jax.summarize(klinen.LowRankLinear(4, 4, rank=1)),
    TypeError,
    r"model is a Linen module.*summarize_linen",
  ),
  (
    "summarize-linen-int",
    lambda: kfc_jax.summarize_linen(42, None),
    TypeError,
    r"module must be a Linen module \(flax.linen.Module\), got 42",
  ),
  (
    "conv-zero-height-same",
    lambda: kfc_jax.kron_conv(ones((1, 0, 4, 4)), (C3, B), padding="SAME"),
    ValueError,
    r"x must have height and width >= 1, got x with shape \(1, 0, 4, 4\)",
  ),
  (
    "conv-zero-width-valid",
    lambda: kfc_jax.kron_conv(ones((1, 4, 0, 4)), (C3, B), padding="VALID"),
    ValueError,
    r"x must have height and width >= 1",
  ),
  (
    "conv-factor-ndim",
    lambda: kfc_jax.kron_conv(IMG, (ones((2, 2, 2)), B)),
    ValueError,
    r"^factors\[0\] \(A\) must have shape \[rank, h, w, in, out\]",
  ),
  (
    "conv-rank-mismatch",
    lambda: kfc_jax.kron_conv(IMG, (ones((2, 1, 1, 2, 2)), ones((3, 1, 1, 2, 2)))),
    ValueError,
    r"^factors = \(A, B\) must have A and B of the same rank",
  ),
  # --- case 1: zero-size factors are an error naming factors -----------------
  (
    "matmul-zero-size-factor",
    lambda: kfc_jax.kron_matmul(ones((4, 0)), [ones((0, 3)), F[1]]),
    ValueError,
    r"factors\[0\] must have sizes m, n >= 1, got shape \(1, 0, 3\)",
  ),
  (
    "matmul-zero-output-factor",
    lambda: kfc_jax.kron_matmul(X, [F[0], ones((3, 0))]),
    ValueError,
    r"factors\[1\] must have sizes m, n >= 1, got shape \(1, 3, 0\)",
  ),
  (
    "matmul-zero-rank",
    lambda: kfc_jax.kron_matmul(X, [ones((0, 2, 3)), ones((0, 3, 2))]),
    ValueError,
    r"factors must have rank >= 1, got rank 0",
  ),
  (
    "conv-zero-size-factor",
    lambda: kfc_jax.kron_conv(IMG, (ones((1, 1, 2, 0)), B)),
    ValueError,
    r"factors\[0\] \(A\) must have every size >= 1",
  ),
  (
    "kron-zero-size-factor",
    lambda: kfc_jax.kron([ones((2, 0))]),
    ValueError,
    r"factors\[0\] must have sizes m, n >= 1",
  ),
  # --- the primitives ---------------------------------------------------------
  (
    "kron-array",
    lambda: kfc_jax.kron(ones((2, 3))),
    TypeError,
    r"factors must be a sequence \(list or tuple\) of factor arrays",
  ),
  (
    "kron-empty",
    lambda: kfc_jax.kron([]),
    ValueError,
    r"factors must hold at least one factor, got none",
  ),
  (
    "kron-4d",
    lambda: kfc_jax.kron([ones((1, 1, 2, 2))]),
    ValueError,
    r"factors\[0\] must have shape \[rank, m, n\] or \[m, n\].*\(4-D\)",
  ),
  (
    "matmul-x-size",
    lambda: kfc_jax.kron_matmul(ones((2, 5)), F),
    ValueError,
    r"x must have shape \[\*batch, 6\].*got x with shape \(2, 5\)",
  ),
  (
    "matmul-x-string",
    lambda: kfc_jax.kron_matmul("abc", F),
    TypeError,
    r"x must be an array of numbers, got 'abc' of type str",
  ),
  (
    "matmul-factors-dict",
    lambda: kfc_jax.kron_matmul(X, {"a": 1}),
    TypeError,
    r"factors must be a sequence \(list or tuple\).*got dict",
  ),
  (
    "matmul-rank-mismatch",
    lambda: kfc_jax.kron_matmul(X, [ones((2, 2, 3)), ones((3, 3, 2))]),
    ValueError,
    r"all factors must have the same rank.*\[2, 3\]",
  ),
  (
    "matmul-strategy",
    lambda: kfc_jax.kron_matmul(X, F, strategy="fast"),
    ValueError,
    r"strategy must be one of \('auto', 'factored', 'materialize',"
    r" 'autotune'\).*got 'fast'",
  ),
  (
    "matmul-strategy-bad-order",
    lambda: kfc_jax.kron_matmul(X, F, strategy=(0, 0)),
    ValueError,
    r"strategy must be one of.*permutation of \(0, 1\).*got \(0, 0\)",
  ),
  (
    "matmul-strategy-empty-batch",
    lambda: kfc_jax.kron_matmul(ones((0, 6)), F, strategy="x"),
    ValueError,
    r"strategy must be one of",
  ),
  (
    "matmul-backward",
    lambda: kfc_jax.kron_matmul(X, F, backward="fwd"),
    ValueError,
    r'backward must be "planned" or "autodiff", got \'fwd\'',
  ),
  (
    "padded-out-zero",
    lambda: kfc_jax.padded_kron_matmul(ones((2, 5)), F, 0),
    ValueError,
    r"out_features must be a positive integer \(>= 1\), got 0",
  ),
  (
    "padded-out-too-big",
    lambda: kfc_jax.padded_kron_matmul(ones((2, 5)), F, 9),
    ValueError,
    r"out_features must be <= 6 .*got 9",
  ),
  (
    "padded-x-too-big",
    lambda: kfc_jax.padded_kron_matmul(ones((2, 7)), F, 3),
    ValueError,
    r"x must have shape \[\*batch, in_features\] with in_features <= 6",
  ),
  (
    "plan-x-mismatch",
    lambda: kfc_jax.kron_matmul_plan((4, 5), [(2, 3), (3, 2)]),
    ValueError,
    r"x_shape must end in prod\(m_t\) = 6",
  ),
  (
    "plan-factor-4d",
    lambda: kfc_jax.kron_matmul_plan((4, 6), [(1, 2, 3, 1), (3, 2)]),
    ValueError,
    r"factor_shapes\[0\] must be \(rank, m, n\) or \(m, n\)",
  ),
  (
    "plan-no-factors",
    lambda: kfc_jax.kron_matmul_plan((4, 6), []),
    ValueError,
    r"factor_shapes must hold at least one shape",
  ),
  (
    "conv-x-channels",
    lambda: kfc_jax.kron_conv(ones((1, 4, 4, 5)), (A, B)),
    ValueError,
    r"x must have shape \[\*batch, height, width, 4\].*got x with shape"
    r" \(1, 4, 4, 5\)",
  ),
  (
    "conv-x-string",
    lambda: kfc_jax.kron_conv("img", (A, B)),
    TypeError,
    r"x must be an array of numbers, got 'img'",
  ),
  (
    "conv-strides-zero",
    lambda: kfc_jax.kron_conv(IMG, (A, B), strides=0),
    ValueError,
    r"strides must be a positive integer \(>= 1\), got 0",
  ),
  (
    "conv-strides-three",
    lambda: kfc_jax.kron_conv(IMG, (A, B), strides=(1, 1, 1)),
    ValueError,
    r"strides must be a positive int or a pair \(height, width\)",
  ),
  (
    "conv-padding-name",
    lambda: kfc_jax.kron_conv(IMG, (A, B), padding="FULL"),
    ValueError,
    r"padding must be one of \('SAME', 'VALID'.*got 'FULL'",
  ),
  (
    "conv-dilation",
    lambda: kfc_jax.kron_conv(IMG, (A, B), kernel_dilation=-1),
    ValueError,
    r"kernel_dilation must be a positive integer \(>= 1\), got -1",
  ),
  (
    "conv-strategy-order",
    lambda: kfc_jax.kron_conv(IMG, (A, B), strategy=(1, 0)),
    ValueError,
    r"strategy must be one of \('auto', 'factored', 'materialize', 'autotune'\),"
    r" got \(1, 0\)",
  ),
  (
    "conv-single-array",
    lambda: kfc_jax.kron_conv(IMG, A),
    TypeError,
    r"factors must be a pair \(A, B\) of kernel factors.*got ArrayImpl",
  ),
  (
    "conv-valid-too-small",
    lambda: kfc_jax.kron_conv(ones((1, 2, 2, 4)), (C3, B), padding="VALID"),
    ValueError,
    r"x's height 2 padded by \(0, 0\) is 2, smaller than the \(dilated\)"
    r" kernel height 3",
  ),
  (
    "conv-sum-empty",
    lambda: kfc_jax.kron_conv_sum(IMG, []),
    TypeError,
    r"terms must be a non-empty sequence of \(A, B\) pairs",
  ),
  (
    "conv-sum-kernel-mismatch",
    lambda: kfc_jax.kron_conv_sum(IMG, [(A, B), (ones((1, 1, 1, 4, 1)), ones((1, 1, 1, 1, 2)))]),
    ValueError,
    r"all terms must compose to the same kernel shape.*terms\[1\] gives",
  ),
  (
    "conv-plan-factor-shape",
    lambda: kfc_jax.kron_conv_plan((1, 4, 4, 4), ((1, 1, 2), (1, 1, 2, 2))),
    ValueError,
    r"factor_shapes A must be \(rank, h, w, in, out\) or \(h, w, in, out\)",
  ),
  (
    "conv-sum-plan-empty",
    lambda: kfc_jax.kron_conv_sum_plan((1, 4, 4, 4), []),
    TypeError,
    r"terms must be a non-empty sequence of \(A shape, B shape\) pairs",
  ),
  # --- decompositions and shape helpers ---------------------------------------
  (
    "nkp-rank",
    lambda: kfc_jax.nearest_kronecker(W66, (2, 3), (3, 2), rank=0),
    ValueError,
    r"rank must be a positive integer \(>= 1\), got 0",
  ),
  (
    "nkp-shape",
    lambda: kfc_jax.nearest_kronecker(W66, (2, 2), (3, 2)),
    ValueError,
    r"w must have shape \[prod\(in_factors\), prod\(out_factors\)\] = \[4, 6\]",
  ),
  (
    "nkp-nan",
    lambda: kfc_jax.nearest_kronecker(np.full((6, 6), np.nan), (2, 3), (3, 2)),
    ValueError,
    r"w must be finite, but 36 of its 36 entries are NaN or infinite",
  ),
  (
    "nkp-1d",
    lambda: kfc_jax.nearest_kronecker(np.ones(6), (2, 3), (3, 2)),
    ValueError,
    r"w must be a 2-D array, got shape \(6,\)",
  ),
  (
    "nkp-complex",
    lambda: kfc_jax.nearest_kronecker(np.ones((6, 6), complex), (2, 3), (3, 2)),
    TypeError,
    r"w must hold real numbers, got dtype complex128",
  ),
  (
    "nkp-sum-no-terms",
    lambda: kfc_jax.nearest_kronecker_sum(W66, []),
    TypeError,
    r"terms must be a non-empty sequence of terms",
  ),
  (
    "low-rank-zero",
    lambda: kfc_jax.low_rank(W66, 0),
    ValueError,
    r"rank must be a positive integer \(>= 1\), got 0",
  ),
  (
    "low-rank-too-big",
    lambda: kfc_jax.low_rank(W66, 7),
    ValueError,
    r"rank must be at most min\(w.shape\) = 6",
  ),
  (
    "gkpd-split",
    lambda: kfc_jax.gkpd(np.ones((3, 3, 4, 4)), (3, 3, 2, 2), (1, 1, 3, 2)),
    ValueError,
    r"a_shape \(3, 3, 2, 2\) and b_shape \(1, 1, 3, 2\) must multiply to the"
    r" kernel shape",
  ),
  (
    "gkpd-3d",
    lambda: kfc_jax.gkpd(np.ones((3, 3, 4)), (3, 3, 2, 2), (1, 1, 2, 2)),
    ValueError,
    r"kernel must be a 4-D array, got shape \(3, 3, 4\)",
  ),
  (
    "suggest-factors-zero",
    lambda: kfc_jax.suggest_factors(0, 4),
    ValueError,
    r"in_features must be a positive integer \(>= 1\), got 0",
  ),
  (
    "suggest-factors-k",
    lambda: kfc_jax.suggest_factors(16, 16, k=0),
    ValueError,
    r"k must be a positive integer \(>= 1\), got 0",
  ),
  (
    "suggest-factors-budget",
    lambda: kfc_jax.suggest_factors(64, 64, max_params=20),
    ValueError,
    r"no 2-factor Kronecker layer 64->64 fits max_params=20",
  ),
  (
    "suggest-conv-factors-too-high",
    lambda: kfc_jax.suggest_conv_factors((3, 3, 16, 16), compression=1e9),
    ValueError,
    r"no Kronecker split of kernel_shape \(3, 3, 16, 16\) fits"
    r" compression=1000000000.0: it leaves int\(2304 / 1000000000.0\) = 0",
  ),
  (
    "suggest-conv-factors-inf",
    lambda: kfc_jax.suggest_conv_factors((3, 3, 16, 16), compression=float("inf")),
    ValueError,
    r"compression must be a finite number > 1 .*got inf",
  ),
  (
    "suggest-conv-factors-3d",
    lambda: kfc_jax.suggest_conv_factors((3, 3, 4)),
    ValueError,
    r"kernel_shape must be \(kh, kw, C_in, C_out\), 4 positive ints",
  ),
  (
    "padded-size-zero",
    lambda: kfc_jax.padded_size(0),
    ValueError,
    r"n must be a positive integer \(>= 1\), got 0",
  ),
  (
    "factorize-k",
    lambda: kfc_jax.factorize(12, 0),
    ValueError,
    r"k must be a positive integer \(>= 1\), got 0",
  ),
  (
    "formulation-name",
    lambda: kfc_jax.get_formulation("V"),
    ValueError,
    r"formulation must be one of \('I', 'II', 'III', 'IV', 'CHW'\)",
  ),
  (
    "resolve-terms-name",
    lambda: kfc_jax.resolve_terms([("V", (2, 2))], 4),
    ValueError,
    r"terms\[0\] formulation must be one of",
  ),
  (
    "resolve-terms-out",
    lambda: kfc_jax.resolve_terms([("II", (3, 2))], 4),
    ValueError,
    r"terms\[0\] \(formulation II\) out_factors must be 2 positive integers"
    r" multiplying to out_features=4",
  ),
  (
    "summarize-batch",
    lambda: kfc_jax.summarize([], batch=0),
    ValueError,
    r"batch must be a positive integer \(>= 1\), got 0",
  ),
  (
    "distillation-shapes",
    lambda: kfc_jax.distillation_loss(ones((2, 3)), ones((2, 4))),
    ValueError,
    r"student_logits and teacher_logits must have the same shape",
  ),
  # --- compress ---------------------------------------------------------------
  (
    "compress-model",
    lambda: kfc_jax.compress(42, kfc_jax.LayerRule("fc")),
    TypeError,
    r"model must be an nnx.Module, got int",
  ),
  (
    "compress-policy",
    lambda: kfc_jax.compress(_Model(), "fc1"),
    TypeError,
    r"policy must be a CompressionPolicy, a LayerRule or a list of LayerRule",
  ),
  (
    "compress-linen-module",
    lambda: kfc_jax.compress_linen_params(42, {}, "fc"),
    TypeError,
    r"module must be a flax.linen Module, got int",
  ),
  (
    "rule-pattern",
    lambda: kfc_jax.LayerRule(3),
    TypeError,
    r"pattern must be a regular expression string, got 3",
  ),
  (
    "rule-method",
    lambda: kfc_jax.LayerRule("fc", method="svd"),
    ValueError,
    r"method must be one of \('kronecker', 'kfc', 'low_rank'.*got 'svd'",
  ),
  (
    "rule-max-params",
    lambda: kfc_jax.LayerRule("fc", max_params=0),
    ValueError,
    r"max_params must be a positive integer \(>= 1\), got 0",
  ),
  (
    "rule-rank",
    lambda: kfc_jax.LayerRule("fc", rank=-1),
    ValueError,
    r"rank must be a positive integer \(>= 1\), got -1",
  ),
  (
    "policy-rules",
    lambda: kfc_jax.CompressionPolicy([1]),
    TypeError,
    r"rules must be a sequence of LayerRule, got \[1\]",
  ),
  # --- NNX layer constructors and calls ---------------------------------------
  (
    "nnx-linear-in",
    lambda: knnx.KroneckerLinear(0, 4, rngs=rngs()),
    ValueError,
    r"in_features must be a positive integer \(>= 1\), got 0",
  ),
  (
    "nnx-linear-rank",
    lambda: knnx.KroneckerLinear(12, 4, rank=0, rngs=rngs()),
    ValueError,
    r"rank must be a positive integer \(>= 1\), got 0",
  ),
  (
    "nnx-linear-rngs",
    lambda: knnx.KroneckerLinear(12, 4, rngs=3),
    TypeError,
    r"rngs must be an nnx.Rngs \(e.g. nnx.Rngs\(0\)\), got 3 of type int",
  ),
  (
    "nnx-linear-param-dtype",
    lambda: knnx.KroneckerLinear(12, 4, param_dtype=jnp.int32, rngs=rngs()),
    TypeError,
    r"param_dtype must be a real floating dtype.*got int32",
  ),
  (
    "nnx-linear-dtype",
    lambda: knnx.KroneckerLinear(12, 4, dtype=jnp.complex64, rngs=rngs()),
    TypeError,
    r"dtype must be None or a real floating dtype.*got complex64",
  ),
  (
    "nnx-linear-pet",
    lambda: knnx.KroneckerLinear(12, 4, preferred_element_type=jnp.int32, rngs=rngs()),
    TypeError,
    r"preferred_element_type must be None or a real floating.*got int32",
  ),
  (
    "nnx-linear-strategy",
    lambda: knnx.KroneckerLinear(12, 4, strategy="x", rngs=rngs()),
    ValueError,
    r"strategy must be one of .*got 'x'",
  ),
  (
    "nnx-linear-call",
    lambda: knnx.KroneckerLinear(12, 4, rngs=rngs())(ones((2, 5))),
    ValueError,
    r"x must have shape \[\*batch, 12\] \(in_features\), got shape \(2, 5\)",
  ),
  (
    "nnx-kfc-in-shape",
    lambda: knnx.KFC((3, 3), 4, terms=[("II", (2, 2))], rngs=rngs()),
    ValueError,
    r"in_shape must be \(H, W, C\)",
  ),
  (
    "nnx-kfc-terms",
    lambda: knnx.KFC((3, 3, 2), 4, terms=[], rngs=rngs()),
    TypeError,
    r"terms must be a non-empty list of terms",
  ),
  (
    "nnx-kfc-call",
    lambda: knnx.KFC((3, 3, 2), 4, terms=[("II", (2, 2))], rngs=rngs())(ones((2, 3, 3, 3))),
    ValueError,
    r"x must have shape \[\*batch, 3, 3, 2\]",
  ),
  (
    "nnx-low-rank-rank",
    lambda: knnx.LowRankLinear(4, 4, rank=0, rngs=rngs()),
    ValueError,
    r"rank must be a positive integer \(>= 1\), got 0",
  ),
  (
    "nnx-low-rank-out",
    lambda: knnx.LowRankLinear(4, -1, rank=1, rngs=rngs()),
    ValueError,
    r"out_features must be a positive integer \(>= 1\), got -1",
  ),
  (
    "nnx-kdl-factors",
    lambda: knnx.KDL(12, 4, in_factors=(5, 3), out_factors=(2, 2), rngs=rngs()),
    ValueError,
    r"in_factors must be two positive integers multiplying to 12",
  ),
  (
    "nnx-conv-kernel-size",
    lambda: knnx.KroneckerConv(4, 4, 0, rngs=rngs()),
    ValueError,
    r"kernel_size must be a positive integer \(>= 1\), got 0",
  ),
  (
    "nnx-conv-split",
    lambda: knnx.KroneckerConv(4, 4, 3, a_shape=(3, 3, 3, 2), b_shape=(1, 1, 2, 2), rngs=rngs()),
    ValueError,
    r"a_shape \(3, 3, 3, 2\) and b_shape \(1, 1, 2, 2\) must multiply",
  ),
  (
    "nnx-conv-padding",
    lambda: knnx.KroneckerConv(4, 4, 3, padding="FULL", rngs=rngs()),
    ValueError,
    r"padding must be one of",
  ),
  (
    "nnx-conv-call",
    lambda: knnx.KroneckerConv(4, 4, 3, rngs=rngs())(ones((1, 5, 5, 3))),
    ValueError,
    r"x must have shape \[\*batch, height, width, 4\]",
  ),
  # --- Linen layers (checked at first call) -----------------------------------
  (
    "linen-linear-call",
    lambda: klinen.KroneckerLinear(12, 4).init(KEY, ones((2, 5))),
    ValueError,
    r"x must have shape \[\*batch, 12\] \(in_features\), got shape \(2, 5\)",
  ),
  (
    "linen-linear-in",
    lambda: klinen.KroneckerLinear(0, 4).init(KEY, ones((2, 0))),
    ValueError,
    r"in_features must be a positive integer \(>= 1\), got 0",
  ),
  (
    "linen-linear-param-dtype",
    lambda: klinen.KroneckerLinear(12, 4, param_dtype=jnp.int8).init(KEY, ones((2, 12))),
    TypeError,
    r"param_dtype must be a real floating dtype.*got int8",
  ),
  (
    "linen-conv-call",
    lambda: klinen.KroneckerConv(4, 4, 3).init(KEY, ones((1, 5, 5, 3))),
    ValueError,
    r"x must have shape \[\*batch, height, width, 4\]",
  ),
  (
    "linen-low-rank-rank",
    lambda: klinen.LowRankLinear(4, 4, rank=0).init(KEY, ones((1, 4))),
    ValueError,
    r"rank must be a positive integer \(>= 1\), got 0",
  ),
  (
    "linen-kfc-formulation",
    lambda: klinen.KFC((3, 3, 2), 4, terms=[("V", (2, 2))]).init(KEY, ones((1, 3, 3, 2))),
    ValueError,
    r"terms\[0\] formulation must be one of",
  ),
]


def test_enough_rows_and_unique_ids():
  ids = [row[0] for row in ROWS]
  assert len(ids) == len(set(ids))
  assert len(ROWS) >= 60


@pytest.mark.parametrize(
  "call,error,pattern", [row[1:] for row in ROWS], ids=[row[0] for row in ROWS]
)
def test_bad_input_names_the_argument(call, error, pattern):
  with pytest.raises(error, match=pattern) as info:
    call()
  # The exact type: a subclass (e.g. a JAX error deriving from TypeError)
  # would mean the library's own check did not run.
  assert type(info.value) is error
