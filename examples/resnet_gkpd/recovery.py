"""Recovery after surgery, measured: dense -> GKPD 5x -> BN refit -> distill.

The stages (issue 10, item 4), each with test accuracy and parameters:

1. ``dense``: the ResNet trained on the training images (orbax checkpoint
   after every epoch; a rerun with the same settings resumes).
2. ``weight-only`` and ``data-aware`` GKPD at ``config.compression``: the
   same policy (``models.compression_policy``), the second with each block
   conv's patch covariance on calibration batches from the training set
   (``kfc_jax.recovery.collect_input_covariances`` fed to
   ``KroneckerConv.from_conv(..., input_cov=...)``, or ``kfc_jax.compress(...,
   calibration=...)`` where the library has it).
3. ``+ BN recalibration``: ``kfc_jax.recovery.recalibrate_batchnorm`` on the
   same calibration batches.
4. ``+ distillation``: ``kfc_jax.recovery.distill`` from the dense parent
   (its logits, temperature ``config.temperature``), the same steps and
   batches for both compressed models.

From the repository root::

  python examples/resnet_gkpd/recovery.py --dataset=mnist --depth=8 \\
      --num_train=20000 --epochs=2 --workdir=/tmp/resnet_gkpd_recovery

Writes ``recovery.json`` and ``recovery.md`` in the work directory; every
stage's result is kept there, so a rerun skips finished stages.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
  # Run as a script: make `examples.*` importable from the repository root.
  sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

# pylint: disable=g-import-not-at-top,wrong-import-position
import jax
import numpy as np
from flax import nnx

import kfc_jax
from examples._common import cli, pipeline
from examples.resnet_gkpd import input_pipeline, models, train
from examples.resnet_gkpd.configs import default

# pylint: enable=g-import-not-at-top,wrong-import-position

# Named, not __name__: run as a script this module is __main__, and the
# examples' logging setup shows the "examples" loggers.
logger = logging.getLogger("examples.resnet_gkpd.recovery")

Config = default.Config


# ----------------------------------------------------------------------------
# Dense training, resumable.
# ----------------------------------------------------------------------------


def _dense_settings(config: Config, num_train: int) -> dict[str, Any]:
  """What the dense model depends on (a saved run resumes only if equal)."""
  keys = (
    "dataset",
    "depth",
    "epochs",
    "batch_size",
    "learning_rate",
    "warmup_steps",
    "momentum",
    "weight_decay",
    "augment",
    "seed",
  )
  return {"num_train": num_train, **{k: getattr(config, k) for k in keys}}


def _save(path: Path, tree: Any) -> None:
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top

  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(path.resolve(), jax.device_get(tree), force=True)


def _restore(path: Path, like: Any) -> Any:
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top

  abstract = jax.tree.map(np.asarray, like)
  with ocp.StandardCheckpointer() as checkpointer:
    return checkpointer.restore(path.resolve(), abstract)


def train_dense(
  config: Config, data: input_pipeline.Splits, *, mesh: Any, workdir: Path | None
) -> tuple[models.ResNet, list[dict]]:
  """The dense ResNet, trained ``config.epochs`` epochs (or restored).

  With a ``workdir`` the model and optimizer state are saved after every
  epoch (``workdir/dense``); a rerun with the same settings continues from
  the last saved epoch. Each epoch shuffles with its own seed
  ``(config.seed, epoch)``, so a resumed run sees the same batches.
  """
  model = train.create_model(config.depth, in_channels=data.channels, seed=config.seed)
  steps = pipeline.num_batches(len(data.train[0]), config.batch_size, True)
  optimizer = train.create_optimizer(model, config, config.epochs * steps)
  settings = _dense_settings(config, len(data.train[0]))
  history: list[dict] = []
  directory = None if workdir is None else workdir / "dense"
  if directory is not None and (directory / "progress.json").is_file():
    progress = json.loads((directory / "progress.json").read_text())
    if progress["settings"] == settings:
      state = _restore(
        directory / "state", {"model": nnx.state(model), "optimizer": nnx.state(optimizer)}
      )
      nnx.update(model, state["model"])
      nnx.update(optimizer, state["optimizer"])
      history = progress["history"]
      logger.info("dense: resumed after epoch %d", len(history))
    else:
      logger.info("%s holds a run with other settings; starting over.", directory)
  train.replicate((model, optimizer), mesh)
  for epoch in range(len(history) + 1, config.epochs + 1):
    rng = np.random.default_rng((config.seed, epoch))
    record = train.train_epoch(
      model,
      optimizer,
      *data.train,
      config=config,
      mesh=mesh,
      rng=rng,
      desc=f"ResNet-{config.depth} epoch {epoch}",
    )
    history.append({"epoch": epoch, **record})
    logger.info(
      "dense epoch %d/%d: train loss %.4f accuracy %.2f%% | %.1f s",
      epoch,
      config.epochs,
      record["loss"],
      record["accuracy"],
      record["seconds"],
    )
    if directory is not None:
      _save(directory / "state", {"model": nnx.state(model), "optimizer": nnx.state(optimizer)})
      tmp = directory / "progress.json.tmp"
      tmp.write_text(json.dumps({"settings": settings, "history": history}))
      tmp.replace(directory / "progress.json")
  return model, history


# ----------------------------------------------------------------------------
# Calibration data, compression, output errors.
# ----------------------------------------------------------------------------


def _host_preprocess(images: np.ndarray) -> np.ndarray:
  """``train.preprocess`` on the host (the batches are reused many times)."""
  return images.astype(np.float32) / 127.5 - 1.0


def calibration_batches(config: Config, images: np.ndarray) -> list[np.ndarray]:
  """``config.calibration_batches`` batches of training images, preprocessed.

  Drawn without replacement with ``config.seed``, not augmented: what the
  model sees at test time.
  """
  n = min(config.calibration_batches * config.batch_size, len(images))
  idx = np.random.default_rng((config.seed, 10_000)).choice(len(images), n, replace=False)
  x = _host_preprocess(images[np.sort(idx)])
  return [x[i : i + config.batch_size] for i in range(0, n, config.batch_size)]


def distill_batches(
  config: Config, images: np.ndarray, labels: np.ndarray
) -> list[tuple[np.ndarray, np.ndarray]]:
  """``config.distill_steps`` augmented training batches, fixed by the seed."""
  rng = np.random.default_rng((config.seed, 20_000))
  out = []
  order = rng.permutation(len(images))
  pos = 0
  for _ in range(config.distill_steps):
    if pos + config.batch_size > len(order):
      order, pos = rng.permutation(len(images)), 0
    idx = order[pos : pos + config.batch_size]
    pos += config.batch_size
    x = images[idx]
    if config.augment:
      x = input_pipeline.augment(x, rng, flip=config.dataset == "cifar10")
    out.append((_host_preprocess(x), labels[idx]))
  return out


def compress_gkpd(
  dense: models.ResNet, config: Config, calibration: Sequence[np.ndarray] | None = None
) -> tuple[models.ResNet, Any]:
  """GKPD of the block convs, weight-only or (``calibration``) data-aware.

  The same policy either way (``models.compression_policy``); with
  calibration batches ``kfc_jax.compress`` collects each block conv's patch
  covariance on them and fits (and chooses the split by) the output error.
  """
  policy = models.compression_policy(dense, compression=config.compression, split=config.split)
  if calibration is None:
    return kfc_jax.compress(dense, policy)
  return kfc_jax.compress(dense, policy, calibration=list(calibration))


def _compressed_paths(small: models.ResNet) -> list[str]:
  """The block convs of ``small`` that are Kronecker layers."""
  return [
    p
    for p in models.block_conv_paths(small)
    if isinstance(
      getattr(small.blocks[int(p.split("/")[1])], p.split("/")[2]), kfc_jax.nnx.KroneckerConv
    )
  ]


def same_splits_policy(small: models.ResNet) -> kfc_jax.CompressionPolicy:
  """Rules that rebuild ``small``'s block convs at their splits and ranks.

  Data-aware GKPD under this policy fits each conv at exactly the shapes the
  weight-only search chose (no data-aware search over splits: cheaper, and
  the two differ only in the objective of the fit).
  """
  rules = []
  for path in _compressed_paths(small):
    block, name = path.split("/")[1:]
    terms = getattr(small.blocks[int(block)], name).factors
    if len(terms) != 1:
      raise ValueError(f"{path}: expected one GKPD term, got {len(terms)}.")
    a, b = terms[0]
    rank = a.shape[0] if a.ndim == 5 else 1
    rules.append(
      kfc_jax.LayerRule(
        re.escape(path), a_shape=tuple(a.shape[-4:]), b_shape=tuple(b.shape[-4:]), rank=int(rank)
      )
    )
  return kfc_jax.CompressionPolicy(rules)


def output_errors(
  dense: models.ResNet, small: models.ResNet, covariances: dict[str, np.ndarray]
) -> dict[str, float]:
  """Each block conv's ``||X (K - K_hat)|| / ||X K||`` on calibration data.

  ``X`` holds the dense model's input patches of that conv (through its
  second moment ``C = XᵀX / n``), so this is the error of the layer's
  outputs on the inputs it really sees, the objective of data-aware GKPD.
  """
  out = {}
  for path in _compressed_paths(small):
    cov = covariances[path]
    block, name = path.split("/")[1:]
    k = np.asarray(getattr(dense.blocks[int(block)], name).kernel[...], np.float64)
    k_hat = np.asarray(getattr(small.blocks[int(block)], name).materialize(), np.float64)
    w = k.reshape(-1, k.shape[-1])
    d = w - k_hat.reshape(w.shape)
    out[path] = math.sqrt(max(np.trace(d.T @ cov @ d), 0.0) / np.trace(w.T @ cov @ w))
  return out


def weight_errors(dense: models.ResNet, small: models.ResNet) -> dict[str, float]:
  """Each block conv's ``||K - K_hat||_F / ||K||_F``."""
  out = {}
  for path in _compressed_paths(small):
    block, name = path.split("/")[1:]
    k = np.asarray(getattr(dense.blocks[int(block)], name).kernel[...], np.float64)
    k_hat = np.asarray(getattr(small.blocks[int(block)], name).materialize(), np.float64)
    out[path] = float(np.linalg.norm(k - k_hat) / np.linalg.norm(k))
  return out


