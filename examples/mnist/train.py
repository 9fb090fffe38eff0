"""Training and evaluation of the KFC paper's MNIST variants.

The library side of the example (``main.py`` is the command line):

* :func:`create_model`, :func:`create_optimizer` -- the CNN of ``models.py``
  and Adam with coupled L2 weight decay,
  ``optax.chain(optax.add_decayed_weights(1e-4), optax.adam(lr))``, which is
  what the paper's Caffe solver did (``weight_decay`` adds ``1e-4 * w`` to the
  gradient before the Adam update; not AdamW's decoupled decay);
* :func:`train_step`, :func:`eval_step` -- ``nnx.jit`` steps; the batch is
  sharded over the local devices and the state replicated (``_common/
  pipeline.py``), so the same code is data-parallel on several devices;
* :func:`train_and_evaluate` -- every variant and seed of a config: train,
  keep the parameters of the epoch with the lowest validation error, report
  their test error, write ``results.json``, ``table.md`` and
  ``test_error_vs_params.png`` into the work directory and print the
  paper-style table.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import json
import logging
import os
import platform
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import tqdm
from flax import nnx
from jax.sharding import Mesh

from examples._common import pipeline
from examples._common import reporting
from examples.mnist import input_pipeline
from examples.mnist import models
from examples.mnist import reference
from examples.mnist.configs import default

logger = logging.getLogger(__name__)

Config = default.Config
Metrics = dict[str, jax.Array]

_MAX_IN_FLIGHT = 2


# ----------------------------------------------------------------------------
# Model and optimizer.
# ----------------------------------------------------------------------------


def create_model(variant: str, *, seed: int = 0,
                 dropout_rate: float = 0.5) -> models.MnistCNN:
  """The paper's CNN with the FC layer of ``variant``.

  Args:
    variant: see ``models.VARIANTS``, e.g. ``"KFC-II"``.
    seed: initialisation and dropout randomness (independent streams).
    dropout_rate: dropout on the FC/KFC layer.

  Returns:
    The model.

  Raises:
    ValueError: unknown ``variant``.
  """
  params_key, dropout_key = jax.random.split(jax.random.key(seed))
  return models.MnistCNN(variant, dropout_rate=dropout_rate,
                         rngs=nnx.Rngs(params=params_key, dropout=dropout_key))


LR_SCHEDULES = ("constant", "cosine")


@functools.cache
def make_tx(learning_rate: float, weight_decay: float,
            schedule: str = "constant",
            total_steps: int | None = None) -> optax.GradientTransformation:
  """Adam with coupled L2 weight decay on every parameter (Caffe-style).

  Cached: ``nnx.jit`` keys its cache on the optimizer's static structure,
  which includes the transformation object, so one object per setting lets
  every run after the first reuse the compiled steps.

  Args:
    learning_rate: the (peak) step size.
    weight_decay: added as ``weight_decay * w`` to the gradient before Adam.
    schedule: ``"constant"``, or ``"cosine"`` decay to zero over
      ``total_steps``.
    total_steps: the run's length in steps (``"cosine"`` only).

  Returns:
    The optax transformation.
  """
  if schedule == "cosine":
    lr = optax.cosine_decay_schedule(learning_rate, total_steps)
  elif schedule == "constant":
    lr = learning_rate
  else:
    raise ValueError(f"Unknown lr_schedule {schedule!r}; use one of "
                     f"{LR_SCHEDULES}.")
  return optax.chain(optax.add_decayed_weights(weight_decay), optax.adam(lr))


def create_optimizer(model: nnx.Module, config: Config,
                     total_steps: int | None = None) -> nnx.Optimizer:
  """An ``nnx.Optimizer`` over the model's ``nnx.Param`` s (see make_tx)."""
  if config.lr_schedule == "constant":
    total_steps = None  # Irrelevant; keeps one cached transformation.
  tx = make_tx(config.learning_rate, config.weight_decay, config.lr_schedule,
               total_steps)
  return nnx.Optimizer(model, tx, wrt=nnx.Param)


