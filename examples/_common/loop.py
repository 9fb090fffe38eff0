"""The examples' training loop: steps, epochs, best-epoch fit, checkpoints.

Every example trains a classifier ``model(images, train=...) -> logits`` on
``uint8`` images held in memory. The pieces, bottom up:

* :func:`adam_with_l2` -- Adam with coupled L2 weight decay, as the papers'
  Caffe solvers did (``weight_decay`` adds ``wd * w`` to the gradient before
  the Adam update; not AdamW's decoupled decay);
* :func:`train_step`, :func:`eval_step` -- ``nnx.jit`` steps; the example's
  ``preprocess`` (``uint8`` to ``float32`` on the device, 4x less to copy) is
  a static argument. The batch is sharded over the local devices and the
  state replicated (``pipeline.py``), so the same code is data-parallel;
* :func:`evaluate`, :func:`train_epoch` -- one pass over a split, with a
  progress bar (tqdm) and at most :data:`MAX_IN_FLIGHT` steps dispatched
  ahead of the device;
* :func:`fit` -- ``config.epochs`` epochs, keeping the parameters of the
  epoch with the lowest validation error and testing them; with
  ``resume_dir`` it saves its state after every epoch with orbax and, run
  again, continues where it stopped.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import json
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import tqdm
from flax import nnx
from jax.sharding import Mesh

from examples._common import pipeline

logger = logging.getLogger(__name__)

Metrics = dict[str, jax.Array]
Split = Sequence[np.ndarray]  # (images, labels)
Preprocess = Callable[[jax.Array], jax.Array]
Augment = Callable[[np.ndarray, np.random.Generator], np.ndarray]

LR_SCHEDULES = ("constant", "cosine")
# Dispatch runs ahead of the device by at most this many steps: enough to keep
# it busy, few enough that the progress bar shows real progress.
MAX_IN_FLIGHT = 2


# ----------------------------------------------------------------------------
# Optimizer and configuration.
# ----------------------------------------------------------------------------


@functools.cache
def adam_with_l2(
  learning_rate: float,
  weight_decay: float,
  schedule: str = "constant",
  total_steps: int | None = None,
) -> optax.GradientTransformation:
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

  Raises:
    ValueError: an unknown ``schedule``.
  """
  if schedule == "cosine":
    lr = optax.cosine_decay_schedule(learning_rate, total_steps)
  elif schedule == "constant":
    lr = learning_rate
  else:
    raise ValueError(f"Unknown lr_schedule {schedule!r}; use one of {LR_SCHEDULES}.")
  return optax.chain(optax.add_decayed_weights(weight_decay), optax.adam(lr))


def create_optimizer(
  model: nnx.Module,
  config: Any,
  total_steps: int | None = None,
  *,
  wrt: nnx.filterlib.Filter = nnx.Param,
) -> nnx.Optimizer:
  """:func:`adam_with_l2` with ``config``'s settings over ``wrt`` of ``model``.

  Args:
    model: the network.
    config: has ``learning_rate``, ``weight_decay`` and ``lr_schedule``.
    total_steps: the run's length (used by the cosine schedule only).
    wrt: which parameters the optimizer trains (the rest stay frozen).
  """
  if config.lr_schedule == "constant":
    total_steps = None  # Irrelevant; keeps one cached transformation.
  tx = adam_with_l2(config.learning_rate, config.weight_decay, config.lr_schedule, total_steps)
  return nnx.Optimizer(model, tx, wrt=wrt)