# ----------------------------------------------------------------------------
# Recovery.
# ----------------------------------------------------------------------------


def recalibrate(model: models.ResNet, calibration: Sequence[np.ndarray]) -> models.ResNet:
  """A copy with every BatchNorm's statistics refit on ``calibration``."""
  return kfc_jax.recovery.recalibrate_batchnorm(model, list(calibration))


def distill(
  student: models.ResNet,
  teacher: models.ResNet,
  config: Config,
  batches: Sequence[tuple[np.ndarray, np.ndarray]],
) -> tuple[models.ResNet, tuple[float, ...]]:
  """Distillation fine-tuning of a copy of ``student`` from ``teacher``.

  Every parameter trains (factors, BatchNorms, stem, classifier) with the
  training recipe's SGD over ``len(batches)`` steps; the student runs in
  training mode, so its BatchNorm statistics follow the batches.
  """
  tx = train.make_tx(
    config.distill_learning_rate,
    len(batches),
    warmup_steps=config.warmup_steps,
    momentum=config.momentum,
    weight_decay=config.weight_decay,
  )
  result = kfc_jax.recovery.distill(
    student,
    teacher,
    list(batches),
    optimizer=tx,
    temperature=config.distill_temperature,
    label_weight=config.distill_label_weight,
    train="all",
    student_call=lambda m, x: m(x, train=True),
    teacher_call=lambda m, x: m(x, train=False),
  )
  return result.model, result.losses


