"""The cost model, and the plan :func:`kron_matmul` runs.

A plan lists the ways of computing ``x @ W`` (``W = sum_r F_1[r] ⊗ ... ⊗ F_k[r]``)
with their predicted FLOPs, bytes and seconds under a roofline
:class:`CostModel` of one device, and picks one (``docs/DESIGN.md``, "The
functional core"). The conv plans (``_conv_plan.py``) use the same model and
:class:`PlanCost`.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
from collections.abc import Sequence
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp

from kfc_jax import _checks, _dtypes
from kfc_jax.ops import _autotune

Strategy = Literal["auto", "factored", "materialize"] | tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class CostModel:
  """A roofline model of one device: predicted seconds of a plan.

  Each step costs ``max(flops / (flops_per_second * eff), bytes / bandwidth)
  + overhead_seconds``, where ``eff`` penalises steps that cannot keep the
  matrix units busy: for a matrix product, ``min(1, K / full_speed_dim)`` with
  ``K`` its contraction dimension (:meth:`step_seconds`); for a convolution,
  a function of its channels (:meth:`conv_step_seconds`). When
  ``chunk_bytes`` is set (CPU), a factored plan whose intermediates exceed it
  runs over row blocks of ``x`` sized so that each block's intermediates fit
  in ``chunk_bytes`` (they then stay in cache); its intermediate traffic moves
  at ``cache_bytes_per_second`` (default: ``bytes_per_second``). A
  convolution also costs at least ``conv_pixel_seconds`` per output pixel
  (images x rows x columns), whatever its channels: XLA:CPU's conv kernels
  pay about 40 ns a pixel when they have few channels to work on. The defaults
  per platform were set from the measurements in ``benchmarks/results/`` (see
  ``benchmarks/kron_matmul.py``, which reports the model's picks against the
  measured best).

  Example usage::

    >>> import kfc_jax
    >>> model = kfc_jax.CostModel(flops_per_second=1e12, bytes_per_second=1e11,
    ...                           overhead_seconds=0.0)
    >>> model.step_seconds(2e9, 1e6, contraction_dim=64)  # compute-bound: 2 ms
    0.002
  """

  flops_per_second: float
  bytes_per_second: float
  overhead_seconds: float
  full_speed_dim: int = 64
  chunk_bytes: int | None = None
  cache_bytes_per_second: float | None = None
  conv_pixel_seconds: float = 0.0

  def _seconds(
    self, flops: float, bytes_: float, efficiency: float, bytes_per_second: float | None = None
  ) -> float:
    compute = flops / (self.flops_per_second * efficiency)
    memory = bytes_ / (bytes_per_second or self.bytes_per_second)
    return max(compute, memory) + self.overhead_seconds

  def step_seconds(
    self, flops: float, bytes_: float, contraction_dim: int, bytes_per_second: float | None = None
  ) -> float:
    """One matrix product contracting an axis of length ``contraction_dim``."""
    efficiency = min(1.0, contraction_dim / self.full_speed_dim)
    return self._seconds(flops, bytes_, efficiency, bytes_per_second)

  def conv_step_seconds(
    self, flops: float, bytes_: float, in_channels: int, out_channels: int, pixels: int = 0
  ) -> float:
    """One convolution, slowed down when it has few channels.

    A conv runs at ``sqrt(min(1, min(cin, cout) / (2 * full_speed_dim)))`` of
    full speed, and takes at least ``pixels * conv_pixel_seconds`` (its
    output pixels, images x rows x columns). The first term was fitted on
    XLA:CPU (2 cores) to 15 measured factored/dense pairs
    (``benchmarks/kron_conv.py`` and 3x3 convs of 8 to 256 channels), e.g. a
    3x3 64->64 conv runs at 0.70 of a 128->128 one (model 0.71), 16->48 at
    0.47 (0.5). The pixel floor is what convs of 2-12 channels measure
    (``benchmarks/conv_plans.py``): 32-48 ns a pixel, so a 1x3 2->2 conv on
    1024 images of 28x28 takes 25 ms for 19 MFLOPs, where the channel term
    alone predicts 1.5 ms. With it the model picks the faster plan (within
    10%) on 58 of the 72 KConv-example rows of that benchmark, against 29
    without.
    """
    efficiency = math.sqrt(min(1.0, min(in_channels, out_channels) / (2 * self.full_speed_dim)))
    seconds = self._seconds(flops, bytes_, efficiency)
    return max(seconds, pixels * self.conv_pixel_seconds + self.overhead_seconds)

  def memory_seconds(self, bytes_: float) -> float:
    """A memory-bound step (an axis shuffle): reads and writes ``bytes_``."""
    return bytes_ / self.bytes_per_second + self.overhead_seconds


_DEFAULT_COST_MODELS = {
  # CPU: blocks of 1 MiB (about one core's L2) measured fastest for the
  # chunked factored plan on 64x64 (x) 64x64 at ranks 1, 4 and 16 (2.4x less
  # time than 8 MiB blocks at rank 16); see benchmarks/results/.
  "cpu": CostModel(
    flops_per_second=150e9,
    bytes_per_second=20e9,
    overhead_seconds=5e-6,
    full_speed_dim=128,
    chunk_bytes=2**20,
    cache_bytes_per_second=40e9,
    conv_pixel_seconds=40e-9,
  ),
  "gpu": CostModel(
    flops_per_second=50e12, bytes_per_second=2.5e12, overhead_seconds=5e-6, full_speed_dim=64
  ),
  "tpu": CostModel(
    flops_per_second=150e12, bytes_per_second=1.2e12, overhead_seconds=3e-6, full_speed_dim=128
  ),
}


def builtin_cost_model(platform: str) -> CostModel:
  """The shipped (uncalibrated) model of ``platform``; GPU's for unknown ones."""
  return _DEFAULT_COST_MODELS.get(platform, _DEFAULT_COST_MODELS["gpu"])


