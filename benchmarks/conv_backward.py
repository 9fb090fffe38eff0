"""Benchmark: would a planned backward pay for kron_conv? Autodiff of each plan
against every mixed backward, forward + backward, in one run.

Run (writes benchmarks/results/conv_backward_<platform>_<dtype>.{json,md}):

  .venv/bin/python benchmarks/conv_backward.py            # ~6 min on 2 CPU cores
  .venv/bin/python benchmarks/conv_backward.py --quick    # smoke run, seconds

``kron_conv``'s backward is whatever autodiff makes of the forward plan:
``factored`` (conv by B, then by A dilated) differentiates into their
transposed and weight-gradient convs, ``materialize`` into the dense conv's
backward and the kernel's einsum. A planned VJP (what ``kron_matmul`` has)
could mix them: keep the forward's plan, but get ``dx`` from one plan and the
factors' gradients from the other. Each mix is a ``jax.custom_vjp`` whose
backward calls ``jax.vjp`` of the public ``kron_conv(strategy=...)``, so
every one is exact (checked against the materialised plan's gradient before
timing). Named ``fwd/dx/dfactors``, F = factored, M = materialized:

- ``F/F/F`` and ``M/M/M``: autodiff of one plan (what ``kron_conv`` does);
- ``F/M/F``, ``F/F/M``, ``F/M/M``: factored forward, a mixed backward;
- ``M/F/M``, ``M/M/F``: materialised forward, a mixed backward.

``dense`` is the uncompressed conv with its kernel stored (grad w.r.t. the
input and kernel). A planned VJP pays on a row if the best mix beats the
better of ``F/F/F`` and ``M/M/M`` by more than the run's noise.

Layers: the ``kron_conv`` benchmark's splits (3x3 conv, C -> C, SAME, stride
1, NHWC; rank-3 4x4-channel blocks both ways round, and the rank-1 8x8-block
3x3 (x) 1x1), batch 32.
"""

from __future__ import annotations

import os
import sys

import jax
import jax.numpy as jnp
from jax import lax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _timing
from kron_conv import DN, Case, _splits, draw

import kfc_jax

GRID = [
  Case(f"{c}->{c} @{s}x{s} {label}", 32, s, c, a, b)
  for c, s in [(64, 16), (128, 16), (256, 16), (64, 32), (128, 32)]
  for label, a, b in _splits(c)
]

QUICK_GRID = [Case(f"16->16 @8x8 {label}", 4, 8, 16, a, b) for label, a, b in _splits(16)[:1]]

PLANS = {"F": "factored", "M": "materialize"}
MIXES = ("F/M/F", "F/F/M", "F/M/M", "M/F/M", "M/M/F")


def _plan(letter):
  return lambda x, a, b: kfc_jax.kron_conv(x, (a, b), strategy=PLANS[letter])


def mixed(name: str):
  """``fwd/dx/dfactors``: the forward of one plan, each cotangent from a plan."""
  fwd, dx_plan, df_plan = (_plan(p) for p in name.split("/"))

  @jax.custom_vjp
  def f(x, a, b):
    return fwd(x, a, b)

  def f_fwd(x, a, b):
    return fwd(x, a, b), (x, a, b)

  def f_bwd(res, dy):
    x, a, b = res
    (dx,) = jax.vjp(lambda x: dx_plan(x, a, b), x)[1](dy)
    da, db = jax.vjp(lambda a, b: df_plan(x, a, b), a, b)[1](dy)
    return dx, da, db

  f.defvjp(f_fwd, f_bwd)
  return f


def _grad(f, n_args):
  return jax.grad(lambda *args: jnp.sum(f(*args).astype(jnp.float32)), tuple(range(n_args)))


