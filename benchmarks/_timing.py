"""Timing helpers shared by the benchmarks (never used by tests for speed).

Times are medians of many calls after warm-up, each call ended with
``block_until_ready``. Competitors are timed interleaved (one call of each in
turn, in a shuffled order per round) so a noisy neighbour slows them all alike
and their ratios, measured in one run, stay meaningful.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

import jax


def compile_fn(fn: Callable, *args) -> tuple[Callable, int]:
  """Jits and compiles ``fn`` for ``args``; returns it and its temp bytes."""
  compiled = jax.jit(fn).lower(*args).compile()
  mem = compiled.memory_analysis()
  temp = int(getattr(mem, "temp_size_in_bytes", 0)) if mem is not None else 0
  return compiled, temp


def time_interleaved(
  fns: Mapping[str, tuple[Callable, tuple]],
  *,
  repeats: int,
  warmup: int = 3,
  seed: int = 0,
) -> dict[str, float]:
  """Median seconds per call of each compiled function, timed interleaved."""
  order = list(fns)
  for name in order:
    fn, args = fns[name]
    for _ in range(warmup):
      jax.block_until_ready(fn(*args))
  samples: dict[str, list[float]] = {name: [] for name in order}
  shuffle = random.Random(seed)
  for _ in range(repeats):
    shuffle.shuffle(order)
    for name in order:
      fn, args = fns[name]
      start = time.perf_counter()
      jax.block_until_ready(fn(*args))
      samples[name].append(time.perf_counter() - start)
  return {name: statistics.median(s) for name, s in samples.items()}


def environment(dtype: str) -> dict[str, Any]:
  device = jax.devices()[0]
  cpu = platform.processor() or platform.machine()
  try:
    with open("/proc/cpuinfo") as f:
      cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
  except (OSError, StopIteration):
    pass
  return {
    "device": f"{device.platform}: {device.device_kind}",
    "device_count": jax.device_count(),
    "host_cpu": cpu,
    "cpu_count": os.cpu_count(),
    "dtype": dtype,
    "jax": jax.__version__,
    "jaxlib": jax.lib.__version__ if hasattr(jax.lib, "__version__") else "",
    "python": sys.version.split()[0],
    "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
    "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
  }


def header(title: str, env: dict[str, Any]) -> list[str]:
  """A result file's first Markdown lines: its title, the machine and versions, the command."""
  return [
    f"# {title}",
    "",
    f"Device: {env['device']} ({env['host_cpu']}, {env['cpu_count']} cores); dtype"
    f" {env['dtype']}; jax {env['jax']}; python {env['python']}; {env['date']}.",
    f"Command: `{env['command']}`",
    "",
  ]


def write_results(path_stem: str, payload: dict[str, Any], markdown: str) -> None:
  os.makedirs(os.path.dirname(path_stem) or ".", exist_ok=True)
  with open(path_stem + ".json", "w") as f:
    json.dump(payload, f, indent=1)
  with open(path_stem + ".md", "w") as f:
    f.write(markdown)


def parse_args(doc: str, argv=None) -> argparse.Namespace:
  """The command line every benchmark shares (``doc``: its module docstring)."""
  return argument_parser(doc).parse_args(argv)


def argument_parser(doc: str) -> argparse.ArgumentParser:
  """``parse_args``'s parser, for a benchmark that adds its own flags."""
  parser = argparse.ArgumentParser(description=doc.split("\n")[0])
  parser.add_argument("--quick", action="store_true", help="tiny grid, few repeats")
  parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
  parser.add_argument("--repeats", type=int, default=None)
  parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
  return parser


def run_grid(
  name: str,
  args: argparse.Namespace,
  grid,
  run_case: Callable,
  summarize: Callable,
  progress: Callable,
  repeats: int,
  checks_key: str,
  extra: dict[str, Any] | None = None,
) -> int:
  """Runs ``run_case`` over ``grid``, then writes ``summarize``'s table.

  Results go to ``{args.out}/{name}_{backend}_{dtype}[_quick].json`` and
  ``.md``; ``summarize(rows, env)`` returns the Markdown and the list of
  checks that failed, stored under ``checks_key``; ``extra`` entries join
  the JSON payload.
  """
  dtype = jax.numpy.dtype(args.dtype)
  env = environment(args.dtype)
  rows = []
  for case in grid:
    rows.append(run_case(case, dtype, repeats))
    print(progress(case, rows[-1]), flush=True)
  markdown, checks = summarize(rows, env)
  suffix = "_quick" if args.quick else ""
  stem = os.path.join(args.out, f"{name}_{jax.default_backend()}_{args.dtype}{suffix}")
  payload = {"environment": env, "rows": rows, checks_key: checks, **(extra or {})}
  write_results(stem, payload, markdown)
  print(markdown)
  print(f"wrote {stem}.json and {stem}.md")
  return 0
