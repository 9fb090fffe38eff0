"""Train a ResNet, compress its convs by GKPD, fine-tune: the library side.

``main.py`` is the command line. The pieces:

* :func:`create_model`, :func:`make_tx` -- the CIFAR ResNet of ``models.py``
  and SGD with Nesterov momentum, coupled L2 weight decay and a warm-up +
  cosine schedule (He et al.'s recipe, shortened);
* :func:`train_step`, :func:`eval_step` -- the shared ``nnx.jit`` steps of
  ``_common/loop.py`` with this example's preprocessing (BatchNorm
  statistics are updated in place by the training step); batches are sharded
  over the local devices and the state replicated;
* :func:`compress` -- ``kfc_jax.compress`` with ``models.compression_policy``,
  which turns every block's 3x3 conv into a ``KroneckerConv`` at
  ``config.compression`` (GKPD, Hameed et al. 2022);
* :func:`train_and_evaluate` -- dense training, compression, fine-tuning,
  with test accuracy, parameter counts and wall times after each phase,
  written to ``results.json`` and ``report.md`` in the work directory.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import platform
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh

import kfc_jax
from examples._common import loop, pipeline
from examples.resnet_gkpd import input_pipeline, models, report
from examples.resnet_gkpd.configs import default

logger = logging.getLogger(__name__)

Config = default.Config

SPLITS = models.SPLITS


# ----------------------------------------------------------------------------
# Model and optimizer.
# ----------------------------------------------------------------------------


def create_model(depth: int = 20, *, in_channels: int = 3, seed: int = 0) -> models.ResNet:
  """ResNet-``depth`` for ``[B, 32, 32, in_channels]`` images."""
  return models.ResNet(depth, in_channels=in_channels, rngs=nnx.Rngs(seed))


@functools.cache
def make_tx(
  learning_rate: float,
  total_steps: int,
  *,
  warmup_steps: int = 0,
  momentum: float = 0.9,
  weight_decay: float = 1e-4,
) -> optax.GradientTransformation:
  """SGD (Nesterov) with coupled L2 decay, linear warm-up, cosine to zero.

  Cached: ``nnx.jit`` keys its cache on the optimizer's static structure,
  which includes the transformation, so equal settings reuse compiled steps.
  """
  warmup = min(warmup_steps, total_steps // 2)
  if warmup:
    schedule = optax.warmup_cosine_decay_schedule(
      0.0, learning_rate, warmup, max(total_steps, warmup + 1)
    )
  else:
    schedule = optax.cosine_decay_schedule(learning_rate, max(total_steps, 1))
  return optax.chain(
    optax.add_decayed_weights(weight_decay), optax.sgd(schedule, momentum=momentum, nesterov=True)
  )


def create_optimizer(
  model: nnx.Module, config: Config, total_steps: int, *, finetune: bool = False
) -> nnx.Optimizer:
  """An ``nnx.Optimizer`` over every ``nnx.Param`` of ``model``."""
  lr = config.finetune_learning_rate if finetune else config.learning_rate
  tx = make_tx(
    lr,
    total_steps,
    warmup_steps=config.warmup_steps,
    momentum=config.momentum,
    weight_decay=config.weight_decay,
  )
  return nnx.Optimizer(model, tx, wrt=nnx.Param)


def compress(
  model: models.ResNet, config: Config
) -> tuple[models.ResNet, kfc_jax.CompressionReport]:
  """A compressed copy of ``model`` (``model`` itself is left as it was)."""
  policy = models.compression_policy(model, compression=config.compression, split=config.split)
  return kfc_jax.compress(model, policy)


# ----------------------------------------------------------------------------
# Steps.
# ----------------------------------------------------------------------------


def preprocess(images: jax.Array) -> jax.Array:
  """``uint8`` images to ``float32`` in [-1, 1] (on device: 4x less to copy)."""
  return images.astype(jnp.float32) / 127.5 - 1.0


train_step = functools.partial(loop.train_step, preprocess=preprocess)
eval_step = functools.partial(loop.eval_step, preprocess=preprocess)
evaluate = functools.partial(loop.evaluate, preprocess=preprocess)
replicate = pipeline.replicate  # Part of this module's train-loop API.


def train_epoch(
  model: models.ResNet,
  optimizer: nnx.Optimizer,
  images: np.ndarray,
  labels: np.ndarray,
  *,
  config: Config,
  mesh: Mesh,
  rng: np.random.Generator,
  desc: str = "",
) -> dict[str, float]:
  """One shuffled, augmented (``config.augment``) pass; see ``loop``."""
  augment = None
  if config.augment:
    augment = functools.partial(input_pipeline.augment, flip=config.dataset == "cifar10")
  return loop.train_epoch(
    model,
    optimizer,
    images,
    labels,
    config=config,
    mesh=mesh,
    rng=rng,
    preprocess=preprocess,
    augment=augment,
    desc=desc,
  )


def fit(
  model: models.ResNet,
  data: input_pipeline.Splits,
  *,
  config: Config,
  mesh: Mesh,
  epochs: int,
  finetune: bool,
  rng: np.random.Generator,
  name: str,
) -> list[dict[str, float]]:
  """``epochs`` of SGD on the training images; returns per-epoch records."""
  steps = pipeline.num_batches(len(data.train[0]), config.batch_size, True)
  optimizer = create_optimizer(model, config, epochs * steps, finetune=finetune)
  replicate((model, optimizer), mesh)
  history = []
  for epoch in range(1, epochs + 1):
    record = train_epoch(
      model, optimizer, *data.train, config=config, mesh=mesh, rng=rng, desc=f"{name} epoch {epoch}"
    )
    history.append({"epoch": epoch, **record})
    logger.info(
      "%s epoch %d/%d: train loss %.4f accuracy %.2f%% | %.1f s",
      name,
      epoch,
      epochs,
      record["loss"],
      record["accuracy"],
      record["seconds"],
    )
  return history


# ----------------------------------------------------------------------------
# The experiment.
# ----------------------------------------------------------------------------


def check_config(config: Config, mesh: Mesh | None = None) -> None:
  """Validates ``config`` before any data is loaded or step compiled.

  Raises:
    ValueError: naming the bad field.
  """
  if config.dataset not in input_pipeline.DATASETS:
    raise ValueError(f"dataset must be one of {input_pipeline.DATASETS}; got {config.dataset!r}.")
  models.blocks_per_stage(config.depth)
  if config.num_train is not None and (
    not isinstance(config.num_train, int) or config.num_train < 1
  ):
    raise ValueError(f"num_train must be a positive int or None; got {config.num_train!r}.")
  if config.epochs < 1:
    raise ValueError(f"epochs must be >= 1; got {config.epochs!r}.")
  if config.finetune_epochs < 0:
    raise ValueError(f"finetune_epochs must be >= 0; got {config.finetune_epochs!r}.")
  if config.split not in SPLITS:
    raise ValueError(f"split must be one of {SPLITS}; got {config.split!r}.")
  if not config.compression >= 1:
    raise ValueError(f"compression must be >= 1; got {config.compression!r}.")
  for name in ("learning_rate", "finetune_learning_rate"):
    if not getattr(config, name) > 0:
      raise ValueError(f"{name} must be > 0; got {getattr(config, name)!r}.")
  mesh = mesh if mesh is not None else pipeline.make_data_mesh()
  pipeline.check_batch_size(config.batch_size, mesh, "batch_size")
  pipeline.check_batch_size(config.eval_batch_size, mesh, "eval_batch_size")


def _phase(
  name: str, model: models.ResNet, test: dict[str, float], seconds: float
) -> dict[str, Any]:
  return {
    "phase": name,
    "test_accuracy": test["accuracy"],
    "test_loss": test["loss"],
    "params": models.count_params(model),
    "conv_params": models.conv_params(model),
    "seconds": seconds,
    "eval_seconds": test["seconds"],
  }


def train_and_evaluate(
  config: Config,
  workdir: str | os.PathLike[str] | None,
  *,
  data: input_pipeline.Splits | None = None,
) -> dict[str, Any]:
  """Trains, compresses and fine-tunes; returns (and writes) the results.

  Args:
    config: the configuration (``configs/default.py``).
    workdir: where ``results.json``, ``report.md`` and ``compression.txt``
      go (``None``: nowhere).
    data: the splits (default: loaded as ``config`` says).

  Returns:
    ``config``, ``environment``, ``phases`` (dense, compressed, fine-tuned:
    test accuracy, parameters, block-conv parameters, wall seconds of the
    training or the compression, and of the test evaluation), the
    per-layer ``compression`` report and the training ``history``.
  """
  check_config(config)
  mesh = pipeline.make_data_mesh()
  start = time.perf_counter()
  if data is None:
    data = input_pipeline.load(
      config.dataset,
      num_train=config.num_train,
      data_dir=config.data_dir,
      manual_dir=config.manual_dir,
      download=config.download,
    )
  load_seconds = time.perf_counter() - start
  logger.info(
    "%s: %d training and %d test images (%.1f s to load)",
    config.dataset,
    len(data.train[0]),
    len(data.test[0]),
    load_seconds,
  )
  eval_kw = {"batch_size": config.eval_batch_size, "mesh": mesh, "prefetch": config.prefetch}
  rng = np.random.default_rng(config.seed)

  model = create_model(config.depth, in_channels=data.channels, seed=config.seed)
  start = time.perf_counter()
  dense_history = fit(
    model,
    data,
    config=config,
    mesh=mesh,
    epochs=config.epochs,
    finetune=False,
    rng=rng,
    name=f"ResNet-{config.depth}",
  )
  seconds = time.perf_counter() - start
  phases = [_phase("dense", model, evaluate(model, *data.test, **eval_kw), seconds)]

  start = time.perf_counter()
  small, compression = compress(model, config)
  compress_seconds = time.perf_counter() - start
  logger.info("compressed in %.1f s:\n%s", compress_seconds, compression)
  phases.append(
    _phase(
      "compressed (no fine-tune)", small, evaluate(small, *data.test, **eval_kw), compress_seconds
    )
  )

  finetune_history = []
  if config.finetune_epochs:
    start = time.perf_counter()
    finetune_history = fit(
      small,
      data,
      config=config,
      mesh=mesh,
      epochs=config.finetune_epochs,
      finetune=True,
      rng=rng,
      name="fine-tune",
    )
    seconds = time.perf_counter() - start
    phases.append(_phase("fine-tuned", small, evaluate(small, *data.test, **eval_kw), seconds))
  for p in phases:
    logger.info(
      "%-26s test accuracy %.2f%%  params %s  block convs %s  %.1f s",
      p["phase"],
      p["test_accuracy"],
      f"{p['params']:,}",
      f"{p['conv_params']:,}",
      p["seconds"],
    )

  results = {
    "config": dataclasses.asdict(config),
    "environment": {
      "device": str(jax.devices()[0].device_kind),
      "platform": jax.default_backend(),
      "cpu_count": os.cpu_count(),
      "machine": platform.machine(),
      "jax": jax.__version__,
      "python": platform.python_version(),
    },
    "num_train": len(data.train[0]),
    "num_test": len(data.test[0]),
    "load_seconds": load_seconds,
    "phases": phases,
    "compression": [dataclasses.asdict(r) for r in compression.rows],
    "compression_table": compression.table(),
    "history": {"dense": dense_history, "finetune": finetune_history},
    "paper": report.PAPER,
  }
  if workdir is not None:
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "results.json").write_text(json.dumps(results, indent=2))
    (workdir / "report.md").write_text(report.markdown(results))
    (workdir / "compression.txt").write_text(compression.table() + "\n")
  print(report.markdown(results))
  return results
