"""Benchmark: does kron_conv's cost model pick the faster plan on the KConv
example's layers? Factored against materialised, forward and forward +
backward, in one run; and the per-pixel floor of convs with few channels.

Run (writes benchmarks/results/conv_plans_<platform>_<dtype>.{json,md}):

  .venv/bin/python benchmarks/conv_plans.py            # ~5 min on 2 CPU cores
  .venv/bin/python benchmarks/conv_plans.py --quick    # smoke run, seconds

Rows: every Kronecker conv of ``examples/kconv``'s two CNNs (the KFC paper's
MNIST CNN at its training batch of 128, with 8-32 channels; the ``wide``
64-128-channel one at batch 32) under each of that example's variants
(``examples/kconv/models.py``: channel splits, spatial splits, ranks, a
mixture). Per row: ``kron_conv_sum(strategy="factored")`` and
``strategy="materialize"``, timed interleaved, the cost model's pick and its
time over the faster one's ("pick vs best"; 1.00x: the right pick), and
``strategy="autotune"`` (which times the two plans itself, once per
objective) over the faster one.

The floor: single convs with 2-64 channels, in ns per output pixel (images x
rows x columns). Below about 16 channels XLA:CPU's convs cost the same per
pixel whatever their FLOPs; ``CostModel.conv_pixel_seconds`` is that floor.
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
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))
import _timing

import kfc_jax
from examples.kconv import models


@dataclasses.dataclass(frozen=True)
class Layer:
  net: str
  batch: int
  size: int  # input H = W
  kernel: int
  c_in: int
  c_out: int
  padding: str


LAYERS = [
  Layer("paper", 128, 28, 3, 8, 12, "SAME"),
  Layer("paper", 128, 14, 5, 12, 20, "VALID"),
  Layer("paper", 128, 10, 5, 20, 32, "VALID"),
  Layer("wide", 32, 28, 3, 64, 64, "SAME"),
  Layer("wide", 32, 14, 3, 64, 128, "SAME"),
  Layer("wide", 32, 14, 3, 128, 128, "SAME"),
]
VARIANTS = [v for v, make in models.VARIANTS.items() if make is not None]
GRID = [(layer, v) for layer in LAYERS for v in VARIANTS]
QUICK_GRID = [(Layer("paper", 8, 10, 3, 8, 12, "SAME"), v) for v in ("KConv-ch2", "KConv-sp")]

# (images, H = W, C_in, C_out, kh, kw): the convs a factored plan runs.
FLOOR = [
  (1024, 28, 2, 2, 1, 3),
  (512, 28, 2, 3, 3, 3),
  (256, 28, 4, 6, 3, 3),
  (128, 28, 8, 12, 3, 3),
  (64, 28, 16, 16, 3, 3),
  (64, 28, 32, 32, 3, 3),
  (32, 28, 64, 64, 3, 3),
]
QUICK_FLOOR = FLOOR[:1]

DN = ("NHWC", "HWIO", "NHWC")


def _terms(layer: Layer, variant: str, dtype):
  rng = np.random.default_rng(0)
  terms = []
  for a_shape, b_shape, rank in models.VARIANTS[variant](layer.kernel, layer.c_in, layer.c_out):
    fan_in = math.prod(a_shape[:3]) * math.prod(b_shape[:3])
    scale = 1 / math.sqrt(fan_in)
    terms.append(
      tuple(
        jnp.asarray(scale * rng.standard_normal((rank, *s), np.float32), dtype)
        for s in (a_shape, b_shape)
      )
    )
  return terms


def run_case(case, dtype, repeats: int) -> dict:
  layer, variant = case
  rng = np.random.default_rng(1)
  x = jnp.asarray(
    rng.standard_normal((layer.batch, layer.size, layer.size, layer.c_in), np.float32), dtype
  )
  terms = _terms(layer, variant, dtype)
  shapes = [(a.shape, b.shape) for a, b in terms]
  plan = kfc_jax.kron_conv_sum_plan(x.shape, shapes, padding=layer.padding, dtype=dtype)
  no_floor = dataclasses.replace(kfc_jax.default_cost_model(), conv_pixel_seconds=0.0)
  plan_no_floor = kfc_jax.kron_conv_sum_plan(
    x.shape, shapes, padding=layer.padding, dtype=dtype, cost_model=no_floor
  )
  table = {}
  for strategy in ("factored", "materialize", "autotune"):

    def fwd(x, terms, strategy=strategy):
      return kfc_jax.kron_conv_sum(x, terms, padding=layer.padding, strategy=strategy)

    grad = jax.grad(lambda x, terms, f=fwd: jnp.sum(f(x, terms).astype(jnp.float32)), (0, 1))
    table[f"fwd {strategy}"] = fwd
    table[f"fwd+bwd {strategy}"] = grad
  compiled = {label: _timing.compile_fn(f, x, terms)[0] for label, f in table.items()}
  times = _timing.time_interleaved(
    {label: (fn, (x, terms)) for label, fn in compiled.items()}, repeats=repeats, warmup=1
  )
  return {
    **dataclasses.asdict(layer),
    "variant": variant,
    "pick": plan.strategy,
    "pick_without_floor": plan_no_floor.strategy,
    "predicted_ms": {
      s: 1e3 * sum(t.cost(s).seconds for t in plan.terms) for s in ("factored", "materialize")
    },
    "ms": {label: 1e3 * t for label, t in times.items()},
  }


def run_floor(floor, dtype, repeats: int) -> list[dict]:
  rng = np.random.default_rng(2)
  fns = {}
  for n, hw, cin, cout, kh, kw in floor:
    x = jnp.asarray(rng.standard_normal((n, hw, hw, cin), np.float32), dtype)
    k = jnp.asarray(rng.standard_normal((kh, kw, cin, cout), np.float32), dtype)
    conv = lambda x, k: lax.conv_general_dilated(x, k, (1, 1), "SAME", dimension_numbers=DN)
    fns[(n, hw, cin, cout, kh, kw)] = (_timing.compile_fn(conv, x, k)[0], (x, k))
  times = _timing.time_interleaved(fns, repeats=repeats, warmup=1)
  return [
    {
      "images": n,
      "size": hw,
      "c_in": cin,
      "c_out": cout,
      "kernel": [kh, kw],
      "ms": 1e3 * t,
      "ns_per_pixel": 1e9 * t / (n * hw * hw),
      "gflops": 2 * n * hw * hw * kh * kw * cin * cout / t / 1e9,
    }
    for (n, hw, cin, cout, kh, kw), t in times.items()
  ]


def summarize(rows, env, floor) -> tuple[str, list[str]]:
  lines = [
    *_timing.header("kron_conv plans on the KConv example's layers", env),
    "Median ms per call (interleaved, after warm-up, `block_until_ready`) of"
    " `kron_conv_sum` forced to each plan; pick: the cost model's (`auto`),"
    " with its predicted ms (factored / materialized); pick vs best: the"
    " picked plan's time over the faster one's; without floor: the same"
    " model with `conv_pixel_seconds=0` (before the floor was added).",
    "",
    "| net | layer | variant | predicted F / M | pick | fwd F | fwd M | fwd pick vs best |"
    " fwd+bwd F | fwd+bwd M | fwd+bwd pick vs best | without floor: pick, fwd, fwd+bwd |"
    " autotune vs best: fwd, fwd+bwd |",
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
  ]
  misses, old_misses, tuned_misses = [], 0, 0
  for row in rows:
    ms, pick = row["ms"], row["pick"]
    layer = (
      f"{row['kernel']}x{row['kernel']} {row['c_in']}->{row['c_out']}"
      f" @{row['size']}x{row['size']} b{row['batch']}"
    )
    ratios, old, tuned = {}, {}, {}
    for mode in ("fwd", "fwd+bwd"):
      best = min(ms[f"{mode} factored"], ms[f"{mode} materialize"])
      ratios[mode] = ms[f"{mode} {pick}"] / best
      tuned[mode] = ms[f"{mode} autotune"] / best
      tuned_misses += tuned[mode] > 1.10
      old[mode] = ms[f"{mode} {row['pick_without_floor']}"] / best
      old_misses += old[mode] > 1.10
      if ratios[mode] > 1.10:
        misses.append(f"{row['net']} {layer} {row['variant']} {mode}: {ratios[mode]:.2f}x")
    pred = row["predicted_ms"]
    lines.append(
      f"| {row['net']} | {layer} | {row['variant']}"
      f" | {pred['factored']:.2f} / {pred['materialize']:.2f} | {pick}"
      f" | {ms['fwd factored']:.2f} | {ms['fwd materialize']:.2f} | {ratios['fwd']:.2f}x"
      f" | {ms['fwd+bwd factored']:.2f} | {ms['fwd+bwd materialize']:.2f}"
      f" | {ratios['fwd+bwd']:.2f}x | {row['pick_without_floor']}, {old['fwd']:.2f}x,"
      f" {old['fwd+bwd']:.2f}x | {tuned['fwd']:.2f}x, {tuned['fwd+bwd']:.2f}x |"
    )
  lines += [
    "",
    f"Picks more than 10% slower than the faster plan: {len(misses)} of {2 * len(rows)}"
    + f' (without the floor: {old_misses}; `strategy="autotune"`: {tuned_misses})'
    + (":" if misses else "."),
  ]
  lines += [f"- {m}" for m in misses]
  lines += [
    "",
    "## The per-pixel floor of convs with few channels",
    "",
    "One `lax.conv_general_dilated` (SAME, stride 1); ns per output pixel and GFLOP/s.",
    "",
    "| images | H = W | C_in -> C_out | kernel | ms | ns / pixel | GFLOP/s |",
    "|---|---|---|---|---|---|---|",
  ]
  for f in floor:
    lines.append(
      f"| {f['images']} | {f['size']} | {f['c_in']} -> {f['c_out']}"
      f" | {f['kernel'][0]}x{f['kernel'][1]} | {f['ms']:.2f} | {f['ns_per_pixel']:.1f}"
      f" | {f['gflops']:.1f} |"
    )
  return "\n".join(lines) + "\n", misses


def _progress(case, row) -> str:
  layer, variant = case
  ms = "  ".join(f"{k} {v:.2f}" for k, v in row["ms"].items())
  name = f"{layer.net} {layer.c_in}->{layer.c_out} @{layer.size} {variant}"
  return f"{name:32s} {row['pick']:11s} {ms}"


def main(argv=None):
  args = _timing.parse_args(__doc__, argv)
  repeats = args.repeats or (3 if args.quick else 7)
  floor = run_floor(QUICK_FLOOR if args.quick else FLOOR, jnp.dtype(args.dtype), repeats)
  return _timing.run_grid(
    "conv_plans",
    args,
    QUICK_GRID if args.quick else GRID,
    run_case,
    lambda rows, env: summarize(rows, env, floor),
    _progress,
    repeats,
    "misses",
    {"floor": floor},
  )


if __name__ == "__main__":
  sys.exit(main())
