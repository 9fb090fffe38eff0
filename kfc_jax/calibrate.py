"""Fit the cost model's constants to this device: ``python -m kfc_jax.calibrate``.

The default :class:`~kfc_jax.CostModel` constants were set on one 2-core CPU;
on a GPU or TPU they are guesses. This command times every plan of
``kron_matmul`` (each contraction order, and forming ``W``) on a short sweep of
shapes, then fits the model's rates by non-negative least squares::

    measured seconds ≈ compute / flops_per_second
                     + dram_bytes / bytes_per_second
                     + cache_bytes / cache_bytes_per_second
                     + steps * overhead_seconds

where the four features of each plan are the model's own FLOP, byte and step
counts (obtained from :func:`kfc_jax.kron_matmul_plan` with probe models, so
the fit always matches what the planner counts). ``full_speed_dim`` is chosen
from a few values by the fit's pick accuracy. The constants are written, keyed
by the device kind, to ``$KFC_JAX_CACHE_DIR/cost_model.json`` (default
``~/.cache/kfc_jax/cost_model.json``), where :func:`kfc_jax.default_cost_model`
picks them up.

Run::

  python -m kfc_jax.calibrate            # ~2 min on a 2-core CPU
  python -m kfc_jax.calibrate --quick    # fewer shapes, seconds
  python -m kfc_jax.calibrate --out my_models.json --dry-run
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from kfc_jax import ops
from kfc_jax.ops import _autotune

# (batch, in_factors, out_factors, rank): square and rectangular factors, 2 and
# 3 factors, small and large batches, shapes where forming W wins.
SWEEP = [
  (1024, (64, 64), (64, 64), 1),
  (4096, (32, 32), (32, 32), 1),
  (4096, (16, 64), (16, 64), 1),
  (1024, (16, 16, 16), (16, 16, 16), 1),
  (4096, (8, 8, 16), (8, 8, 16), 1),
  (1024, (64, 64), (64, 64), 4),
  (4096, (32, 32), (32, 32), 8),
  (64, (64, 64), (64, 64), 1),
  (4096, (8, 8), (8, 8), 1),
  (256, (9, 32), (4, 64), 1),
  (256, (25, 256), (4, 64), 1),
  (256, (25, 256), (4, 64), 10),
]

QUICK_SWEEP = [
  (512, (32, 32), (32, 32), 1),
  (1024, (8, 8, 16), (8, 8, 16), 1),
  (2048, (8, 8), (8, 8), 1),
  (256, (9, 32), (4, 64), 2),
]

_BIG = 1e30  # a rate that makes its term vanish (finite: no 0 * inf)


@dataclasses.dataclass(frozen=True)
class Measurement:
  batch: int
  in_factors: tuple[int, ...]
  out_factors: tuple[int, ...]
  rank: int
  strategy: Any  # an order (tuple) or "materialize"
  seconds: float


def _shapes(row):
  batch, ms, ns, r = row
  return (batch, math.prod(ms)), [(r, m, n) for m, n in zip(ms, ns, strict=True)]


def measure(
  sweep: Sequence[tuple], dtype=jnp.float32, repeats: int = 5, log=print
) -> list[Measurement]:
  """Times every plan of every shape (forward, compiled, interleaved medians)."""
  out = []
  for row in sweep:
    x_shape, factor_shapes = _shapes(row)
    plan = ops.kron_matmul_plan(x_shape, factor_shapes, dtype=dtype)
    strategies: list[Any] = [c.order for c in plan.candidates if c.strategy == "factored"]
    strategies.append("materialize")
    times = _autotune.time_strategies(
      x_shape, factor_shapes, dtype, strategies, repeats=repeats, objective="fwd"
    )
    for s, t in times.items():
      out.append(Measurement(row[0], tuple(row[1]), tuple(row[2]), row[3], s, t))
    log(f"  {row}: " + ", ".join(f"{_label(s)} {1e3 * t:.3f} ms" for s, t in times.items()))
  return out


def _label(strategy) -> str:
  return "order " + "".join(map(str, strategy)) if isinstance(strategy, tuple) else strategy


def _predict(m: Measurement, model: ops.CostModel, dtype) -> float:
  x_shape, factor_shapes = _shapes((m.batch, m.in_factors, m.out_factors, m.rank))
  return ops.kron_matmul_plan(
    x_shape, factor_shapes, dtype=dtype, strategy=m.strategy, cost_model=model
  ).chosen.seconds


def features(m: Measurement, full_speed_dim: int, chunk_bytes, dtype) -> np.ndarray:
  """[compute, DRAM bytes, cache bytes, steps] of a plan, as the model counts."""
  probes = [
    ops.CostModel(1.0, _BIG, 0.0, full_speed_dim, chunk_bytes, _BIG),
    ops.CostModel(_BIG, 1.0, 0.0, full_speed_dim, chunk_bytes, _BIG),
    ops.CostModel(_BIG, _BIG, 0.0, full_speed_dim, chunk_bytes, 1.0),
    ops.CostModel(_BIG, _BIG, 1.0, full_speed_dim, chunk_bytes, _BIG),
  ]
  return np.array([_predict(m, p, dtype) for p in probes])


def _pick_ratios(measurements, model, dtype) -> list[float]:
  """Per shape: measured time of the model's auto pick / measured best."""
  by_shape: dict[tuple, dict[Any, float]] = {}
  for m in measurements:
    by_shape.setdefault((m.batch, m.in_factors, m.out_factors, m.rank), {})[m.strategy] = m.seconds
  ratios = []
  for row, times in by_shape.items():
    x_shape, factor_shapes = _shapes(row)
    plan = ops.kron_matmul_plan(x_shape, factor_shapes, dtype=dtype, cost_model=model)
    pick = "materialize" if plan.strategy == "materialize" else plan.order
    allowed = {
      s: t
      for s, t in times.items()
      if s != "materialize" or plan.strategy == "materialize" or _w_allowed(row)
    }
    ratios.append(times[pick] / min(allowed.values()))
  return ratios


