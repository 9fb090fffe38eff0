"""The plans of kron_conv and kron_conv_sum (ops/_conv_plan.py).

FLOPs against the two convolutions counted by hand; what runs against the
plan, by counting the convolutions in the traced computation.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest
from references import np_conv, np_conv_kernel, random_term

import kfc_jax

# Bytes free: fewer FLOPs wins (factored). FLOPs free: fewer bytes wins.
FAST_MEMORY = kfc_jax.CostModel(1e9, 1e15, 0.0, full_speed_dim=1)
FAST_COMPUTE = kfc_jax.CostModel(1e15, 1e9, 0.0, full_speed_dim=1)


def convs_traced(fn, *args) -> int:
  return str(jax.make_jaxpr(fn)(*args)).count("conv_general_dilated")


class TestPlan:
  def test_flops_match_the_two_convs(self):
    # 3x3 (x) 3x3 at stride 1, SAME: B runs on every padded pixel of each
    # input group, A on every output pixel of each output group.
    r, (ah, aw, ai, ao), (bh, bw, bi, bo) = 2, (3, 3, 4, 5), (3, 3, 2, 3)
    n, h, w = 4, 10, 12
    plan = kfc_jax.kron_conv_plan(
      (n, h, w, ai * bi), [(r, ah, aw, ai, ao), (r, bh, bw, bi, bo)], strategy="factored"
    )
    h1, w1 = h + 8 - 2, w + 8 - 2  # padded by 4 each side, minus B's 3x3
    assert plan.chosen.flops == (
      2 * n * ai * h1 * w1 * bh * bw * bi * r * bo + 2 * n * bo * h * w * ah * aw * ai * r * ao
    )
    assert plan.dense_flops == 2 * n * h * w * 81 * (ai * bi) * (ao * bo)
    assert plan.out_shape == (n, h, w, ao * bo)
    assert plan.kernel_shape == (9, 9, ai * bi, ao * bo)
    assert plan.padding == ((4, 4), (4, 4))
    assert plan.params == r * (ah * aw * ai * ao + bh * bw * bi * bo)

  def test_stride_moves_into_the_first_conv(self):
    # A is 1x1: the conv by B takes the whole stride (a quarter of the FLOPs).
    shapes = [(1, 1, 4, 4), (3, 3, 4, 4)]
    s1 = kfc_jax.kron_conv_plan((2, 16, 16, 16), shapes, strategy="factored")
    s2 = kfc_jax.kron_conv_plan((2, 16, 16, 16), shapes, strides=2, strategy="factored")
    assert s2.chosen.flops * 4 == s1.chosen.flops

  def test_forced_and_auto(self):
    shapes = [(3, 3, 16, 16), (1, 1, 4, 4)]
    for strategy in ("factored", "materialize"):
      plan = kfc_jax.kron_conv_plan((8, 16, 16, 64), shapes, strategy=strategy)
      assert plan.strategy == strategy
    plan = kfc_jax.kron_conv_plan((8, 16, 16, 64), shapes)
    secs = [c.seconds for c in plan.candidates]
    assert secs == sorted(secs) and plan.chosen == plan.candidates[0]

  def test_high_rank_is_materialized(self):
    # Rank 11 of 3x3x8x8 (x) 1x1x8x8 does more FLOPs than the dense conv.
    plan = kfc_jax.kron_conv_plan((64, 32, 32, 64), [(11, 3, 3, 8, 8), (11, 1, 1, 8, 8)])
    assert plan.strategy == "materialize"

  def test_low_rank_big_channels_is_factored(self):
    plan = kfc_jax.kron_conv_plan((64, 16, 16, 256), [(2, 1, 1, 16, 16), (2, 3, 3, 16, 16)])
    assert plan.strategy == "factored"
    assert plan.chosen.flops * 4 < plan.dense_flops

  @pytest.mark.parametrize(
    "a,b",
    [
      ((1, 3, 1, 4, 6), (1, 1, 3, 2, 2)),  # the KConv example's spatial split
      ((1, 3, 3, 4, 6), (1, 1, 1, 2, 2)),  # its channel split by 2
    ],
  )
  def test_few_channels_are_materialized_on_cpu(self, a, b):
    # The KFC paper's 3x3 8->12 conv at batch 128 (benchmarks/conv_plans.py):
    # the factored plan's convs on 2-6 channels are bound by the per-pixel
    # floor, 3-6x slower than the dense conv; without the floor the model
    # predicts them faster.
    x_shape = (128, 28, 28, 8)
    model = kfc_jax.default_cost_model("cpu")
    assert kfc_jax.kron_conv_plan(x_shape, [a, b], cost_model=model).strategy == "materialize"
    no_floor = dataclasses.replace(model, conv_pixel_seconds=0.0)
    assert kfc_jax.kron_conv_plan(x_shape, [a, b], cost_model=no_floor).strategy == "factored"

  def test_cost_model_is_a_parameter(self):
    shapes = [(3, 3, 8, 8), (1, 1, 8, 8)]
    fast_memory = kfc_jax.CostModel(1e9, 1e15, 0.0, full_speed_dim=1)
    fast_compute = kfc_jax.CostModel(1e15, 1e9, 0.0, full_speed_dim=1)
    a = kfc_jax.kron_conv_plan((8, 16, 16, 64), shapes, cost_model=fast_memory)
    b = kfc_jax.kron_conv_plan((8, 16, 16, 64), shapes, cost_model=fast_compute)
    assert a.strategy == "factored"  # fewer FLOPs wins when bytes are free
    assert b.strategy == "materialize"  # fewer bytes wins when FLOPs are free


class TestSumPlan:
  # Two rank-1 terms that cut a 3x3 kernel differently, each two real convs.
  A1, B1 = (3, 1, 2, 4), (1, 3, 4, 2)
  A2, B2 = (1, 3, 4, 2), (3, 1, 2, 4)
  SHAPES = (((1, *A1), (1, *B1)), ((2, *A2), (2, *B2)))

  def test_factored_flops_are_the_terms_convs(self):
    n, h, w = 2, 10, 12
    plan = kfc_jax.kron_conv_sum_plan((n, h, w, 8), self.SHAPES, strategy="factored")
    expected = 0
    for (r, ah, aw, ai, ao), (_, bh, bw, bi, bo) in self.SHAPES:
      h1, w1 = h + 2 - bh + 1, w + 2 - bw + 1  # B on the SAME-padded input
      expected += (
        2 * n * ai * h1 * w1 * bh * bw * bi * r * bo + 2 * n * bo * h * w * ah * aw * ai * r * ao
      )
    assert plan.strategy == "factored"
    assert plan.flops == expected
    assert plan.dense_flops == 2 * n * h * w * 9 * 8 * 8
    assert plan.out_shape == (n, h, w, 8)
    assert [t.kernel_shape for t in plan.terms] == [(3, 3, 8, 8)] * 2

  def test_materialized_flops_are_one_dense_conv(self):
    plan = kfc_jax.kron_conv_sum_plan((2, 10, 12, 8), self.SHAPES, strategy="materialize")
    k_size = 9 * 8 * 8
    # Forming the first kernel (2 r FLOPs an entry), then one dense conv.
    assert plan.flops == 2 * 1 * k_size + plan.dense_flops

  @pytest.mark.parametrize("model", [FAST_MEMORY, FAST_COMPUTE], ids=["memory", "compute"])
  def test_what_runs_is_the_plan(self, x64, rng, model):
    x = rng.standard_normal((2, 10, 12, 8))
    terms = [random_term(rng, self.A1, self.B1, 1), random_term(rng, self.A2, self.B2, 2)]
    plan = kfc_jax.kron_conv_sum_plan(
      x.shape, [(a.shape, b.shape) for a, b in terms], cost_model=model
    )
    fn = lambda x, terms: kfc_jax.kron_conv_sum(x, terms, cost_model=model)
    expected_convs = 1 if plan.strategy == "materialize" else 2 * len(terms)
    assert convs_traced(fn, x, terms) == expected_convs
    kernel = sum(np_conv_kernel(a, b) for a, b in terms)
    np.testing.assert_allclose(fn(x, terms), np_conv(x, kernel), rtol=1e-10)

  def test_the_models_disagree(self):
    # The two models above must reach both decisions, or the test above
    # checks one path only.
    strategies = {
      kfc_jax.kron_conv_sum_plan((2, 10, 12, 8), self.SHAPES, cost_model=m).strategy
      for m in (FAST_MEMORY, FAST_COMPUTE)
    }
    assert strategies == {"factored", "materialize"}

  def test_one_term_is_kron_conv_plan(self):
    shapes = self.SHAPES[0]
    for model in (FAST_MEMORY, FAST_COMPUTE):
      one = kfc_jax.kron_conv_sum_plan((2, 10, 12, 8), [shapes], cost_model=model)
      plan = kfc_jax.kron_conv_plan((2, 10, 12, 8), shapes, cost_model=model)
      assert one.terms == (plan,)
      assert (one.strategy, one.flops) == (plan.strategy, plan.chosen.flops)

  def test_terms_of_different_kernels(self):
    with pytest.raises(
      ValueError,
      match=r"terms\[0\] gives \(3, 3, 8, 8\) but"
      r" terms\[1\] gives \(3, 3, 8, 4\)",
    ):
      kfc_jax.kron_conv_sum_plan((1, 8, 8, 8), [self.SHAPES[0], ((3, 1, 2, 2), (1, 3, 4, 2))])
    with pytest.raises(TypeError, match="terms must be a non-empty sequence"):
      kfc_jax.kron_conv_sum_plan((1, 8, 8, 8), [])


@pytest.mark.parametrize("model", [FAST_MEMORY, FAST_COMPUTE], ids=["memory", "compute"])
def test_kron_conv_takes_a_cost_model(x64, rng, model):
  a, b = random_term(rng, (3, 1, 2, 4), (1, 3, 4, 2), 2)
  x = rng.standard_normal((2, 9, 9, 8))
  plan = kfc_jax.kron_conv_plan(x.shape, (a.shape, b.shape), cost_model=model)
  fn = lambda x, a, b: kfc_jax.kron_conv(x, (a, b), cost_model=model)
  assert convs_traced(fn, x, a, b) == (1 if plan.strategy == "materialize" else 2)
  np.testing.assert_allclose(fn(x, a, b), np_conv(x, np_conv_kernel(a, b)), rtol=1e-10)


def test_circular_plan_reads_the_wrapped_input():
  plan = kfc_jax.kron_conv_plan((2, 8, 10, 4), [(3, 3, 2, 2), (1, 1, 2, 2)], padding="CIRCULAR")
  same = kfc_jax.kron_conv_plan((2, 8, 10, 4), [(3, 3, 2, 2), (1, 1, 2, 2)])
  assert plan.x_shape == (2, 10, 12, 4) and plan.padding == ((0, 0), (0, 0))
  assert plan.out_shape == same.out_shape == (2, 8, 10, 4)
  assert plan.chosen.flops == same.chosen.flops


def test_conv_strategy_is_a_name():
  with pytest.raises(
    ValueError,
    match=r"strategy must be one of \('auto', 'factored',"
    r" 'materialize', 'autotune'\), got \(0, 1\)",
  ):
    kfc_jax.kron_conv_plan((1, 8, 8, 4), [(3, 3, 2, 2), (1, 1, 2, 2)], strategy=(0, 1))
