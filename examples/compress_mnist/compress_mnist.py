"""Compress a trained MNIST CNN's FC layer: KFC (NKP), low rank (SVD), KFC from scratch.

The library side of the example (``main.py`` is the command line):

* the baseline: the MNIST example's CNN (``examples/mnist``), loaded from its
  orbax checkpoint (:func:`restore_baseline`) or trained here with its code;
* :func:`matched_budgets` -- KFC ranks and the low ranks with (nearly) the
  same number of FC-layer parameters;
* :func:`build_compressed` -- the three methods on one budget:
  ``kfc_nkp`` and ``low_rank_svd`` through the library's one call,
  ``kfc_jax.compress(model, policy)`` (nearest Kronecker product and
  truncated SVD of the trained kernel), and ``kfc_scratch``, the same KFC
  layer randomly initialised (the rest of the network is the baseline's);
* :func:`finetune_head` / :func:`finetune_all` -- the same number of steps
  for every method; with ``finetune="fc"``/``"head"`` the conv stack is
  frozen (an ``nnx`` filter picks what the optimizer trains), so its
  features are computed once (:func:`compute_features`) and each fine-tune
  runs the head only;
* :func:`run_sweep` -- every seed x budget x method; writes ``results.json``,
  ``table.md`` and ``test_error_vs_fc_params.png``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
import types
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import kfc_jax
from examples._common import best_epoch
from examples._common import pipeline
from examples._common import reporting
from examples.compress_mnist.configs import default
from examples.mnist import input_pipeline
from examples.mnist import models
from examples.mnist import train as mnist_train
from examples.mnist.configs import default as mnist_default

logger = logging.getLogger(__name__)

Config = default.Config
METHODS = default.METHODS
FINETUNE_MODES = default.FINETUNE_MODES
METHOD_LABELS = {"kfc_nkp": "KFC, NKP init",
                 "low_rank_svd": "Low rank, SVD init",
                 "kfc_scratch": "KFC, from scratch"}

FC_IN = math.prod(models.FEATURE_SHAPE)  # 288
FC_OUT = models.FC_FEATURES  # 256
DENSE_FC_PARAMS = FC_IN * FC_OUT + FC_OUT  # 73,984 (73,728 + bias)
FC_PATH = "fc"


# ----------------------------------------------------------------------------
# Budgets and policies.
# ----------------------------------------------------------------------------


def kfc_terms(config: Config, rank: int) -> list[tuple[str, tuple[int, ...], int]]:
  """The KFC layer's one term at ``rank``: ``[(formulation, out_factors, rank)]``."""
  return [(config.formulation, tuple(config.out_factors), rank)]


def _abstract_kfc(config: Config, rank: int) -> kfc_jax.nnx.KFC:
  return nnx.eval_shape(lambda: kfc_jax.nnx.KFC(
      models.FEATURE_SHAPE, FC_OUT, terms=kfc_terms(config, rank), use_bias=False,
      rngs=nnx.Rngs(0)))


def kfc_weight_params(config: Config, rank: int) -> int:
  """Factor parameters (no bias) of the KFC layer at ``rank``, computed abstractly."""
  return models.count_params(_abstract_kfc(config, rank))


def kfc_full_rank(config: Config) -> int | None:
  """The rank at which the KFC term is exact (two factors), else ``None``.

  A two-factor term's rearranged weight is ``[m0 * n0, m1 * n1]``; its rank,
  hence the nearest-Kronecker fit's, is at most the smaller side.
  """
  shapes = [f.shape for f in jax.tree.leaves(
      nnx.state(_abstract_kfc(config, 1), kfc_jax.nnx.KroneckerFactor))]
  if len(shapes) != 2:
    return None
  return min(m * n for _, m, n in shapes)


@dataclasses.dataclass(frozen=True)
class Budget:
  """One point of the sweep: a KFC rank and the low rank of equal size.

  Parameter counts are the layers' weights; each has a 256-entry bias on top.
  """

  kfc_rank: int
  low_rank: int
  kfc_params: int
  low_rank_params: int

  @property
  def mismatch_pct(self) -> float:
    """How many more parameters (%) the low-rank layer has than the KFC one."""
    return 100.0 * (self.low_rank_params - self.kfc_params) / self.kfc_params