def _w_allowed(row) -> bool:
  batch, ms, ns, _ = row
  return math.prod(ms) * math.prod(ns) <= batch * (math.prod(ms) + math.prod(ns))


def fit(
  measurements: Sequence[Measurement],
  base: ops.CostModel,
  dtype=jnp.float32,
  full_speed_dims: Sequence[int] = (16, 32, 64, 128, 256),
) -> tuple[ops.CostModel, dict[str, Any]]:
  """Least-squares rates for each ``full_speed_dim``; the best-picking one wins.

  Rows are weighted by 1 / measured time, so the fit minimises relative error
  (small shapes count as much as large ones).
  """
  from scipy.optimize import nnls

  t = np.array([m.seconds for m in measurements])
  best = None
  for dim in full_speed_dims:
    a = np.stack([features(m, dim, base.chunk_bytes, dtype) for m in measurements])
    coef, _ = nnls(a / t[:, None], np.ones_like(t))
    rates = [float(1.0 / c) if c > 0 else None for c in coef[:3]]
    model = ops.CostModel(
      flops_per_second=rates[0] or base.flops_per_second * 10,
      bytes_per_second=rates[1] or base.bytes_per_second * 10,
      overhead_seconds=float(coef[3]),  # plain floats: the model goes to JSON
      full_speed_dim=dim,
      chunk_bytes=base.chunk_bytes,
      cache_bytes_per_second=(rates[2] if base.chunk_bytes else None),
    )
    predicted = np.array([_predict(m, model, dtype) for m in measurements])
    log_error = float(np.median(np.abs(np.log(predicted / t))))
    ratios = _pick_ratios(measurements, model, dtype)
    score = (sum(r > 1.10 for r in ratios), max(ratios), log_error)
    report = {
      "full_speed_dim": dim,
      "median_abs_log_error": log_error,
      "worst_pick_ratio": max(ratios),
      "picks_within_10pct": f"{sum(r <= 1.10 for r in ratios)}/{len(ratios)}",
    }
    if best is None or score < best[0]:
      best = (score, model, report)
  assert best is not None  # at least one full_speed_dim is tried
  return best[1], best[2]


def write(model: ops.CostModel, report: dict[str, Any], path: str) -> None:
  """Merges this device's constants into the JSON file at ``path``."""
  data = {}
  if os.path.exists(path):
    with open(path) as f:
      data = json.load(f)
  data[_autotune.device_key()] = {**dataclasses.asdict(model), "fit": report}
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = f"{path}.{os.getpid()}.tmp"
  with open(tmp, "w") as f:
    json.dump(data, f, indent=1, sort_keys=True)
  os.replace(tmp, path)


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
  parser.add_argument("--quick", action="store_true", help="fewer shapes")
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
  parser.add_argument(
    "--out", default=None, help="JSON file (default: where default_cost_model looks)"
  )
  parser.add_argument("--dry-run", action="store_true", help="fit, do not write")
  args = parser.parse_args(argv)
  dtype = jnp.dtype(args.dtype)
  platform = jax.default_backend()
  from kfc_jax.ops import _cost  # the uncalibrated defaults are the fit's base

  base = _cost.builtin_cost_model(platform)
  print(f"calibrating on {_autotune.device_key()} ({args.dtype}), jax {jax.__version__}")
  start = time.perf_counter()
  measurements = measure(QUICK_SWEEP if args.quick else SWEEP, dtype, args.repeats)
  model, report = fit(measurements, base, dtype)
  default_ratios = _pick_ratios(measurements, base, dtype)
  report.update(
    {
      "device": _autotune.device_key(),
      "dtype": args.dtype,
      "jax": jax.__version__,
      "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
      "plans_timed": len(measurements),
      "seconds": round(time.perf_counter() - start, 1),
      "default_model_worst_pick_ratio": max(default_ratios),
      "default_model_picks_within_10pct": (
        f"{sum(r <= 1.10 for r in default_ratios)}/{len(default_ratios)}"
      ),
      "measurements": [
        {**dataclasses.asdict(m), "strategy": _label(m.strategy)} for m in measurements
      ],
    }
  )
  print(json.dumps({k: v for k, v in report.items() if k != "measurements"}, indent=1))
  print(model)
  if not args.dry_run:
    path = args.out or _autotune.calibration_path()
    write(model, report, path)
    print(f"wrote {path}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