def check_config(config: Any, mesh: Mesh | None = None) -> None:
  """Checks the fields every variant-and-seed example shares.

  Args:
    config: has ``variants``, ``seeds``, ``epochs``, ``lr_schedule``,
      ``batch_size`` and ``eval_batch_size``.
    mesh: the data-parallel mesh (default: all local devices).

  Raises:
    ValueError: empty variants or seeds, ``epochs < 1``, an unknown
      learning-rate schedule, or a batch size the devices cannot split
      evenly.
  """
  if not config.variants or not config.seeds:
    raise ValueError(
      "config.variants and config.seeds must be non-empty; got "
      f"{config.variants!r} and {config.seeds!r}."
    )
  if config.epochs < 1:
    raise ValueError(f"config.epochs must be >= 1; got {config.epochs}.")
  if config.lr_schedule not in LR_SCHEDULES:
    raise ValueError(
      f"config.lr_schedule must be one of {LR_SCHEDULES}; got {config.lr_schedule!r}."
    )
  mesh = mesh if mesh is not None else pipeline.make_data_mesh()
  pipeline.check_batch_size(config.batch_size, mesh, "batch_size")
  pipeline.check_batch_size(config.eval_batch_size, mesh, "eval_batch_size")


# ----------------------------------------------------------------------------
# Steps.
# ----------------------------------------------------------------------------


@functools.partial(nnx.jit, static_argnames="preprocess")
def train_step(
  model: nnx.Module,
  optimizer: nnx.Optimizer,
  batch: Mapping[str, jax.Array],
  *,
  preprocess: Preprocess,
) -> Metrics:
  """One optimizer step on a batch; updates ``model`` and ``optimizer``.

  Only what ``optimizer.wrt`` selects is differentiated and updated; the
  model's other state (BatchNorm statistics, dropout counters) is updated in
  place by its forward pass.

  Args:
    model: the network (``train=True``: dropout on, BatchNorm in training).
    optimizer: its ``nnx.Optimizer``.
    batch: ``image`` (uint8 ``[B, H, W, C]``) and ``label`` (int ``[B]``),
      typically sharded over the ``"data"`` mesh axis.
    preprocess: ``uint8`` images to the model's input (static).

  Returns:
    Sums over the batch: ``loss`` (cross-entropy), ``correct`` and ``count``.
  """
  images = preprocess(batch["image"])
  labels = batch["label"]

  def loss_fn(model):
    logits = model(images, train=True)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    return losses.mean(), (losses, logits)

  grad_fn = nnx.value_and_grad(loss_fn, argnums=nnx.DiffState(0, optimizer.wrt), has_aux=True)
  (_, (losses, logits)), grads = grad_fn(model)
  optimizer.update(model, grads)
  return {
    "loss": losses.sum(),
    "correct": (logits.argmax(-1) == labels).sum().astype(jnp.float32),
    "count": jnp.asarray(labels.shape[0], jnp.float32),
  }


@functools.partial(nnx.jit, static_argnames="preprocess")
def eval_step(
  model: nnx.Module, batch: Mapping[str, jax.Array], *, preprocess: Preprocess
) -> Metrics:
  """Sums of loss, correct predictions and examples over a masked batch.

  Args:
    model: the network (``train=False``).
    batch: ``image``, ``label`` and ``mask`` (1 for real examples, 0 for the
      padding of a last, short batch).
    preprocess: ``uint8`` images to the model's input (static).

  Returns:
    ``loss``, ``correct`` and ``count`` summed over the real examples.
  """
  logits = model(preprocess(batch["image"]), train=False)
  labels, mask = batch["label"], batch["mask"]
  losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  correct = (logits.argmax(-1) == labels).astype(jnp.float32)
  return {"loss": (losses * mask).sum(), "correct": (correct * mask).sum(), "count": mask.sum()}


# ----------------------------------------------------------------------------
# Passes over a split.
# ----------------------------------------------------------------------------


def summarise(sums: Mapping[str, Any]) -> dict[str, float]:
  """Mean ``loss``, ``error`` and ``accuracy`` (%) from summed metrics."""
  count = float(sums["count"])
  accuracy = 100.0 * float(sums["correct"]) / count
  return {
    "loss": float(sums["loss"]) / count,
    "error": 100.0 - accuracy,
    "accuracy": accuracy,
    "count": count,
  }


