"""Benchmark: kron_matmul against its peers, forward and forward+backward, in one run.

Competitors, timed interleaved (one call of each per round, shuffled):

* ``dense``: ``x @ W`` with ``W`` stored (a dense layer).
* ``materialized``: ``x @ kron(factors)`` formed on every call (the PEFT /
  LyCORIS way).
* ``einsum``: the design card's one line, ``jnp.einsum`` over the reshaped
  input and every factor at once (``'bij,rik,rjl->bkl'`` for two factors).
* ``cola``: CoLA's ``Kronecker`` operator (``cola-ml``, the ``bench`` extra;
  skipped when not installed), one product per rank term, summed.
* ``auto``: ``kron_matmul`` with the cost model's plan and the planned backward;
  ``auto (autodiff bwd)``: the same forward, differentiated by JAX's autodiff.
* ``autotune``: ``strategy="autotune"`` (plans timed once per shape and
  objective, cached: forward alone for inference, forward + backward under
  ``grad``).
* every forced plan: ``order 01`` ... and ``materialize``.

Run (writes benchmarks/results/kron_matmul_<platform>_<dtype>.{json,md}):

  .venv/bin/python benchmarks/kron_matmul.py            # full grid, ~25 min on 2 busy CPU cores
  .venv/bin/python benchmarks/kron_matmul.py --quick    # smoke run, seconds
  .venv/bin/python benchmarks/kron_matmul.py --rows=targets --repeats=21  # the issue's two rows

Beside each time: the compiled program's temporary memory
(``jax.jit(f).lower(...).compile().memory_analysis()``) and the achieved
GFLOP/s (the plan's useful FLOPs: the factored FLOPs of the cost model's
plan, times 3 for forward+backward) against the machine's GEMM rate measured
in the same run. The report checks the issue-12 targets and the cost model:
the plan auto chose against the fastest measured plan.
"""

from __future__ import annotations

import dataclasses
import math
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _timing

import kfc_jax

try:  # optional peer: pip install -e '.[bench]'
  import cola
except ImportError:  # pragma: no cover - depends on the environment
  cola = None


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

# The two rows of the speed targets.
TARGET_ROWS = ("4096->4096 64x64 (x) 64x64", "1024->1024 32x32 (x) 32x32")

QUICK_GRID = [
  Case("256->256 16x16 (x) 16x16", 256, (16, 16), (16, 16)),
  Case("64->64 8x8 (x) 8x8 rank 2", 512, (8, 8), (8, 8), 2),
]


def _strategies(case: Case) -> tuple[object, dict[str, object]]:
  plan = kfc_jax.kron_matmul_plan(
    (case.batch, math.prod(case.in_factors)),
    [(case.rank, m, n) for m, n in zip(case.in_factors, case.out_factors, strict=True)],
  )
  strategies = {"materialize": "materialize"}
  for c in plan.candidates:
    if c.strategy == "factored":
      strategies["order " + "".join(map(str, c.order))] = c.order
  return plan, strategies


def one_line_einsum(x, factors):
  """The design card's one line: all factors in one ``jnp.einsum``."""
  k = len(factors)
  ins, outs = "ijklmn"[:k], "opqstu"[:k]
  spec = f"b{ins}," + ",".join(f"r{i}{o}" for i, o in zip(ins, outs, strict=True)) + f"->b{outs}"
  y = jnp.einsum(spec, x.reshape(x.shape[0], *(f.shape[1] for f in factors)), *factors)
  return y.reshape(x.shape[0], -1)


def cola_matmul(x, factors):
  """``sum_r x @ Kronecker(F_1[r], ..., F_k[r])`` with CoLA's operators (adding
  two CoLA Kronecker operators is ambiguous in cola-ml 0.0.7's dispatch)."""
  y = None
  for r in range(factors[0].shape[0]):
    term = x @ cola.ops.Kronecker(*[cola.ops.Dense(f[r]) for f in factors])
    y = term if y is None else y + term
  return y


