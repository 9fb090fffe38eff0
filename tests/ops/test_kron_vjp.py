"""The planned backward of kron_matmul (ops/_vjp.py) against float64 dense autodiff.

Every gradient (wrt x and every factor) is compared with ``jax.grad`` of the
dense float64 reference ``x @ sum_r kron(F_1[r], ..., F_k[r])``, built with
``jnp.kron`` under x64, for a fresh random cotangent.
"""

from __future__ import annotations

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import random_factors

import kfc_jax
from kfc_jax.ops import _vjp

# (in_factors, out_factors): k = 1..3, rectangular and size-1 factors.
SHAPES = [
  ((5,), (3,)),
  ((2, 3), (4, 5)),
  ((1, 4), (3, 1)),
  ((3, 2, 4), (2, 5, 1)),
]

TOLERANCE = {jnp.float64: 1e-10, jnp.float32: 2e-5, jnp.bfloat16: 3e-2}


def _dense_grads(x, factors, cotangent):
  """float64 gradients of <cotangent, x @ W> by autodiff of the dense product."""

  def loss(x, factors):
    w = 0.0
    for r in range(factors[0].shape[0]):
      term = jnp.ones((1, 1), jnp.float64)
      for f in factors:
        term = jnp.kron(term, f[r])
      w = w + term
    return jnp.sum(cotangent * (x @ w))

  with jax.enable_x64(True):
    as64 = lambda a: jnp.asarray(np.asarray(a, np.float64))
    cotangent = as64(cotangent)
    grads = jax.grad(loss, (0, 1))(as64(x), [as64(f) for f in factors])
    return jax.tree.map(np.asarray, grads)


def _assert_close(actual, expected, dtype, what):
  """Relative to the largest entry: fits every dtype's rounding."""
  actual = np.asarray(
    jnp.asarray(actual, jnp.float32) if dtype == jnp.bfloat16 else actual, np.float64
  )
  scale = max(np.max(np.abs(expected)), 1e-30)
  err = np.max(np.abs(actual - expected)) / scale
  assert err <= TOLERANCE[dtype], f"{what}: relative error {err:.3g}"


def _config(
  order, keep, backward_rows, forward_rows=None, precision=None, pet=None, backward_order=None
):
  backward = _vjp.BackwardPlan(tuple(backward_order or order), keep, backward_rows, 0, 0.0)
  return _vjp._Config(tuple(order), forward_rows, backward, precision, pet)


def _inputs(rng, in_factors, out_factors, rank, rows):
  factors = random_factors(rng, in_factors, out_factors, rank)
  x = rng.standard_normal((rows, math.prod(in_factors)))
  cotangent = rng.standard_normal((rows, math.prod(out_factors)))
  return x, factors, cotangent


def _planned_grads(config, x, factors, cotangent, dtype, pet=None):
  def loss(x, fs):
    y = _vjp.planned_factored(config, x, tuple(fs))
    return jnp.sum(cotangent.astype(y.dtype) * y)

  return jax.jit(jax.grad(loss, (0, 1)))(
    jnp.asarray(x, dtype), [jnp.asarray(f, dtype) for f in factors]
  )


@pytest.mark.parametrize("in_factors,out_factors", [s for s in SHAPES if len(s[0]) > 1], ids=str)
@pytest.mark.parametrize("rank", [1, 3])
@pytest.mark.parametrize(
  "keep,backward_rows,forward_rows",
  [(True, None, None), (False, None, None), (False, 3, 4), (True, 2, None), (False, 7, 3)],
  ids=["keep", "recompute", "recompute-blocks", "keep-blocks", "one-block"],
)
def test_planned_vjp_every_order_float64(
  rng, x64, in_factors, out_factors, rank, keep, backward_rows, forward_rows
):
  """Every contraction order, kept or recomputed intermediates, row blocks
  with a remainder (7 rows in blocks of 2 and 3)."""
  x, factors, cotangent = _inputs(rng, in_factors, out_factors, rank, rows=7)
  dx_ref, dfs_ref = _dense_grads(x, factors, cotangent)
  for order in itertools.permutations(range(len(in_factors))):
    # Recomputing, the backward may follow another order than the forward.
    config = _config(
      order, keep, backward_rows, forward_rows, backward_order=None if keep else order[::-1]
    )
    dx, dfs = _planned_grads(config, x, factors, cotangent, jnp.float64)
    _assert_close(dx, dx_ref, jnp.float64, f"dx, order {order}")
    for t, (g, g_ref) in enumerate(zip(dfs, dfs_ref, strict=True)):
      _assert_close(g, g_ref, jnp.float64, f"dF_{t}, order {order}")


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("keep", [True, False], ids=["keep", "recompute"])
def test_planned_vjp_low_precision(rng, dtype, keep):
  x, factors, cotangent = _inputs(rng, (3, 2, 4), (2, 5, 3), 2, rows=9)
  dx_ref, dfs_ref = _dense_grads(x, factors, cotangent)
  dx, dfs = _planned_grads(_config((2, 0, 1), keep, 4), x, factors, cotangent, dtype)
  assert dx.dtype == dtype and all(g.dtype == dtype for g in dfs)
  _assert_close(dx, dx_ref, dtype, "dx")
  for t, (g, g_ref) in enumerate(zip(dfs, dfs_ref, strict=True)):
    _assert_close(g, g_ref, dtype, f"dF_{t}")