def default_cost_model(platform: str | None = None) -> CostModel:
  """The cost model used by ``strategy="auto"`` on ``platform`` (default backend).

  The constants ``python -m kfc_jax.calibrate`` fitted on this kind of device,
  if it was run (see :func:`kfc_jax.calibrate.main`); else the shipped ones.

  Example usage::

    >>> import kfc_jax
    >>> model = kfc_jax.default_cost_model("cpu")
    >>> isinstance(model, kfc_jax.CostModel), model.flops_per_second > 0
    (True, True)
  """
  platform = platform or jax.default_backend()
  model = builtin_cost_model(platform)
  calibrated = _autotune.load_calibrated(platform)
  return dataclasses.replace(model, **calibrated) if calibrated else model


@dataclasses.dataclass(frozen=True)
class PlanCost:
  """Predicted cost of one way of computing a Kronecker product or conv.

  Example usage::

    >>> import kfc_jax
    >>> plan = kfc_jax.kron_matmul_plan((256, 4096), [(64, 64), (64, 64)])
    >>> cost = plan.candidates[0]  # cheapest first: the one that runs
    >>> cost == plan.chosen, cost.strategy in ("factored", "materialize")
    (True, True)
  """

  strategy: str  # "factored" or "materialize"
  order: tuple[int, ...]  # factor contraction order (kron_matmul, "factored")
  flops: int
  bytes: int  # predicted memory traffic
  temp_bytes: int  # largest temporary buffer (W for "materialize")
  seconds: float  # cost-model prediction
  chunk_rows: int | None = None  # rows of x per block ("factored", chunked)


