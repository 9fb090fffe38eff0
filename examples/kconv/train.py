"""Training, timing and reports of the KConv example.

The library side of the example (``main.py`` is the command line). It reads
top to bottom: the model, the data, the interleaved timings (whole-network
inference and training step of every variant against the dense net, in one
process), one run (an architecture, a variant and a seed, trained with
``examples/_common/loop.py``: best-validation epoch, orbax checkpoints,
resumable), the reports, and :func:`train_and_evaluate`, which writes
``results.json``, ``table.md`` and ``error_vs_params_and_time.png`` into
the work directory.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import random
import statistics
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from examples._common import loop, mnist_data, pipeline, reporting, tfds_data
from examples.kconv import models
from examples.kconv.configs import default

logger = logging.getLogger(__name__)

Config = default.Config
IMAGE_SHAPES = {"mnist": (28, 28, 1), "svhn": (32, 32, 3)}

# ----------------------------------------------------------------------------
# Model and steps.
# ----------------------------------------------------------------------------


def create_model(
  architecture: str,
  variant: str,
  *,
  seed: int = 0,
  dataset: str = "mnist",
  dropout_rate: float = 0.5,
) -> models.KConvCNN:
  """The ``architecture`` CNN with ``variant`` convs for ``dataset`` images.

  ``seed`` drives the initialisation and the dropout (independent streams).
  """
  params_key, dropout_key = jax.random.split(jax.random.key(seed))
  return models.KConvCNN(
    architecture,
    variant,
    image_shape=IMAGE_SHAPES[dataset],
    dropout_rate=dropout_rate,
    rngs=nnx.Rngs(params=params_key, dropout=dropout_key),
  )


def network_cost(architecture: str, variant: str, dataset: str = "mnist") -> dict[str, int]:
  """``models.network_cost`` of an abstract model (no FLOPs, no memory)."""
  return models.network_cost(
    nnx.eval_shape(lambda: create_model(architecture, variant, dataset=dataset))
  )


def preprocess(images: jax.Array) -> jax.Array:
  """``uint8`` images to ``float32`` in [0, 1] (on device: 4x less to copy)."""
  return images.astype(jnp.float32) / 255.0


train_step = functools.partial(loop.train_step, preprocess=preprocess)


@nnx.jit
def _predict(model: nnx.Module, images: jax.Array) -> jax.Array:
  return model(preprocess(images), train=False)


def check_config(config: Config, mesh: Mesh | None = None) -> dict[str, dict[str, dict[str, int]]]:
  """Validates ``config``; returns architecture -> variant -> its cost.

  Every network is built abstractly, so a bad name or split fails at once.

  Raises:
    ValueError: see ``loop.check_config``, an unknown dataset, architecture
      or variant, or a ``train_subset`` below one batch.
  """
  loop.check_config(config, mesh)
  if config.dataset not in IMAGE_SHAPES:
    raise ValueError(f"Unknown dataset {config.dataset!r}; use one of {', '.join(IMAGE_SHAPES)}.")
  if not config.architectures:
    raise ValueError("config.architectures must be non-empty.")
  if config.train_subset is not None and config.train_subset < config.batch_size:
    raise ValueError(
      f"config.train_subset ({config.train_subset}) is smaller "
      f"than one batch ({config.batch_size})."
    )
  return {
    a: {v: network_cost(a, v, config.dataset) for v in config.variants}
    for a in config.architectures
  }


# ----------------------------------------------------------------------------
# Data.
# ----------------------------------------------------------------------------


def load_data(config: Config) -> tfds_data.Splits:
  """The dataset's three splits, the training one cut to ``train_subset``."""
  if config.dataset == "svhn":
    from examples.svhn import input_pipeline  # pylint: disable=g-import-not-at-top

    data = input_pipeline.load_svhn(
      data_dir=config.data_dir,
      manual_dir=config.manual_dir,
      download=config.download,
      num_validation=config.num_validation,
    )
  else:
    data = mnist_data.load_mnist(
      data_dir=config.data_dir,
      manual_dir=config.manual_dir,
      download=config.download,
      num_validation=config.num_validation,
    )
  return subset(data, config.train_subset)


