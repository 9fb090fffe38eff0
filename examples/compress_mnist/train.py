"""Compress a trained MNIST CNN's FC layer: KFC (NKP), low rank (SVD), from scratch.

The library side of the example (``main.py`` is the command line). It reads
top to bottom: the settings check, the baseline (the MNIST example's CNN,
loaded from its orbax checkpoint or trained here with the shared loop), the
fine-tunes (the same number of steps for every method; with
``finetune="fc"``/``"head"`` the conv stack is frozen and its features are
cached, see ``head.py``), one method on one budget (:func:`run_one`), and
:func:`run_sweep`: every seed x budget x method, reported by ``report.py``.
The methods and budgets are ``models.py``'s.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from flax import nnx
from jax.sharding import Mesh

from examples._common import configs, loop, mnist_data, pipeline
from examples.compress_mnist import head, models, report
from examples.compress_mnist.configs import default

logger = logging.getLogger(__name__)

Config = default.Config
METHODS = default.METHODS
FINETUNE_MODES = default.FINETUNE_MODES


def check_config(config: Config) -> list[models.Budget]:
  """Validates ``config`` before any data is loaded; returns its budgets."""
  if not config.seeds or not config.kfc_ranks or not config.methods:
    raise ValueError(
      "config.seeds, config.kfc_ranks and config.methods must be"
      f" non-empty; got {config.seeds!r}, {config.kfc_ranks!r},"
      f" {config.methods!r}."
    )
  unknown = [m for m in config.methods if m not in METHODS]
  if unknown:
    raise ValueError(f"unknown methods {unknown}; use some of {METHODS}.")
  if config.finetune not in FINETUNE_MODES:
    raise ValueError(f"config.finetune must be one of {FINETUNE_MODES}; got {config.finetune!r}.")
  if config.lr_schedule not in loop.LR_SCHEDULES:
    raise ValueError(
      f"config.lr_schedule must be one of {loop.LR_SCHEDULES}; got {config.lr_schedule!r}."
    )
  if config.finetune_epochs < 0:
    raise ValueError(f"config.finetune_epochs must be >= 0; got {config.finetune_epochs}.")
  if config.baseline_checkpoint is None and config.baseline_epochs < 1:
    raise ValueError(
      f"without baseline_checkpoint, baseline_epochs must be >= 1; got {config.baseline_epochs}."
    )
  try:
    budgets = models.matched_budgets(config)
    full = models.kfc_full_rank(config)
  except ValueError as e:
    raise ValueError(
      f"bad KFC term ({config.formulation}, {config.out_factors}, ranks {config.kfc_ranks}): {e}"
    ) from e
  too_big = [r for r in config.kfc_ranks if r < 1 or (full is not None and r > full)]
  if too_big:
    raise ValueError(
      f"KFC ranks must be in [1, {full}] for the term"
      f" ({config.formulation}, {config.out_factors}); got"
      f" {too_big}."
    )
  if config.baseline_checkpoint is not None:
    for seed in config.seeds:  # Fail before loading data or compiling.
      models.checkpoint_path(config.baseline_checkpoint, seed)
  return budgets


# ----------------------------------------------------------------------------
# The baseline.
# ----------------------------------------------------------------------------


def baseline_model(
  seed: int, data: mnist_data.MnistSplits, *, config: Config, mesh: Mesh, workdir: Path
) -> tuple[nnx.Module, dict[str, Any]]:
  """Loads (or trains, as the MNIST example does) seed's Baseline.

  Returns:
    The model and a record: ``checkpoint``, ``trained_here`` and, when
    trained here, ``train_seconds``.
  """
  if config.baseline_checkpoint is not None:
    path = models.checkpoint_path(config.baseline_checkpoint, seed)
    model = models.restore_baseline(path, seed=seed, dropout_rate=config.dropout_rate)
    return model, {"checkpoint": str(path), "trained_here": False}
  train_config = configs.TrainConfig(
    variants=("Baseline",),
    seeds=(seed,),
    epochs=config.baseline_epochs,
    batch_size=config.batch_size,
    eval_batch_size=config.eval_batch_size,
    learning_rate=config.baseline_learning_rate,
    lr_schedule="cosine",
    weight_decay=config.weight_decay,
    dropout_rate=config.dropout_rate,
    prefetch=config.prefetch,
    progress=config.progress,
    log_every=config.log_every,
  )
  start = time.perf_counter()
  model = models.create_baseline(seed=seed, dropout_rate=config.dropout_rate)
  steps = pipeline.num_batches(len(data.train[0]), config.batch_size, True)
  optimizer = loop.create_optimizer(model, train_config, config.baseline_epochs * steps)
  pipeline.replicate((model, optimizer), mesh)
  own = workdir / "baseline"
  record = loop.fit(
    model,
    optimizer,
    train=data.train,
    validation=data.validation,
    test=data.test,
    config=train_config,
    mesh=mesh,
    seed=seed,
    name=f"Baseline seed {seed}",
    preprocess=head.preprocess,
    best_dir=own / "checkpoints" / "Baseline" / f"seed_{seed}",
    resume_dir=own / "resume" / "Baseline" / f"seed_{seed}",
  )
  seconds = time.perf_counter() - start
  model = models.restore_baseline(record["checkpoint"], seed=seed, dropout_rate=config.dropout_rate)
  return model, {"checkpoint": record["checkpoint"], "trained_here": True, "train_seconds": seconds}


# ----------------------------------------------------------------------------
# Fine-tuning and one method on one budget.
# ----------------------------------------------------------------------------


def finetune(
  model: nnx.Module,
  *,
  features: Mapping[str, np.ndarray],
  labels: Mapping[str, np.ndarray],
  data: mnist_data.MnistSplits,
  config: Config,
  seed: int,
  mesh: Mesh,
  name: str,
) -> dict[str, Any]:
  """Fine-tunes as ``config.finetune`` says: the head on cached features, or
  every parameter on the images (the shared loop, best validation epoch).

  Returns:
    ``best_epoch``, ``best_val_error``, ``test_error``, ``test_loss``,
    ``steps``, ``history`` and ``seconds``.
  """
  if config.finetune != "all":
    return head.finetune_head(
      model, features, labels, config=config, seed=seed, wrt=models.trainable(config.finetune)
    )
  start = time.perf_counter()
  steps = len(data.train[0]) // config.batch_size
  optimizer = loop.create_optimizer(model, config, config.finetune_epochs * steps)
  pipeline.replicate((model, optimizer), mesh)
  fit_config = configs.TrainConfig(
    variants=(name,),
    epochs=config.finetune_epochs,
    batch_size=config.batch_size,
    eval_batch_size=config.eval_batch_size,
    prefetch=config.prefetch,
    progress=config.progress,
    log_every=config.log_every,
  )
  r = loop.fit(
    model,
    optimizer,
    train=data.train,
    validation=data.validation,
    test=data.test,
    config=fit_config,
    mesh=mesh,
    seed=seed,
    name=name,
    preprocess=head.preprocess,
  )
  return {
    "best_epoch": r["best_epoch"],
    "best_val_error": r["best_val_error"],
    "test_error": r["test_error"],
    "test_loss": r["test_loss"],
    "steps": config.finetune_epochs * steps,
    "history": r["history"],
    "seconds": time.perf_counter() - start,
  }


def run_one(
  method: str,
  budget: models.Budget,
  baseline: nnx.Module,
  *,
  features: Mapping[str, np.ndarray],
  labels: Mapping[str, np.ndarray],
  data: mnist_data.MnistSplits,
  config: Config,
  seed: int,
  mesh: Mesh,
) -> dict[str, Any]:
  """Compresses, evaluates, fine-tunes and tests one method on one budget."""
  model, compression = models.build_compressed(method, budget, baseline, config=config, seed=seed)
  layer, weights = models.fc_params(model)
  evaluate = functools.partial(head.evaluate_head, model, batch_size=config.eval_batch_size)
  before = {s: evaluate(features[s], labels[s]) for s in ("validation", "test")}
  name = f"seed {seed} {method} r={budget.kfc_rank}/k={budget.low_rank}"
  tuned = finetune(
    model,
    features=features,
    labels=labels,
    data=data,
    config=config,
    seed=seed,
    mesh=mesh,
    name=name,
  )
  reduction = 100.0 * (1 - layer / models.DENSE_FC_PARAMS)
  logger.info(
    "%s: %d FC params (%.1f%% fewer), test error %.2f%% -> %.2f%% (best epoch %d), %.1f s",
    name,
    layer,
    reduction,
    before["test"]["error"],
    tuned["test_error"],
    tuned["best_epoch"],
    tuned["seconds"],
  )
  return {
    "method": method,
    "seed": seed,
    "kfc_rank": budget.kfc_rank,
    "low_rank": budget.low_rank,
    "rank": budget.low_rank if method == "low_rank_svd" else budget.kfc_rank,
    "fc_params": layer,
    "fc_weight_params": weights,
    "fc_reduction_pct": reduction,
    "model_params": models.count_params(model),
    "relative_error": (None if compression is None else compression.rows[0].relative_error),
    "before_val_error": before["validation"]["error"],
    "before_test_error": before["test"]["error"],
    **tuned,
  }


# ----------------------------------------------------------------------------
# The sweep.
# ----------------------------------------------------------------------------


def run_sweep(
  config: Config, workdir: str | os.PathLike[str], *, data: mnist_data.MnistSplits | None = None
) -> dict[str, Any]:
  """Every seed x budget x method of ``config``; writes and prints the report.

  Args:
    config: the configuration (``configs/default.py``).
    workdir: output directory (``results.json``, ``table.md``,
      ``test_error_vs_fc_params.png``; own baselines under ``baseline/``).
    data: preloaded splits (tests); ``None`` loads MNIST through TFDS.

  Returns:
    The contents of ``results.json``.
  """
  start = time.perf_counter()
  workdir = Path(workdir)
  budgets = check_config(config)
  mesh = pipeline.make_data_mesh()
  if data is None:
    data = mnist_data.load_mnist(
      data_dir=config.data_dir,
      manual_dir=config.manual_dir,
      download=config.download,
      num_validation=config.num_validation,
    )
  labels = {"train": data.train[1], "validation": data.validation[1], "test": data.test[1]}
  logger.info(
    "budgets (KFC rank, low rank, weights KFC/low rank): %s",
    [(b.kfc_rank, b.low_rank, b.kfc_params, b.low_rank_params) for b in budgets],
  )
  runs, baselines = [], []
  for seed in config.seeds:
    baseline, info = baseline_model(seed, data, config=config, mesh=mesh, workdir=workdir)
    t = time.perf_counter()
    features = {
      s: head.compute_features(baseline, getattr(data, s)[0], config.eval_batch_size)
      for s in ("train", "validation", "test")
    }
    evals = {
      s: head.evaluate_head(baseline, features[s], labels[s], config.eval_batch_size)
      for s in ("validation", "test")
    }
    record = {
      "seed": seed,
      **info,
      "val_error": evals["validation"]["error"],
      "test_error": evals["test"]["error"],
      "feature_seconds": time.perf_counter() - t,
    }
    logger.info(
      "seed %d: baseline test error %.2f%% (%s)", seed, evals["test"]["error"], info["checkpoint"]
    )
    if config.finetune_baseline:
      record["finetuned"] = tuned = finetune(
        nnx.clone(baseline),
        features=features,
        labels=labels,
        data=data,
        config=config,
        seed=seed,
        mesh=mesh,
        name=f"seed {seed} dense",
      )
      logger.info(
        "seed %d: dense baseline fine-tuned the same way: test error %.2f%% (best epoch %d)",
        seed,
        tuned["test_error"],
        tuned["best_epoch"],
      )
    baselines.append(record)
    for budget in budgets:
      for method in config.methods:
        runs.append(
          run_one(
            method,
            budget,
            baseline,
            features=features,
            labels=labels,
            data=data,
            config=config,
            seed=seed,
            mesh=mesh,
          )
        )
        report.write_reports(workdir, config, runs, baselines, budgets, final=False)
  results = report.write_reports(
    workdir, config, runs, baselines, budgets, wall_s=time.perf_counter() - start
  )
  print(report.tables(results["summary"]))
  print(
    f"\nWrote {workdir / 'results.json'}, {workdir / 'table.md'} and "
    f"{workdir / 'test_error_vs_fc_params.png'}."
  )
  return results