def param_counts(variant: str) -> dict[str, int]:
  """Parameter counts of ``variant``, computed abstractly (no FLOPs, no memory).

  Returns:
    ``layer`` (the FC/KFC layer), ``layer_weights`` (the same without its
    bias) and ``model``.
  """
  model = nnx.eval_shape(lambda: create_model(variant))
  return {"layer": models.count_params(model.fc),
          "layer_weights": models.count_params(model.fc, biases=False),
          "model": models.count_params(model)}


# ----------------------------------------------------------------------------
# Steps.
# ----------------------------------------------------------------------------


def preprocess(images: jax.Array) -> jax.Array:
  """``uint8`` images to ``float32`` in [0, 1] (on device: 4x less to copy)."""
  return images.astype(jnp.float32) / 255.0


@nnx.jit
def train_step(model: models.MnistCNN, optimizer: nnx.Optimizer,
               batch: Mapping[str, jax.Array]) -> Metrics:
  """One Adam step on a batch; updates ``model`` and ``optimizer`` in place.

  Args:
    model: the network (dropout on).
    optimizer: its ``nnx.Optimizer``.
    batch: ``image`` uint8 ``[B, 28, 28, 1]`` and ``label`` int ``[B]``,
      typically sharded over the ``"data"`` mesh axis.

  Returns:
    Sums over the batch: ``loss`` (cross-entropy), ``correct`` and ``count``.
  """
  images = preprocess(batch["image"])
  labels = batch["label"]

  def loss_fn(model):
    logits = model(images, train=True)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    return losses.mean(), (losses, logits)

  grad_fn = nnx.value_and_grad(loss_fn, has_aux=True)
  (_, (losses, logits)), grads = grad_fn(model)
  optimizer.update(model, grads)
  return {"loss": losses.sum(),
          "correct": (logits.argmax(-1) == labels).sum().astype(jnp.float32),
          "count": jnp.asarray(labels.shape[0], jnp.float32)}


@nnx.jit
def eval_step(model: models.MnistCNN,
              batch: Mapping[str, jax.Array]) -> Metrics:
  """Sums of loss, correct predictions and examples over a masked batch.

  Args:
    model: the network (dropout off).
    batch: ``image``, ``label`` and ``mask`` (1 for real examples, 0 for the
      padding of a last, short batch).

  Returns:
    ``loss``, ``correct`` and ``count`` summed over the real examples.
  """
  logits = model(preprocess(batch["image"]), train=False)
  labels, mask = batch["label"], batch["mask"]
  losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  correct = (logits.argmax(-1) == labels).astype(jnp.float32)
  return {"loss": (losses * mask).sum(), "correct": (correct * mask).sum(),
          "count": mask.sum()}


# ----------------------------------------------------------------------------
# Loops.
# ----------------------------------------------------------------------------


replicate = pipeline.replicate  # Part of this module's train-loop API.


def _summarise(sums: Mapping[str, Any]) -> dict[str, float]:
  count = float(sums["count"])
  return {"loss": float(sums["loss"]) / count,
          "error": 100.0 * (1.0 - float(sums["correct"]) / count),
          "count": count}


def evaluate(model: models.MnistCNN, images: np.ndarray, labels: np.ndarray,
             *, batch_size: int, mesh: Mesh, prefetch: int = 2
             ) -> dict[str, float]:
  """Mean loss and error (%) of ``model`` on every given example, once each."""
  stream = pipeline.batches({"image": images, "label": labels}, batch_size,
                            drop_remainder=False)
  totals = None
  for batch in pipeline.prefetch_to_mesh(
      stream, pipeline.batch_sharding(mesh), prefetch):
    sums = eval_step(model, batch)
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
  return _summarise(jax.device_get(totals))