def subset(data: tfds_data.Splits, train_subset: int | None) -> tfds_data.Splits:
  """``data`` with only the first ``train_subset`` training images."""
  if train_subset is None:
    return data
  images, labels = data.train
  return dataclasses.replace(data, train=(images[:train_subset], labels[:train_subset]))


# ----------------------------------------------------------------------------
# Timings: every variant against the dense net, interleaved in one process.
# ----------------------------------------------------------------------------


def _time_interleaved(fns: dict[Any, Any], rounds: int, warmup: int = 2) -> dict[Any, float]:
  """Median seconds of each ``fn()``, one call of each per round, shuffled.

  Interleaving makes a noisy neighbour slow every competitor alike, so
  their ratios hold on a shared machine.
  """
  for fn in fns.values():
    for _ in range(warmup):
      jax.block_until_ready(fn())
  samples = {key: [] for key in fns}
  order = list(fns)
  shuffle = random.Random(0)
  for _ in range(rounds):
    shuffle.shuffle(order)
    for key in order:
      start = time.perf_counter()
      jax.block_until_ready(fns[key]())
      samples[key].append(time.perf_counter() - start)
  return {key: statistics.median(s) for key, s in samples.items()}


def time_variants(
  architecture: str, variants: tuple[str, ...], *, config: Config
) -> dict[str, dict[str, float]]:
  """Whole-network inference and training-step ms per variant, and ratios.

  The networks see the same random ``config.time_batch`` images; the
  training step is the example's own (Adam + L2, dropout on).

  Returns:
    variant -> ``infer_ms``, ``train_step_ms`` and, when ``Dense`` is among
    ``variants``, ``infer_vs_dense`` and ``train_step_vs_dense`` (variant
    time / dense time: below 1 is faster).
  """
  rng = np.random.default_rng(0)
  shape = IMAGE_SHAPES[config.dataset]
  batch = {
    "image": jnp.asarray(rng.integers(0, 256, (config.time_batch, *shape), np.uint8)),
    "label": jnp.asarray(rng.integers(0, 10, config.time_batch), jnp.int32),
  }
  fns = {}
  for variant in variants:
    model = create_model(architecture, variant, dataset=config.dataset)
    optimizer = loop.create_optimizer(model, config, 1000)
    fns[variant, "infer"] = functools.partial(_predict, model, batch["image"])
    fns[variant, "train_step"] = functools.partial(train_step, model, optimizer, batch)
  seconds = _time_interleaved(fns, config.time_rounds)
  out = {
    v: {"infer_ms": 1e3 * seconds[v, "infer"], "train_step_ms": 1e3 * seconds[v, "train_step"]}
    for v in variants
  }
  if "Dense" in out:
    for row in out.values():
      row["infer_vs_dense"] = row["infer_ms"] / out["Dense"]["infer_ms"]
      row["train_step_vs_dense"] = row["train_step_ms"] / out["Dense"]["train_step_ms"]
  return out


# ----------------------------------------------------------------------------
# One run.
# ----------------------------------------------------------------------------


def train_one(
  architecture: str,
  variant: str,
  seed: int,
  data: tfds_data.Splits,
  *,
  config: Config,
  mesh: Mesh,
  workdir: Path | None,
) -> dict[str, Any]:
  """Trains one network from scratch; tests its best-validation parameters.

  With a ``workdir`` the run resumes from ``<workdir>/resume/<architecture>/
  <variant>/seed_<seed>`` and (``config.save_checkpoints``) keeps its best
  parameters in ``<workdir>/checkpoints/...`` likewise.
  """
  model = create_model(
    architecture, variant, seed=seed, dataset=config.dataset, dropout_rate=config.dropout_rate
  )
  steps_per_epoch = pipeline.num_batches(len(data.train[0]), config.batch_size, True)
  optimizer = loop.create_optimizer(model, config, config.epochs * steps_per_epoch)
  pipeline.replicate((model, optimizer), mesh)
  best_dir = resume_dir = None
  run_dir = Path(architecture) / variant / f"seed_{seed}"
  if workdir is not None:
    resume_dir = workdir / "resume" / run_dir
    if config.save_checkpoints:
      best_dir = workdir / "checkpoints" / run_dir
  # What this run depends on; the other architectures and the timings don't.
  run_config = dataclasses.replace(
    config, architectures=(architecture,), time_batch=0, time_rounds=0
  )
  run = loop.fit(
    model,
    optimizer,
    train=data.train,
    validation=data.validation,
    test=data.test,
    config=run_config,
    mesh=mesh,
    seed=seed,
    name=f"{architecture} {variant} seed {seed}",
    preprocess=preprocess,
    best_dir=best_dir,
    resume_dir=resume_dir,
  )
  return {
    "architecture": architecture,
    "variant": variant,
    "seed": seed,
    **network_cost(architecture, variant, config.dataset),
    **run,
  }