def gemm_rate(dtype, repeats: int = 7) -> float:
  """Measured FLOP/s of one 2048^3 GEMM (the machine's practical peak)."""
  n = 2048
  a = jax.random.normal(jax.random.key(1), (n, n), dtype)
  f = jax.jit(lambda a, b: a @ b).lower(a, a).compile()
  for _ in range(3):
    jax.block_until_ready(f(a, a))
  samples = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(f(a, a))
    samples.append(time.perf_counter() - start)
  return 2 * n**3 / statistics.median(samples)


def run_case(case: Case, dtype, repeats: int) -> dict:
  key = jax.random.key(0)
  kx, *kf = jax.random.split(key, 1 + len(case.in_factors))
  m, n = math.prod(case.in_factors), math.prod(case.out_factors)
  x = jax.random.normal(kx, (case.batch, m), dtype)
  factors = [
    jax.random.normal(k, (case.rank, a, b), dtype) / math.sqrt(a)
    for k, a, b in zip(kf, case.in_factors, case.out_factors, strict=True)
  ]
  w = kfc_jax.kron(factors)
  plan, strategies = _strategies(case)

  fwd = {
    "dense": (lambda x, w: x @ w, (x, w)),
    "materialized": (lambda x, fs: x @ kfc_jax.kron(fs), (x, factors)),
    "einsum": (one_line_einsum, (x, factors)),
  }
  if cola is not None:
    fwd["cola"] = (cola_matmul, (x, factors))
  fwd["auto"] = (lambda x, fs: kfc_jax.kron_matmul(x, fs), (x, factors))
  fwd["auto (autodiff bwd)"] = (
    lambda x, fs: kfc_jax.kron_matmul(x, fs, backward="autodiff"),
    (x, factors),
  )
  fwd["autotune"] = (lambda x, fs: kfc_jax.kron_matmul(x, fs, strategy="autotune"), (x, factors))
  for label, strategy in strategies.items():
    fwd[label] = (lambda x, fs, s=strategy: kfc_jax.kron_matmul(x, fs, strategy=s), (x, factors))

  def with_grad(f):
    def loss(*args):
      return jnp.sum(f(*args).astype(jnp.float32))

    return jax.grad(loss, argnums=(0, 1))

  results = {}
  for mode, table in (
    ("fwd", fwd),
    ("fwd+bwd", {k: (with_grad(f), a) for k, (f, a) in fwd.items()}),
  ):
    compiled, temps = {}, {}
    for label, (f, args) in table.items():
      compiled[label], temps[label] = _timing.compile_fn(f, *args)
    times = _timing.time_interleaved(
      {label: (compiled[label], table[label][1]) for label in table}, repeats=repeats
    )
    results[mode] = {
      label: {"ms": 1e3 * times[label], "temp_bytes": temps[label]} for label in table
    }
  shapes = [f.shape for f in factors]
  autotuned = {  # its picks: forward alone (inference) and forward + backward (training)
    mode: _label(kfc_jax.ops._autotune.autotune(x.shape, shapes, dtype=dtype, objective=mode))
    for mode in ("fwd", "fwd+bwd")
  }
  return {
    **dataclasses.asdict(case),
    "plan": {
      "strategy": plan.strategy,
      "order": list(plan.order),
      "predicted_ms": 1e3 * plan.chosen.seconds,
      "flops": plan.chosen.flops,
      "dense_flops": plan.dense_flops,
      "factored_flops": min(c.flops for c in plan.candidates if c.strategy == "factored")
      if len(case.in_factors) > 1
      else plan.dense_flops,
    },
    "autotune": autotuned,
    "results": results,
    "w_bytes": int(w.size * w.dtype.itemsize),
    "xy_bytes": int((x.size + case.batch * n) * x.dtype.itemsize),
  }


