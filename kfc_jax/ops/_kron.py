"""Multiplication by a sum of Kronecker products, without forming the product.

Conventions (docs/DESIGN.md §2): row-vector layout ``y = x @ W``; Kronecker order of
``jnp.kron``; each factor carries a leading rank axis, ``F_t: [r, m_t, n_t]``,
and ``W = sum_r F_1[r] ⊗ ... ⊗ F_k[r]`` has shape ``[prod(m_t), prod(n_t)]``.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
from collections.abc import Sequence
from typing import Any, Literal, Union

import jax
import jax.numpy as jnp
from jax import lax

from kfc_jax import _checks

Array = jax.Array
Strategy = Union[Literal["auto", "factored", "materialize"], tuple[int, ...]]
PrecisionLike = Any


# ---------------------------------------------------------------------------
# Factor validation
# ---------------------------------------------------------------------------


def _as_factor_list(factors: Any, name: str = "factors") -> list[Any]:
  """Normalises ``factors`` to a list of ``[r, m, n]`` arrays (same r)."""
  if hasattr(factors, "ndim") or not isinstance(factors, Sequence):
    raise TypeError(
        f"{name} must be a sequence (list or tuple) of factor arrays, each"
        f" [rank, m_t, n_t] or [m_t, n_t]; got {type(factors).__name__}. For a"
        f" single factor write ({name[:-1] if name.endswith('s') else name},)."
    )
  if not factors:
    raise ValueError(f"{name} must hold at least one factor, got none.")
  out = []
  for i, f in enumerate(factors):
    if not hasattr(f, "ndim"):
      f = jnp.asarray(f)
    if f.ndim == 2:
      f = f[None]
    elif f.ndim != 3:
      raise ValueError(
          f"{name}[{i}] must have shape [rank, m, n] or [m, n], got shape"
          f" {tuple(f.shape)} ({f.ndim}-D)."
      )
    if not (jnp.issubdtype(f.dtype, jnp.floating)):
      raise TypeError(
          f"{name}[{i}] must have a floating dtype, got {f.dtype}."
      )
    out.append(f)
  ranks = [f.shape[0] for f in out]
  if len(set(ranks)) != 1:
    raise ValueError(
        f"all {name} must have the same rank (leading axis), got ranks {ranks}"
        f" for shapes {[tuple(f.shape) for f in out]}."
    )
  if ranks[0] < 1:
    raise ValueError(f"{name} must have rank >= 1, got rank {ranks[0]}.")
  return out


# ---------------------------------------------------------------------------
# Cost model and plan
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class CostModel:
  """A roofline model of one device: predicted seconds of a plan.

  Each step costs ``max(flops / (flops_per_second * eff), bytes / bandwidth)
  + overhead_seconds``, where ``eff = min(1, K / full_speed_dim)`` penalises
  matrix products with a short contraction dimension ``K`` (they cannot keep the
  matrix units busy). When ``chunk_bytes`` is set (CPU), a factored plan whose
  intermediates exceed it runs over row blocks of ``x`` sized so that each
  block's intermediates fit in ``chunk_bytes`` (they then stay in cache); its
  intermediate traffic moves at ``cache_bytes_per_second`` (default:
  ``bytes_per_second``). The defaults per
  platform were set from the measurements in ``benchmarks/results/`` (see
  ``benchmarks/kron_matmul.py``, which reports the model's picks against the
  measured best).
  """

  flops_per_second: float
  bytes_per_second: float
  overhead_seconds: float
  full_speed_dim: int = 64
  chunk_bytes: int | None = None
  cache_bytes_per_second: float | None = None

  def step_seconds(self, flops: float, bytes_: float, contraction_dim: int,
                   bytes_per_second: float | None = None) -> float:
    eff = min(1.0, contraction_dim / self.full_speed_dim)
    compute = flops / (self.flops_per_second * eff)
    memory = bytes_ / (bytes_per_second or self.bytes_per_second)
    return max(compute, memory) + self.overhead_seconds


_DEFAULT_COST_MODELS = {
    # CPU: blocks of 1 MiB (about one core's L2) measured fastest for the
    # chunked factored plan on 64x64 (x) 64x64 at ranks 1, 4 and 16 (2.4x less
    # time than 8 MiB blocks at rank 16); see benchmarks/results/.
    "cpu": CostModel(flops_per_second=150e9, bytes_per_second=20e9,
                     overhead_seconds=5e-6, full_speed_dim=128,
                     chunk_bytes=2**20, cache_bytes_per_second=40e9),
    "gpu": CostModel(flops_per_second=50e12, bytes_per_second=2.5e12,
                     overhead_seconds=5e-6, full_speed_dim=64),
    "tpu": CostModel(flops_per_second=150e12, bytes_per_second=1.2e12,
                     overhead_seconds=3e-6, full_speed_dim=128),
}


def default_cost_model(platform: str | None = None) -> CostModel:
  """The cost model used by ``strategy="auto"`` on ``platform`` (default backend)."""
  platform = platform or jax.default_backend()
  return _DEFAULT_COST_MODELS.get(platform, _DEFAULT_COST_MODELS["gpu"])


@dataclasses.dataclass(frozen=True)
class PlanCost:
  """Predicted cost of one way of computing ``x @ kron(factors)``."""

  strategy: str                # "factored" or "materialize"
  order: tuple[int, ...]       # factor contraction order ("factored" only)
  flops: int
  bytes: int                   # predicted memory traffic
  temp_bytes: int              # largest temporary buffer (W for "materialize")
  seconds: float               # cost-model prediction
  chunk_rows: int | None = None  # rows of x per block ("factored", chunked)


@dataclasses.dataclass(frozen=True)
class KronMatmulPlan:
  """How ``kron_matmul`` computes ``x @ W``; ``chosen`` is what runs.

  ``candidates`` holds every plan considered, cheapest first, so the choice can
  be inspected and checked against measurements.
  """

  batch: int
  in_factors: tuple[int, ...]
  out_factors: tuple[int, ...]
  rank: int
  chosen: PlanCost
  candidates: tuple[PlanCost, ...]

  @property
  def strategy(self) -> str:
    return self.chosen.strategy

  @property
  def order(self) -> tuple[int, ...]:
    return self.chosen.order

  @property
  def dense_flops(self) -> int:
    return 2 * self.batch * math.prod(self.in_factors) * math.prod(self.out_factors)


def _factored_cost(batch, ms, ns, r, order, itemsize, model) -> PlanCost:
  dims = list(ms)
  base = batch * math.prod(ms)  # elements of the intermediate, per rank term
  steps = []
  for step, t in enumerate(order):
    first, last = step == 0, step == len(order) - 1
    out_base = base // dims[t] * ns[t]
    in_size = base * (1 if first else r)
    out_size = out_base * (1 if last else r)
    contraction = dims[t] * (r if last and not first else 1)
    steps.append((2 * base * ns[t] * r, in_size, out_size, contraction))
    dims[t] = ns[t]
    base = out_base
  peak = max(max(s[1], s[2]) for s in steps)
  chunk_rows = None
  if model.chunk_bytes and batch > 1 and itemsize * peak > model.chunk_bytes:
    chunk_rows = max(1, batch * model.chunk_bytes // (itemsize * peak))
  flops = bytes_ = 0
  seconds = 0.0
  for step, (step_flops, in_size, out_size, contraction) in enumerate(steps):
    # The GEMM reads its input and writes its output; the axis shuffle before
    # the next step reads and writes the output once more.
    step_bytes = itemsize * (in_size + 3 * out_size)
    if chunk_rows:  # only x and y travel to and from memory
      dram = itemsize * ((in_size if step == 0 else 0)
                         + (3 * out_size if step == len(steps) - 1 else 0))
      memory_seconds = (dram / model.bytes_per_second
                        + (step_bytes - dram) / (model.cache_bytes_per_second
                                                 or model.bytes_per_second))
      bandwidth = step_bytes / memory_seconds
    else:
      bandwidth = model.bytes_per_second
    seconds += model.step_seconds(step_flops, step_bytes, contraction, bandwidth)
    flops += step_flops
    bytes_ += step_bytes
  if chunk_rows:
    peak = peak * chunk_rows // batch
  return PlanCost("factored", tuple(order), int(flops), int(bytes_),
                  int(itemsize * peak), float(seconds), chunk_rows)


def _materialize_cost(batch, ms, ns, r, itemsize, model) -> PlanCost:
  m, n, k = math.prod(ms), math.prod(ns), len(ms)
  # Building W: the last Kronecker step contracts the rank axis.
  build_flops = 2 * r * m * n if k > 1 else r * m * n
  build_bytes = itemsize * m * n
  gemm_flops = 2 * batch * m * n
  gemm_bytes = itemsize * (batch * m + m * n + batch * n)
  seconds = (model.step_seconds(build_flops, build_bytes, model.full_speed_dim)
             + model.step_seconds(gemm_flops, gemm_bytes, m))
  return PlanCost("materialize", (), int(build_flops + gemm_flops),
                  int(build_bytes + gemm_bytes), int(itemsize * m * n),
                  float(seconds))


def _orders(k: int) -> list[tuple[int, ...]]:
  if k <= 5:
    return list(itertools.permutations(range(k)))
  # Beyond 5 factors, try the natural orders only (k! grows too fast).
  return [tuple(range(k - 1, -1, -1)), tuple(range(k))]


@functools.lru_cache(maxsize=4096)
def _plan_cached(batch, ms, ns, r, itemsize, strategy, model) -> KronMatmulPlan:
  k = len(ms)
  candidates = [_factored_cost(batch, ms, ns, r, o, itemsize, model)
                for o in _orders(k)] if k > 1 else []
  candidates.append(_materialize_cost(batch, ms, ns, r, itemsize, model))
  candidates.sort(key=lambda c: c.seconds)
  w_size, xy_size = math.prod(ms) * math.prod(ns), batch * (math.prod(ms) + math.prod(ns))
  if k == 1:  # W is the (rank-summed) factor itself: nothing to factor.
    chosen = candidates[0]
  elif isinstance(strategy, tuple):
    chosen = _factored_cost(batch, ms, ns, r, strategy, itemsize, model)
  elif strategy == "materialize":
    chosen = next(c for c in candidates if c.strategy == "materialize")
  elif strategy == "factored":
    chosen = next(c for c in candidates if c.strategy == "factored")
  else:  # auto: cheapest, but never form a W larger than x and y together.
    allowed = [c for c in candidates
               if c.strategy == "factored" or w_size <= xy_size]
    chosen = allowed[0]
  return KronMatmulPlan(batch, ms, ns, r, chosen, tuple(candidates))


def kron_matmul_plan(
    x_shape: Sequence[int],
    factor_shapes: Sequence[Sequence[int]],
    *,
    dtype: Any = jnp.float32,
    strategy: Strategy = "auto",
    cost_model: CostModel | None = None,
) -> KronMatmulPlan:
  """The plan ``kron_matmul`` runs for these shapes, with predicted costs.

  Args:
    x_shape: shape of ``x``, ``[*batch, prod(m_t)]``.
    factor_shapes: shapes of the factors, each ``(r, m_t, n_t)`` or ``(m_t, n_t)``.
    dtype: element type (sets the bytes per element).
    strategy: ``"auto"`` (cheapest by the cost model, never forming a ``W``
      larger than ``x`` and ``y`` together), ``"factored"`` (best contraction
      order, ``W`` never formed), ``"materialize"`` (form ``W``, one GEMM), or a
      permutation of factor indices (contract factors in that order).
    cost_model: device model; defaults to :func:`default_cost_model`.

  Returns:
    A :class:`KronMatmulPlan`; ``plan.chosen`` is what runs.

  Example usage::

    >>> import kfc_jax
    >>> plan = kfc_jax.kron_matmul_plan((1024, 4096), [(64, 64), (64, 64)])
    >>> plan.strategy, plan.chosen.flops < plan.dense_flops
    ('factored', True)
  """
  shapes = []
  for i, s in enumerate(factor_shapes):
    s = _checks.int_tuple(s, f"factor_shapes[{i}]")
    if len(s) == 2:
      s = (1, *s)
    if len(s) != 3:
      raise ValueError(
          f"factor_shapes[{i}] must be (rank, m, n) or (m, n), got {s}.")
    shapes.append(s)
  if not shapes:
    raise ValueError("factor_shapes must hold at least one shape, got none.")
  ranks = {s[0] for s in shapes}
  if len(ranks) != 1:
    raise ValueError(
        f"all factor_shapes must have the same rank, got {[s[0] for s in shapes]}.")
  x_shape = tuple(int(d) for d in x_shape)
  ms = tuple(s[1] for s in shapes)
  ns = tuple(s[2] for s in shapes)
  if not x_shape or x_shape[-1] != math.prod(ms):
    raise ValueError(
        f"x_shape must end in prod(m_t) = {math.prod(ms)} (the factors' input"
        f" sizes {ms}), got x_shape {x_shape}."
    )
  strategy = _checks.strategy(strategy, len(shapes))
  return _plan_cached(
      math.prod(x_shape[:-1]), ms, ns, shapes[0][0],
      jnp.dtype(dtype).itemsize, strategy, cost_model or default_cost_model())


# ---------------------------------------------------------------------------
# Computation
# ---------------------------------------------------------------------------


def _dot(a, b, dims, precision, preferred_element_type):
  return lax.dot_general(a, b, dims, precision=precision,
                         preferred_element_type=preferred_element_type)


def _factored(x, factors, order, precision, pet):
  """Contracts one factor at a time; the contracted axis is always last.

  ``t`` carries labelled axes. Before each step they are put in the canonical
  order ``[rank?, batch, outs (by factor), ins (by factor), target]`` so that
  each step is a plain (rank-batched) GEMM on a contiguous last axis.
  """
  k = len(factors)
  batch = x.shape[0]
  t = x.reshape(batch, *(f.shape[1] for f in factors))
  labels = ["batch"] + [("in", i) for i in range(k)]

  def canonical(target, rank_next_to_target=False):
    outs = sorted((l for l in labels if l[0] == "out"), key=lambda l: l[1])
    ins = sorted((l for l in labels if l[0] == "in" and l != target),
                 key=lambda l: l[1])
    head = ["rank"] if "rank" in labels and not rank_next_to_target else []
    tail = ["rank"] if "rank" in labels and rank_next_to_target else []
    return head + ["batch"] + outs + ins + tail + [target]

  def permute(new_labels):
    nonlocal t, labels
    perm = [labels.index(l) for l in new_labels]
    if perm != list(range(len(perm))):
      t = jnp.transpose(t, perm)
    labels = list(new_labels)

  for step, i in enumerate(order):
    f = factors[i]
    first, last = step == 0, step == k - 1
    target = ("in", i)
    if last and not first:
      # Contract the rank and this factor's input axis in one GEMM.
      permute(canonical(target, rank_next_to_target=True))
      nd = t.ndim
      t = _dot(t, f, (((nd - 2, nd - 1), (0, 1)), ((), ())), precision, pet)
      labels = labels[:-2] + [("out", i)]
    elif first:
      permute(canonical(target))
      t = _dot(t, f, (((t.ndim - 1,), (1,)), ((), ())), precision, pet)
      labels = labels[:-1] + ["rank", ("out", i)]
    else:
      permute(canonical(target))
      t = _dot(t, f, (((t.ndim - 1,), (1,)), ((0,), (0,))), precision, pet)
      labels = ["rank"] + labels[1:-1] + [("out", i)]
    if pet is None:
      t = t.astype(x.dtype)
  permute(["batch"] + [("out", i) for i in range(k)])
  return t.reshape(batch, -1)


def kron(
    factors: Sequence[Any],
    *,
    precision: PrecisionLike = None,
    preferred_element_type: Any = None,
) -> Array:
  """Materialises ``W = sum_r kron(F_1[r], ..., F_k[r])``.

  Args:
    factors: ``k >= 1`` arrays, each ``[r, m_t, n_t]`` (or ``[m_t, n_t]``, r = 1),
      all with the same ``r``.
    precision: passed to the rank contraction (``lax.Precision``).
    preferred_element_type: accumulation dtype of the rank contraction.

  Returns:
    ``W`` of shape ``[prod(m_t), prod(n_t)]``, in ``jnp.kron`` order.

  Example usage::

    >>> import jax.numpy as jnp, kfc_jax
    >>> a, b = jnp.ones((2, 3)), jnp.ones((4, 5))
    >>> kfc_jax.kron([a, b]).shape
    (8, 15)
  """
  fs = _as_factor_list(factors)
  dtype = jnp.result_type(*fs)
  fs = [f.astype(dtype) for f in fs]
  r = fs[0].shape[0]
  acc = fs[0]  # [r, M, N]
  for f in fs[1:-1]:
    acc = (acc[:, :, None, :, None] * f[:, None, :, None, :]).reshape(
        r, acc.shape[1] * f.shape[1], acc.shape[2] * f.shape[2])
  if len(fs) == 1:
    return acc.sum(0) if preferred_element_type is None else acc.sum(
        0, dtype=preferred_element_type)
  f = fs[-1]
  w = jnp.einsum("rab,rcd->acbd", acc, f, precision=precision,
                 preferred_element_type=preferred_element_type)
  return w.reshape(acc.shape[1] * f.shape[1], acc.shape[2] * f.shape[2])


def kron_matmul(
    x: Any,
    factors: Sequence[Any],
    *,
    precision: PrecisionLike = None,
    preferred_element_type: Any = None,
    strategy: Strategy = "auto",
    cost_model: CostModel | None = None,
) -> Array:
  """Computes ``x @ sum_r kron(F_1[r], ..., F_k[r])`` without forming the product.

  ``x`` is reshaped (for free, row-major) to ``[batch, m_1, ..., m_k]`` and the
  factors are contracted one at a time, each as one GEMM, in the order the cost
  model predicts is fastest (see :func:`kron_matmul_plan`). When the factors
  are small and the batch large, forming ``W`` and running one GEMM can win;
  ``strategy="auto"`` does that only when ``W`` is no larger than ``x`` and
  ``y`` together.

  Args:
    x: ``[*batch, prod(m_t)]``, any number of batch axes (including none).
    factors: ``k >= 1`` arrays, each ``[r, m_t, n_t]`` (or ``[m_t, n_t]``,
      meaning r = 1), all with the same ``r``.
    precision: ``lax.Precision`` for every contraction.
    preferred_element_type: accumulation/result dtype of every contraction;
      intermediates (a materialised ``W`` included) are held in it.
    strategy: ``"auto"``, ``"factored"``, ``"materialize"`` or a permutation of
      factor indices; see :func:`kron_matmul_plan`.
    cost_model: device model for the plan; defaults to
      :func:`default_cost_model`.

  Returns:
    ``[*batch, prod(n_t)]``, of dtype ``preferred_element_type`` or the
    promoted dtype of ``x`` and the factors.

  Example usage::

    >>> import jax, jax.numpy as jnp, kfc_jax
    >>> x = jnp.ones((8, 6))
    >>> a, b = jnp.ones((2, 4)), jnp.ones((3, 5))   # W: [6, 20]
    >>> kfc_jax.kron_matmul(x, [a, b]).shape
    (8, 20)
  """
  fs = _as_factor_list(factors)
  if not hasattr(x, "ndim"):
    x = jnp.asarray(x)
  ms = tuple(f.shape[1] for f in fs)
  ns = tuple(f.shape[2] for f in fs)
  m = math.prod(ms)
  if x.ndim < 1 or x.shape[-1] != m:
    raise ValueError(
        f"x must have shape [*batch, {m}] (the product of the factors' input"
        f" sizes {ms}), got x with shape {tuple(x.shape)}."
    )
  dtype = jnp.result_type(x, *fs)
  if not jnp.issubdtype(dtype, jnp.inexact):
    raise TypeError(f"x must have a floating dtype, got {x.dtype}.")
  x = x.astype(dtype)
  fs = [f.astype(dtype) for f in fs]
  batch_shape = x.shape[:-1]
  x2 = x.reshape(-1, m)
  plan = kron_matmul_plan(x2.shape, [f.shape for f in fs], dtype=dtype,
                          strategy=_checks.strategy(strategy, len(fs)),
                          cost_model=cost_model)
  if plan.strategy == "materialize":
    # W is an intermediate like any other: held in the accumulation dtype, so
    # every plan rounds the same way.
    w = kron(fs, precision=precision, preferred_element_type=preferred_element_type)
    y = _dot(x2, w, (((1,), (0,)), ((), ())), precision, preferred_element_type)
  elif plan.chosen.chunk_rows:
    y = _chunked(functools.partial(_factored, factors=fs, order=plan.order,
                                   precision=precision, pet=preferred_element_type),
                 x2, plan.chosen.chunk_rows)
  else:
    y = _factored(x2, fs, plan.order, precision, preferred_element_type)
  return y.reshape(*batch_shape, math.prod(ns))


def _chunked(fn, x, rows):
  """Applies ``fn`` to blocks of ``rows`` rows (keeps intermediates in cache)."""
  blocks, rest = divmod(x.shape[0], rows)
  head = lax.map(fn, x[:blocks * rows].reshape(blocks, rows, x.shape[1]))
  head = head.reshape(blocks * rows, -1)
  return jnp.concatenate([head, fn(x[blocks * rows:])]) if rest else head