def test_planned_vjp_preferred_element_type_and_precision(rng):
  """bf16 inputs, float32 accumulation: float32 output, bf16 cotangents."""
  x, factors, cotangent = _inputs(rng, (4, 8), (8, 2), 2, rows=6)
  dx_ref, dfs_ref = _dense_grads(x, factors, cotangent)
  config = _config(
    (1, 0), False, 4, precision=jax.lax.Precision.HIGHEST, pet=jnp.dtype(jnp.float32)
  )
  y = _vjp.planned_factored(
    config, jnp.asarray(x, jnp.bfloat16), tuple(jnp.asarray(f, jnp.bfloat16) for f in factors)
  )
  assert y.dtype == jnp.float32
  dx, dfs = _planned_grads(config, x, factors, cotangent, jnp.bfloat16)
  assert dx.dtype == jnp.bfloat16
  _assert_close(dx, dx_ref, jnp.bfloat16, "dx")
  for t, (g, g_ref) in enumerate(zip(dfs, dfs_ref, strict=True)):
    _assert_close(g, g_ref, jnp.bfloat16, f"dF_{t}")


def test_planned_vjp_vmap_of_grad(rng, x64):
  """Per-example gradients (vmap over grad) match the dense reference."""
  x, factors, cotangent = _inputs(rng, (2, 3), (4, 2), 2, rows=5)
  config = _config((0, 1), False, 2)

  def loss(x_row, fs, ct_row):
    return jnp.sum(ct_row * _vjp.planned_factored(config, x_row[None], tuple(fs)))

  per_example = jax.jit(jax.vmap(jax.grad(loss, (0, 1)), in_axes=(0, None, 0)))
  dx, dfs = per_example(
    jnp.asarray(x), [jnp.asarray(f) for f in factors], jnp.asarray(cotangent[:, None])
  )
  for i in range(x.shape[0]):
    dx_ref, dfs_ref = _dense_grads(x[i : i + 1], factors, cotangent[i : i + 1])
    _assert_close(dx[i], dx_ref[0], jnp.float64, f"dx[{i}]")
    for t, (g, g_ref) in enumerate(zip(dfs, dfs_ref, strict=True)):
      _assert_close(g[i], g_ref, jnp.float64, f"dF_{t}[{i}]")


def test_planned_vjp_second_order(rng, x64):
  """grad of grad (reverse over reverse) goes through the planned backward."""
  x, factors, cotangent = _inputs(rng, (2, 3), (3, 2), 2, rows=4)
  probe = rng.standard_normal(x.shape)
  config = _config((1, 0), False, 3)

  def outer(loss_fn):
    def inner(x, fs):
      dx, _ = jax.grad(loss_fn, (0, 1))(x, fs)
      return jnp.sum(dx * probe) + jnp.sum(jax.grad(loss_fn, 1)(x, fs)[0] ** 2)

    return jax.grad(inner, (0, 1))

  def planned_loss(x, fs):
    return jnp.sum(cotangent * jnp.tanh(_vjp.planned_factored(config, x, tuple(fs))))

  def dense_loss(x, fs):
    return jnp.sum(cotangent * jnp.tanh(x @ kfc_jax.kron(fs)))

  args = (jnp.asarray(x), [jnp.asarray(f) for f in factors])
  got = jax.jit(outer(planned_loss))(*args)
  want = outer(dense_loss)(*args)
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
    _assert_close(g, np.asarray(w), jnp.float64, "second-order gradient")


