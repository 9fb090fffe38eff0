"""Merges the results of runs made in parts into one table (command line).

A long protocol can be split over processes, machines or sessions with
``--variants``/``--seeds``, each part in its own work directory. This joins
their ``results.json`` files into one ``results.json``, ``table.md`` and plot,
after checking that every part ran the same protocol (every config field that
changes a run's numbers: ``loop.NOT_THE_RUN`` lists the ones that do not)::

  python examples/mnist/merge.py --workdir=runs/mnist_nine \\
      examples/mnist/results/results.json runs/part_a/results.json

A field missing from an older ``results.json`` (written before the field
existed) counts as the default config's value, which is what that run used.
The same (variant, seed) in two parts is an error: nothing is silently dropped.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
  sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

# pylint: disable=g-import-not-at-top,wrong-import-position
from examples._common import loop, reporting
from examples.mnist import models, train
from examples.mnist.configs import default

# pylint: enable=g-import-not-at-top,wrong-import-position


def config_of(fields: Mapping[str, Any], source: str) -> default.Config:
  """The ``Config`` a ``results.json`` records (missing fields: defaults)."""
  known = {f.name for f in dataclasses.fields(default.Config)}
  unknown = sorted(set(fields) - known)
  if unknown:
    raise ValueError(f"{source}: config fields {unknown} are not fields of this example's Config.")
  values = {k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()}
  return default.Config(**values)


def merge(parts: Sequence[tuple[str, Mapping[str, Any]]]) -> tuple[default.Config, list[dict]]:
  """The common config and every run of ``parts`` (``(source, results)`` pairs).

  Raises:
    ValueError: no parts, parts that ran different protocols, or a (variant,
      seed) run in two parts.
  """
  if not parts:
    raise ValueError("merge needs at least one results.json; got none.")
  configs = [config_of(results["config"], source) for source, results in parts]
  first_source, first = parts[0][0], loop.run_settings(configs[0])
  for (source, _), config in zip(parts, configs, strict=True):
    settings = loop.run_settings(config)
    differ = sorted(k for k in first if settings.get(k) != first[k])
    if differ:
      changes = ", ".join(f"{k}: {first[k]!r} vs {settings.get(k)!r}" for k in differ)
      raise ValueError(
        f"{source} ran a different protocol from {first_source} ({changes}); "
        "only runs of one protocol make one table."
      )
  runs: dict[tuple[str, int], tuple[str, dict]] = {}
  for source, results in parts:
    for run in results["runs"]:
      key = (run["variant"], run["seed"])
      if key in runs:
        raise ValueError(
          f"{key[0]} seed {key[1]} is in both {runs[key][0]} and {source}; "
          "drop it from one of them (pass each run once)."
        )
      runs[key] = (source, run)
  # The paper's table order, then any other variant.
  names = dict.fromkeys((*models.ALL_VARIANTS, *models.VARIANTS))
  order = {v: i for i, v in enumerate(names)}
  keys = sorted(runs, key=lambda k: (order.get(k[0], len(order)), k[0], k[1]))
  config = dataclasses.replace(
    configs[0],
    variants=tuple(dict.fromkeys(k[0] for k in keys)),
    seeds=tuple(sorted({k[1] for k in keys})),
  )
  return config, [runs[k][1] for k in keys]


def main(argv: Sequence[str] | None = None) -> int:
  """Merges the given ``results.json`` files into ``--workdir``; the exit status."""
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", required=True, help="where the merged reports go")
  parser.add_argument("results", nargs="+", help="results.json files of the parts")
  args = parser.parse_args(argv)
  try:
    parts = [(path, reporting.load_json(path)) for path in args.results]
    missing = [path for path, results in parts if results is None]
    if missing:
      raise ValueError(f"no results.json at {missing}.")
    config, runs = merge(parts)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  workdir = Path(args.workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  results = train.write_reports(workdir, config, runs)
  print(train.paper_table(results["summary"]))
  print(f"\nWrote {workdir / 'results.json'}, {workdir / 'table.md'} and the plot.")
  return 0


if __name__ == "__main__":
  sys.exit(main())
