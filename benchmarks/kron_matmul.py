"""Benchmark: kron_matmul (auto and every forced plan) against dense x @ W and
against x @ jnp.kron(...) formed on every call (what the popular PyTorch
Kronecker adapters do), forward and forward+backward, in one run.

Run (writes benchmarks/results/kron_matmul_<platform>_<dtype>.{json,md}):

  .venv/bin/python benchmarks/kron_matmul.py            # full grid, ~15 min on 2 idle CPU cores
  .venv/bin/python benchmarks/kron_matmul.py --quick    # smoke run, seconds

Beside each time: the compiled program's temporary memory
(``jax.jit(f).lower(...).compile().memory_analysis()``). The report also
checks the cost model: the plan auto chose against the fastest measured plan,
and auto against the better of dense and materialised.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _timing  # noqa: E402

import kfc_jax  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Case:
  name: str
  batch: int
  in_factors: tuple[int, ...]
  out_factors: tuple[int, ...]
  rank: int = 1


GRID = [
    Case("4096->4096 64x64 (x) 64x64", 1024, (64, 64), (64, 64)),
    Case("1024->1024 16x64 (x) 16x64", 4096, (16, 64), (16, 64)),
    Case("1024->1024 32x32 (x) 32x32", 4096, (32, 32), (32, 32)),
    Case("4096->4096 3 factors 16^3", 1024, (16, 16, 16), (16, 16, 16)),
    Case("1024->1024 3 factors 8x8x16", 4096, (8, 8, 16), (8, 8, 16)),
    Case("4096->4096 64x64 rank 4", 1024, (64, 64), (64, 64), 4),
    Case("4096->4096 64x64 rank 16", 1024, (64, 64), (64, 64), 16),
    Case("1024->1024 32x32 rank 4", 4096, (32, 32), (32, 32), 4),
    Case("1024->1024 32x32 rank 16", 4096, (32, 32), (32, 32), 16),
    Case("4096->4096 batch 8", 8, (64, 64), (64, 64)),
    Case("64->64 8x8 (x) 8x8, batch 4096", 4096, (8, 8), (8, 8)),
    # The KFC paper's layers (NHWC input; factors in input-layout order):
    # KFC-II is B: H*W -> O2 then A: C -> O1.
    Case("KFC MNIST 3x3x32->256 II(64,4)", 256, (9, 32), (4, 64)),
    Case("KFC SVHN 5x5x256->256 II(64,4)", 256, (25, 256), (4, 64)),
    Case("KFC SVHN II(64,4) rank 10", 256, (25, 256), (4, 64), 10),
]

QUICK_GRID = [
    Case("256->256 16x16 (x) 16x16", 256, (16, 16), (16, 16)),
    Case("64->64 8x8 (x) 8x8 rank 2", 512, (8, 8), (8, 8), 2),
]


def _plans(case: Case, k: int) -> dict[str, object]:
  plan = kfc_jax.kron_matmul_plan(
      (case.batch, math.prod(case.in_factors)),
      [(case.rank, m, n) for m, n in zip(case.in_factors, case.out_factors)])
  strategies = {"auto": "auto", "materialize": "materialize"}
  for c in plan.candidates:
    if c.strategy == "factored":
      strategies["order " + "".join(map(str, c.order))] = c.order
  return plan, strategies


def run_case(case: Case, dtype, repeats: int) -> dict:
  key = jax.random.key(0)
  kx, kw, *kf = jax.random.split(key, 2 + len(case.in_factors))
  m, n = math.prod(case.in_factors), math.prod(case.out_factors)
  x = jax.random.normal(kx, (case.batch, m), dtype)
  factors = [jax.random.normal(k, (case.rank, a, b), dtype) / math.sqrt(a)
             for k, a, b in zip(kf, case.in_factors, case.out_factors)]
  w = kfc_jax.kron(factors)
  plan, strategies = _plans(case, len(factors))

  fwd = {"dense": (lambda x, w: x @ w, (x, w)),
         "materialized": (lambda x, fs: x @ kfc_jax.kron(fs), (x, factors))}
  for label, strategy in strategies.items():
    fwd[label] = (lambda x, fs, s=strategy: kfc_jax.kron_matmul(x, fs, strategy=s),
                  (x, factors))

  def with_grad(f):
    def loss(*args):
      return jnp.sum(f(*args).astype(jnp.float32))
    return jax.grad(loss, argnums=(0, 1))

  results = {}
  for mode, table in (("fwd", fwd),
                      ("fwd+bwd", {k: (with_grad(f), a) for k, (f, a) in fwd.items()})):
    compiled, temps = {}, {}
    for label, (f, args) in table.items():
      compiled[label], temps[label] = _timing.compile_fn(f, *args)
    times = _timing.time_interleaved(
        {label: (compiled[label], table[label][1]) for label in table}, repeats=repeats)
    results[mode] = {label: {"ms": 1e3 * times[label], "temp_bytes": temps[label]}
                     for label in table}
  return {
      **dataclasses.asdict(case),
      "plan": {"strategy": plan.strategy, "order": list(plan.order),
               "predicted_ms": 1e3 * plan.chosen.seconds,
               "flops": plan.chosen.flops, "dense_flops": plan.dense_flops},
      "results": results,
      "w_bytes": int(w.size * w.dtype.itemsize),
      "xy_bytes": int((x.size + case.batch * n) * x.dtype.itemsize),
  }


def _plan_label(row) -> str:
  if row["plan"]["strategy"] == "materialize":
    return "materialize"
  return "order " + "".join(map(str, row["plan"]["order"]))


def summarize(rows, env) -> tuple[str, list[str]]:
  lines = [
      "# kron_matmul benchmark",
      "",
      f"Device: {env['device']} ({env['host_cpu']}, {env['cpu_count']} cores); dtype"
      f" {env['dtype']}; jax {env['jax']}; python {env['python']}; {env['date']}.",
      f"Command: `{env['command']}`",
      "",
      "Median ms per call (interleaved, after warm-up, `block_until_ready`);"
      " temporary memory of the compiled program in MiB in brackets.",
      "`materialized` is `x @ kron(factors)` formed on every call; `auto` is"
      " kron_matmul's cost-model plan; `best plan` is the fastest forced plan"
      " measured (what an oracle would pick).",
      "",
      "| case | batch | mode | dense | materialized | auto (plan) | best plan |"
      " auto vs dense | auto vs min(dense, mat.) | model's pick vs best |",
      "|---|---|---|---|---|---|---|---|---|---|",
  ]
  failures = []
  for row in rows:
    for mode, res in row["results"].items():
      plans = {k: v for k, v in res.items() if k == "materialize" or k.startswith("order")}
      best = min(plans, key=lambda k: plans[k]["ms"])
      dense, mat, auto = (res[k]["ms"] for k in ("dense", "materialized", "auto"))
      picked = res[_plan_label(row)]["ms"]
      mib = lambda k: res[k]["temp_bytes"] / 2**20
      lines.append(
          f"| {row['name']} | {row['batch']} | {mode} | {dense:.3f} [{mib('dense'):.1f}]"
          f" | {mat:.3f} [{mib('materialized'):.1f}]"
          f" | {auto:.3f} [{mib('auto'):.1f}] ({_plan_label(row)})"
          f" | {plans[best]['ms']:.3f} ({best}) | {dense / auto:.2f}x"
          f" | {min(dense, mat) / auto:.2f}x | {picked / plans[best]['ms']:.2f}x |")
      if auto > 1.10 * min(dense, mat):
        failures.append(f"{row['name']} {mode}: auto {auto:.3f} ms > 1.1 x"
                        f" min(dense {dense:.3f}, materialized {mat:.3f})")
      if row["plan"]["strategy"] == "materialize" and row["w_bytes"] > row["xy_bytes"]:
        failures.append(f"{row['name']}: auto formed W larger than x and y")
  lines += ["", "Checks: auto within 10% of min(dense, materialized) on every shape, and"
            " W never formed when larger than x and y together:",
            "" if failures else "all passed."]
  lines += [f"- FAILED: {f}" for f in failures]
  return "\n".join(lines) + "\n", failures


def _progress(case, row) -> str:
  res = row["results"]["fwd"]
  return (f"{case.name:38s} dense {res['dense']['ms']:8.3f} ms  auto"
          f" {res['auto']['ms']:8.3f} ms ({_plan_label(row)})")


def main(argv=None):
  args = _timing.parse_args(__doc__, argv)
  repeats = args.repeats or (5 if args.quick else 11)
  return _timing.run_grid("kron_matmul", args, QUICK_GRID if args.quick else GRID,
                          run_case, summarize, _progress, repeats, "failures")


if __name__ == "__main__":
  sys.exit(main())
