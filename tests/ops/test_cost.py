"""The cost model and kron_matmul's plan (ops/_cost.py).

FLOP counts are checked against the formulas of docs/DESIGN.md ("The functional
core"); predicted seconds against the roofline worked out by hand.
"""

from __future__ import annotations

import pytest

import kfc_jax


class TestCostModel:
  # Compute-bound steps (memory 1e30 bytes/s) at 1e9 FLOP/s, no overhead:
  # the predicted seconds are 1 / efficiency for 1e9 FLOPs.
  MODEL = kfc_jax.CostModel(1e9, 1e30, 0.0, full_speed_dim=64)

  @pytest.mark.parametrize("contraction,seconds", [(64, 1.0), (256, 1.0), (16, 4.0)])
  def test_gemm_step_slows_down_with_short_contractions(self, contraction, seconds):
    assert self.MODEL.step_seconds(1e9, 0, contraction) == pytest.approx(seconds)

  @pytest.mark.parametrize(
    "cin,cout,seconds",
    [
      (128, 256, 1.0),  # min(cin, cout) >= 2 * 64: full speed
      (32, 256, 2.0),  # sqrt(32 / 128) = 1/2 of full speed
      (256, 8, 4.0),  # sqrt(8 / 128) = 1/4
    ],
  )
  def test_conv_step_slows_down_with_few_channels(self, cin, cout, seconds):
    assert self.MODEL.conv_step_seconds(1e9, 0, cin, cout) == pytest.approx(seconds)

  def test_conv_step_costs_at_least_its_pixel_floor(self):
    model = kfc_jax.CostModel(1e9, 1e30, 1e-3, full_speed_dim=64, conv_pixel_seconds=1e-6)
    # 1e3 FLOPs take 1e-6 s of compute; 2e6 pixels at 1 us take 2 s.
    assert model.conv_step_seconds(1e3, 0, 128, 128, pixels=2e6) == pytest.approx(2.001)
    # Compute-bound (1 s for 1e9 FLOPs) above a floor of 1e-3 s.
    assert model.conv_step_seconds(1e9, 0, 128, 128, pixels=1e3) == pytest.approx(1.001)
    # A GEMM step (no pixels) has no floor.
    assert model.conv_step_seconds(1e3, 0, 128, 128) == pytest.approx(1e-3 + 1e-6)

  def test_memory_bound_steps(self):
    model = kfc_jax.CostModel(1e30, 1e9, overhead_seconds=1e-3)
    assert model.step_seconds(1.0, 2e9, 64) == pytest.approx(2.001)
    assert model.conv_step_seconds(1.0, 3e9, 1, 1) == pytest.approx(3.001)
    assert model.memory_seconds(5e8) == pytest.approx(0.501)

  def test_default_model_per_platform(self):
    assert kfc_jax.default_cost_model("cpu").chunk_bytes == 2**20
    # benchmarks/results/conv_plans_cpu_float32.md: 32-48 ns a pixel at 2-12 channels.
    assert 20e-9 <= kfc_jax.default_cost_model("cpu").conv_pixel_seconds <= 60e-9
    assert kfc_jax.default_cost_model("no-such-device") == kfc_jax.default_cost_model("gpu")


class TestPlan:
  def test_flops_match_design_formula(self):
    m1, m2, n1, n2, r, batch = 6, 8, 5, 7, 3, 11
    plan = kfc_jax.kron_matmul_plan((batch, m1 * m2), [(r, m1, n1), (r, m2, n2)])
    by_order = {c.order: c.flops for c in plan.candidates if c.strategy == "factored"}
    assert by_order[(1, 0)] == 2 * batch * r * m1 * n2 * (m2 + n1)  # B first
    assert by_order[(0, 1)] == 2 * batch * r * n1 * m2 * (m1 + n2)  # A first
    mat = next(c for c in plan.candidates if c.strategy == "materialize")
    assert mat.flops == 2 * r * m1 * m2 * n1 * n2 + 2 * batch * m1 * m2 * n1 * n2
    assert plan.dense_flops == 2 * batch * m1 * m2 * n1 * n2

  def test_candidates_sorted_and_chosen_is_cheapest_allowed(self):
    plan = kfc_jax.kron_matmul_plan((4096, 1024), [(16, 16), (64, 64)])
    secs = [c.seconds for c in plan.candidates]
    assert secs == sorted(secs)
    assert plan.chosen == plan.candidates[0]

  @pytest.mark.parametrize("batch", [8, 64, 2047, 2048, 4096])
  def test_auto_never_forms_a_large_w(self, batch):
    # A device whose GEMMs need a contraction of 4096 to run at full speed: the
    # factored steps (contracting 64) look slower than one GEMM by W, so only
    # the memory rule can keep auto from forming W.
    long_k = kfc_jax.CostModel(1e12, 1e15, overhead_seconds=0.0, full_speed_dim=4096)
    plan = kfc_jax.kron_matmul_plan((batch, 4096), [(64, 64), (64, 64)], cost_model=long_k)
    assert plan.candidates[0].strategy == "materialize"
    w_fits = batch * (4096 + 4096) >= 4096 * 4096  # from batch 2048 on
    assert plan.strategy == ("materialize" if w_fits else "factored")

  def test_big_layer_is_factored(self):
    plan = kfc_jax.kron_matmul_plan((1024, 4096), [(64, 64), (64, 64)])
    assert plan.strategy == "factored"
    assert plan.chosen.flops * 16 < plan.dense_flops

  def test_forced_strategies(self):
    shapes = [(2, 4, 4), (2, 8, 8)]
    for strategy in ["materialize", "factored", (0, 1), (1, 0)]:
      plan = kfc_jax.kron_matmul_plan((5, 32), shapes, strategy=strategy)
      expected = "materialize" if strategy == "materialize" else "factored"
      assert plan.strategy == expected
      if isinstance(strategy, tuple):
        assert plan.order == strategy

  def test_cost_model_is_a_parameter(self):
    shapes = [(4, 4), (4, 4)]
    fast_memory = kfc_jax.CostModel(1e9, 1e15, 0.0, full_speed_dim=1)
    fast_compute = kfc_jax.CostModel(1e15, 1e9, 0.0, full_speed_dim=1)
    a = kfc_jax.kron_matmul_plan((64, 16), shapes, cost_model=fast_memory)
    b = kfc_jax.kron_matmul_plan((64, 16), shapes, cost_model=fast_compute)
    assert a.strategy == "factored"  # fewer FLOPs wins when bytes are free
    assert b.strategy == "materialize"  # fewer bytes wins when FLOPs are free