def matched_budgets(config: Config) -> list[Budget]:
  """For each KFC rank, the low rank whose weight count is nearest.

  A rank-``k`` low-rank layer has ``k * (288 + 256)`` weights; KFC-II (64, 4)
  has ``2,084`` per rank, so the two match to 4.4% or better (to 0.06% at
  ranks 6, 12 and 24).
  """
  per_rank = FC_IN + FC_OUT
  budgets = []
  for r in config.kfc_ranks:
    p = kfc_weight_params(config, r)
    k = int(min(max(1, round(p / per_rank)), min(FC_IN, FC_OUT)))
    budgets.append(Budget(r, k, p, k * per_rank))
  return budgets


def policy_for(method: str, budget: Budget, config: Config
               ) -> kfc_jax.CompressionPolicy:
  """The ``kfc_jax.compress`` policy of a decomposition method on one budget."""
  if method == "kfc_nkp":
    rule = kfc_jax.LayerRule(FC_PATH, "kfc", in_shape=models.FEATURE_SHAPE,
                             terms=kfc_terms(config, budget.kfc_rank))
  elif method == "low_rank_svd":
    rule = kfc_jax.LayerRule(FC_PATH, "low_rank", rank=budget.low_rank)
  else:
    raise ValueError(f"method {method!r} is not a decomposition; use kfc_nkp or"
                     " low_rank_svd.")
  return kfc_jax.CompressionPolicy([rule])


def check_config(config: Config) -> list[Budget]:
  """Validates ``config`` before any data is loaded; returns its budgets."""
  if not config.seeds or not config.kfc_ranks or not config.methods:
    raise ValueError("config.seeds, config.kfc_ranks and config.methods must be"
                     f" non-empty; got {config.seeds!r}, {config.kfc_ranks!r},"
                     f" {config.methods!r}.")
  unknown = [m for m in config.methods if m not in METHODS]
  if unknown:
    raise ValueError(f"unknown methods {unknown}; use some of {METHODS}.")
  if config.finetune not in FINETUNE_MODES:
    raise ValueError(f"config.finetune must be one of {FINETUNE_MODES}; got"
                     f" {config.finetune!r}.")
  if config.lr_schedule not in mnist_train.LR_SCHEDULES:
    raise ValueError(f"config.lr_schedule must be one of"
                     f" {mnist_train.LR_SCHEDULES}; got {config.lr_schedule!r}.")
  if config.finetune_epochs < 0:
    raise ValueError(f"config.finetune_epochs must be >= 0; got"
                     f" {config.finetune_epochs}.")
  if config.baseline_checkpoint is None and config.baseline_epochs < 1:
    raise ValueError("without baseline_checkpoint, baseline_epochs must be >= 1;"
                     f" got {config.baseline_epochs}.")
  try:
    budgets = matched_budgets(config)
    full = kfc_full_rank(config)
  except ValueError as e:
    raise ValueError(f"bad KFC term ({config.formulation}, {config.out_factors},"
                     f" ranks {config.kfc_ranks}): {e}") from e
  too_big = [r for r in config.kfc_ranks if r < 1 or (full is not None and r > full)]
  if too_big:
    raise ValueError(f"KFC ranks must be in [1, {full}] for the term"
                     f" ({config.formulation}, {config.out_factors}); got {too_big}.")
  return budgets


# ----------------------------------------------------------------------------
# The baseline.
# ----------------------------------------------------------------------------


def _param_state(model: nnx.Module) -> Any:
  return jax.device_get(nnx.state(model, nnx.Param))


def checkpoint_path(checkpoint: str | os.PathLike[str], seed: int) -> Path:
  """``<checkpoint>/seed_<seed>`` when it exists, else ``checkpoint`` itself.

  Raises:
    FileNotFoundError: neither exists, or ``checkpoint`` holds ``seed_*``
      directories but not this seed's.
  """
  root = Path(checkpoint).resolve()
  per_seed = root / f"seed_{seed}"
  if per_seed.is_dir():
    return per_seed
  if root.is_dir() and not any(root.glob("seed_*")):
    return root
  found = sorted(p.name for p in root.glob("seed_*")) if root.is_dir() else []
  raise FileNotFoundError(
      f"no baseline checkpoint for seed {seed}: {per_seed} does not exist"
      + (f" (found {', '.join(found)})" if found else
         f" and {root} is not a checkpoint directory") +
      ". Pass --seeds matching the checkpoints, or leave --baseline_checkpoint"
      " out to train the baselines here.")