# ----------------------------------------------------------------------------
# The experiment, stage by stage, resumable.
# ----------------------------------------------------------------------------

VARIANTS = ("weight-only GKPD", "data-aware GKPD")
DATA_AWARE_SPLITS = ("search", "weight-only")


def variants(config: Config) -> tuple[str, str]:
  """The two compressed models' names (they say how data-aware chose)."""
  if config.data_aware_splits == "search":
    return VARIANTS
  return (VARIANTS[0], VARIANTS[1] + " (weight-only splits)")


STEPS = ("", " + BN recalibration", " + distillation")


def _slug(stage: str) -> str:
  return "".join(c if c.isalnum() else "_" for c in stage).strip("_")


class _Stages:
  """The stages' records in ``recovery.json``, their models in orbax."""

  def __init__(self, workdir: Path | None, settings: dict[str, Any]):
    self.workdir = workdir
    self.records: dict[str, dict[str, Any]] = {}
    self.settings = settings
    if workdir is not None and (workdir / "recovery.json").is_file():
      saved = json.loads((workdir / "recovery.json").read_text())
      if saved.get("settings") == settings:
        self.records = {r["stage"]: r for r in saved["stages"]}
      else:
        logger.info("%s/recovery.json has other settings; starting over.", workdir)

  def done(self, stage: str) -> bool:
    return stage in self.records

  def checkpoint(self, stage: str) -> Path | None:
    if self.workdir is None:
      return None
    path = self.workdir / "stages" / _slug(stage)
    return path if self.done(stage) and path.is_dir() else None

  def add(self, record: dict[str, Any], model: nnx.Module | None) -> None:
    self.records[record["stage"]] = record
    logger.info(
      "%-45s test accuracy %.2f%%  params %s",
      record["stage"],
      record["test_accuracy"],
      f"{record['params']:,}",
    )
    if self.workdir is None:
      return
    if model is not None:
      _save(self.workdir / "stages" / _slug(record["stage"]), nnx.state(model))
    tmp = self.workdir / "recovery.json.tmp"
    tmp.write_text(
      json.dumps({"settings": self.settings, "stages": list(self.records.values())}, indent=1)
    )
    tmp.replace(self.workdir / "recovery.json")