def test_backward_plan_blocks_and_residuals():
  """Blocks fit the cost model's cache budget; intermediates are kept only
  when the forward ran unblocked."""
  model = kfc_jax.default_cost_model("cpu")
  ms, ns = (64, 64), (64, 64)
  plan = _vjp.backward_plan(1024, ms, ns, 1, (0, 1), True, 4, model)
  assert not plan.keep_intermediates
  assert plan.chunk_rows is not None and plan.chunk_rows < 1024
  # P_0, P_1, Q_0, Q_1, Q_2 of one block fit twice the budget; at most 16
  # rows; blocks divide the batch.
  assert 5 * 4096 * 4 * plan.chunk_rows <= 2 * model.chunk_bytes
  assert plan.chunk_rows <= 16 and 1024 % plan.chunk_rows == 0
  assert _vjp.backward_plan(1000, ms, ns, 1, (0, 1), True, 4, model).chunk_rows == 10
  small = _vjp.backward_plan(8, (4, 4), (4, 4), 1, (1, 0), False, 4, model)
  assert small.keep_intermediates and small.chunk_rows is None
  # Forward k steps; backward k chain steps, k gradients, k - 1 recomputed.
  step = 2 * 1024 * 64**3
  assert plan.flops == 5 * step
  gpu = kfc_jax.default_cost_model("gpu")
  assert _vjp.backward_plan(1024, ms, ns, 1, (0, 1), False, 4, gpu).chunk_rows is None


# ---------------------------------------------------------------------------
# Through kron_matmul: every strategy, dtype, factor count, rank, batch rank
# ---------------------------------------------------------------------------


def _strategies(k):
  return (
    ["auto", "factored", "materialize"] + [tuple(o) for o in itertools.permutations(range(k))]
    if k > 1
    else ["auto", "materialize"]
  )


def _kron_matmul_grads(x, factors, cotangent, dtype, **kwargs):
  def loss(x, fs):
    y = kfc_jax.kron_matmul(x, fs, **kwargs)
    return jnp.sum(cotangent.astype(y.dtype) * y)

  return jax.jit(jax.grad(loss, (0, 1)))(
    jnp.asarray(x, dtype), [jnp.asarray(f, dtype) for f in factors]
  )


@pytest.mark.parametrize("in_factors,out_factors", SHAPES, ids=str)
@pytest.mark.parametrize("rank,batch_shape", [(1, (7,)), (2, (2, 3)), (3, (2, 1, 3))], ids=str)
def test_kron_matmul_gradients_every_strategy(rng, x64, in_factors, out_factors, rank, batch_shape):
  factors = random_factors(rng, in_factors, out_factors, rank)
  x = rng.standard_normal((*batch_shape, math.prod(in_factors)))
  cotangent = rng.standard_normal((*batch_shape, math.prod(out_factors)))
  rows = math.prod(batch_shape)
  dx_ref, dfs_ref = _dense_grads(x.reshape(rows, -1), factors, cotangent.reshape(rows, -1))
  for strategy in _strategies(len(in_factors)):
    dx, dfs = _kron_matmul_grads(x, factors, cotangent, jnp.float64, strategy=strategy)
    assert dx.shape == x.shape
    _assert_close(dx.reshape(rows, -1), dx_ref, jnp.float64, f"dx, {strategy}")
    for t, (g, g_ref) in enumerate(zip(dfs, dfs_ref, strict=True)):
      _assert_close(g, g_ref, jnp.float64, f"dF_{t}, {strategy}")


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("strategy", ["auto", "materialize", (1, 0)], ids=str)
def test_kron_matmul_gradients_low_precision(rng, dtype, strategy):
  x, factors, cotangent = _inputs(rng, (8, 4), (4, 8), 2, rows=33)
  dx_ref, dfs_ref = _dense_grads(x, factors, cotangent)
  dx, dfs = _kron_matmul_grads(x, factors, cotangent, dtype, strategy=strategy)
  _assert_close(dx, dx_ref, dtype, "dx")
  for t, (g, g_ref) in enumerate(zip(dfs, dfs_ref, strict=True)):
    _assert_close(g, g_ref, dtype, f"dF_{t}")