def restore_baseline(path: str | os.PathLike[str], *, seed: int,
                     dropout_rate: float = 0.5) -> models.MnistCNN:
  """The MNIST example's Baseline CNN with the params of an orbax checkpoint.

  Dropout draws from ``seed``'s stream (as the MNIST example's models do).
  """
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  model = mnist_train.create_model("Baseline", seed=seed, dropout_rate=dropout_rate)
  abstract = jax.tree.map(np.asarray, nnx.state(model, nnx.Param))
  with ocp.StandardCheckpointer() as checkpointer:
    restored = checkpointer.restore(Path(path).resolve(), abstract)
  nnx.update(model, restored)
  return model


def baseline_model(seed: int, data: input_pipeline.MnistSplits, *, config: Config,
                   mesh: Any, workdir: Path) -> tuple[models.MnistCNN, dict[str, Any]]:
  """Loads (or trains, with the MNIST example's code) seed's Baseline.

  Returns:
    The model and a record: ``checkpoint``, ``trained_here`` and, when
    trained here, ``train_seconds``.
  """
  if config.baseline_checkpoint is not None:
    path = checkpoint_path(config.baseline_checkpoint, seed)
    return (restore_baseline(path, seed=seed, dropout_rate=config.dropout_rate),
            {"checkpoint": str(path), "trained_here": False})
  mnist_config = dataclasses.replace(
      mnist_default.get_config(), variants=("Baseline",), seeds=(seed,),
      epochs=config.baseline_epochs, batch_size=config.batch_size,
      eval_batch_size=config.eval_batch_size,
      learning_rate=config.baseline_learning_rate, lr_schedule="cosine",
      weight_decay=config.weight_decay, dropout_rate=config.dropout_rate,
      save_checkpoints=True, prefetch=config.prefetch, progress=config.progress,
      log_every=config.log_every)
  start = time.perf_counter()
  record = mnist_train.train_one(
      "Baseline", seed, data, config=mnist_config, mesh=mesh,
      workdir=workdir / "baseline", baseline=mnist_train.param_counts("Baseline"))
  seconds = time.perf_counter() - start
  model = restore_baseline(record["checkpoint"], seed=seed,
                           dropout_rate=config.dropout_rate)
  return model, {"checkpoint": record["checkpoint"], "trained_here": True,
                 "train_seconds": seconds}


# ----------------------------------------------------------------------------
# The three methods.
# ----------------------------------------------------------------------------


def build_compressed(method: str, budget: Budget, baseline: models.MnistCNN, *,
                     config: Config, seed: int
                     ) -> tuple[models.MnistCNN, kfc_jax.CompressionReport | None]:
  """A copy of ``baseline`` with its FC layer replaced by ``method``'s layer.

  ``kfc_nkp``/``low_rank_svd``: ``kfc_jax.compress`` with :func:`policy_for`
  (returns its report). ``kfc_scratch``: the KFC layer of ``kfc_nkp`` with the
  library's random initialisation and a zero bias (no report).
  """
  if method == "kfc_scratch":
    model = nnx.clone(baseline)
    key = jax.random.fold_in(jax.random.key(seed), budget.kfc_rank)
    model.fc = kfc_jax.nnx.KFC(models.FEATURE_SHAPE, FC_OUT,
                               terms=kfc_terms(config, budget.kfc_rank),
                               rngs=nnx.Rngs(params=key))
    return model, None
  return kfc_jax.compress(baseline, policy_for(method, budget, config))


def trainable(finetune: str) -> nnx.filterlib.Filter:
  """The params a fine-tune trains: an ``nnx`` filter (the rest is frozen)."""
  if finetune == "fc":
    return nnx.All(nnx.Param, nnx.PathContains(FC_PATH))
  if finetune == "head":
    return nnx.All(nnx.Param, nnx.Not(nnx.PathContains("convs")))
  if finetune == "all":
    return nnx.Param
  raise ValueError(f"finetune must be one of {FINETUNE_MODES}; got {finetune!r}.")


# ----------------------------------------------------------------------------
# Cached features and the head.
# ----------------------------------------------------------------------------


@nnx.jit
def _features_step(model: models.MnistCNN, images: jax.Array) -> jax.Array:
  return model.features(mnist_train.preprocess(images))


def _padded_chunks(n: int, batch_size: int):
  for start in range(0, n, batch_size):
    yield start, min(start + batch_size, n)


def _pad(x: np.ndarray, size: int) -> np.ndarray:
  if len(x) == size:
    return x
  return np.concatenate([x, np.zeros((size - len(x), *x.shape[1:]), x.dtype)])