def train_epoch(model: models.MnistCNN, optimizer: nnx.Optimizer,
                images: np.ndarray, labels: np.ndarray, *, config: Config,
                mesh: Mesh, rng: np.random.Generator, desc: str = ""
                ) -> dict[str, float]:
  """One shuffled pass over the training set (last short batch dropped).

  Returns:
    ``loss`` and ``error`` (%) averaged over the epoch's steps (with dropout),
    ``count`` and ``seconds`` (wall time of the pass, compilation included on
    the first call).
  """
  steps = pipeline.num_batches(len(images), config.batch_size, True)
  if not steps:
    raise ValueError(f"the training set ({len(images)} examples) is smaller "
                     f"than one batch ({config.batch_size}).")
  stream = pipeline.prefetch_to_mesh(
      pipeline.batches({"image": images, "label": labels}, config.batch_size,
                       rng=rng),
      pipeline.batch_sharding(mesh), config.prefetch)
  totals = {"loss": 0.0, "correct": 0.0, "count": 0.0}
  in_flight = collections.deque()

  def collect(sums):
    for k, v in jax.device_get(sums).items():
      totals[k] += float(v)

  start = time.perf_counter()
  with tqdm.tqdm(total=steps, desc=desc, disable=not config.progress,
                 leave=False, dynamic_ncols=True) as bar:
    for step, batch in enumerate(stream, 1):
      in_flight.append(train_step(model, optimizer, batch))
      # Dispatch runs ahead of the device by at most `_MAX_IN_FLIGHT` steps:
      # enough to keep it busy, few enough that the bar shows real progress.
      while len(in_flight) > _MAX_IN_FLIGHT:
        collect(in_flight.popleft())
      if step % config.log_every == 0 and totals["count"]:
        running = _summarise(totals)
        bar.set_postfix(loss=f"{running['loss']:.4f}",
                        acc=f"{100 - running['error']:.2f}%")
      bar.update(1)
    while in_flight:
      collect(in_flight.popleft())
  seconds = time.perf_counter() - start
  return {**_summarise(totals), "seconds": seconds}


def _reduction(counts: Mapping[str, int], baseline: Mapping[str, int],
               key: str) -> float:
  return 100.0 * (1.0 - counts[key] / baseline[key])


