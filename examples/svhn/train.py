"""Training and evaluation of the KFC paper's SVHN variants.

The MNIST example's machinery with SVHN's network and data: the same
``nnx.jit`` steps (batch sharded over the local devices, state replicated),
epoch loop, optimizer (Adam with coupled weight decay 1e-4) and run summary
(``examples/mnist/train.py``), and the best-validation loop of
``examples/_common/best_epoch.py``. :func:`train_and_evaluate` writes
``results.json``, ``table.md`` and ``test_error_vs_params.png``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path
from typing import Any

import jax
from flax import nnx
from jax.sharding import Mesh

from examples._common import best_epoch
from examples._common import pipeline
from examples._common import reporting
from examples.mnist import train as mnist_train
from examples.svhn import input_pipeline
from examples.svhn import models
from examples.svhn import reference
from examples.svhn.configs import default

logger = logging.getLogger(__name__)

Config = default.Config

# Reused as they are: the steps only need `model(images, train=...)` and
# uint8 images.
train_step = mnist_train.train_step
eval_step = mnist_train.eval_step
evaluate = mnist_train.evaluate
create_optimizer = mnist_train.create_optimizer
replicate = mnist_train.replicate
summarise_runs = mnist_train.summarise_runs


def create_model(variant: str, *, seed: int = 0,
                 dropout_rate: float = 0.5) -> models.SvhnCNN:
  """The SVHN CNN with the FC layer of ``variant`` (see ``models.VARIANTS``).

  Raises:
    ValueError: unknown ``variant``.
  """
  params_key, dropout_key = jax.random.split(jax.random.key(seed))
  return models.SvhnCNN(variant, dropout_rate=dropout_rate,
                        rngs=nnx.Rngs(params=params_key, dropout=dropout_key))


def param_counts(variant: str) -> dict[str, int]:
  """``layer``, ``layer_weights`` (without bias) and ``model``, abstractly."""
  model = nnx.eval_shape(lambda: create_model(variant))
  return {"layer": models.count_params(model.fc),
          "layer_weights": models.count_params(model.fc, biases=False),
          "model": models.count_params(model)}


def check_config(config: Config, mesh: Mesh | None = None
                 ) -> dict[str, dict[str, int]]:
  """Validates ``config`` before any data is loaded.

  Returns:
    variant -> its :func:`param_counts`.

  Raises:
    ValueError: empty variants/seeds, ``epochs < 1``, an unknown variant or
      schedule, or a batch size the devices cannot split evenly.
  """
  if not config.variants or not config.seeds:
    raise ValueError("config.variants and config.seeds must be non-empty; got "
                     f"{config.variants!r} and {config.seeds!r}.")
  if config.epochs < 1:
    raise ValueError(f"config.epochs must be >= 1; got {config.epochs}.")
  if config.lr_schedule not in mnist_train.LR_SCHEDULES:
    raise ValueError(f"config.lr_schedule must be one of "
                     f"{mnist_train.LR_SCHEDULES}; got {config.lr_schedule!r}.")
  mesh = mesh if mesh is not None else pipeline.make_data_mesh()
  pipeline.check_batch_size(config.batch_size, mesh, "batch_size")
  pipeline.check_batch_size(config.eval_batch_size, mesh, "eval_batch_size")
  return {v: param_counts(v) for v in config.variants}


def _reduction(counts, baseline, key: str) -> float:
  return 100.0 * (1.0 - counts[key] / baseline[key])


def train_one(variant: str, seed: int, data: input_pipeline.SvhnSplits, *,
              config: Config, mesh: Mesh) -> dict[str, Any]:
  """Trains one variant with one seed; returns its ``results.json`` record."""
  model = create_model(variant, seed=seed, dropout_rate=config.dropout_rate)
  steps_per_epoch = pipeline.num_batches(len(data.train[0]), config.batch_size,
                                         True)
  optimizer = create_optimizer(model, config, config.epochs * steps_per_epoch)
  replicate((model, optimizer), mesh)
  run = best_epoch.fit(model, optimizer, train=data.train,
                       validation=data.validation, test=data.test,
                       config=config, mesh=mesh, seed=seed,
                       name=f"{variant} seed {seed}")
  counts, baseline = param_counts(variant), param_counts("Baseline")
  return {
      "variant": variant, "seed": seed,
      "layer_params": counts["layer"],
      "layer_weight_params": counts["layer_weights"],
      "model_params": counts["model"],
      **{f"{name}_reduction_pct": _reduction(counts, baseline, key)
         for name, key in (("layer", "layer"),
                           ("layer_weight", "layer_weights"),
                           ("model", "model"))},
      **run,
  }


def paper_table(summary: list[dict[str, Any]]) -> str:
  """Our runs beside the paper's SVHN numbers, as a Markdown table."""
  headers = ["Variant", "Layer params (red.)", "w/o bias (red.)",
             "Model params (red.)", "Test error % (mean ± std)", "Seeds",
             "Train s/epoch", "Paper: layer params", "Paper: test error %"]
  rows = []
  for s in summary:
    paper = reference.PAPER.get(s["variant"], {})
    err = f"{s['test_error_mean']:.2f}"
    if len(s["seeds"]) > 1:
      err += f" ± {s['test_error_std']:.2f}"
    rows.append([
        s["variant"],
        reporting.format_with_reduction(s["layer_params"],
                                        s["layer_reduction_pct"]),
        reporting.format_with_reduction(s["layer_weight_params"],
                                        s["layer_weight_reduction_pct"]),
        reporting.format_with_reduction(s["model_params"],
                                        s["model_reduction_pct"]),
        err, str(len(s["seeds"])), f"{s['train_time_per_epoch_s']:.1f}",
        reporting.format_with_reduction(paper.get("layer_params"),
                                        paper.get("layer_reduction")),
        f"{paper['test_error']:.2f}" if paper else "—"])
  return reporting.format_table(headers, rows)