def _settings(config: Config, num_train: int) -> dict[str, Any]:
  keys = (
    "compression",
    "split",
    "calibration_batches",
    "distill_steps",
    "distill_learning_rate",
    "distill_temperature",
    "distill_label_weight",
  )
  return {**_dense_settings(config, num_train), **{k: getattr(config, k) for k in keys}}


def check_config(config: Config) -> None:
  """``train.check_config`` and the recovery fields.

  Raises:
    ValueError: naming the bad field.
  """
  train.check_config(config)
  for name in ("calibration_batches", "distill_steps"):
    value = getattr(config, name)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
      raise ValueError(f"{name} must be a positive int; got {value!r}.")
  for name in ("distill_learning_rate", "distill_temperature"):
    if not getattr(config, name) > 0:
      raise ValueError(f"{name} must be > 0; got {getattr(config, name)!r}.")
  if config.data_aware_splits not in DATA_AWARE_SPLITS:
    raise ValueError(
      f"data_aware_splits must be one of {DATA_AWARE_SPLITS}; got {config.data_aware_splits!r}."
    )
  if not 0 <= config.distill_label_weight <= 1:
    raise ValueError(
      f"distill_label_weight must be in [0, 1]; got {config.distill_label_weight!r}."
    )


def run(
  config: Config,
  workdir: str | os.PathLike[str] | None,
  *,
  data: input_pipeline.Splits | None = None,
) -> dict[str, Any]:
  """Dense, then each GKPD variant with BN recalibration and distillation.

  Args:
    config: the configuration (``configs/default.py``).
    workdir: where the checkpoints, ``recovery.json`` and ``recovery.md``
      go (``None``: nowhere, nothing resumed).
    data: the splits (default: loaded as ``config`` says).

  Returns:
    ``{"settings", "stages"}``: per stage its test accuracy and loss,
    parameters (model and block convs), wall seconds and, for the
    compressed models, each block conv's weight and output error.
  """
  check_config(config)
  workdir = None if workdir is None else Path(workdir)
  if workdir is not None:
    workdir.mkdir(parents=True, exist_ok=True)
  mesh = pipeline.make_data_mesh()
  if data is None:
    data = input_pipeline.load(
      config.dataset,
      num_train=config.num_train,
      data_dir=config.data_dir,
      manual_dir=config.manual_dir,
      download=config.download,
    )
  stages = _Stages(workdir, _settings(config, len(data.train[0])))

  def record(stage, model, seconds, **extra):
    test = train.evaluate(
      model, *data.test, batch_size=config.eval_batch_size, mesh=mesh, prefetch=config.prefetch
    )
    return {
      "stage": stage,
      "test_accuracy": test["accuracy"],
      "test_loss": test["loss"],
      "params": models.count_params(model),
      "conv_params": models.conv_params(model),
      "seconds": seconds,
      "eval_seconds": test["seconds"],
      **extra,
    }

  start = time.perf_counter()
  dense, history = train_dense(config, data, mesh=mesh, workdir=workdir)
  if not stages.done("dense"):
    stages.add(record("dense", dense, time.perf_counter() - start, history=history), None)
  calibration = calibration_batches(config, data.train[0])
  covariances = None
  batches = None
  for variant in variants(config):
    names = [variant + s for s in STEPS]
    if all(stages.done(n) for n in names):
      continue
    start = time.perf_counter()
    if variant == VARIANTS[0] or config.data_aware_splits == "search":
      small, report = compress_gkpd(dense, config, None if variant == VARIANTS[0] else calibration)
    else:
      weight_only, _ = compress_gkpd(dense, config)
      small, report = kfc_jax.compress(
        dense, same_splits_policy(weight_only), calibration=calibration
      )
    seconds = time.perf_counter() - start
    logger.info("%s in %.1f s:\n%s", variant, seconds, report)
    if not stages.done(names[0]):
      if covariances is None:
        covariances = kfc_jax.recovery.collect_input_covariances(
          dense, calibration, models.block_conv_paths(dense)
        )
      stages.add(
        record(
          names[0],
          small,
          seconds,
          weight_error=weight_errors(dense, small),
          output_error=output_errors(dense, small, covariances),
          report=report.table(),
        ),
        small,
      )
    latest = max((i for i, n in enumerate(names) if stages.checkpoint(n)), default=None)
    if latest is not None:
      nnx.update(small, _restore(stages.checkpoint(names[latest]), nnx.state(small)))
    if not stages.done(names[1]):
      start = time.perf_counter()
      small = recalibrate(small, calibration)
      stages.add(record(names[1], small, time.perf_counter() - start), small)
    if not stages.done(names[2]):
      if batches is None:
        batches = distill_batches(config, *data.train)
      start = time.perf_counter()
      small, losses = distill(small, dense, config, batches)
      stages.add(
        record(
          names[2],
          small,
          time.perf_counter() - start,
          distill_loss_first=losses[0],
          distill_loss_last=losses[-1],
        ),
        small,
      )
  results = {
    "settings": stages.settings,
    "stages": [
      stages.records[n] for n in ["dense"] + [v + s for v in variants(config) for s in STEPS]
    ],
  }
  if workdir is not None:
    (workdir / "recovery.md").write_text(markdown(results))
  return results


