"""Benchmark: kron_conv (factored) against the dense conv and against
materialise-then-conv, on ResNet-like 3x3 layers, forward and forward+backward,
in one run.

Run (writes benchmarks/results/kron_conv_<platform>_<dtype>.{json,md}):

  .venv/bin/python benchmarks/kron_conv.py            # full grid, ~15 min on 2 CPU cores
  .venv/bin/python benchmarks/kron_conv.py --quick    # smoke run, seconds

Competitors, all jitted, timed interleaved:

- ``dense``: ``lax.conv_general_dilated`` by a stored 3x3 kernel (the
  uncompressed layer);
- ``materialized``: ``kron_kernel(factors)`` formed on every call, then the
  dense conv (``kron_conv(strategy="materialize")``);
- ``factored``: conv by B then by A dilated, the kernel never formed
  (``kron_conv(strategy="factored")``).

``auto`` runs whichever of the last two the cost model picks (the same
program), so it is reported as that pick, not timed twice.

Splits (~5x fewer parameters than the dense 3x3 kernel, at every width C): a
3x3 kernel only splits spatially as 3x3 (x) 1x1, 1x1 (x) 3x3 or 3x1 (x) 1x3,
so the compression comes from the channels. We use 4x4 channel blocks at rank
3, i.e. ``A: [3, 3, 3, C/4, C/4] (x) B: [3, 1, 1, 4, 4]`` ("3x3(x)1x1") and the
mirror image ``A: [3, 1, 1, 4, 4] (x) B: [3, 3, 3, C/4, C/4]`` ("1x1(x)3x3"),
both 16/3 = 5.3x compression and 3/4 of the dense FLOPs (plus a pointwise
step). The rank-1 ``8x8`` block split ``A: [3, 3, C/8, C/8] (x) B: [1, 1, 8, 8]``
("3x3(x)1x1 r1", 64x compression, 1/8 of the FLOPs) shows the speed the
structure can buy when the compression is higher.

Beside each time: the compiled program's temporary memory
(``jax.jit(f).lower(...).compile().memory_analysis()``).
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _timing

import kfc_jax


@dataclasses.dataclass(frozen=True)
class Case:
  name: str
  batch: int
  size: int  # H = W
  channels: int  # C_in = C_out
  a_shape: tuple[int, ...]  # (r, ah, aw, ai, ao)
  b_shape: tuple[int, ...]  # (r, bh, bw, bi, bo)
  strides: int = 1


def _splits(c: int) -> list[tuple[str, tuple[int, ...], tuple[int, ...]]]:
  return [
    ("3x3(x)1x1 r3", (3, 3, 3, c // 4, c // 4), (3, 1, 1, 4, 4)),
    ("1x1(x)3x3 r3", (3, 1, 1, 4, 4), (3, 3, 3, c // 4, c // 4)),
    ("3x3(x)1x1 r1", (1, 3, 3, c // 8, c // 8), (1, 1, 1, 8, 8)),
  ]


GRID = [
  Case(f"{c}->{c} @{s}x{s} {label}", 64, s, c, a, b)
  for c, s in [(64, 32), (128, 32), (256, 32), (64, 16), (128, 16), (256, 16)]
  for label, a, b in _splits(c)
]

QUICK_GRID = [Case(f"16->16 @8x8 {label}", 4, 8, 16, a, b) for label, a, b in _splits(16)[:1]]

DN = ("NHWC", "HWIO", "NHWC")


def draw(case: Case, dtype):
  """The case's input, factors and a dense 3x3 kernel, fan-in scaled."""
  # NumPy draws: jax.random compiles for seconds per shape on CPU.
  rng = np.random.default_rng(0)
  normal = lambda shape, fan_in: jnp.asarray(
    rng.standard_normal(shape, np.float32) / math.sqrt(fan_in), dtype
  )
  c = case.channels
  x = normal((case.batch, case.size, case.size, c), 1)
  a = normal(case.a_shape, math.prod(case.a_shape[1:4]))
  b = normal(case.b_shape, math.prod(case.b_shape[1:4]))
  return x, a, b, normal((3, 3, c, c), 9 * c)