def run_case(case: Case, dtype, repeats: int) -> dict:
  x, a, b, kernel = draw(case, dtype)
  dense = lambda x, k: lax.conv_general_dilated(x, k, (1, 1), "SAME", dimension_numbers=DN)
  table = {
    "fwd dense": (dense, (x, kernel)),
    "fwd F": (_plan("F"), (x, a, b)),
    "fwd M": (_plan("M"), (x, a, b)),
    "dense": (_grad(dense, 2), (x, kernel)),
    "F/F/F": (_grad(_plan("F"), 3), (x, a, b)),
    "M/M/M": (_grad(_plan("M"), 3), (x, a, b)),
    **{name: (_grad(mixed(name), 3), (x, a, b)) for name in MIXES},
  }
  compiled, temps = {}, {}
  for label, (f, args) in table.items():
    compiled[label], temps[label] = _timing.compile_fn(f, *args)
  reference = compiled["M/M/M"](x, a, b)
  for label in ("F/F/F", *MIXES):
    got = compiled[label](x, a, b)
    for g, r in zip(got, reference, strict=True):
      scale = float(jnp.max(jnp.abs(r.astype(jnp.float32))))
      err = float(jnp.max(jnp.abs((g - r).astype(jnp.float32))))
      if err > 1e-3 * scale:
        raise AssertionError(f"{case.name} {label}: gradient off by {err / scale:.1e}")
  times = _timing.time_interleaved(
    {label: (compiled[label], table[label][1]) for label in table}, repeats=repeats, warmup=1
  )
  return {
    "name": case.name,
    "batch": case.batch,
    "a_shape": case.a_shape,
    "b_shape": case.b_shape,
    "results": {label: {"ms": 1e3 * times[label], "temp_bytes": temps[label]} for label in table},
  }


def summarize(rows, env) -> tuple[str, list[str]]:
  lines = [
    *_timing.header("kron_conv backward: autodiff of each plan against the mixed backwards", env),
    "Median ms per forward + backward (gradients of the input and both factors;"
    " interleaved, after warm-up, `block_until_ready`). `fwd/dx/dfactors`, F ="
    " factored, M = materialized; `F/F/F` and `M/M/M` are autodiff of one plan."
    " (fwd+bwd)÷fwd: forward + backward over the forward of the same plan. Mix gain:"
    " the better pure plan's time over the best mix's (above 1: a planned VJP"
    " would pay).",
    "",
    "| layer | split | dense | (fwd+bwd)÷fwd dense | F/F/F | (fwd+bwd)÷fwd F | M/M/M |"
    " best mix | mix gain |",
    "|---|---|---|---|---|---|---|---|---|",
  ]
  gains = []
  for row in rows:
    ms = {k: v["ms"] for k, v in row["results"].items()}
    layer, split = " ".join(row["name"].split(" ")[:2]), " ".join(row["name"].split(" ")[2:])
    best_mix = min(MIXES, key=ms.__getitem__)
    gain = min(ms["F/F/F"], ms["M/M/M"]) / ms[best_mix]
    gains.append(f"{row['name']}: {best_mix} {gain:.2f}x")
    lines.append(
      f"| {layer} | {split} | {ms['dense']:.1f} | {ms['dense'] / ms['fwd dense']:.1f}x"
      f" | {ms['F/F/F']:.1f} | {ms['F/F/F'] / ms['fwd F']:.1f}x | {ms['M/M/M']:.1f}"
      f" | {best_mix} {ms[best_mix]:.1f} | {gain:.2f}x |"
    )
  return "\n".join(lines) + "\n", gains


def _progress(case, row) -> str:
  ms = {k: v["ms"] for k, v in row["results"].items()}
  return f"{case.name:28s} " + "  ".join(f"{k} {v:.1f}" for k, v in ms.items())


def main(argv=None):
  args = _timing.parse_args(__doc__, argv)
  repeats = args.repeats or (3 if args.quick else 9)
  return _timing.run_grid(
    "conv_backward",
    args,
    QUICK_GRID if args.quick else GRID,
    run_case,
    summarize,
    _progress,
    repeats,
    "mix_gains",
  )


if __name__ == "__main__":
  sys.exit(main())