# ----------------------------------------------------------------------------
# Reports.
# ----------------------------------------------------------------------------


def summarise(
  runs: list[dict[str, Any]],
  timings: dict[str, dict[str, dict[str, float]]],
  costs: dict[str, dict[str, dict[str, int]]],
) -> list[dict[str, Any]]:
  """One row per (architecture, variant) of ``costs``: costs, times, and the
  test errors over the seeds run so far (none yet: ``test_errors == []``)."""
  groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
  for r in runs:
    groups.setdefault((r["architecture"], r["variant"]), []).append(r)
  rows = []
  for arch, variants in costs.items():
    for variant, cost in variants.items():
      rs = groups.get((arch, variant), [])
      errors = [r["test_error"] for r in rs]
      mean, std = reporting.mean_std(errors) if errors else (None, None)
      rows.append(
        {
          "architecture": arch,
          "variant": variant,
          "seeds": [r["seed"] for r in rs],
          **cost,
          "test_errors": errors,
          "test_error_mean": mean,
          "test_error_std": std,
          "best_epochs": [r["best_epoch"] for r in rs],
          **timings.get(arch, {}).get(variant, {}),
        }
      )
  return rows


def _ratio(value: float | None) -> str:
  return "—" if value is None else f"{value:.2f}x"


def table(summary: list[dict[str, Any]]) -> str:
  """Markdown: costs and errors, reductions and times against the dense net."""
  dense = {r["architecture"]: r for r in summary if r["variant"] == "Dense"}
  rows = []
  for r in summary:
    d = dense.get(r["architecture"])
    trained = bool(r["test_errors"])
    delta = (
      "—"
      if d is None or not trained or not d["test_errors"]
      else f"{r['test_error_mean'] - d['test_error_mean']:+.2f}"
    )
    error = (
      "not run"
      if not trained
      else reporting.format_mean_std(
        r["test_error_mean"], r["test_error_std"], len(r["test_errors"])
      )
    )
    rows.append(
      [
        r["architecture"],
        r["variant"],
        reporting.format_count(r["params"]),
        reporting.format_count(r["conv_params"]),
        "—" if d is None else _ratio(d["conv_params"] / r["conv_params"]),
        f"{r['flops'] / 1e6:.2f}",
        "—" if d is None else _ratio(d["flops"] / r["flops"]),
        error,
        delta,
        f"{r['infer_ms']:.2f}" if "infer_ms" in r else "—",
        _ratio(r.get("infer_vs_dense") and 1 / r["infer_vs_dense"]),
        f"{r['train_step_ms']:.2f}" if "train_step_ms" in r else "—",
        _ratio(r.get("train_step_vs_dense") and 1 / r["train_step_vs_dense"]),
      ]
    )
  return reporting.format_table(
    [
      "Net",
      "Variant",
      "Params",
      "Conv params",
      "Conv params ÷",
      "MFLOPs/image",
      "FLOPs ÷",
      "Test error %",
      "Δ vs dense",
      "Infer ms",
      "Infer speedup",
      "Train step ms",
      "Step speedup",
    ],
    rows,
  )


