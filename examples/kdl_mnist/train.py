"""Training and evaluation of the KDL paper's MNIST MLPs.

The loop is ``examples/_common/loop.py``'s (``nnx.jit`` steps with the batch
sharded over the local devices and the state replicated, prefetching epochs,
masked evaluation); only the model, the configuration and the report are
this example's. Each run keeps the parameters of its best-validation epoch
and reports their test accuracy; ``results.json`` and ``table.md`` go into
the work directory.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from examples._common import loop, mnist_data, pipeline, reporting
from examples.kdl_mnist import models, reference
from examples.kdl_mnist.configs import default

logger = logging.getLogger(__name__)

Config = default.Config


def create_model(variant: str, *, seed: int = 0) -> models.MLP:
  """The MLP of ``variant`` (``"Dense"`` or ``"KDL-Rank-<r>"``)."""
  return models.MLP(variant, rngs=nnx.Rngs(params=seed))


create_optimizer = loop.create_optimizer
replicate = pipeline.replicate


def preprocess(images: jax.Array) -> jax.Array:
  """``uint8`` images to ``float32`` in [0, 1] (on device: 4x less to copy)."""
  return images.astype(jnp.float32) / 255.0


train_step = functools.partial(loop.train_step, preprocess=preprocess)
eval_step = functools.partial(loop.eval_step, preprocess=preprocess)
evaluate = functools.partial(loop.evaluate, preprocess=preprocess)


def param_count(variant: str) -> int:
  """The model's parameters, computed abstractly."""
  return models.count_params(nnx.eval_shape(lambda: create_model(variant)))


def check_config(config: Config, mesh: Mesh | None = None) -> dict[str, int]:
  """Validates ``config`` before any data is loaded.

  Returns:
    variant -> its parameter count.

  Raises:
    ValueError: see ``loop.check_config``, or an unknown variant.
  """
  loop.check_config(config, mesh)
  return {v: param_count(v) for v in config.variants}


def train_one(
  variant: str,
  seed: int,
  data: mnist_data.MnistSplits,
  *,
  config: Config,
  mesh: Mesh,
  workdir: Path | None = None,
) -> dict[str, Any]:
  """Trains one variant with one seed; tests its best-validation parameters.

  With a ``workdir``, an interrupted run resumes from ``<workdir>/resume/
  <variant>/seed_<seed>``.

  Returns:
    The run's record for ``results.json``.
  """
  model = create_model(variant, seed=seed)
  steps_per_epoch = pipeline.num_batches(len(data.train[0]), config.batch_size, True)
  optimizer = create_optimizer(model, config, config.epochs * steps_per_epoch)
  replicate((model, optimizer), mesh)
  run = loop.fit(
    model,
    optimizer,
    train=data.train,
    validation=data.validation,
    test=data.test,
    config=config,
    mesh=mesh,
    seed=seed,
    name=f"{variant} seed {seed}",
    preprocess=preprocess,
    resume_dir=(workdir / "resume" / variant / f"seed_{seed}" if workdir is not None else None),
  )
  return {
    "variant": variant,
    "seed": seed,
    "model_params": param_count(variant),
    "epochs": config.epochs,
    "test_accuracy": 100.0 - run["test_error"],
    "last_epoch_test_accuracy": 100.0 - run["last_epoch_test_error"],
    **run,
  }


def summarise_runs(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
  """One row per variant: test accuracy mean and spread over seeds."""
  by_variant: dict[str, list[dict[str, Any]]] = {}
  for r in runs:
    by_variant.setdefault(r["variant"], []).append(r)
  rows = []
  for variant, rs in by_variant.items():
    accs = [r["test_accuracy"] for r in rs]
    mean, std = reporting.mean_std(accs)
    rows.append(
      {
        "variant": variant,
        "seeds": [r["seed"] for r in rs],
        "model_params": rs[0]["model_params"],
        "epochs": rs[0]["epochs"],
        "test_accuracies": accs,
        "test_accuracy_mean": mean,
        "test_accuracy_std": std,
        "wall_time_s": float(sum(r["wall_time_s"] for r in rs)),
        "train_time_per_epoch_s": float(np.mean([r["train_time_per_epoch_s"] for r in rs])),
      }
    )
  return rows


def table(summary: list[dict[str, Any]]) -> str:
  """Our numbers beside the paper's, as a Markdown table."""
  headers = [
    "Variant",
    "Params",
    "Epochs",
    "Test acc. % (mean ± std)",
    "Seeds",
    "Train s/epoch",
    "Wall s",
    "Paper: params",
    "Paper: test acc. % (20 epochs)",
  ]
  rows = []
  for s in summary:
    paper = reference.PAPER.get(s["variant"], {})
    acc = reporting.format_mean_std(
      s["test_accuracy_mean"], s["test_accuracy_std"], len(s["seeds"])
    )
    rows.append(
      [
        s["variant"],
        f"{s['model_params']:,}",
        str(s["epochs"]),
        acc,
        str(len(s["seeds"])),
        f"{s['train_time_per_epoch_s']:.1f}",
        f"{s['wall_time_s']:.0f}",
        reporting.format_count(paper.get("model_params")),
        f"{paper['test_accuracy']:.2f}" if paper else "—",
      ]
    )
  return reporting.format_table(headers, rows)


def write_reports(workdir: Path, config: Config, runs: list[dict[str, Any]]) -> dict[str, Any]:
  """Writes ``results.json`` and ``table.md``; returns the results."""
  summary = summarise_runs(runs)
  results = {
    "config": dataclasses.asdict(config),
    "environment": reporting.environment(),
    "paper": reference.PAPER,
    "summary": summary,
    "runs": runs,
  }
  reporting.write_json(workdir / "results.json", results)
  (workdir / "table.md").write_text(table(summary) + "\n")
  return results


def train_and_evaluate(
  config: Config, workdir: str | os.PathLike[str], *, data: mnist_data.MnistSplits | None = None
) -> dict[str, Any]:
  """Trains every variant and seed of ``config``; writes and prints the report.

  Args:
    config: the configuration.
    workdir: output directory (``results.json``, ``table.md``).
    data: preloaded splits (tests); ``None`` loads MNIST through TFDS.

  Returns:
    The contents of ``results.json``.

  Raises:
    ValueError: see :func:`check_config`.
    tfds_data.DatasetUnavailableError: MNIST cannot be loaded.
  """
  workdir = Path(workdir)
  mesh = pipeline.make_data_mesh()
  counts = check_config(config, mesh)
  if data is None:
    data = mnist_data.load_mnist(
      data_dir=config.data_dir,
      manual_dir=config.manual_dir,
      download=config.download,
      num_validation=config.num_validation,
    )
  logger.info(
    "MNIST: %d train, %d validation, %d test images; parameters: %s",
    len(data.train[0]),
    len(data.validation[0]),
    len(data.test[0]),
    counts,
  )
  runs = []
  for variant in config.variants:
    for seed in config.seeds:
      runs.append(train_one(variant, seed, data, config=config, mesh=mesh, workdir=workdir))
      results = write_reports(workdir, config, runs)
  print(table(results["summary"]))
  print(f"\nWrote {workdir / 'results.json'} and {workdir / 'table.md'}.")
  return results