def train_one(variant: str, seed: int, data: input_pipeline.MnistSplits, *,
              config: Config, mesh: Mesh, workdir: Path | None,
              baseline: Mapping[str, int]) -> dict[str, Any]:
  """Trains one variant with one seed; tests its best-validation parameters.

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
  model = create_model(variant, seed=seed, dropout_rate=config.dropout_rate)
  steps_per_epoch = pipeline.num_batches(len(data.train[0]), config.batch_size,
                                         True)
  optimizer = create_optimizer(model, config, config.epochs * steps_per_epoch)
  replicate((model, optimizer), mesh)
  counts = param_counts(variant)
  rng = np.random.default_rng(seed)
  eval_kw = {"batch_size": config.eval_batch_size, "mesh": mesh,
             "prefetch": config.prefetch}

  checkpointer = None
  ckpt_dir = None
  if config.save_checkpoints and workdir is not None:
    import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
    checkpointer = ocp.StandardCheckpointer()
    ckpt_dir = (workdir / "checkpoints" / variant / f"seed_{seed}").resolve()

  history = []
  best_state, best_epoch, best_val = None, 0, float("inf")
  for epoch in range(1, config.epochs + 1):
    train = train_epoch(model, optimizer, *data.train, config=config,
                        mesh=mesh, rng=rng,
                        desc=f"{variant} seed {seed} epoch {epoch}")
    val = evaluate(model, *data.validation, **eval_kw)
    history.append({"epoch": epoch, "train_loss": train["loss"],
                    "train_error": train["error"], "val_loss": val["loss"],
                    "val_error": val["error"], "seconds": train["seconds"]})
    improved = val["error"] < best_val
    if improved:
      best_val, best_epoch = val["error"], epoch
      # A host copy: the next epochs overwrite the device arrays.
      best_state = jax.device_get(nnx.state(model, nnx.Param))
      if checkpointer is not None:
        checkpointer.save(ckpt_dir, best_state, force=True)
    logger.info(
        "%s seed %d epoch %d/%d: train loss %.4f error %.2f%% | val loss %.4f "
        "error %.2f%%%s | %.1f s", variant, seed, epoch, config.epochs,
        train["loss"], train["error"], val["loss"], val["error"],
        " (best)" if improved else "", train["seconds"])

  nnx.update(model, jax.device_put(best_state,
                                   pipeline.replicated_sharding(mesh)))
  test = evaluate(model, *data.test, **eval_kw)
  if checkpointer is not None:
    checkpointer.wait_until_finished()
    checkpointer.close()
  epoch_seconds = [h["seconds"] for h in history]
  # The first epoch includes compilation; the later ones are the steady state.
  steady = epoch_seconds[1:] or epoch_seconds
  logger.info("%s seed %d: best epoch %d (val %.2f%%), test error %.2f%%",
              variant, seed, best_epoch, best_val, test["error"])
  return {
      "variant": variant,
      "seed": seed,
      "layer_params": counts["layer"],
      "layer_weight_params": counts["layer_weights"],
      "model_params": counts["model"],
      "layer_reduction_pct": _reduction(counts, baseline, "layer"),
      "layer_weight_reduction_pct": _reduction(counts, baseline,
                                               "layer_weights"),
      "model_reduction_pct": _reduction(counts, baseline, "model"),
      "best_epoch": best_epoch,
      "best_val_error": best_val,
      "test_error": test["error"],
      "test_loss": test["loss"],
      "train_time_per_epoch_s": float(np.median(steady)),
      "first_epoch_s": epoch_seconds[0],
      "checkpoint": str(ckpt_dir) if ckpt_dir is not None else None,
      "history": history,
  }


# ----------------------------------------------------------------------------
# Reports.
# ----------------------------------------------------------------------------


def summarise_runs(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
  """One row per variant (in first-seen order): means and spreads over seeds."""
  by_variant: dict[str, list[dict[str, Any]]] = {}
  for r in runs:
    by_variant.setdefault(r["variant"], []).append(r)
  rows = []
  for variant, rs in by_variant.items():
    errors = [r["test_error"] for r in rs]
    mean, std = reporting.mean_std(errors)
    rows.append({
        "variant": variant,
        "seeds": [r["seed"] for r in rs],
        **{k: rs[0][k] for k in (
            "layer_params", "layer_weight_params", "model_params",
            "layer_reduction_pct", "layer_weight_reduction_pct",
            "model_reduction_pct")},
        "test_errors": errors,
        "test_error_mean": mean,
        "test_error_std": std,
        "best_epochs": [r["best_epoch"] for r in rs],
        "train_time_per_epoch_s": float(
            np.mean([r["train_time_per_epoch_s"] for r in rs])),
    })
  return rows


def paper_table(summary: list[dict[str, Any]]) -> str:
  """The paper's MNIST table for our runs, the paper's numbers beside them."""
  headers = ["Variant", "Layer params (red.)", "w/o bias (red.)",
             "Model params (red.)",
             "Test error % (mean ± std)", "Seeds", "Best epochs",
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
        err,
        str(len(s["seeds"])),
        ",".join(map(str, s["best_epochs"])),
        f"{s['train_time_per_epoch_s']:.1f}",
        reporting.format_with_reduction(paper.get("layer_params"),
                                        paper.get("layer_reduction")),
        (f"{paper['test_error']:.2f}" if "test_error" in paper else "—"),
    ])
  return reporting.format_table(headers, rows)


def environment() -> dict[str, Any]:
  """Versions and hardware, for the record."""
  devices = jax.local_devices()
  return {
      "jax": jax.__version__, "flax": flax.__version__,
      "optax": optax.__version__, "python": platform.python_version(),
      "platform": devices[0].platform, "device_kind": devices[0].device_kind,
      "num_devices": len(devices), "cpu_count": os.cpu_count(),
      "machine": platform.machine(), "processor": platform.processor(),
  }


def write_reports(workdir: Path, config: Config, runs: list[dict[str, Any]],
                  *, plot: bool = True) -> dict[str, Any]:
  """Writes ``results.json`` (and ``table.md`` and the plot when ``plot``)."""
  summary = summarise_runs(runs)
  results = {"config": dataclasses.asdict(config),
             "environment": environment(),
             "paper": reference.PAPER,
             "summary": summary,
             "runs": runs}
  workdir.mkdir(parents=True, exist_ok=True)
  tmp = workdir / "results.json.tmp"
  tmp.write_text(json.dumps(results, indent=2))
  tmp.replace(workdir / "results.json")  # Never a half-written file.
  if plot:
    (workdir / "table.md").write_text(paper_table(summary) + "\n")
    reporting.plot_error_vs_params(
        workdir / "test_error_vs_params.png", summary,
        reference.paper_points(),
        title=f"MNIST: test error of the best-validation epoch "
        f"({config.epochs} epochs)")
  return results


def check_config(config: Config, mesh: Mesh | None = None
                 ) -> dict[str, dict[str, int]]:
  """Validates ``config`` before any data is loaded or step compiled.

  Every variant is built abstractly (``nnx.eval_shape``), so a bad name or a
  missing library layer fails at once, not hours into a run.

  Args:
    config: the configuration.
    mesh: the data-parallel mesh (default: all local devices).

  Returns:
    variant -> its :func:`param_counts`.

  Raises:
    ValueError: empty variants/seeds, ``epochs < 1``, an unknown variant or
      learning-rate schedule, or a batch size the devices cannot split
      evenly.
  """
  if not config.variants or not config.seeds:
    raise ValueError("config.variants and config.seeds must be non-empty; got "
                     f"{config.variants!r} and {config.seeds!r}.")
  if config.epochs < 1:
    raise ValueError(f"config.epochs must be >= 1; got {config.epochs}.")
  if config.lr_schedule not in LR_SCHEDULES:
    raise ValueError(f"config.lr_schedule must be one of {LR_SCHEDULES}; got "
                     f"{config.lr_schedule!r}.")
  mesh = mesh if mesh is not None else pipeline.make_data_mesh()
  pipeline.check_batch_size(config.batch_size, mesh, "batch_size")
  pipeline.check_batch_size(config.eval_batch_size, mesh, "eval_batch_size")
  return {v: param_counts(v) for v in config.variants}


def train_and_evaluate(config: Config, workdir: str | os.PathLike[str], *,
                       data: input_pipeline.MnistSplits | None = None
                       ) -> dict[str, Any]:
  """Trains every variant and seed of ``config``; writes and prints the report.

  Args:
    config: the configuration (``configs/default.py``).
    workdir: output directory (``results.json``, ``table.md``,
      ``test_error_vs_params.png``, ``checkpoints/``).
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
  baseline = param_counts("Baseline")
  if data is None:
    data = input_pipeline.load_mnist(
        data_dir=config.data_dir, manual_dir=config.manual_dir,
        download=config.download, num_validation=config.num_validation)
  logger.info("MNIST: %d train, %d validation, %d test images; %d device(s); "
              "parameters per variant: %s", len(data.train[0]),
              len(data.validation[0]), len(data.test[0]), mesh.devices.size,
              counts)

  runs = []
  for variant in config.variants:
    for seed in config.seeds:
      runs.append(train_one(variant, seed, data, config=config, mesh=mesh,
                            workdir=workdir, baseline=baseline))
      write_reports(workdir, config, runs, plot=False)
  results = write_reports(workdir, config, runs)
  print(paper_table(results["summary"]))
  print(f"\nWrote {workdir / 'results.json'}, {workdir / 'table.md'} and "
        f"{workdir / 'test_error_vs_params.png'}.")
  return results
