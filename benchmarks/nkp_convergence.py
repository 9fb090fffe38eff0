"""Three-factor nearest_kronecker on exactly low-rank weights: recovery and time.

Each case draws, from ``np.random.default_rng(seed)``, factor sizes
``m_t, n_t`` in 1..4 for three factors, a rank 2 or 3 (at most the CP bound),
standard normal factors ``F_t: [r, m_t, n_t]``, and ``W = sum_r F_1 ⊗ F_2 ⊗ F_3``.
The decomposition at the same rank should return ``W`` itself; a case counts as
recovered when the relative error is below 1e-6. Issue 15 item 8 found 60 of 293
such weights unrecovered at the old default of 100 sweeps.

Run (2-core shared CPU, loaded by other work; single-threaded BLAS so the
numbers do not depend on the neighbours' thread contention)::

  OPENBLAS_NUM_THREADS=1 .venv/bin/python benchmarks/nkp_convergence.py --label after
  OPENBLAS_NUM_THREADS=1 .venv/bin/python benchmarks/nkp_convergence.py --label before \
      --old --max-sweeps 100
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import numpy as np

import kfc_jax
from kfc_jax.decompose import _cp


def old_cp_als(t, rank, max_sweeps, tol):
  """The CP fit before issue 15 item 8 (kept to measure against): greedy start,
  plain ALS, stop when the error improves by less than ``tol`` (absolute)."""
  k = t.ndim
  modes = _cp.greedy_start(t, rank)
  unfolded = [_cp.unfold(t, n) for n in range(k)]
  norm = np.linalg.norm(t)
  prev = np.linalg.norm(t - _cp.reconstruct(modes, t.shape)) / norm
  for _ in range(max_sweeps):
    for n in range(k):
      others = [modes[i] for i in range(k) if i != n]
      gram = np.ones((rank, rank))
      for m in others:
        gram *= m.T @ m
      modes[n] = np.linalg.lstsq(gram.T, (unfolded[n] @ _cp.khatri_rao(others)).T, rcond=None)[0].T
    err = np.linalg.norm(t - _cp.reconstruct(modes, t.shape)) / norm
    if prev - err < tol:
      prev = min(prev, err)
      break
    prev = err
  return modes, prev


def case(seed: int):
  rng = np.random.default_rng(seed)
  ms = [int(v) for v in rng.integers(1, 5, 3)]
  ns = [int(v) for v in rng.integers(1, 5, 3)]
  sizes = [m * n for m, n in zip(ms, ns, strict=True)]
  bound = int(np.prod(sizes)) // max(sizes)
  rank = min(int(rng.integers(2, 4)), bound)
  if rank < 2:
    return None
  factors = [rng.standard_normal((rank, m, n)) for m, n in zip(ms, ns, strict=True)]
  w = sum(np.kron(np.kron(factors[0][r], factors[1][r]), factors[2][r]) for r in range(rank))
  return ms, ns, rank, w


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--count", type=int, default=400, help="seeds 0..count-1")
  parser.add_argument(
    "--max-sweeps", type=int, default=None, help="pass max_sweeps (default: the library's default)"
  )
  parser.add_argument(
    "--old", action="store_true", help="the fit before issue 15 item 8 (with --max-sweeps 100)"
  )
  parser.add_argument("--label", default="current")
  parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
  args = parser.parse_args(argv)
  options = {} if args.max_sweeps is None else {"max_sweeps": args.max_sweeps}
  if args.old:
    _cp.cp_als = old_cp_als
  rows = []
  for seed in range(args.count):
    drawn = case(seed)
    if drawn is None:
      continue
    ms, ns, rank, w = drawn
    start = time.perf_counter()
    dec = kfc_jax.nearest_kronecker(w, ms, ns, rank, **options)
    seconds = time.perf_counter() - start
    rows.append(
      {
        "seed": seed,
        "in_factors": ms,
        "out_factors": ns,
        "rank": rank,
        "relative_error": dec.relative_error,
        "seconds": seconds,
      }
    )
  errors = np.array([r["relative_error"] for r in rows])
  times = np.array([r["seconds"] for r in rows])
  failed = [r for r in rows if r["relative_error"] >= 1e-6]
  summary = {
    "label": args.label,
    "options": options,
    "cases": len(rows),
    "recovered": len(rows) - len(failed),
    "worst_relative_error": float(errors.max()),
    "median_relative_error": float(np.median(errors)),
    "median_seconds": float(np.median(times)),
    "max_seconds": float(times.max()),
    "total_seconds": float(times.sum()),
    "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    " (shared, loaded by other work)",
    "command": " ".join(["python", *sys.argv]),
    "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
  }
  stem = os.path.join(args.out, f"nkp_convergence_{args.label}")
  os.makedirs(args.out, exist_ok=True)
  with open(stem + ".json", "w") as f:
    json.dump({"summary": summary, "cases": rows}, f, indent=1)
  lines = [
    f"# Three-factor nearest_kronecker, exactly low-rank weights ({args.label})",
    "",
    f"`{summary['command']}` on {summary['machine']}, {summary['date']}.",
    "",
    f"- recovered (relative error < 1e-6): **{summary['recovered']} of {summary['cases']}**",
    f"- worst relative error: {summary['worst_relative_error']:.3g}",
    f"- time per decomposition: median {1e3 * summary['median_seconds']:.1f} ms,"
    f" max {1e3 * summary['max_seconds']:.0f} ms, total"
    f" {summary['total_seconds']:.1f} s",
    "",
  ]
  if failed:
    lines += [
      "| seed | in_factors | out_factors | rank | relative error |",
      "|---|---|---|---|---|",
    ]
    lines += [
      f"| {r['seed']} | {r['in_factors']} | {r['out_factors']} | {r['rank']} |"
      f" {r['relative_error']:.3g} |"
      for r in failed[:40]
    ]
    if len(failed) > 40:
      lines.append(f"| ... {len(failed) - 40} more | | | | |")
  with open(stem + ".md", "w") as f:
    f.write("\n".join(lines) + "\n")
  print("\n".join(lines[:8]))
  print(f"median error {statistics.median(errors.tolist()):.3g}")


if __name__ == "__main__":
  main()