def plot(path: Path, summary: list[dict[str, Any]], title: str) -> None:
  """Test error against parameters and against measured training-step time."""
  import matplotlib  # pylint: disable=g-import-not-at-top

  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top

  archs = list(dict.fromkeys(r["architecture"] for r in summary))
  fig, axes = plt.subplots(len(archs), 2, figsize=(11, 4 * len(archs)), squeeze=False)
  for row, arch in zip(axes, archs, strict=True):
    rs = [r for r in summary if r["architecture"] == arch and r["test_errors"]]
    for ax, key, label in (
      (row[0], "params", "model parameters"),
      (row[1], "train_step_ms", "training-step time (ms, interleaved)"),
    ):
      for i, r in enumerate(rs):
        if key not in r:
          continue
        errs = r["test_errors"]
        ax.errorbar(
          [r[key]],
          [r["test_error_mean"]],
          yerr=[[r["test_error_mean"] - min(errs)], [max(errs) - r["test_error_mean"]]],
          fmt="s" if r["variant"] == "Dense" else "o",
          color=f"C{i % 10}",
          capsize=3,
          label=r["variant"],
        )
      ax.set_xscale("log")
      ax.set_xlabel(label)
      ax.set_ylabel(f"{arch}: test error (%)")
      ax.grid(True, which="both", alpha=0.3)
    row[0].legend(fontsize=7)
  fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(os.fspath(path), dpi=110)
  plt.close(fig)


def write_reports(
  workdir: Path,
  config: Config,
  runs: list[dict[str, Any]],
  timings: dict[str, dict[str, dict[str, float]]],
  costs: dict[str, dict[str, dict[str, int]]],
  *,
  plots: bool = True,
) -> dict[str, Any]:
  """Writes ``results.json`` (and ``table.md`` and the plot when ``plots``)."""
  summary = summarise(runs, timings, costs)
  results = {
    "config": dataclasses.asdict(config),
    "environment": reporting.environment(),
    "timings": timings,
    "summary": summary,
    "runs": runs,
  }
  reporting.write_json(workdir / "results.json", results)
  if plots:
    (workdir / "table.md").write_text(table(summary) + "\n")
  if plots and runs:
    subset_text = f", first {config.train_subset} training images" if config.train_subset else ""
    plot(
      workdir / "error_vs_params_and_time.png",
      summary,
      f"KConv from scratch, {config.dataset}: {config.epochs} epoch(s)"
      f"{subset_text}, seeds {list(config.seeds)}",
    )
  return results


# ----------------------------------------------------------------------------
# The experiment.
# ----------------------------------------------------------------------------


def train_and_evaluate(
  config: Config, workdir: str | os.PathLike[str], *, data: tfds_data.Splits | None = None
) -> dict[str, Any]:
  """Times, then trains every architecture, variant and seed of ``config``.

  Args:
    config: the configuration (``configs/default.py``).
    workdir: output directory (``results.json``, ``table.md``, the plot,
      ``checkpoints/``, ``resume/``).
    data: preloaded splits (tests; cut to ``train_subset`` here too);
      ``None`` loads the dataset through TFDS.

  Returns:
    The contents of ``results.json``.
  """
  workdir = Path(workdir)
  mesh = pipeline.make_data_mesh()
  costs = check_config(config, mesh)
  logger.info("costs per network: %s", costs)
  timings = {}
  if config.time_batch and config.time_rounds:
    for arch in config.architectures:
      timings[arch] = time_variants(arch, config.variants, config=config)
      logger.info("%s timings (batch %d): %s", arch, config.time_batch, timings[arch])
  runs = []
  if config.train:
    data = load_data(config) if data is None else subset(data, config.train_subset)
  for arch in config.architectures if config.train else ():
    for variant in config.variants:
      for seed in config.seeds:
        runs.append(train_one(arch, variant, seed, data, config=config, mesh=mesh, workdir=workdir))
        write_reports(workdir, config, runs, timings, costs, plots=False)
  results = write_reports(workdir, config, runs, timings, costs)
  print(table(results["summary"]))
  print(
    f"\nWrote {workdir / 'results.json'} and {workdir / 'table.md'}"
    + (
      f" and {workdir / 'error_vs_params_and_time.png'}."
      if runs
      else " (timings only: nothing trained)."
    )
  )
  return results
