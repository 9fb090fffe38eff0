"""Training and evaluation of the KFC paper's MNIST variants.

The library side of the example (``main.py`` is the command line). It reads
top to bottom: the model and its optimizer (Adam with coupled L2 weight
decay, as the paper's Caffe solver), the steps, one run (a variant and a
seed: train, keep the parameters of the best-validation epoch, test them),
the reports, and :func:`train_and_evaluate`, which runs every variant and
seed of a config and writes ``results.json``, ``table.md`` and
``test_error_vs_params.png`` into the work directory. The loop itself is
``examples/_common/loop.py``.

A run shorter than the committed one (``results/``: 12 epochs, 3 seeds) says
so when it starts and ends by printing the committed numbers beside its own.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh

from examples._common import loop, mnist_data, pipeline, reporting
from examples.mnist import models, reference
from examples.mnist.configs import default

logger = logging.getLogger(__name__)

Config = default.Config
COMMITTED_RESULTS = Path(__file__).resolve().parent / "results" / "results.json"
COMMITTED_COMMAND = "make paper12"

# ----------------------------------------------------------------------------
# Model, optimizer, steps.
# ----------------------------------------------------------------------------


def create_model(
  variant: str,
  *,
  seed: int = 0,
  dropout_rate: float = 0.5,
  conv_stack: str = "ours",
  kernel_init: str = "caffe_xavier",
) -> models.MnistCNN:
  """The paper's CNN with the FC layer of ``variant`` (see ``models.VARIANTS``).

  ``seed`` drives the initialisation and the dropout (independent streams);
  ``conv_stack`` and ``kernel_init`` are the offset ablation's choices
  (``models.CONV_STACKS``, ``cnn.KERNEL_INITS``).

  Raises:
    ValueError: unknown ``variant``, ``conv_stack`` or ``kernel_init``.
  """
  params_key, dropout_key = jax.random.split(jax.random.key(seed))
  return models.MnistCNN(
    variant,
    dropout_rate=dropout_rate,
    conv_stack=conv_stack,
    kernel_init=kernel_init,
    rngs=nnx.Rngs(params=params_key, dropout=dropout_key),
  )


make_tx = loop.adam_with_l2
create_optimizer = loop.create_optimizer
replicate = pipeline.replicate


def param_counts(variant: str, conv_stack: str = "ours") -> dict[str, int]:
  """``layer`` (the FC/KFC layer), ``layer_weights`` (no bias), ``model``.

  Computed abstractly (``nnx.eval_shape``: no FLOPs, no memory).
  """
  model = nnx.eval_shape(lambda: create_model(variant, conv_stack=conv_stack))
  return {
    "layer": models.count_params(model.fc),
    "layer_weights": models.count_params(model.fc, biases=False),
    "model": models.count_params(model),
  }


def preprocess(images: jax.Array) -> jax.Array:
  """``uint8`` images to ``float32`` in [0, 1] (on device: 4x less to copy)."""
  return images.astype(jnp.float32) / 255.0


# Caffe-style mean subtraction (the offset ablation): the mean pixel of
# MNIST's 60,000 training images (33.32 / 255), subtracted after scaling.
MNIST_MEAN_PIXEL = 0.1307


def preprocess_mean_subtracted(images: jax.Array) -> jax.Array:
  """``uint8`` images to ``float32`` in [0, 1] less the mean pixel."""
  return images.astype(jnp.float32) / 255.0 - MNIST_MEAN_PIXEL


# config.input_scaling -> the preprocessing (module functions: a static
# argument of the jitted steps, so each compiles once).
PREPROCESS = {"unit": preprocess, "mean": preprocess_mean_subtracted}

train_step = functools.partial(loop.train_step, preprocess=preprocess)
eval_step = functools.partial(loop.eval_step, preprocess=preprocess)
evaluate = functools.partial(loop.evaluate, preprocess=preprocess)


def check_config(config: Config, mesh: Mesh | None = None) -> dict[str, dict[str, int]]:
  """Validates ``config`` before any data is loaded or step compiled.

  Every variant is built abstractly, so a bad name fails at once, not hours
  into a run.

  Returns:
    variant -> its :func:`param_counts`.

  Raises:
    ValueError: see ``loop.check_config``, or an unknown variant.
  """
  loop.check_config(config, mesh)
  if config.input_scaling not in PREPROCESS:
    raise ValueError(
      f"Unknown input_scaling {config.input_scaling!r}; use one of {list(PREPROCESS)}."
    )
  nnx.eval_shape(
    lambda: create_model(  # Checks conv_stack and kernel_init.
      "Baseline", conv_stack=config.conv_stack, kernel_init=config.kernel_init
    )
  )
  return {v: param_counts(v, config.conv_stack) for v in config.variants}


# ----------------------------------------------------------------------------
# One run.
# ----------------------------------------------------------------------------


def train_one(
  variant: str,
  seed: int,
  data: mnist_data.MnistSplits,
  *,
  config: Config,
  mesh: Mesh,
  workdir: Path | None,
  baseline: Mapping[str, int],
) -> dict[str, Any]:
  """Trains one variant with one seed; tests its best-validation parameters.

  With a ``workdir``, the run resumes from ``<workdir>/resume/<variant>/
  seed_<seed>`` when it was interrupted, and (``config.save_checkpoints``)
  keeps its best parameters in ``<workdir>/checkpoints/<variant>/
  seed_<seed>``.

  Args:
    variant: the FC-layer variant.
    seed: the run's seed.
    data: the three splits.
    config: the configuration.
    mesh: the data-parallel mesh.
    workdir: where checkpoints go (``None``: nowhere).
    baseline: the Baseline's :func:`param_counts`, for the reductions.

  Returns:
    The run's record for ``results.json``.
  """
  model = create_model(
    variant,
    seed=seed,
    dropout_rate=config.dropout_rate,
    conv_stack=config.conv_stack,
    kernel_init=config.kernel_init,
  )
  steps_per_epoch = pipeline.num_batches(len(data.train[0]), config.batch_size, True)
  optimizer = create_optimizer(model, config, config.epochs * steps_per_epoch)
  replicate((model, optimizer), mesh)
  best_dir = resume_dir = None
  if workdir is not None:
    resume_dir = workdir / "resume" / variant / f"seed_{seed}"
    if config.save_checkpoints:
      best_dir = workdir / "checkpoints" / variant / f"seed_{seed}"
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
    preprocess=PREPROCESS[config.input_scaling],
    best_dir=best_dir,
    resume_dir=resume_dir,
  )
  return {
    "variant": variant,
    "seed": seed,
    **reporting.param_reductions(param_counts(variant, config.conv_stack), baseline),
    **run,
  }


# ----------------------------------------------------------------------------
# Reports.
# ----------------------------------------------------------------------------


def paper_table(summary: list[dict[str, Any]]) -> str:
  """The paper's MNIST table for our runs, the paper's numbers beside them."""
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
    reporting.plot_error_vs_params(
      workdir / "test_error_vs_params.png",
      summary,
      reference.paper_points(),
      title=f"MNIST: test error of the best-validation epoch ({config.epochs} epochs)",
    )
  return results


# ----------------------------------------------------------------------------
# The experiment.
# ----------------------------------------------------------------------------


def train_and_evaluate(
  config: Config, workdir: str | os.PathLike[str], *, data: mnist_data.MnistSplits | None = None
) -> dict[str, Any]:
  """Trains every variant and seed of ``config``; writes and prints the report.

  Args:
    config: the configuration (``configs/default.py``).
    workdir: output directory (``results.json``, ``table.md``,
      ``test_error_vs_params.png``, ``checkpoints/``, ``resume/``).
    data: preloaded splits (tests); ``None`` loads MNIST through TFDS.

  Returns:
    The contents of ``results.json``.

  Raises:
    ValueError: see :func:`check_config`.
    tfds_data.DatasetUnavailableError: MNIST cannot be loaded (see its
      message).
  """
  workdir = Path(workdir)
  mesh = pipeline.make_data_mesh()
  counts = check_config(config, mesh)
  committed = reporting.load_json(COMMITTED_RESULTS)
  print(reporting.describe_run(config, committed, COMMITTED_COMMAND), flush=True)
  if data is None:
    data = mnist_data.load_mnist(
      data_dir=config.data_dir,
      manual_dir=config.manual_dir,
      download=config.download,
      num_validation=config.num_validation,
    )
  logger.info(
    "MNIST: %d train, %d validation, %d test images; %d device(s); parameters per variant: %s",
    len(data.train[0]),
    len(data.validation[0]),
    len(data.test[0]),
    mesh.devices.size,
    counts,
  )
  baseline = param_counts("Baseline", config.conv_stack)
  runs = []
  for variant in config.variants:
    for seed in config.seeds:
      runs.append(
        train_one(variant, seed, data, config=config, mesh=mesh, workdir=workdir, baseline=baseline)
      )
      write_reports(workdir, config, runs, plot=False)
  results = write_reports(workdir, config, runs)
  print(paper_table(results["summary"]))
  print(
    f"\nWrote {workdir / 'results.json'}, {workdir / 'table.md'} and "
    f"{workdir / 'test_error_vs_params.png'}."
  )
  if committed is not None:
    print(
      f"\nBeside the committed full results (examples/mnist/RESULTS.md; "
      f"reproduce them with `{COMMITTED_COMMAND}`) and the paper's:\n"
    )
    print(reporting.beside_committed(results["summary"], committed, reference.PAPER, config.epochs))
  return results