def _label(strategy) -> str:
  if isinstance(strategy, (tuple, list)):
    return "order " + "".join(map(str, strategy))
  return strategy


def _plan_label(row) -> str:
  if row["plan"]["strategy"] == "materialize":
    return "materialize"
  return "order " + "".join(map(str, row["plan"]["order"]))


def summarize(rows, env, calibrated=None) -> tuple[str, list[str]]:
  gemm = env["gemm_gflops"]
  lines = [
    "# kron_matmul benchmark",
    "",
    f"Device: {env['device']} ({env['host_cpu']}, {env['cpu_count']} cores); dtype"
    f" {env['dtype']}; jax {env['jax']}; cola-ml {env['cola']}; python"
    f" {env['python']}; {env['date']}.",
    f"Command: `{env['command']}`",
    f"Measured GEMM rate (2048^3, same run): {gemm:.1f} GFLOP/s.",
    f"Cost model of `auto`: {env.get('cost_model', 'not recorded')}.",
    "",
    "Median ms per call (interleaved, after warm-up, `block_until_ready`);"
    " temporary memory of the compiled program in MiB in brackets.",
    "`materialized`: `x @ kron(factors)` formed on every call; `einsum`: one"
    " `jnp.einsum` over all factors; `cola`: CoLA's Kronecker operator; `auto`:"
    " kron_matmul's cost-model plan with the planned backward, `autodiff`: the"
    " same forward differentiated by JAX; `best plan`: the fastest forced plan"
    " measured (an oracle's pick); GFLOP/s: the FLOPs of auto's plan"
    " (x3 for fwd+bwd) per second, and its share of the GEMM rate.",
    "",
    "| case | batch | mode | dense | materialized | einsum | cola | auto (plan)"
    " | autodiff | autotune | best plan | auto vs min(einsum, cola) | auto vs dense"
    " | GFLOP/s (of GEMM) | model's pick vs best | autotune vs best |",
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
  ]
  failures = []
  for row in rows:
    for mode, res in row["results"].items():
      plans = {k: v for k, v in res.items() if k == "materialize" or k.startswith("order")}
      best = min(plans, key=lambda k: plans[k]["ms"])
      ms = lambda k, res=res: res[k]["ms"] if k in res else float("nan")
      mib = lambda k, res=res: res[k]["temp_bytes"] / 2**20 if k in res else float("nan")
      cell = lambda k, res=res, ms=ms, mib=mib: f"{ms(k):.3f} [{mib(k):.1f}]" if k in res else "—"
      auto = ms("auto")
      peers = [ms(k) for k in ("einsum", "cola") if k in res]
      peer = min(peers)
      picked = res[_plan_label(row)]["ms"]
      useful = row["plan"]["flops"] * (3 if mode == "fwd+bwd" else 1)
      gflops = useful / (auto * 1e-3) / 1e9
      lines.append(
        f"| {row['name']} | {row['batch']} | {mode} | {cell('dense')}"
        f" | {cell('materialized')} | {cell('einsum')} | {cell('cola')}"
        f" | {cell('auto')} ({_plan_label(row)}) | {cell('auto (autodiff bwd)')}"
        f" | {cell('autotune')} ({row['autotune'][mode]}) | {plans[best]['ms']:.3f} ({best})"
        f" | {peer / auto:.2f}x | {ms('dense') / auto:.2f}x"
        f" | {gflops:.1f} ({gflops / gemm:.0%}) | {picked / plans[best]['ms']:.2f}x"
        f" | {ms('autotune') / plans[best]['ms']:.2f}x |"
      )
      if row["name"] in TARGET_ROWS:
        need = 2.0 if mode == "fwd+bwd" else 3.0
        if peer / auto < need:
          failures.append(
            f"{row['name']} {mode}: auto {peer / auto:.2f}x faster than"
            f" min(einsum, cola), target {need:.0f}x"
          )
      if row["plan"]["factored_flops"] * 2 <= row["plan"]["dense_flops"] and auto > 1.10 * ms(
        "dense"
      ):
        failures.append(
          f"{row['name']} {mode}: auto {auto:.3f} ms > 1.1 x dense"
          f" {ms('dense'):.3f} with >= 2x fewer FLOPs"
        )
      if mode == "fwd+bwd" and mib("auto") > 2 * max(mib("dense"), 1 / 1024):
        failures.append(
          f"{row['name']} fwd+bwd: scratch {mib('auto'):.1f} MiB >"
          f" 2 x dense's {mib('dense'):.1f} MiB"
        )
      if ms("autotune") > 1.05 * plans[best]["ms"]:
        failures.append(
          f"{row['name']} {mode}: autotune {ms('autotune'):.3f} ms >"
          f" 1.05 x best plan {plans[best]['ms']:.3f}"
        )
      if row["plan"]["strategy"] == "materialize" and row["w_bytes"] > row["xy_bytes"]:
        failures.append(f"{row['name']}: auto formed W larger than x and y")
  lines += [
    "",
    "Checks: (issue 12) fwd+bwd >= 2x and fwd >= 3x faster than"
    " min(einsum, cola) on the two target rows; auto within 10% of dense"
    " where the factored FLOPs are >= 2x fewer; fwd+bwd scratch <= 2x"
    " dense's; autotune within 5% of the best plan; W never formed when"
    " larger than x and y:",
    "" if failures else "all passed.",
  ]
  lines += [f"- FAILED: {f}" for f in failures]
  return "\n".join(lines) + "\n", failures


