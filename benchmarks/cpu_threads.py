"""Benchmark: how each kron_matmul plan uses the CPU's cores (issue 12's targets).

The same competitors are timed in two processes, one pinned to a single core
and one with every core (``os.sched_setaffinity`` before JAX starts, so XLA's
thread pool sizes itself to it), each timing its competitors interleaved:

* ``dense``: ``x @ W`` with ``W`` stored.
* ``einsum``: the design card's one line, ``jnp.einsum`` over the reshaped input.
* ``auto``: ``kron_matmul``'s default plan (row blocks under ``lax.map`` where
  the intermediates outgrow the cache, the planned backward).
* ``unblocked``: the same contraction order in one block (a cost model whose
  cache holds everything).

A plan whose time does not change from one core to all of them runs on one
core: on XLA:CPU the ops inside a ``lax.map`` body (the row blocks) are too
small to be split over threads, and separate loops are not run concurrently.
Speed-ups over the einsum are then capped by the second core the einsum uses
and the blocked plan does not.

Run (writes benchmarks/results/cpu_threads_<dtype>.{json,md}):

  .venv/bin/python benchmarks/cpu_threads.py              # ~5 minutes, quiet machine
  .venv/bin/python benchmarks/cpu_threads.py --quick      # smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

# JAX is imported only after the process's cores are set (its CPU thread pool
# is sized to them), so _timing (which imports jax) is imported late too.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

CASES = [  # (name, batch, in factors, out factors): issue 12's two target rows
  ("4096->4096 64x64 (x) 64x64", 1024, (64, 64), (64, 64)),
  ("1024->1024 32x32 (x) 32x32", 4096, (32, 32), (32, 32)),
]
QUICK_CASES = [("64->64 8x8 (x) 8x8", 64, (8, 8), (8, 8))]


def _competitors(kfc_jax, jnp, x, fs, plan, unblocked_model):
  """``{name: (forward(x, params), params)}`` of one case (params are arguments,
  never closed over: a captured ``W`` would be constant-folded)."""
  batch, ms = x.shape[0], [f.shape[0] for f in fs]
  letters = "abcdefgh"[: len(ms)]
  spec = f"z{letters}," + ",".join(f"{c}{c.upper()}" for c in letters) + f"->z{letters.upper()}"
  unblocked = plan.order or "factored"
  return {
    "dense": (lambda x, w: x @ w, kfc_jax.kron(fs)),
    "einsum": (
      lambda x, fs: jnp.einsum(spec, x.reshape(batch, *ms), *fs).reshape(batch, -1),
      fs,
    ),
    "auto": (lambda x, fs: kfc_jax.kron_matmul(x, fs), fs),
    "unblocked": (
      lambda x, fs: kfc_jax.kron_matmul(x, fs, strategy=unblocked, cost_model=unblocked_model),
      fs,
    ),
  }


def measure(cases, repeats: int, dtype_name: str) -> list[dict]:
  """Times every competitor of every case in this process (its cores as set)."""
  import dataclasses
  import math

  import _timing
  import jax
  import jax.numpy as jnp
  import numpy as np

  import kfc_jax

  dtype = jnp.dtype(dtype_name)
  unblocked_model = dataclasses.replace(kfc_jax.default_cost_model(), chunk_bytes=2**62)
  rng = np.random.default_rng(0)
  rows = []
  for name, batch, ms, ns in cases:
    x = jnp.asarray(rng.standard_normal((batch, math.prod(ms))), dtype)
    fs = [
      jnp.asarray(rng.standard_normal((m, n)) / math.sqrt(m), dtype)
      for m, n in zip(ms, ns, strict=True)
    ]
    plan = kfc_jax.kron_matmul_plan(x.shape, [f.shape for f in fs], dtype=dtype)
    competitors = _competitors(kfc_jax, jnp, x, fs, plan, unblocked_model)
    row = {"case": name, "batch": batch, "order": plan.order, "rows": plan.chosen.chunk_rows}
    for mode in ("fwd", "fwd+bwd"):
      fns = {}
      for label, (f, params) in competitors.items():
        if mode == "fwd+bwd":
          f = jax.grad(lambda x, p, f=f: jnp.sum(f(x, p)), argnums=(0, 1))
        fns[label] = (_timing.compile_fn(f, x, params)[0], (x, params))
      row[mode] = {k: 1e3 * v for k, v in _timing.time_interleaved(fns, repeats=repeats).items()}
    rows.append(row)
  return rows


def main(argv=None) -> int:
  parser = _parser()
  args = parser.parse_args(argv)
  cases = QUICK_CASES if args.quick else CASES
  repeats = args.repeats or (3 if args.quick else 21)
  if args.child_cores:
    os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[: args.child_cores]))
    print(json.dumps(measure(cases, repeats, args.dtype)))
    return 0
  cores = len(os.sched_getaffinity(0))
  trials: dict[int, list] = {1: [], cores: []}
  for _ in range(args.trials):  # alternated, so a drifting machine affects both alike
    for n in trials:
      cmd = [
        sys.executable,
        __file__,
        f"--child_cores={n}",
        f"--repeats={repeats}",
        f"--dtype={args.dtype}",
      ]
      out = subprocess.run(
        cmd + (["--quick"] if args.quick else []), check=True, capture_output=True, text=True
      )
      trials[n].append(json.loads(out.stdout.strip().splitlines()[-1]))
  runs = {n: _median_of_trials(t) for n, t in trials.items()}
  import _timing

  env = _timing.environment(args.dtype)
  lines = [
    "# kron_matmul plans on one core and on every core",
    "",
    f"Device: {env['device']} ({env['host_cpu']}, {cores} cores); dtype {args.dtype};"
    f" jax {env['jax']}; {env['date']}.",
    f"Command: `{env['command']}`. Median ms per call ({repeats} interleaved rounds in a"
    f" process), median over {args.trials} processes pinned to 1 core and {args.trials} to all"
    " cores, run alternately; `speed-up` = 1-core time / all-core time.",
    "",
    "| case | mode | competitor | ms, 1 core | ms, all cores | speed-up from the other cores |"
    " all-core time / einsum's |",
    "|---|---|---|---|---|---|---|",
  ]
  for i, row in enumerate(runs[cores]):
    one = runs[1][i]
    case = f"{row['case']} (order {row['order']}, blocks of {row['rows']} rows)"
    for mode in ("fwd", "fwd+bwd"):
      for label, t in row[mode].items():
        lines.append(
          f"| {case} | {mode} | {label} | {one[mode][label]:.2f} | {t:.2f} |"
          f" {one[mode][label] / t:.2f}x | {t / row[mode]['einsum']:.2f} |"
        )
  markdown = "\n".join(lines) + "\n"
  suffix = "_quick" if args.quick else ""
  stem = os.path.join(args.out, f"cpu_threads_{args.dtype}{suffix}")
  _timing.write_results(
    stem, {"environment": env, "cores": cores, "runs": runs, "trials": trials}, markdown
  )
  print(markdown)
  print(f"wrote {stem}.json and {stem}.md")
  return 0


def _median_of_trials(trials: list[list[dict]]) -> list[dict]:
  """Per case, mode and competitor: the median of the trials' medians."""
  import statistics

  rows = []
  for per_trial in zip(*trials, strict=True):
    row = dict(per_trial[0])
    for mode in ("fwd", "fwd+bwd"):
      row[mode] = {k: statistics.median(t[mode][k] for t in per_trial) for k in row[mode]}
    rows.append(row)
  return rows


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--quick", action="store_true", help="tiny case, few repeats")
  parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
  parser.add_argument("--repeats", type=int, default=None)
  parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
  parser.add_argument("--trials", type=int, default=3, help="processes per core count")
  parser.add_argument("--child_cores", type=int, default=0, help=argparse.SUPPRESS)
  return parser


if __name__ == "__main__":
  sys.exit(main())
