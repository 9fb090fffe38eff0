"""Training and evaluation of the KFC paper's SVHN variants.

The MNIST example's protocol with SVHN's network and data: the loop of
``examples/_common/loop.py`` (``nnx.jit`` steps with the batch sharded over
the local devices and the state replicated, Adam with coupled weight decay
1e-4, the parameters of the best-validation epoch tested), then the paper's
table. :func:`train_and_evaluate` writes ``results.json``, ``table.md`` and
``test_error_vs_params.png``.
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
from flax import nnx
from jax.sharding import Mesh

from examples._common import loop, pipeline, reporting
from examples.svhn import input_pipeline, models, reference
from examples.svhn.configs import default

logger = logging.getLogger(__name__)

Config = default.Config


def create_model(variant: str, *, seed: int = 0, dropout_rate: float = 0.5) -> models.SvhnCNN:
  """The SVHN CNN with the FC layer of ``variant`` (see ``models.VARIANTS``).

  Raises:
    ValueError: unknown ``variant``.
  """
  params_key, dropout_key = jax.random.split(jax.random.key(seed))
  return models.SvhnCNN(
    variant, dropout_rate=dropout_rate, rngs=nnx.Rngs(params=params_key, dropout=dropout_key)
  )


create_optimizer = loop.create_optimizer
replicate = pipeline.replicate


def preprocess(images: jax.Array) -> jax.Array:
  """``uint8`` images to ``float32`` in [0, 1] (on device: 4x less to copy)."""
  return images.astype(jnp.float32) / 255.0


train_step = functools.partial(loop.train_step, preprocess=preprocess)
eval_step = functools.partial(loop.eval_step, preprocess=preprocess)
evaluate = functools.partial(loop.evaluate, preprocess=preprocess)


def param_counts(variant: str) -> dict[str, int]:
  """``layer``, ``layer_weights`` (without bias) and ``model``, abstractly."""
  model = nnx.eval_shape(lambda: create_model(variant))
  return {
    "layer": models.count_params(model.fc),
    "layer_weights": models.count_params(model.fc, biases=False),
    "model": models.count_params(model),
  }


def check_config(config: Config, mesh: Mesh | None = None) -> dict[str, dict[str, int]]:
  """Validates ``config`` before any data is loaded.

  Returns:
    variant -> its :func:`param_counts`.

  Raises:
    ValueError: see ``loop.check_config``, or an unknown variant.
  """
  loop.check_config(config, mesh)
  return {v: param_counts(v) for v in config.variants}


def train_one(
  variant: str,
  seed: int,
  data: input_pipeline.SvhnSplits,
  *,
  config: Config,
  mesh: Mesh,
  workdir: Path | None = None,
) -> dict[str, Any]:
  """Trains one variant with one seed; returns its ``results.json`` record.

  With a ``workdir``, an interrupted run resumes from ``<workdir>/resume/
  <variant>/seed_<seed>``.
  """
  model = create_model(variant, seed=seed, dropout_rate=config.dropout_rate)
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
    **reporting.param_reductions(param_counts(variant), param_counts("Baseline")),
    **run,
  }


def paper_table(summary: list[dict[str, Any]]) -> str:
  """Our runs beside the paper's SVHN numbers, as a Markdown table."""
  return reporting.variants_table(summary, reference.PAPER)


def write_reports(
  workdir: Path, config: Config, runs: list[dict[str, Any]], *, plot: bool = True
) -> dict[str, Any]:
  """Writes ``results.json`` (and ``table.md`` and the plot when ``plot``)."""
  summary = reporting.summarise_variants(runs)
  results = {
    "config": dataclasses.asdict(config),
    "environment": reporting.environment(),
    "paper": reference.PAPER,
    "summary": summary,
    "runs": runs,
  }
  reporting.write_json(workdir / "results.json", results)
  if plot:
    (workdir / "table.md").write_text(paper_table(summary) + "\n")
    counts = {v: param_counts(v) for v in reference.PAPER}
    reporting.plot_error_vs_params(
      workdir / "test_error_vs_params.png",
      summary,
      reference.paper_points(counts),
      title=f"SVHN: test error of the best-validation epoch ({config.epochs} epochs)",
    )
  return results


def train_and_evaluate(
  config: Config, workdir: str | os.PathLike[str], *, data: input_pipeline.SvhnSplits | None = None
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
      data_dir=config.data_dir,
      manual_dir=config.manual_dir,
      download=config.download,
      num_validation=config.num_validation,
    )
  logger.info(
    "SVHN: %d train, %d validation, %d test images; %d device(s); parameters per variant: %s",
    len(data.train[0]),
    len(data.validation[0]),
    len(data.test[0]),
    mesh.devices.size,
    counts,
  )
  runs = []
  for variant in config.variants:
    for seed in config.seeds:
      runs.append(train_one(variant, seed, data, config=config, mesh=mesh, workdir=workdir))
      write_reports(workdir, config, runs, plot=False)
  results = write_reports(workdir, config, runs)
  print(paper_table(results["summary"]))
  print(
    f"\nWrote {workdir / 'results.json'}, {workdir / 'table.md'} and "
    f"{workdir / 'test_error_vs_params.png'}."
  )
  return results