def evaluate(
  model: nnx.Module,
  images: np.ndarray,
  labels: np.ndarray,
  *,
  batch_size: int,
  mesh: Mesh,
  preprocess: Preprocess,
  prefetch: int = 2,
) -> dict[str, float]:
  """Mean loss, error and accuracy (%) on every example once, and seconds."""
  start = time.perf_counter()
  stream = pipeline.batches({"image": images, "label": labels}, batch_size, drop_remainder=False)
  totals = None
  for batch in pipeline.prefetch_to_mesh(stream, pipeline.batch_sharding(mesh), prefetch):
    sums = eval_step(model, batch, preprocess=preprocess)
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
  return {**summarise(jax.device_get(totals)), "seconds": time.perf_counter() - start}


def _augmented(
  stream: Iterator[dict[str, np.ndarray]], augment: Augment, rng: np.random.Generator
) -> Iterator[dict[str, np.ndarray]]:
  for batch in stream:
    yield {**batch, "image": augment(batch["image"], rng)}


def train_epoch(
  model: nnx.Module,
  optimizer: nnx.Optimizer,
  images: np.ndarray,
  labels: np.ndarray,
  *,
  config: Any,
  mesh: Mesh,
  rng: np.random.Generator,
  preprocess: Preprocess,
  augment: Augment | None = None,
  desc: str = "",
) -> dict[str, float]:
  """One shuffled pass over the training images (last short batch dropped).

  Args:
    model: the network; trained in place.
    optimizer: its optimizer.
    images: ``uint8 [N, H, W, C]``.
    labels: ``int [N]``.
    config: has ``batch_size``, ``prefetch``, ``progress`` and
      ``log_every`` (steps between refreshes of the progress bar's numbers).
    mesh: the data-parallel mesh.
    rng: shuffles (and augments).
    preprocess: ``uint8`` images to the model's input.
    augment: ``(host batch, rng) -> host batch``, applied before the copy to
      the devices (``None``: none).
    desc: the progress bar's label.

  Returns:
    ``loss``, ``error`` and ``accuracy`` (%) averaged over the epoch's steps
    (in training mode), ``count``, ``steps`` and ``seconds`` (wall time,
    compilation included on the first call).

  Raises:
    ValueError: fewer training images than one batch.
  """
  steps = pipeline.num_batches(len(images), config.batch_size, True)
  if not steps:
    raise ValueError(
      f"the training set ({len(images)} examples) is smaller than one batch ({config.batch_size})."
    )
  stream = pipeline.batches({"image": images, "label": labels}, config.batch_size, rng=rng)
  if augment is not None:
    stream = _augmented(stream, augment, rng)
  stream = pipeline.prefetch_to_mesh(stream, pipeline.batch_sharding(mesh), config.prefetch)
  totals = {"loss": 0.0, "correct": 0.0, "count": 0.0}
  in_flight = collections.deque()

  def collect(sums):
    for k, v in jax.device_get(sums).items():
      totals[k] += float(v)

  start = time.perf_counter()
  with tqdm.tqdm(
    total=steps, desc=desc, disable=not config.progress, leave=False, dynamic_ncols=True
  ) as bar:
    for step, batch in enumerate(stream, 1):
      in_flight.append(train_step(model, optimizer, batch, preprocess=preprocess))
      while len(in_flight) > MAX_IN_FLIGHT:
        collect(in_flight.popleft())
      if step % config.log_every == 0 and totals["count"]:
        running = summarise(totals)
        bar.set_postfix(loss=f"{running['loss']:.4f}", acc=f"{running['accuracy']:.2f}%")
      bar.update(1)
    while in_flight:
      collect(in_flight.popleft())
  return {**summarise(totals), "steps": steps, "seconds": time.perf_counter() - start}


# ----------------------------------------------------------------------------
# Checkpoints.
# ----------------------------------------------------------------------------


def params_on_host(model: nnx.Module) -> Any:
  """A host copy of the model's parameters (safe from later updates)."""
  return jax.device_get(nnx.state(model, nnx.Param))


