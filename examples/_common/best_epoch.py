"""Train for some epochs, test the parameters of the best-validation epoch.

The loop shared by the examples built on the MNIST example's steps
(``examples/mnist/train.py``: ``train_epoch`` and ``evaluate``), for models
whose ``__call__(images, train=...)`` takes ``uint8`` images.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from examples._common import pipeline

logger = logging.getLogger(__name__)

Split = Sequence[np.ndarray]  # (images, labels)


def fit(model: nnx.Module, optimizer: nnx.Optimizer, *, train: Split,
        validation: Split, test: Split, config: Any, mesh: Mesh, seed: int,
        name: str) -> dict[str, Any]:
  """Trains ``config.epochs`` epochs; tests the best-validation parameters.

  Args:
    model: the network, replicated over ``mesh``.
    optimizer: its optimizer, replicated too.
    train: the training split.
    validation: picks the epoch whose parameters are tested.
    test: the test split.
    config: has ``epochs``, ``eval_batch_size``, ``prefetch`` and what the
      MNIST example's ``train_epoch`` reads.
    mesh: the data-parallel mesh.
    seed: seeds the shuffling.
    name: for the logs and the progress bar.

  Returns:
    ``best_epoch``, ``best_val_error``, ``test_error``/``test_loss`` (best
    epoch), ``last_epoch_test_error``, ``history``, ``wall_time_s``,
    ``train_time_per_epoch_s`` (median, first epoch with compilation left
    out) and ``first_epoch_s``.
  """
  # Imported here: the MNIST example's steps import this package.
  from examples.mnist import train as steps  # pylint: disable=g-import-not-at-top

  rng = np.random.default_rng(seed)
  eval_kw = {"batch_size": config.eval_batch_size, "mesh": mesh,
             "prefetch": config.prefetch}
  history = []
  best_state, best_epoch, best_val = None, 0, float("inf")
  start = time.perf_counter()
  for epoch in range(1, config.epochs + 1):
    stats = steps.train_epoch(model, optimizer, *train, config=config,
                              mesh=mesh, rng=rng,
                              desc=f"{name} epoch {epoch}")
    val = steps.evaluate(model, *validation, **eval_kw)
    history.append({"epoch": epoch, "train_loss": stats["loss"],
                    "train_error": stats["error"], "val_loss": val["loss"],
                    "val_error": val["error"], "seconds": stats["seconds"]})
    if val["error"] < best_val:
      best_val, best_epoch = val["error"], epoch
      # A host copy: the next epochs overwrite the device arrays.
      best_state = jax.device_get(nnx.state(model, nnx.Param))
    logger.info("%s epoch %d/%d: train loss %.4f error %.2f%% | val error "
                "%.2f%% | %.1f s", name, epoch, config.epochs, stats["loss"],
                stats["error"], val["error"], stats["seconds"])
  last = steps.evaluate(model, *test, **eval_kw)
  nnx.update(model, jax.device_put(best_state,
                                   pipeline.replicated_sharding(mesh)))
  best = steps.evaluate(model, *test, **eval_kw)
  wall = time.perf_counter() - start
  seconds = [h["seconds"] for h in history]
  logger.info("%s: best epoch %d (val %.2f%%), test error %.2f%% (last epoch "
              "%.2f%%), %.0f s", name, best_epoch, best_val, best["error"],
              last["error"], wall)
  return {"best_epoch": best_epoch, "best_val_error": best_val,
          "test_error": best["error"], "test_loss": best["loss"],
          "last_epoch_test_error": last["error"], "history": history,
          "wall_time_s": wall,
          "train_time_per_epoch_s": float(np.median(seconds[1:] or seconds)),
          "first_epoch_s": seconds[0]}