def run_case(case: Case, dtype, repeats: int) -> dict:
  x, a, b, kernel = draw(case, dtype)
  c = case.channels
  s = case.strides
  plan = kfc_jax.kron_conv_plan(x.shape, [case.a_shape, case.b_shape], strides=s, dtype=dtype)

  fwd = {
    "dense": (
      lambda x, k: lax.conv_general_dilated(x, k, (s, s), "SAME", dimension_numbers=DN),
      (x, kernel),
    ),
    "materialized": (
      lambda x, a, b: kfc_jax.kron_conv(x, (a, b), strides=s, strategy="materialize"),
      (x, a, b),
    ),
    "factored": (
      lambda x, a, b: kfc_jax.kron_conv(x, (a, b), strides=s, strategy="factored"),
      (x, a, b),
    ),
  }

  def with_grad(f, n_args):
    def loss(*args):
      return jnp.sum(f(*args).astype(jnp.float32))

    return jax.grad(loss, argnums=tuple(range(n_args)))

  results = {}
  for mode, table in (
    ("fwd", fwd),
    ("fwd+bwd", {k: (with_grad(f, len(a_)), a_) for k, (f, a_) in fwd.items()}),
  ):
    compiled, temps = {}, {}
    for label, (f, args) in table.items():
      compiled[label], temps[label] = _timing.compile_fn(f, *args)
    times = _timing.time_interleaved(
      {label: (compiled[label], table[label][1]) for label in table}, repeats=repeats, warmup=1
    )
    results[mode] = {
      label: {"ms": 1e3 * times[label], "temp_bytes": temps[label]} for label in table
    }
  dense_params = 9 * c * c
  params = math.prod(case.a_shape) + math.prod(case.b_shape)
  return {
    **dataclasses.asdict(case),
    "params": params,
    "compression": dense_params / params,
    "plan": {
      "strategy": plan.strategy,
      "predicted_ms": {p.strategy: 1e3 * p.seconds for p in plan.candidates},
      "flops": {p.strategy: p.flops for p in plan.candidates},
      "dense_flops": plan.dense_flops,
    },
    "results": results,
  }


def summarize(rows, env) -> tuple[str, list[str]]:
  lines = [
    *_timing.header("kron_conv benchmark", env),
    "3x3 conv, C -> C, SAME, stride 1, NHWC. Median ms per call (interleaved,"
    " after warm-up, `block_until_ready`); temporary memory of the compiled"
    " program in MiB in brackets. `factored` = kron_conv (two small convs,"
    " kernel never formed); `materialized` = kron_kernel + dense conv on every"
    " call; `auto` = what the cost model picks (its measured time is that"
    " competitor's). FLOPs = factored / dense.",
    "",
    "| layer | split | params (x) | FLOPs | mode | dense | materialized | factored |"
    " factored vs dense | auto pick | auto vs best |",
    "|---|---|---|---|---|---|---|---|---|---|---|",
  ]
  misses = []
  for row in rows:
    layer, split = row["name"].split(" ", 2)[0:2], row["name"].split(" ", 2)[2]
    flops = row["plan"]["flops"]["factored"] / row["plan"]["dense_flops"]
    pick = row["plan"]["strategy"]
    label = {"factored": "factored", "materialize": "materialized"}[pick]
    for mode, res in row["results"].items():
      ms = {k: v["ms"] for k, v in res.items()}
      mib = {k: v["temp_bytes"] / 2**20 for k, v in res.items()}
      best = min(ms["materialized"], ms["factored"])
      lines.append(
        f"| {' '.join(layer)} | {split} | {row['params']:,} ({row['compression']:.1f}x)"
        f" | {flops:.2f} | {mode}"
        f" | {ms['dense']:.1f} [{mib['dense']:.1f}]"
        f" | {ms['materialized']:.1f} [{mib['materialized']:.1f}]"
        f" | {ms['factored']:.1f} [{mib['factored']:.1f}]"
        f" | {ms['dense'] / ms['factored']:.2f}x | {pick}"
        f" | {ms[label] / best:.2f}x |"
      )
      if ms[label] > 1.10 * best:
        misses.append(
          f"{row['name']} {mode}: auto picked {pick} ({ms[label]:.1f} ms),"
          f" the other took {best:.1f} ms"
        )
  lines += [
    "",
    "Cost-model misses (auto more than 10% slower than the better of factored and materialized):",
    "" if misses else "none.",
  ]
  lines += [f"- {m}" for m in misses]
  return "\n".join(lines) + "\n", misses


def _progress(case, row) -> str:
  res = row["results"]["fwd"]
  return (
    f"{case.name:32s} dense {res['dense']['ms']:8.2f} ms  materialized"
    f" {res['materialized']['ms']:8.2f} ms  factored {res['factored']['ms']:8.2f}"
    f" ms  (auto: {row['plan']['strategy']})"
  )


def main(argv=None):
  args = _timing.parse_args(__doc__, argv)
  # A 256-channel layer at 32x32 takes ~1 s forward on 2 CPU cores: 5 repeats
  # keep the full grid near 10 minutes.
  repeats = args.repeats or (3 if args.quick else 5)
  return _timing.run_grid(
    "kron_conv",
    args,
    QUICK_GRID if args.quick else GRID,
    run_case,
    summarize,
    _progress,
    repeats,
    "misses",
  )


if __name__ == "__main__":
  sys.exit(main())