def save_params(path: str | Path, params: Any) -> None:
  """Writes parameters (:func:`params_on_host`) as an orbax checkpoint."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top

  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(Path(path).resolve(), params, force=True)


def restore_params(path: str | Path, model: nnx.Module) -> None:
  """Loads the parameters of an orbax checkpoint into ``model`` (in place)."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top

  abstract = jax.tree.map(np.asarray, nnx.state(model, nnx.Param))
  with ocp.StandardCheckpointer() as checkpointer:
    nnx.update(model, checkpointer.restore(Path(path).resolve(), abstract))


# What a resumed run restores: everything but the PRNG keys, which the model
# rebuilds from its seed (their counters, restored, continue the streams).
_RESUMABLE = nnx.Not(nnx.RngKey)


def _save_progress(
  directory: Path, model: nnx.Module, optimizer: nnx.Optimizer, best: Any, progress: dict[str, Any]
) -> None:
  """The run's state after an epoch; ``progress.json`` last, so it is whole."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top

  state = {"model": nnx.state(model, _RESUMABLE), "optimizer": nnx.state(optimizer), "best": best}
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save((directory / "state").resolve(), jax.device_get(state), force=True)
  tmp = directory / "progress.json.tmp"
  tmp.write_text(json.dumps(progress))
  tmp.replace(directory / "progress.json")


# Fields that do not change a run's numbers: a run resumes across them. (The
# resume directory is per variant and seed, so the other runs do not count.)
NOT_THE_RUN = frozenset(
  {
    "variants",
    "seeds",
    "data_dir",
    "manual_dir",
    "download",
    "save_checkpoints",
    "prefetch",
    "progress",
    "log_every",
  }
)


def run_settings(config: Any) -> Any:
  """The settings that make the run, as JSON values, to compare with saved."""
  fields = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(vars(config))
  fields = {k: v for k, v in fields.items() if k not in NOT_THE_RUN}
  return json.loads(json.dumps(fields, default=str))


def _restore_progress(
  directory: Path, model: nnx.Module, optimizer: nnx.Optimizer, mesh: Mesh, settings: Any
) -> tuple[dict[str, Any], Any] | None:
  """``(progress, best params)`` of a saved run, its state put back.

  None when nothing was saved, or it was saved with other settings (the run
  then starts over and overwrites it).
  """
  if not (directory / "progress.json").is_file():
    return None
  progress = json.loads((directory / "progress.json").read_text())
  if progress.get("config") != settings:
    logger.info("%s holds a run with other settings; starting over.", directory)
    return None
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top

  abstract = jax.tree.map(
    np.asarray,
    {
      "model": nnx.state(model, _RESUMABLE),
      "optimizer": nnx.state(optimizer),
      "best": nnx.state(model, nnx.Param),
    },
  )
  with ocp.StandardCheckpointer() as checkpointer:
    state = checkpointer.restore((directory / "state").resolve(), abstract)
  replicated = pipeline.replicated_sharding(mesh)
  nnx.update(model, jax.device_put(state["model"], replicated))
  nnx.update(optimizer, jax.device_put(state["optimizer"], replicated))
  return progress, state["best"]


# ----------------------------------------------------------------------------
# The best-validation-epoch fit.
# ----------------------------------------------------------------------------


def fit(
  model: nnx.Module,
  optimizer: nnx.Optimizer,
  *,
  train: Split,
  validation: Split,
  test: Split,
  config: Any,
  mesh: Mesh,
  seed: int,
  name: str,
  preprocess: Preprocess,
  best_dir: Path | None = None,
  resume_dir: Path | None = None,
) -> dict[str, Any]:
  """Trains ``config.epochs`` epochs; tests the best-validation parameters.

  Args:
    model: the network, replicated over ``mesh``; ends with the parameters
      of its best-validation epoch.
    optimizer: its optimizer, replicated too.
    train: the training split.
    validation: picks the epoch whose parameters are tested.
    test: the test split.
    config: has ``epochs``, ``eval_batch_size`` and what :func:`train_epoch`
      reads.
    mesh: the data-parallel mesh.
    seed: seeds the shuffling.
    name: for the logs and the progress bar.
    preprocess: ``uint8`` images to the model's input.
    best_dir: where the best parameters go as an orbax checkpoint, saved
      each time the validation error improves (``None``: nowhere).
    resume_dir: where the run's state goes after every epoch; a run started
      again with the same directory continues after its last saved epoch
      (``None``: no resuming).

  Returns:
    ``best_epoch``, ``best_val_error``, ``test_error``/``test_loss`` (best
    epoch), ``last_epoch_test_error``, ``history``, ``wall_time_s`` (this
    session's, when resumed),
    ``train_time_per_epoch_s`` (median, the first epoch with compilation
    left out), ``first_epoch_s`` and ``checkpoint`` (``best_dir`` or None).
  """
  rng = np.random.default_rng(seed)
  eval_kw = {
    "batch_size": config.eval_batch_size,
    "mesh": mesh,
    "preprocess": preprocess,
    "prefetch": config.prefetch,
  }
  progress = {"epoch": 0, "history": [], "best_epoch": 0, "best_val_error": float("inf")}
  best_params = None
  settings = run_settings(config)
  restored = (
    _restore_progress(resume_dir, model, optimizer, mesh, settings)
    if resume_dir is not None
    else None
  )
  if restored is not None:
    progress, best_params = restored
    rng.bit_generator.state = progress["rng"]
    logger.info("%s: resumed after epoch %d from %s", name, progress["epoch"], resume_dir)
  start = time.perf_counter()
  for epoch in range(progress["epoch"] + 1, config.epochs + 1):
    stats = train_epoch(
      model,
      optimizer,
      *train,
      config=config,
      mesh=mesh,
      rng=rng,
      preprocess=preprocess,
      desc=f"{name} epoch {epoch}",
    )
    val = evaluate(model, *validation, **eval_kw)
    progress["history"].append(
      {
        "epoch": epoch,
        "train_loss": stats["loss"],
        "train_error": stats["error"],
        "val_loss": val["loss"],
        "val_error": val["error"],
        "seconds": stats["seconds"],
      }
    )
    improved = val["error"] < progress["best_val_error"]
    if improved:
      progress.update(best_epoch=epoch, best_val_error=val["error"])
      best_params = params_on_host(model)
      if best_dir is not None:
        save_params(best_dir, best_params)
    logger.info(
      "%s epoch %d/%d: train loss %.4f error %.2f%% | val loss %.4f error %.2f%%%s | %.1f s",
      name,
      epoch,
      config.epochs,
      stats["loss"],
      stats["error"],
      val["loss"],
      val["error"],
      " (best)" if improved else "",
      stats["seconds"],
    )
    if resume_dir is not None:
      progress.update(epoch=epoch, rng=rng.bit_generator.state, config=settings)
      _save_progress(resume_dir, model, optimizer, best_params, progress)
  last = evaluate(model, *test, **eval_kw)
  nnx.update(model, jax.device_put(best_params, pipeline.replicated_sharding(mesh)))
  best = evaluate(model, *test, **eval_kw)
  seconds = [h["seconds"] for h in progress["history"]]
  logger.info(
    "%s: best epoch %d (val %.2f%%), test error %.2f%% (last epoch %.2f%%)",
    name,
    progress["best_epoch"],
    progress["best_val_error"],
    best["error"],
    last["error"],
  )
  return {
    "best_epoch": progress["best_epoch"],
    "best_val_error": progress["best_val_error"],
    "test_error": best["error"],
    "test_loss": best["loss"],
    "last_epoch_test_error": last["error"],
    "history": progress["history"],
    "wall_time_s": time.perf_counter() - start,
    "train_time_per_epoch_s": float(np.median(seconds[1:] or seconds)),
    "first_epoch_s": seconds[0],
    "checkpoint": str(best_dir.resolve()) if best_dir else None,
  }
