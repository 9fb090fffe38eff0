"""kfc_jax.compress.plan_layer: the typed plan both drivers build from."""

from __future__ import annotations

import numpy as np
import pytest

import kfc_jax
from kfc_jax.compress import Family, LayerPlan, LayerRule, TrainedLayer, plan_layer


def _layer(kernel_shape, kind=None):
  kernel = np.random.default_rng(0).standard_normal(kernel_shape)
  kind = kind or ("linear" if len(kernel_shape) == 2 else "conv")
  return TrainedLayer("fc", "Linear", kind, kernel, None)


@pytest.mark.parametrize(
  "rule,family,options",
  [
    (
      LayerRule("fc", in_factors=(8, 8), out_factors=(4, 4), rank=2),
      Family.KRONECKER_LINEAR,
      dict(in_factors=(8, 8), out_factors=(4, 4), terms=None, sweeps=20, rank=2),
    ),
    (LayerRule("fc", max_params=200), Family.KRONECKER_LINEAR, None),
    (
      LayerRule("fc", "low_rank", compression=4),
      Family.LOW_RANK_LINEAR,
      dict(rank=64 * 16 // 4 // (64 + 16)),
    ),
    (
      LayerRule("fc", "kfc", in_shape=(2, 2, 16), terms=[("II", (4, 4))]),
      Family.KFC,
      dict(in_shape=(2, 2, 16), terms=[("II", (4, 4))], sweeps=20),
    ),
  ],
  ids=["shapes", "budget", "low-rank-budget", "kfc"],
)
def test_dense_plans(rule, family, options):
  plan = plan_layer(rule, _layer((64, 16)))
  assert isinstance(plan, LayerPlan) and plan.family is family
  if options is not None:
    assert dict(plan.options) == options
  else:  # a budget: the suggested shape fits it
    shape = kfc_jax.KroneckerShape(
      64, 16, plan.options["in_factors"], plan.options["out_factors"], plan.options["rank"]
    )
    assert shape.params <= 200


def test_conv_plan_and_dense_only_methods():
  plan = plan_layer(LayerRule("fc", compression=4), _layer((3, 3, 8, 8)))
  assert plan.family is Family.KRONECKER_CONV
  ((a, b, rank),) = plan.options["terms"]
  assert rank * (np.prod(a) + np.prod(b)) <= 3 * 3 * 8 * 8 // 4
  with pytest.raises(TypeError, match="converts dense layers only"):
    plan_layer(LayerRule("fc", "low_rank", rank=2), _layer((3, 3, 8, 8)))


@pytest.mark.parametrize("family", list(Family), ids=lambda f: f.name)
def test_every_family_names_a_layer_of_both_apis(family):
  for api in (kfc_jax.nnx, kfc_jax.linen):
    assert issubclass(getattr(api, family.value), kfc_jax.layers.KroneckerLayer)