@pytest.mark.parametrize("chunk_bytes,keep", [(4096, False), (6000, True)])
def test_kron_matmul_blocked_backward_matches(rng, x64, chunk_bytes, keep):
  """A tiny cache budget forces row blocks (with a remainder): the forward in
  blocks and the backward recomputing, or the forward whole and the backward
  in blocks of the kept intermediates."""
  model = kfc_jax.CostModel(1e11, 1e10, 0.0, full_speed_dim=64, chunk_bytes=chunk_bytes)
  x, factors, cotangent = _inputs(rng, (4, 3, 2), (2, 3, 4), 2, rows=23)
  plan = kfc_jax.kron_matmul_plan(
    x.shape, [f.shape for f in factors], dtype=jnp.float64, strategy="factored", cost_model=model
  )
  assert bool(plan.chosen.chunk_rows) != keep
  backward = _vjp.backward_plan(
    23, plan.in_factors, plan.out_factors, 2, plan.order, bool(plan.chosen.chunk_rows), 8, model
  )
  assert backward.keep_intermediates == keep
  assert backward.chunk_rows and backward.chunk_rows < 23 and 23 % backward.chunk_rows
  dx_ref, dfs_ref = _dense_grads(x, factors, cotangent)
  dx, dfs = _kron_matmul_grads(
    x, factors, cotangent, jnp.float64, strategy="factored", cost_model=model
  )
  _assert_close(dx, dx_ref, jnp.float64, "dx")
  for t, (g, g_ref) in enumerate(zip(dfs, dfs_ref, strict=True)):
    _assert_close(g, g_ref, jnp.float64, f"dF_{t}")


def test_factored_plans_use_the_planned_backward(rng):
  x, factors, _ = _inputs(rng, (4, 4), (4, 4), 1, rows=8)
  fs = [jnp.asarray(f, jnp.float32) for f in factors]
  x = jnp.asarray(x, jnp.float32)
  primitives = lambda **kw: {
    e.primitive.name
    for e in jax.make_jaxpr(lambda x, fs: kfc_jax.kron_matmul(x, fs, **kw))(x, fs).eqns
  }
  assert any("custom_vjp" in p for p in primitives(strategy="factored"))
  assert not any("custom_vjp" in p for p in primitives(strategy="factored", backward="autodiff"))
  assert not any("custom_vjp" in p for p in primitives(strategy="materialize"))


def test_forward_mode_needs_autodiff_backward(rng, x64):
  x, factors, _ = _inputs(rng, (2, 3), (3, 2), 2, rows=3)
  x = jnp.asarray(x)
  fs = [jnp.asarray(f) for f in factors]
  with pytest.raises(TypeError, match='backward="autodiff"'):
    jax.jacfwd(lambda x: kfc_jax.kron_matmul(x, fs, strategy="factored"))(x)
  jac = jax.jacfwd(lambda x: kfc_jax.kron_matmul(x, fs, strategy="factored", backward="autodiff"))(
    x
  )
  w = np.asarray(kfc_jax.kron(fs))
  # d y[i, j] / d x[k, l] = delta_ik W[l, j]
  expected = np.einsum("ik,lj->ijkl", np.eye(3), w)
  np.testing.assert_allclose(jac, expected, rtol=1e-12, atol=1e-12)


def test_bad_backward_argument():
  with pytest.raises(ValueError, match="backward"):
    kfc_jax.kron_matmul(jnp.ones((2, 4)), [jnp.ones((2, 2)), jnp.ones((2, 2))], backward="forward")


def test_backward_plan_takes_the_cheapest_order_when_recomputing(monkeypatch):
  from kfc_jax.ops import _cost

  model = kfc_jax.default_cost_model("cpu")
  args = (4096, (8, 32, 4), (16, 2, 32), 2)
  chosen = _vjp.backward_plan(*args, (0, 1, 2), True, 4, model)
  each = {}
  for order in itertools.permutations(range(3)):
    monkeypatch.setattr(_cost, "_orders", lambda k, order=order: [order])
    each[order] = _vjp.backward_plan(*args, (0, 1, 2), True, 4, model).seconds
  assert len(set(each.values())) > 1  # the order matters here
  assert chosen.seconds == min(each.values())
  assert each[chosen.order] == chosen.seconds
  # Kept intermediates tie the backward to the forward's order.
  assert _vjp.backward_plan(*args, (2, 0, 1), False, 4, model).order == (2, 0, 1)