def select_rows(grid, rows: str | None):
  """The cases of ``grid`` named in ``rows`` (comma-separated; ``targets``: the issue's two)."""
  if not rows:
    return grid
  names = TARGET_ROWS if rows == "targets" else tuple(n.strip() for n in rows.split(","))
  unknown = sorted(set(names) - {c.name for c in grid})
  if unknown:
    raise SystemExit(
      f"--rows: no case named {unknown}; the cases are {[c.name for c in grid]} or 'targets'."
    )
  return [c for c in grid if c.name in names]


def main(argv=None):
  parser = _timing.argument_parser(__doc__)
  parser.add_argument(
    "--rows", help="comma-separated case names, or 'targets' (the issue's two rows); default all"
  )
  args = parser.parse_args(argv)
  grid = select_rows(QUICK_GRID if args.quick else GRID, args.rows)
  repeats = args.repeats or (5 if args.quick else 11)
  dtype = jnp.dtype(args.dtype)
  env = _timing.environment(args.dtype)
  env["cola"] = getattr(cola, "__version__", "not installed") if cola else "not installed"
  env["gemm_gflops"] = gemm_rate(dtype) / 1e9
  # The constants auto planned with: calibrated ones if `python -m
  # kfc_jax.calibrate` was run on this device, else the shipped ones.
  env["cost_model"] = dataclasses.asdict(kfc_jax.default_cost_model())
  rows = []
  for case in grid:
    rows.append(run_case(case, dtype, repeats))
    res = rows[-1]["results"]
    print(
      f"{case.name:38s} "
      + "  ".join(
        f"{mode} auto {res[mode]['auto']['ms']:8.3f} ms einsum {res[mode]['einsum']['ms']:8.3f}"
        for mode in res
      ),
      flush=True,
    )
  markdown, failures = summarize(rows, env)
  suffix = "_quick" if args.quick else "_targets" if args.rows == "targets" else ""
  stem = os.path.join(args.out, f"kron_matmul_{jax.default_backend()}_{args.dtype}{suffix}")
  _timing.write_results(stem, {"environment": env, "rows": rows, "failures": failures}, markdown)
  print(markdown)
  print(f"wrote {stem}.json and {stem}.md")
  return 0


if __name__ == "__main__":
  sys.exit(main())