def markdown(results: dict[str, Any]) -> str:
  """The stages as a Markdown table (accuracy gap to the dense parent)."""
  lines = [
    "| stage | test accuracy % | vs dense (points) | params | "
    "block-conv params | mean output error | seconds |",
    "|---|---|---|---|---|---|---|",
  ]
  dense = results["stages"][0]
  for r in results["stages"]:
    ratio = dense["conv_params"] / r["conv_params"]
    errors = r.get("output_error")
    err = f"{np.mean(list(errors.values())):.3f}" if errors else ""
    lines.append(
      f"| {r['stage']} | {r['test_accuracy']:.2f} | "
      f"{r['test_accuracy'] - dense['test_accuracy']:+.2f} | "
      f"{r['params']:,} | {r['conv_params']:,} ({ratio:.2f}x) | {err} | "
      f"{r['seconds']:.1f} |"
    )
  return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------
# Command line.
# ----------------------------------------------------------------------------

FIELDS = (
  "dataset",
  "depth",
  "num_train",
  "epochs",
  "batch_size",
  "learning_rate",
  "compression",
  "split",
  "seed",
  "data_dir",
  "manual_dir",
  "calibration_batches",
  "distill_steps",
  "distill_learning_rate",
  "distill_temperature",
  "distill_label_weight",
  "data_aware_splits",
)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
  """The command line."""
  parser = cli.parser(
    "Dense ResNet -> GKPD (weight-only, data-aware) -> BN recalibration -> "
    "distillation, with test accuracy at each stage.",
    "checkpoints, recovery.json and recovery.md (reruns resume here)",
    config_help="'default' or a path to a config file",
  )
  parser.add_argument("--dataset", choices=input_pipeline.DATASETS)
  parser.add_argument("--depth", type=int, help="6n+2: 8, 20, 32, ...")
  parser.add_argument("--num_train", type=int, help="train on the first N training images (0: all)")
  parser.add_argument("--epochs", type=int, help="dense training epochs")
  parser.add_argument("--batch_size", type=int)
  parser.add_argument("--learning_rate", type=float)
  parser.add_argument("--compression", type=float)
  parser.add_argument("--split", choices=train.SPLITS)
  parser.add_argument(
    "--calibration_batches", type=int, help="training batches for covariances and BN stats"
  )
  parser.add_argument("--distill_steps", type=int)
  parser.add_argument("--distill_learning_rate", type=float)
  parser.add_argument("--distill_temperature", type=float)
  parser.add_argument("--distill_label_weight", type=float)
  parser.add_argument(
    "--data_aware_splits",
    choices=DATA_AWARE_SPLITS,
    help="data-aware GKPD: search splits by output error, or fit at the weight-only splits",
  )
  parser.add_argument("--no_augment", action="store_true")
  parser.add_argument("--seed", type=int)
  cli.add_data_flags(parser, "the dataset's original files", "the dataset")
  parser.add_argument("--no_progress", action="store_true", help="no progress bar")
  return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
  """Runs the stages; returns the exit status."""

  def adjust(changes):
    if changes.get("num_train") == 0:
      changes["num_train"] = None

  def experiment(config, workdir):
    results = run(config, workdir)
    print(markdown(results))
    return results

  return cli.run(
    parse_args(argv),
    example="resnet_gkpd",
    fields=FIELDS,
    check=check_config,
    experiment=experiment,
    adjust=adjust,
  )


if __name__ == "__main__":
  sys.exit(main())