def compute_features(model: models.MnistCNN, images: np.ndarray,
                     batch_size: int) -> np.ndarray:
  """The conv stack's output ``float32 [N, 3, 3, 32]`` (one compiled shape)."""
  out = []
  for start, stop in _padded_chunks(len(images), batch_size):
    h = _features_step(model, _pad(images[start:stop], batch_size))
    out.append(np.asarray(h)[:stop - start])
  return np.concatenate(out)


def head_logits(model: models.MnistCNN, features: jax.Array, *,
                train: bool = False) -> jax.Array:
  """The layers after the conv stack: ``MnistCNN.__call__`` from the features on."""
  h = features
  if model.flatten_fc_input:
    h = h.reshape(*h.shape[:-3], -1)
  h = nnx.relu(model.fc(h))
  h = model.dropout(h, deterministic=not train)
  return model.classifier(h)


@nnx.jit
def head_train_step(model: models.MnistCNN, optimizer: nnx.Optimizer,
                    features: jax.Array, labels: jax.Array) -> jax.Array:
  """One Adam step of the head on cached features; returns the mean loss.

  Only what ``optimizer.wrt`` selects (see :func:`trainable`) is
  differentiated and updated.
  """

  def loss_fn(model):
    logits = head_logits(model, features, train=True)
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

  loss, grads = nnx.value_and_grad(
      loss_fn, argnums=nnx.DiffState(0, optimizer.wrt))(model)
  optimizer.update(model, grads)
  return loss


@nnx.jit
def _head_eval_step(model, features, labels, mask):
  logits = head_logits(model, features)
  losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  correct = (logits.argmax(-1) == labels).astype(jnp.float32)
  return (losses * mask).sum(), (correct * mask).sum()


def evaluate_head(model: models.MnistCNN, features: np.ndarray, labels: np.ndarray,
                  batch_size: int) -> dict[str, float]:
  """Mean loss and error (%) of the head on cached features."""
  loss = correct = 0.0
  for start, stop in _padded_chunks(len(labels), batch_size):
    mask = _pad(np.ones(stop - start, np.float32), batch_size)
    l, c = _head_eval_step(model, _pad(features[start:stop], batch_size),
                           _pad(labels[start:stop], batch_size), mask)
    loss, correct = loss + float(l), correct + float(c)
  n = len(labels)
  return {"loss": loss / n, "error": 100.0 * (1.0 - correct / n)}


def _tx(config: Config, total_steps: int) -> optax.GradientTransformation:
  return mnist_train.make_tx(
      config.learning_rate, config.weight_decay, config.lr_schedule,
      total_steps if config.lr_schedule == "cosine" else None)


def finetune_head(model: models.MnistCNN, features: Mapping[str, np.ndarray],
                  labels: Mapping[str, np.ndarray], *, config: Config,
                  seed: int) -> dict[str, Any]:
  """Fine-tunes the head (``config.finetune``: ``"fc"``/``"head"``) on cached features.

  ``config.finetune_epochs`` epochs of ``50,000 // batch_size`` steps (the
  same for every method); the parameters of the epoch with the lowest
  validation error are kept (in ``model``) and tested.

  Args:
    model: the compressed network; updated in place.
    features, labels: ``train``/``validation``/``test`` arrays.
    config: the configuration.
    seed: shuffling (the dropout stream is the model's).

  Returns:
    ``best_epoch``, ``best_val_error``, ``test_error``, ``test_loss``,
    ``steps``, ``history`` and ``seconds``.
  """
  start = time.perf_counter()
  n = len(labels["train"])
  steps = n // config.batch_size
  if steps < 1:
    raise ValueError(f"{n} training examples make no batch of {config.batch_size}.")
  optimizer = nnx.Optimizer(model, _tx(config, config.finetune_epochs * steps),
                            wrt=trainable(config.finetune))
  rng = np.random.default_rng(seed)
  evaluate = lambda split: evaluate_head(model, features[split], labels[split],
                                         config.eval_batch_size)
  best_val, best_epoch_, best_state = float("inf"), 0, None
  history = []
  for epoch in range(1, config.finetune_epochs + 1):
    order = rng.permutation(n)
    losses = []
    for i in range(steps):
      idx = np.sort(order[i * config.batch_size:(i + 1) * config.batch_size])
      losses.append(head_train_step(model, optimizer, features["train"][idx],
                                    labels["train"][idx]))
    val = evaluate("validation")
    history.append({"epoch": epoch,
                    "train_loss": float(np.mean(jax.device_get(losses))),
                    "val_error": val["error"], "val_loss": val["loss"]})
    if val["error"] < best_val:
      best_val, best_epoch_, best_state = val["error"], epoch, _param_state(model)
  if best_state is not None:
    nnx.update(model, best_state)
  else:  # No fine-tuning: the compressed model as it is.
    best_val = evaluate("validation")["error"]
  test = evaluate("test")
  return {"best_epoch": best_epoch_, "best_val_error": best_val,
          "test_error": test["error"], "test_loss": test["loss"], "steps":
          config.finetune_epochs * steps, "history": history,
          "seconds": time.perf_counter() - start}


