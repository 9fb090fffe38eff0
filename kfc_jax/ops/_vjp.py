"""The planned backward pass of ``kron_matmul`` (a ``jax.custom_vjp``).

For ``y = x @ W`` with ``W = sum_r F_1[r] ⊗ ... ⊗ F_k[r]`` and ``x: [M, prod(m_t)]``,
write the forward plan's contraction order as ``o_1, ..., o_k`` and its
intermediates as ``P_0 = x``, ``P_j = P_{j-1}`` contracted with ``F_{o_j}``
(``P_k = y``). The backward contracts ``dy`` with the transposed factors in the
reverse order: ``Q_0 = dy``, ``Q_s = Q_{s-1}`` contracted with ``F_{o_{k-s+1}}^T``,
so ``Q_k = dy @ W^T = dx`` (itself a planned Kronecker matmul). Then every
factor's gradient is ONE contraction of two tensors that are already there::

    dF_{o_j} = contract(P_{j-1}, Q_{k-j})   over the rows and every other axis

(for two factors, order ``(1, 0)``: ``dB = contract(x, dy A^T)`` and
``dA = contract(x B, dy)``). The backward is ``k`` chain steps for ``dx`` plus
``k`` long-contraction GEMMs (which run at full speed: they contract over the
``M`` rows), instead of ``k`` extra chains.

Which side each factor's other factors are contracted with (``x`` or ``dy``)
is the order; the cost model picks it, with the row blocking, in
:func:`backward_plan`.

Residuals (what the forward keeps for the backward):

* ``x`` and the factors, always (they are the inputs: no extra memory).
* The forward intermediates ``P_1 .. P_{k-1}`` only when the forward ran
  unblocked: they were in memory anyway, and keeping them saves ``k - 1`` chain
  steps. When the forward ran in row blocks (CPU, intermediates larger than the
  cache-sized block), its intermediates never existed at full size; storing
  them would add full-size buffers (what made autodiff's backward need
  52-112 MiB of scratch where the forward needs 2 MiB), so the backward
  recomputes them block by block, where they stay in cache (``k - 1`` short
  GEMMs per block, about 1/6 more FLOPs for two factors).

Forward-mode autodiff (``jax.jvp``, ``jax.jacfwd``, ``jax.hessian``) cannot go
through a ``custom_vjp``: call ``kron_matmul(..., backward="autodiff")`` for
those. Reverse-over-reverse (``grad`` of ``grad``) works: the backward is
made of differentiable ``jnp`` operations.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

_BATCH, _RANK = 0, 1


def _in_axis(t: int) -> int:
  return 2 + 2 * t


def _out_axis(t: int) -> int:
  return 3 + 2 * t


@dataclasses.dataclass(frozen=True)
class BackwardPlan:
  """How the planned backward of ``kron_matmul`` runs.

  Attributes:
    order: the contraction order ``o`` the backward's chains follow (the
      forward's when its intermediates are kept); ``dy`` is contracted with
      the transposed factors in reverse order.
    keep_intermediates: whether the forward's intermediates ``P_1..P_{k-1}``
      are kept as residuals (True when the forward ran unblocked) or
      recomputed in the backward.
    chunk_rows: rows per block of the backward (``None``: one block).
    flops: predicted FLOPs of the backward (recomputation included).
    seconds: cost-model prediction of the backward.
  """

  order: tuple[int, ...]
  keep_intermediates: bool
  chunk_rows: int | None
  flops: int
  seconds: float


def _chain_sizes(ms, ns, r, order):
  """Per-row element counts of ``P_0..P_k`` and ``Q_0..Q_k`` (rank included)."""
  k = len(ms)
  p_sizes, dims = [math.prod(ms)], list(ms)
  for j, t in enumerate(order):
    dims[t] = ns[t]
    p_sizes.append(math.prod(dims) * (r if j < k - 1 else 1))
  q_sizes, dims = [math.prod(ns)], list(ns)
  for s, t in enumerate(reversed(order)):
    dims[t] = ms[t]
    q_sizes.append(math.prod(dims) * (r if s < k - 1 else 1))
  return p_sizes, q_sizes


def _divisor_at_most(batch: int, rows: int) -> int:
  """``rows``, lowered to a divisor of ``batch`` if one is at least half of it.

  Blocks that divide the batch need no remainder block, whose ``dx`` would be
  concatenated to the others' (a copy of all of ``dx``: 16 MiB of scratch on
  the 64x64 (x) 64x64 benchmark row).
  """
  for d in range(rows, (rows + 1) // 2 - 1, -1):
    if batch % d == 0:
      return d
  return rows


def _backward_steps(ms, ns, r, order, keep, full_speed_dim):
  """(flops, elements moved, contraction dim) per row of each backward step."""
  k = len(ms)
  p_sizes, q_sizes = _chain_sizes(ms, ns, r, order)
  steps = []
  for j in [] if keep else range(1, k):  # recompute P_j from P_{j-1}
    t = order[j - 1]
    steps.append((2 * p_sizes[j] * ms[t], p_sizes[j - 1] + 3 * p_sizes[j], ms[t]))
  for s in range(1, k + 1):  # Q_s from Q_{s-1}
    t = order[k - s]
    out_per_rank = q_sizes[s] // (r if s < k else 1)
    steps.append(
      (2 * out_per_rank * r * ns[t], q_sizes[s - 1] + 3 * q_sizes[s], ns[t] * (r if s == k else 1))
    )
  for j in range(1, k + 1):  # dF_{o_j} from P_{j-1} and Q_{k-j}
    t = order[j - 1]
    per_rank = p_sizes[j - 1] // (r if j > 1 else 1)
    steps.append((2 * r * per_rank * ns[t], p_sizes[j - 1] + q_sizes[k - j], full_speed_dim))
  return steps, sum(p_sizes[:k]) + sum(q_sizes)


def backward_plan(
  batch: int,
  ms: tuple[int, ...],
  ns: tuple[int, ...],
  r: int,
  order: tuple[int, ...],
  forward_chunked: bool,
  itemsize: int,
  model: Any,
) -> BackwardPlan:
  """Plans the backward of the factored forward with contraction ``order``.

  When the forward ran unblocked its intermediates are kept and the backward
  follows its ``order``. Otherwise the backward recomputes them and may take
  any order (which side, ``x`` or ``dy``, each factor gradient's other factors
  are contracted with): the cheapest by the cost model, which prices each
  step like the forward's (a chain step is a GEMM with a short contraction,
  the factor's size; a gradient is a GEMM contracting over the rows, at full
  speed; each step reads its input, writes its output, and the axis shuffle
  before the next step reads and writes it once more).
  """
  from kfc_jax.ops import _cost  # lazily: _cost imports ops modules

  k = len(ms)
  keep = not forward_chunked
  orders = [tuple(order)] if keep else _cost._orders(k)
  best = None
  for o in orders:
    steps, working_set = _backward_steps(ms, ns, r, o, keep, model.full_speed_dim)
    # A block's working set is every P_j and Q_s of its rows (all live until
    # the gradients are formed). Blocks hold at most 2 * chunk_bytes of it and
    # at most 16 rows: measured on the 2-core CPU (f32, interleaved, loaded
    # machine), 16-row blocks beat 8, 32 and 64 rows on both 64x64 (x) 64x64
    # (batch 1024: 45 vs 85, 56, 52 ms) and 32x32 (x) 32x32 (batch 4096: 53
    # vs 56, 88, 58 ms).
    chunk_rows = None
    if model.chunk_bytes and batch > 1 and itemsize * batch * working_set > model.chunk_bytes:
      budget_rows = 2 * model.chunk_bytes // (itemsize * working_set)
      chunk_rows = _divisor_at_most(batch, max(1, min(16, budget_rows)))
    bandwidth = (
      (model.cache_bytes_per_second or model.bytes_per_second)
      if chunk_rows
      else model.bytes_per_second
    )
    seconds = sum(
      model.step_seconds(batch * f, itemsize * batch * e, c, bandwidth) for f, e, c in steps
    )
    flops = sum(batch * f for f, _, _ in steps)
    if best is None or seconds < best.seconds:
      best = BackwardPlan(tuple(o), keep, chunk_rows, int(flops), float(seconds))
  assert best is not None  # ``orders`` is never empty
  return best


# ---------------------------------------------------------------------------
# The contractions (labelled axes, one einsum of two operands per step)
# ---------------------------------------------------------------------------


def _step(t, axes, f, factor, forward, last, precision, pet, dtype):
  """Contracts ``t`` (axes ``axes``) with factor ``factor`` (``f: [r, m, n]``).

  ``forward``: replace the factor's input axis by its output axis (x side);
  otherwise the reverse (dy side, the transposed factor). The rank axis is
  created by the first step of a chain and summed by its ``last``.
  """
  src, dst = (
    (_in_axis(factor), _out_axis(factor)) if forward else (_out_axis(factor), _in_axis(factor))
  )
  new_axes = [dst if a == src else a for a in axes]
  if _RANK not in new_axes:
    new_axes = [_RANK, *new_axes]
  if last:
    new_axes = [a for a in new_axes if a != _RANK]
  out = jnp.einsum(
    t,
    list(axes),
    f,
    [_RANK, _in_axis(factor), _out_axis(factor)],
    new_axes,
    precision=precision,
    preferred_element_type=pet,
  )
  return (out if pet is not None else out.astype(dtype)), new_axes


def _x_axes(k):
  return [_BATCH] + [_in_axis(t) for t in range(k)]


def _forward_chain(x, fs, order, precision, pet, steps=None):
  """``[(P_j, axes_j) for j in 0..steps]`` (``P_k = y``, axes [batch, outs])."""
  k = len(fs)
  t = x.reshape(x.shape[0], *(f.shape[1] for f in fs))
  chain = [(t, _x_axes(k))]
  for j, i in enumerate(order[: k if steps is None else steps]):
    chain.append(_step(*chain[-1], fs[i], i, True, j == k - 1, precision, pet, x.dtype))
  return chain


def _backward_block(x, dy, kept, fs, order, precision, pet, acc_dtype):
  """dx and the factor gradients of one block of rows.

  ``kept``: the forward's ``P_1..P_{k-1}`` for these rows, or ``None`` to
  recompute them.
  """
  k = len(fs)
  rows = x.shape[0]
  if kept is None:
    p_chain = _forward_chain(x, fs, order, precision, pet, steps=k - 1)
  else:
    xs = x.reshape(rows, *(f.shape[1] for f in fs))
    p_chain = [(xs, _x_axes(k)), *list(kept)]
  q = dy.reshape(rows, *(f.shape[2] for f in fs))
  q_chain = [(q, [_BATCH] + [_out_axis(t) for t in range(k)])]
  for s in range(1, k + 1):
    q_chain.append(
      _step(*q_chain[-1], fs[order[k - s]], order[k - s], False, s == k, precision, pet, x.dtype)
    )
  dx = q_chain[k][0]
  grads: list[Any] = [None] * k
  for j in range(1, k + 1):
    i = order[j - 1]
    (p, p_axes), (q, q_axes) = p_chain[j - 1], q_chain[k - j]
    out_axes = [_RANK, _in_axis(i), _out_axis(i)]
    g = jnp.einsum(
      p, p_axes, q, q_axes, out_axes, precision=precision, preferred_element_type=acc_dtype
    )
    grads[i] = g.astype(acc_dtype)
  return dx.reshape(rows, -1), grads


# ---------------------------------------------------------------------------
# The custom VJP
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Config:
  order: tuple[int, ...]
  forward_chunk_rows: int | None
  backward: BackwardPlan
  precision: Any
  pet: Any
  # strategy="autotune": the order above is the fastest forward + backward;
  # when not differentiated, run the fastest forward alone instead.
  tune_inference: bool = False


def _forward(config, x, fs):
  from kfc_jax.ops import _kron  # the forward is kron_matmul's own plan

  fn = functools.partial(
    _kron._factored,
    factors=list(fs),
    order=config.order,
    precision=config.precision,
    pet=config.pet,
  )
  if config.forward_chunk_rows:
    return _kron._chunked(fn, x, config.forward_chunk_rows)
  return fn(x)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def planned_factored(config: _Config, x, fs):
  """``x @ kron(fs)`` by the factored plan in ``config``, with the planned VJP.

  Args:
    config: the forward order and row blocking, and the backward plan.
    x: ``[M, prod(m_t)]``.
    fs: tuple of ``k >= 2`` factors ``[r, m_t, n_t]``, all of ``x``'s dtype.
  """
  # JAX traces this primal only when nothing differentiates it (a gradient
  # traces _planned_fwd instead), so here the forward alone is what counts.
  if config.tune_inference:
    return _inference_forward(config, x, fs)
  return _forward(config, x, fs)


def _inference_forward(config, x, fs):
  """The plan ``autotune`` measured fastest for the forward alone."""
  from kfc_jax.ops import _autotune, _cost, _kron  # ops imports this module

  shapes = [f.shape for f in fs]
  strategy = _autotune.autotuned_strategy(
    x.shape, shapes, x.dtype, config.precision, config.pet, objective="fwd"
  )
  plan = _cost.kron_matmul_plan(x.shape, shapes, dtype=x.dtype, strategy=strategy)
  if plan.strategy == "materialize":
    return _kron._materialized(x, fs, config.precision, config.pet)
  tuned = dataclasses.replace(config, order=plan.order, forward_chunk_rows=plan.chosen.chunk_rows)
  return _forward(tuned, x, fs)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def tuned_materialized(config: _Config, x, fs):
  """``strategy="autotune"`` when forming ``W`` was fastest forward + backward.

  Differentiated, it forms ``W`` (JAX's VJP of ``x @ kron(fs)``); not
  differentiated, it runs the forward-only pick, which may be a factored
  order: the two objectives are tuned apart whichever one forms ``W``.
  """
  return _inference_forward(config, x, fs)


def _tuned_materialized_fwd(config, x, fs):
  from kfc_jax.ops import _kron  # ops imports this module

  return jax.vjp(lambda x, fs: _kron._materialized(x, fs, config.precision, config.pet), x, fs)


def _tuned_materialized_bwd(config, vjp, dy):
  del config
  return vjp(dy)


tuned_materialized.defvjp(_tuned_materialized_fwd, _tuned_materialized_bwd)


def autotuned_materialize(x, fs, precision, pet) -> jax.Array:
  """:func:`tuned_materialized` of ``x: [M, prod(m_t)]`` and ``k`` factors ``[r, m_t, n_t]``."""
  k = len(fs)
  no_backward = BackwardPlan(tuple(range(k)), False, None, 0, 0.0)  # autodiff's VJP runs
  config = _Config(
    tuple(range(k)),
    None,
    no_backward,
    precision,
    None if pet is None else jnp.dtype(pet),
    tune_inference=True,
  )
  return reverse_mode_only(tuned_materialized, config, x, tuple(fs))


def _planned_fwd(config, x, fs):
  if not config.backward.keep_intermediates:
    return _forward(config, x, fs), (x, fs, None)
  chain = _forward_chain(x, list(fs), config.order, config.precision, config.pet)
  y = chain[-1][0].reshape(x.shape[0], -1)
  return y, (x, fs, tuple(p for p, _ in chain[1:-1]))


def _planned_bwd(config, residuals, dy):
  x, fs, kept_arrays = residuals
  fs = list(fs)
  k = len(fs)
  order = config.backward.order  # the forward's when its intermediates are kept
  dtype = x.dtype
  acc_dtype = jnp.promote_types(config.pet or dtype, jnp.float32)
  kept_axes: list[list[Any]] = []  # read only when the P_j are kept
  if kept_arrays is not None:
    # The axes of P_1..P_{k-1}, as _forward_chain labels them.
    axes, kept_axes = _x_axes(k), []
    for i in order[:-1]:
      axes = [_out_axis(i) if a == _in_axis(i) else a for a in axes]
      if _RANK not in axes:
        axes = [_RANK, *axes]
      kept_axes.append(list(axes))

  def block(x_b, dy_b, kept_b):
    kept = None if kept_b is None else list(zip(kept_b, kept_axes, strict=True))
    return _backward_block(x_b, dy_b, kept, fs, order, config.precision, config.pet, acc_dtype)

  rows = config.backward.chunk_rows
  batch = x.shape[0]
  if not rows or rows >= batch:
    dx, grads = block(x, dy, kept_arrays)
  else:
    # Rows are axis 0 of x and dy, axis 1 of the kept P_j ([rank, rows, ...]).
    blocks, rest = divmod(batch, rows)
    head = blocks * rows

    def split(a, axis):
      a = lax.slice_in_dim(a, 0, head, axis=axis)
      a = a.reshape((*a.shape[:axis], blocks, rows, *a.shape[axis + 1 :]))
      return jnp.moveaxis(a, axis, 0)

    xs = (
      split(x, 0),
      split(dy, 0),
      None if kept_arrays is None else tuple(split(p, 1) for p in kept_arrays),
    )

    def body(acc, blk):
      x_b, dy_b, kept_b = blk
      dx_b, g = block(x_b, dy_b, kept_b)
      return [a + b for a, b in zip(acc, g, strict=True)], dx_b

    init = [jnp.zeros(f.shape, acc_dtype) for f in fs]
    grads, dx_blocks = lax.scan(body, init, xs)
    dx = dx_blocks.reshape(head, -1)
    if rest:
      kept_tail = None if kept_arrays is None else tuple(p[:, head:] for p in kept_arrays)
      dx_t, g_t = block(x[head:], dy[head:], kept_tail)
      dx = jnp.concatenate([dx, dx_t])
      grads = [a + b for a, b in zip(grads, g_t, strict=True)]
  return dx.astype(dtype), tuple(g.astype(f.dtype) for g, f in zip(grads, fs, strict=True))


planned_factored.defvjp(_planned_fwd, _planned_bwd)


def planned_matmul(x, fs, plan, precision, pet, model, tune_inference=False) -> jax.Array:
  """Runs the factored ``plan`` (a ``KronMatmulPlan``) with the planned VJP.

  Args:
    x: ``[M, prod(m_t)]``.
    fs: ``k >= 2`` factors ``[r, m_t, n_t]`` of ``x``'s dtype.
    plan: the forward plan (``plan.strategy == "factored"``).
    precision: ``lax.Precision`` of every contraction, forward and backward.
    pet: ``preferred_element_type`` of every contraction (``None``: ``x``'s
      dtype); the factor gradients accumulate in at least float32.
    model: the ``CostModel`` that planned the forward; it plans the backward.
    tune_inference: ``plan`` is autotune's forward + backward pick; when not
      differentiated, run autotune's forward-only pick instead.
  """
  backward = backward_plan(
    plan.batch,
    plan.in_factors,
    plan.out_factors,
    plan.rank,
    plan.order,
    bool(plan.chosen.chunk_rows),
    jnp.dtype(x.dtype).itemsize,
    model,
  )
  config = _Config(
    tuple(plan.order),
    plan.chosen.chunk_rows,
    backward,
    precision,
    None if pet is None else jnp.dtype(pet),
    tune_inference,
  )
  return reverse_mode_only(planned_factored, config, x, tuple(fs))


_PLANNED_ONLY = (
  'kron_matmul\'s planned backward (backward="planned", the default) is'
  " reverse-mode only: jax.jvp, jax.jacfwd, jax.hessian and forward-over-"
  'reverse cannot go through it. Pass backward="autodiff" to'
  " kron_matmul (or the layer) for forward-mode derivatives."
)


def reverse_mode_only(custom_vjp_fn: Any, config, x, fs, message: str = _PLANNED_ONLY) -> Any:
  """Calls ``custom_vjp_fn``; forward-mode AD of it raises a TypeError with ``message``."""
  try:
    return custom_vjp_fn(config, x, fs)
  except TypeError as e:
    if "forward-mode" not in str(e):
      raise
    raise TypeError(message) from e