def write_reports(workdir: Path, config: Config, runs: list[dict[str, Any]],
                  *, plot: bool = True) -> dict[str, Any]:
  """Writes ``results.json`` (and ``table.md`` and the plot when ``plot``)."""
  summary = summarise_runs(runs)
  results = {"config": dataclasses.asdict(config),
             "environment": mnist_train.environment(),
             "paper": reference.PAPER, "summary": summary, "runs": runs}
  workdir.mkdir(parents=True, exist_ok=True)
  tmp = workdir / "results.json.tmp"
  tmp.write_text(json.dumps(results, indent=2))
  tmp.replace(workdir / "results.json")  # Never a half-written file.
  if plot:
    (workdir / "table.md").write_text(paper_table(summary) + "\n")
    counts = {v: param_counts(v) for v in reference.PAPER}
    reporting.plot_error_vs_params(
        workdir / "test_error_vs_params.png", summary,
        reference.paper_points(counts),
        title=f"SVHN: test error of the best-validation epoch "
        f"({config.epochs} epochs)")
  return results


def train_and_evaluate(config: Config, workdir: str | os.PathLike[str], *,
                       data: input_pipeline.SvhnSplits | None = None
                       ) -> dict[str, Any]:
  """Trains every variant and seed of ``config``; writes and prints the report.

  Args:
    config: the configuration (``configs/default.py``).
    workdir: output directory.
    data: preloaded splits (tests); ``None`` loads SVHN through TFDS.

  Returns:
    The contents of ``results.json``.

  Raises:
    ValueError: see :func:`check_config`.
    tfds_data.DatasetUnavailableError: SVHN cannot be loaded (see its
      message).
  """
  workdir = Path(workdir)
  mesh = pipeline.make_data_mesh()
  counts = check_config(config, mesh)
  if data is None:
    data = input_pipeline.load_svhn(
        data_dir=config.data_dir, manual_dir=config.manual_dir,
        download=config.download, num_validation=config.num_validation)
  logger.info("SVHN: %d train, %d validation, %d test images; %d device(s); "
              "parameters per variant: %s", len(data.train[0]),
              len(data.validation[0]), len(data.test[0]), mesh.devices.size,
              counts)
  runs = []
  for variant in config.variants:
    for seed in config.seeds:
      runs.append(train_one(variant, seed, data, config=config, mesh=mesh))
      write_reports(workdir, config, runs, plot=False)
  results = write_reports(workdir, config, runs)
  print(paper_table(results["summary"]))
  print(f"\nWrote {workdir / 'results.json'}, {workdir / 'table.md'} and "
        f"{workdir / 'test_error_vs_params.png'}.")
  return results