@dataclasses.dataclass(frozen=True)
class KronMatmulPlan:
  """How ``kron_matmul`` computes ``x @ W``; ``chosen`` is what runs.

  ``candidates`` holds every plan considered, cheapest first, so the choice can
  be inspected and checked against measurements.

  Example usage::

    >>> import kfc_jax
    >>> plan = kfc_jax.kron_matmul_plan((256, 4096), [(64, 64), (64, 64)])
    >>> plan.batch, plan.in_factors, plan.out_factors, plan.rank
    (256, (64, 64), (64, 64), 1)
    >>> plan.strategy, plan.chosen.flops < plan.dense_flops
    ('factored', True)
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


class GemmStep(NamedTuple):
  """One (rank-batched) GEMM of the factored plan; sizes in elements."""

  factor: int  # the factor it contracts
  flops: int
  in_size: int  # its input (the factor itself is small)
  out_size: int  # its output
  contraction: int  # length of the contracted axis (rank included at the end)


def _factored_steps(batch, ms, ns, r, order) -> list[GemmStep]:
  """The GEMMs of contracting the factors in ``order`` (see ``_kron._factored``).

  The first step creates the rank axis and the last one contracts it, so the
  intermediates in between are ``r`` times larger than ``x``'s share.
  """
  dims = list(ms)
  base = batch * math.prod(ms)  # elements of the intermediate, per rank term
  steps = []
  for step, t in enumerate(order):
    first, last = step == 0, step == len(order) - 1
    out_base = base // dims[t] * ns[t]
    steps.append(
      GemmStep(
        factor=t,
        flops=2 * base * ns[t] * r,
        in_size=base * (1 if first else r),
        out_size=out_base * (1 if last else r),
        contraction=dims[t] * (r if last and not first else 1),
      )
    )
    dims[t] = ns[t]
    base = out_base
  return steps


def _factored_cost(batch, ms, ns, r, order, itemsize, model) -> PlanCost:
  steps = _factored_steps(batch, ms, ns, r, order)
  peak = max(max(s.in_size, s.out_size) for s in steps)
  chunk_rows = None
  if model.chunk_bytes and batch > 1 and itemsize * peak > model.chunk_bytes:
    chunk_rows = max(1, batch * model.chunk_bytes // (itemsize * peak))
  flops = bytes_ = 0
  seconds = 0.0
  for i, s in enumerate(steps):
    # The GEMM reads its input and writes its output; the axis shuffle before
    # the next step reads and writes the output once more.
    step_bytes = itemsize * (s.in_size + 3 * s.out_size)
    if chunk_rows:  # only x and y travel to and from memory
      dram = itemsize * (
        (s.in_size if i == 0 else 0) + (3 * s.out_size if i == len(steps) - 1 else 0)
      )
      memory_seconds = dram / model.bytes_per_second + (step_bytes - dram) / (
        model.cache_bytes_per_second or model.bytes_per_second
      )
      bandwidth = step_bytes / memory_seconds
    else:
      bandwidth = model.bytes_per_second
    seconds += model.step_seconds(s.flops, step_bytes, s.contraction, bandwidth)
    flops += s.flops
    bytes_ += step_bytes
  if chunk_rows:
    peak = peak * chunk_rows // batch
  return PlanCost(
    "factored",
    tuple(order),
    int(flops),
    int(bytes_),
    int(itemsize * peak),
    float(seconds),
    chunk_rows,
  )


def _materialize_cost(batch, ms, ns, r, itemsize, model) -> PlanCost:
  m, n, k = math.prod(ms), math.prod(ns), len(ms)
  # Building W: the last Kronecker step contracts the rank axis.
  build_flops = 2 * r * m * n if k > 1 else r * m * n
  build_bytes = itemsize * m * n
  gemm_flops = 2 * batch * m * n
  gemm_bytes = itemsize * (batch * m + m * n + batch * n)
  seconds = model.step_seconds(build_flops, build_bytes, model.full_speed_dim) + model.step_seconds(
    gemm_flops, gemm_bytes, m
  )
  return PlanCost(
    "materialize",
    (),
    int(build_flops + gemm_flops),
    int(build_bytes + gemm_bytes),
    int(itemsize * m * n),
    float(seconds),
  )


def _orders(k: int) -> list[tuple[int, ...]]:
  if k <= 5:
    return list(itertools.permutations(range(k)))
  # Beyond 5 factors, try the natural orders only (k! grows too fast).
  return [tuple(range(k - 1, -1, -1)), tuple(range(k))]


@functools.lru_cache(maxsize=4096)
def matmul_plan(
  batch: int,
  ms: tuple[int, ...],
  ns: tuple[int, ...],
  r: int,
  itemsize: int,
  strategy: Strategy,
  model: CostModel,
) -> KronMatmulPlan:
  """The plan for validated sizes; ``strategy`` as :func:`_checks.strategy` returns."""
  k = len(ms)
  candidates = (
    [_factored_cost(batch, ms, ns, r, o, itemsize, model) for o in _orders(k)] if k > 1 else []
  )
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
    allowed = [c for c in candidates if c.strategy == "factored" or w_size <= xy_size]
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
      order, ``W`` never formed), ``"materialize"`` (form ``W``, one GEMM), a
      permutation of factor indices (contract factors in that order), or
      ``"autotune"`` (the plan measured fastest, forward + backward, on this
      device: timed on first use of these shapes and dtype, then cached in
      memory and in ``$KFC_JAX_CACHE_DIR/autotune.json`` when set).
    cost_model: device model; defaults to :func:`default_cost_model` (the
      constants ``python -m kfc_jax.calibrate`` fitted on this device, if
      any).

  Returns:
    A :class:`KronMatmulPlan`; ``plan.chosen`` is what runs.

  Example usage::

    >>> import kfc_jax
    >>> plan = kfc_jax.kron_matmul_plan((1024, 4096), [(64, 64), (64, 64)])
    >>> plan.strategy, plan.chosen.flops < plan.dense_flops
    ('factored', True)
  """
  shapes = _checks.matmul_factor_shapes(factor_shapes)
  x_shape = _checks.nonnegative_shape(x_shape, "x_shape")
  dtype = _dtypes.optional_float_dtype(dtype, "dtype", allow_none=False)
  ms = tuple(s[1] for s in shapes)
  ns = tuple(s[2] for s in shapes)
  if not x_shape or x_shape[-1] != math.prod(ms):
    raise ValueError(
      f"x_shape must end in prod(m_t) = {math.prod(ms)} (the factors' input"
      f" sizes {ms}), got x_shape {x_shape}."
    )
  strategy = _checks.strategy(strategy, len(shapes))
  if strategy == "autotune" and math.prod(x_shape[:-1]) == 0:
    strategy = "auto"  # an empty batch: nothing to time
  if strategy == "autotune":  # the measured-fastest plan (timed once, cached)
    strategy = _checks.strategy(
      _autotune.autotuned_strategy(x_shape, shapes, dtype, None, None), len(shapes)
    )
  return matmul_plan(
    math.prod(x_shape[:-1]),
    ms,
    ns,
    shapes[0][0],
    jnp.dtype(dtype).itemsize,
    strategy,
    cost_model or default_cost_model(),
  )