def finetune_all(model: models.MnistCNN, data: input_pipeline.MnistSplits, *,
                 config: Config, mesh: Any, seed: int, name: str) -> dict[str, Any]:
  """Fine-tunes every parameter on the images (the MNIST example's steps)."""
  start = time.perf_counter()
  steps = len(data.train[0]) // config.batch_size
  optimizer = nnx.Optimizer(model, _tx(config, config.finetune_epochs * steps),
                            wrt=nnx.Param)
  mnist_train.replicate((model, optimizer), mesh)
  fit_config = types.SimpleNamespace(
      epochs=config.finetune_epochs, batch_size=config.batch_size,
      eval_batch_size=config.eval_batch_size, prefetch=config.prefetch,
      progress=config.progress, log_every=config.log_every)
  r = best_epoch.fit(model, optimizer, train=data.train, validation=data.validation,
                     test=data.test, config=fit_config, mesh=mesh, seed=seed,
                     name=name)
  return {"best_epoch": r["best_epoch"], "best_val_error": r["best_val_error"],
          "test_error": r["test_error"], "test_loss": r["test_loss"],
          "steps": config.finetune_epochs * steps, "history": r["history"],
          "seconds": time.perf_counter() - start}


# ----------------------------------------------------------------------------
# The sweep.
# ----------------------------------------------------------------------------


def finetune(model: models.MnistCNN, *, features: Mapping[str, np.ndarray],
             labels: Mapping[str, np.ndarray], data: input_pipeline.MnistSplits,
             config: Config, seed: int, mesh: Any, name: str) -> dict[str, Any]:
  """:func:`finetune_all` or :func:`finetune_head`, as ``config.finetune`` says."""
  if config.finetune == "all":
    return finetune_all(model, data, config=config, mesh=mesh, seed=seed, name=name)
  return finetune_head(model, features, labels, config=config, seed=seed)


def fc_params(model: models.MnistCNN) -> tuple[int, int]:
  """The FC layer's parameters with and without its bias."""
  return (models.count_params(model.fc), models.count_params(model.fc, biases=False))


def run_one(method: str, budget: Budget, baseline: models.MnistCNN, *,
            features: Mapping[str, np.ndarray], labels: Mapping[str, np.ndarray],
            data: input_pipeline.MnistSplits, config: Config, seed: int,
            mesh: Any) -> dict[str, Any]:
  """Compresses, evaluates, fine-tunes and tests one method on one budget."""
  model, report = build_compressed(method, budget, baseline, config=config, seed=seed)
  layer, weights = fc_params(model)
  before = {s: evaluate_head(model, features[s], labels[s], config.eval_batch_size)
            for s in ("validation", "test")}
  name = f"seed {seed} {method} r={budget.kfc_rank}/k={budget.low_rank}"
  tuned = finetune(model, features=features, labels=labels, data=data,
                   config=config, seed=seed, mesh=mesh, name=name)
  logger.info("%s: %d FC params (%.1f%% fewer), test error %.2f%% -> %.2f%%"
              " (best epoch %d), %.1f s", name, layer,
              100 * (1 - layer / DENSE_FC_PARAMS), before["test"]["error"],
              tuned["test_error"], tuned["best_epoch"], tuned["seconds"])
  return {
      "method": method, "seed": seed, "kfc_rank": budget.kfc_rank,
      "low_rank": budget.low_rank,
      "rank": budget.low_rank if method == "low_rank_svd" else budget.kfc_rank,
      "fc_params": layer, "fc_weight_params": weights,
      "fc_reduction_pct": 100.0 * (1 - layer / DENSE_FC_PARAMS),
      "model_params": models.count_params(model),
      "relative_error": None if report is None else report.rows[0].relative_error,
      "before_val_error": before["validation"]["error"],
      "before_test_error": before["test"]["error"],
      **tuned,
  }


