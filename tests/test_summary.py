"""summarize / summarize_linen: per-layer params and FLOPs against dense."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest
from flax import nnx
from layer_cases import FAST_INIT

import kfc_jax

TERMS = [("II", (64, 4)), ("III", (128, 2)), ("IV", (128, 2))]


class Net(nnx.Module):
  def __init__(self, rngs):
    self.fc = kfc_jax.nnx.KFC((3, 3, 32), 256, terms=TERMS, rngs=rngs, **FAST_INIT)
    self.blocks = nnx.List(
      [
        kfc_jax.nnx.KroneckerLinear(256, 128, rank=2, rngs=rngs, **FAST_INIT),
        kfc_jax.nnx.KDL(128, 64, in_factors=(8, 16), out_factors=(8, 8), rngs=rngs, **FAST_INIT),
      ]
    )
    self.low = kfc_jax.nnx.LowRankLinear(64, 32, rank=8, rngs=rngs, **FAST_INIT)
    self.head = nnx.Linear(32, 10, rngs=rngs)


class LinenNet(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = kfc_jax.linen.KFC((3, 3, 32), 256, TERMS, name="fc", **FAST_INIT)(x)
    x = kfc_jax.linen.KroneckerLinear(256, 128, rank=2, name="blocks_0", **FAST_INIT)(x)
    x = kfc_jax.linen.KDL(128, 64, (8, 16), (8, 8), name="blocks_1", **FAST_INIT)(x)
    x = kfc_jax.linen.LowRankLinear(64, 32, 8, name="low", **FAST_INIT)(x)
    return nn.Dense(10, name="head")(x)


def _count(module):
  return sum(v.size for v in jax.tree.leaves(nnx.state(module, nnx.Param)))


def test_nnx_summary_rows_and_totals():
  net = Net(nnx.Rngs(0))
  s = kfc_jax.summarize(net)
  paths = [r.path for r in s.rows]
  assert paths == ["blocks/0", "blocks/1", "fc", "head", "low"]
  modules = {
    "fc": net.fc,
    "blocks/0": net.blocks[0],
    "blocks/1": net.blocks[1],
    "low": net.low,
    "head": net.head,
  }
  for row in s.rows:
    assert row.cost.params == _count(modules[row.path]), row.path
  assert s.params == _count(net)
  fc = next(r.cost for r in s.rows if r.path == "fc")
  assert fc.params == 26_672 + 256 and fc.dense_params == 73_728 + 256
  assert fc.dense_flops == 2 * 288 * 256
  plans = [
    kfc_jax.kron_matmul_plan((1, 288), spec)
    for spec in ([(32, 64), (9, 4)], [(96, 128), (3, 2)], [(96, 128), (3, 2)])
  ]
  assert fc.flops == sum(p.chosen.flops for p in plans)
  head = next(r.cost for r in s.rows if r.path == "head")
  assert head.params == head.dense_params == 330 and head.flops == 2 * 320


def test_flops_scale_with_batch():
  net = Net(nnx.Rngs(0))
  one, many = kfc_jax.summarize(net), kfc_jax.summarize(net, batch=64)
  assert many.dense_flops == 64 * one.dense_flops
  assert many.params == one.params
  with pytest.raises(ValueError, match="batch must be a positive integer"):
    kfc_jax.summarize(net, batch=0)


def test_table_text():
  text = str(kfc_jax.summarize(Net(nnx.Rngs(0))))
  lines = text.splitlines()
  assert lines[0].split()[:3] == ["path", "layer", "in"]
  assert any(
    line.startswith("fc ") and "KFC II(64, 4) + III(128, 2) + IV(128, 2)" in line for line in lines
  )
  assert lines[-1].startswith("total")
  assert "26,928" in text  # KFC params with bias


def test_linen_summary_matches_nnx():
  x = jnp.ones((1, 3, 3, 32))
  model = LinenNet()
  variables = model.init(jax.random.key(0), x)
  from_params = kfc_jax.summarize_linen(model, variables, x)
  from_shapes = kfc_jax.summarize_linen(model, None, jax.ShapeDtypeStruct(x.shape, x.dtype))
  reference = kfc_jax.summarize(Net(nnx.Rngs(0)))
  for s in (from_params, from_shapes):
    assert [r.path for r in s.rows] == [r.path.replace("/", "_") for r in reference.rows]
    for row, ref in zip(s.rows, reference.rows, strict=True):
      assert row.cost.params == ref.cost.params, row.path
      assert row.cost.flops == ref.cost.flops, row.path
  assert from_params.params == sum(v.size for v in jax.tree.leaves(variables))


def test_layers_are_recognised_by_type_not_module_name():
  # A user's subclass lives outside kfc_jax; it is still a kfc_jax layer.
  class MyKFC(kfc_jax.nnx.KFC):
    pass

  class MyLinenConv(kfc_jax.linen.KroneckerConv):
    pass

  layer = MyKFC((3, 3, 8), 16, terms=[("II", (4, 4))], rngs=nnx.Rngs(0), **FAST_INIT)
  (row,) = kfc_jax.summarize(layer).rows
  assert row.cost == layer.cost()
  conv = MyLinenConv(8, 8, 3, strategy="factored")
  s = kfc_jax.summarize_linen(conv, None, jnp.ones((2, 6, 6, 8)), batch=2)
  (row,) = s.rows
  assert row.cost == conv.cost(2, input_size=(6, 6))
  assert "@6x6" in row.cost.detail