def _stats(values: Sequence[float]) -> dict[str, Any]:
  mean, std = reporting.mean_std(list(values))
  return {"values": list(values), "mean": mean, "std": std}


def summarise(runs: Sequence[Mapping[str, Any]],
              baselines: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
  """Means and spreads over seeds per (budget, method), and paired differences.

  ``paired``: per budget, ``low_rank_svd - kfc_nkp`` and ``kfc_scratch -
  kfc_nkp`` test errors (after fine-tuning and before) seed by seed (the same
  baseline and shuffling), mean and sample std over seeds; positive means the
  NKP-initialised KFC layer is better. ``vs_dense``: per budget and method,
  its test error minus the dense baseline's fine-tuned the same way, seed by
  seed (when ``finetune_baseline``).
  """
  rows = []
  groups: dict[tuple[int, str], list[Mapping[str, Any]]] = {}
  for r in runs:
    groups.setdefault((r["kfc_rank"], r["method"]), []).append(r)
  for (kfc_rank, method), rs in groups.items():
    rows.append({
        "method": method, "kfc_rank": kfc_rank, "rank": rs[0]["rank"],
        "seeds": [r["seed"] for r in rs], "fc_params": rs[0]["fc_params"],
        "fc_weight_params": rs[0]["fc_weight_params"],
        "fc_reduction_pct": rs[0]["fc_reduction_pct"],
        "model_params": rs[0]["model_params"],
        "relative_error": rs[0]["relative_error"],
        "before_test_error": _stats([r["before_test_error"] for r in rs]),
        "test_error": _stats([r["test_error"] for r in rs]),
        "best_epochs": [r["best_epoch"] for r in rs],
    })
  paired = []
  by_key = {(r["kfc_rank"], r["method"], r["seed"]): r for r in runs}
  for kfc_rank in dict.fromkeys(r["kfc_rank"] for r in runs):
    for other in ("low_rank_svd", "kfc_scratch"):
      seeds = [s for (k, m, s) in by_key if k == kfc_rank and m == other
               and (k, "kfc_nkp", s) in by_key]
      if not seeds:
        continue
      pairs = [(by_key[(kfc_rank, other, s)], by_key[(kfc_rank, "kfc_nkp", s)])
               for s in seeds]
      paired.append({
          "kfc_rank": kfc_rank, "versus": other, "seeds": seeds,
          "params_other": pairs[0][0]["fc_params"],
          "params_kfc": pairs[0][1]["fc_params"],
          "test_error_diff": _stats([o["test_error"] - k["test_error"]
                                     for o, k in pairs]),
          "before_test_error_diff": _stats(
              [o["before_test_error"] - k["before_test_error"] for o, k in pairs]),
          "kfc_better_seeds": sum(o["test_error"] > k["test_error"] for o, k in pairs),
      })
  tuned = [b["finetuned"]["test_error"] for b in baselines if "finetuned" in b]
  dense = {b["seed"]: b["finetuned"]["test_error"] for b in baselines
           if "finetuned" in b}
  vs_dense = []
  for (kfc_rank, method), rs in groups.items():
    diffs = [r["test_error"] - dense[r["seed"]] for r in rs if r["seed"] in dense]
    if diffs:
      vs_dense.append({"kfc_rank": kfc_rank, "method": method,
                       "fc_params": rs[0]["fc_params"],
                       "test_error_minus_dense": _stats(diffs)})
  return {"vs_dense": vs_dense,
          "baseline": {"test_error": _stats([b["test_error"] for b in baselines]),
                       "finetuned_test_error": _stats(tuned) if tuned else None,
                       "fc_params": DENSE_FC_PARAMS},
          "rows": rows, "paired": paired}


def _pm(stats: Mapping[str, Any], digits: int = 2) -> str:
  text = f"{stats['mean']:.{digits}f}"
  if len(stats["values"]) > 1:
    text += f" ± {stats['std']:.{digits}f}"
  return text


def tables(summary: Mapping[str, Any]) -> str:
  """Markdown: the sweep table and the paired differences."""
  base = summary["baseline"]
  headers = ["Method", "Rank", "FC params (reduction)", "Rel. weight error",
             "Test error % before FT", "Test error % after FT", "Seeds",
             "Best epochs"]
  tuned = base.get("finetuned_test_error")
  rows = [["Baseline (dense FC)", "—", f"{DENSE_FC_PARAMS:,}", "—",
           _pm(base["test_error"]), "—" if tuned is None else _pm(tuned),
           str(len(base["test_error"]["values"])), "—"]]
  for r in sorted(summary["rows"], key=lambda r: (r["kfc_rank"],
                                                  METHODS.index(r["method"]))):
    rows.append([
        METHOD_LABELS[r["method"]], str(r["rank"]),
        f"{r['fc_params']:,} ({r['fc_reduction_pct']:.1f}%)",
        "—" if r["relative_error"] is None else f"{r['relative_error']:.3f}",
        _pm(r["before_test_error"]), _pm(r["test_error"]), str(len(r["seeds"])),
        ",".join(map(str, r["best_epochs"]))])
  out = [reporting.format_table(headers, rows)]
  if summary["paired"]:
    headers = ["KFC rank", "Versus", "FC params (other / KFC)",
               "Δ test error after FT (pp)", "Δ before FT (pp)", "KFC better"]
    rows = [[str(p["kfc_rank"]), METHOD_LABELS[p["versus"]],
             f"{p['params_other']:,} / {p['params_kfc']:,}",
             _pm(p["test_error_diff"]), _pm(p["before_test_error_diff"]),
             f"{p['kfc_better_seeds']}/{len(p['seeds'])} seeds"]
            for p in summary["paired"]]
    out += ["", "Paired differences (other minus KFC-NKP, same seed; positive:"
            " KFC-NKP better), mean ± std over seeds:", "",
            reporting.format_table(headers, rows)]
  if summary.get("vs_dense"):
    headers = ["KFC rank", "Method", "FC params",
               "Test error minus fine-tuned dense (pp)"]
    rows = [[str(v["kfc_rank"]), METHOD_LABELS[v["method"]], f"{v['fc_params']:,}",
             _pm(v["test_error_minus_dense"])]
            for v in sorted(summary["vs_dense"], key=lambda v: (
                v["kfc_rank"], METHODS.index(v["method"])))]
    out += ["", "Against the dense baseline fine-tuned the same steps (same seed;"
            " ≤ 0: quality kept), mean ± std over seeds:", "",
            reporting.format_table(headers, rows)]
  return "\n".join(out)


def plot(path: str | os.PathLike[str], summary: Mapping[str, Any], *,
         title: str) -> None:
  """Test error against FC-layer parameters: after fine-tuning, and before."""
  # pylint: disable=g-import-not-at-top
  from matplotlib import ticker
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure
  # pylint: enable=g-import-not-at-top

  fig = Figure(figsize=(11, 4.5), layout="constrained")
  FigureCanvasAgg(fig)
  axes = fig.subplots(1, 2)
  base = summary["baseline"]["test_error"]
  colors = {m: f"C{i}" for i, m in enumerate(METHODS)}
  for ax, key, methods in ((axes[0], "test_error", METHODS),
                           (axes[1], "before_test_error", METHODS[:2])):
    for method in methods:
      rs = sorted((r for r in summary["rows"] if r["method"] == method),
                  key=lambda r: r["fc_params"])
      if not rs:
        continue
      ax.errorbar([r["fc_params"] for r in rs], [r[key]["mean"] for r in rs],
                  yerr=[r[key]["std"] for r in rs], fmt="o-", capsize=3,
                  color=colors[method], label=METHOD_LABELS[method])
    ax.axhline(base["mean"], color="gray", ls="--",
               label=f"baseline, dense FC ({DENSE_FC_PARAMS:,} params)")
    ax.axhspan(base["mean"] - base["std"], base["mean"] + base["std"],
               color="gray", alpha=0.15)
    tuned = summary["baseline"].get("finetuned_test_error")
    if key == "test_error" and tuned is not None:
      ax.axhline(tuned["mean"], color="black", ls=":",
                 label="baseline fine-tuned the same way")
      ax.axhspan(tuned["mean"] - tuned["std"], tuned["mean"] + tuned["std"],
                 color="black", alpha=0.08)
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_minor_formatter(ticker.NullFormatter())
    ax.xaxis.set_major_formatter(ticker.FuncFormatter(
        lambda v, _: reporting.format_count(v)))
    ax.set_xlabel("FC-layer parameters (with bias)")
    ax.set_ylabel("test error (%)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="best")
  axes[0].set_title("after fine-tuning (mean ± std over seeds)", fontsize=9)
  axes[1].set_yscale("log")
  axes[1].set_title("right after compression, before fine-tuning", fontsize=9)
  fig.suptitle(title)
  fig.savefig(os.fspath(path), dpi=120)


def write_reports(workdir: Path, config: Config, runs: Sequence[Mapping[str, Any]],
                  baselines: Sequence[Mapping[str, Any]], budgets: Sequence[Budget],
                  *, final: bool = True, wall_s: float | None = None
                  ) -> dict[str, Any]:
  """Writes ``results.json`` (and, when ``final``, ``table.md`` and the plot)."""
  summary = summarise(runs, baselines) if baselines else None
  results = {"config": dataclasses.asdict(config),
             "environment": mnist_train.environment(),
             "budgets": [{**dataclasses.asdict(b), "mismatch_pct": b.mismatch_pct}
                         for b in budgets],
             "wall_s": wall_s, "baselines": list(baselines), "summary": summary,
             "runs": list(runs)}
  workdir.mkdir(parents=True, exist_ok=True)
  tmp = workdir / "results.json.tmp"
  tmp.write_text(json.dumps(results, indent=2))
  tmp.replace(workdir / "results.json")
  if final and summary is not None and runs:
    (workdir / "table.md").write_text(tables(summary) + "\n")
    plot(workdir / "test_error_vs_fc_params.png", summary,
         title=f"MNIST: compressing the FC layer (288 -> 256), "
         f"{config.finetune_epochs} fine-tune epochs ({config.finetune})")
  return results


def run_sweep(config: Config, workdir: str | os.PathLike[str], *,
              data: input_pipeline.MnistSplits | None = None) -> dict[str, Any]:
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
  if config.baseline_checkpoint is not None:
    for seed in config.seeds:  # Fail before loading data or compiling.
      checkpoint_path(config.baseline_checkpoint, seed)
  mesh = pipeline.make_data_mesh()
  if data is None:
    data = input_pipeline.load_mnist(
        data_dir=config.data_dir, manual_dir=config.manual_dir,
        download=config.download, num_validation=config.num_validation)
  labels = {"train": data.train[1], "validation": data.validation[1],
            "test": data.test[1]}
  logger.info("budgets (KFC rank, low rank, weights KFC/low rank): %s",
              [(b.kfc_rank, b.low_rank, b.kfc_params, b.low_rank_params)
               for b in budgets])
  runs, baselines = [], []
  for seed in config.seeds:
    baseline, info = baseline_model(seed, data, config=config, mesh=mesh,
                                    workdir=workdir)
    t = time.perf_counter()
    features = {"train": compute_features(baseline, data.train[0],
                                          config.eval_batch_size),
                "validation": compute_features(baseline, data.validation[0],
                                               config.eval_batch_size),
                "test": compute_features(baseline, data.test[0],
                                         config.eval_batch_size)}
    evals = {s: evaluate_head(baseline, features[s], labels[s],
                              config.eval_batch_size)
             for s in ("validation", "test")}
    record = {"seed": seed, **info, "val_error": evals["validation"]["error"],
              "test_error": evals["test"]["error"],
              "feature_seconds": time.perf_counter() - t}
    logger.info("seed %d: baseline test error %.2f%% (%s)", seed,
                evals["test"]["error"], info["checkpoint"])
    if config.finetune_baseline:
      tuned = finetune(nnx.clone(baseline), features=features, labels=labels,
                       data=data, config=config, seed=seed, mesh=mesh,
                       name=f"seed {seed} dense")
      record["finetuned"] = tuned
      logger.info("seed %d: dense baseline fine-tuned the same way: test error"
                  " %.2f%% (best epoch %d)", seed, tuned["test_error"],
                  tuned["best_epoch"])
    baselines.append(record)
    for budget in budgets:
      for method in config.methods:
        runs.append(run_one(method, budget, baseline, features=features,
                            labels=labels, data=data, config=config, seed=seed,
                            mesh=mesh))
        write_reports(workdir, config, runs, baselines, budgets, final=False)
  results = write_reports(workdir, config, runs, baselines, budgets,
                          wall_s=time.perf_counter() - start)
  print(tables(results["summary"]))
  print(f"\nWrote {workdir / 'results.json'}, {workdir / 'table.md'} and "
        f"{workdir / 'test_error_vs_fc_params.png'}.")
  return results
