"""The head on cached conv features: the fast fine-tune of ``fc``/``head``.

When the conv stack is frozen (``finetune="fc"``/``"head"``), its output
never changes, so it is computed once per baseline (:func:`compute_features`)
and each fine-tune trains and tests the layers after it only
(:func:`finetune_head`); ``cnn.PaperCNN.head`` is that part of the forward
pass.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from examples._common import cnn, loop


def preprocess(images: jax.Array) -> jax.Array:
  """``uint8`` images to ``float32`` in [0, 1], as the MNIST example does."""
  return images.astype(jnp.float32) / 255.0


@nnx.jit
def _features_step(model: cnn.PaperCNN, images: jax.Array) -> jax.Array:
  return model.features(preprocess(images))


def _chunks(n: int, batch_size: int) -> Iterator[tuple[int, int]]:
  for start in range(0, n, batch_size):
    yield start, min(start + batch_size, n)


def _pad(x: np.ndarray, size: int) -> np.ndarray:
  if len(x) == size:
    return x
  return np.concatenate([x, np.zeros((size - len(x), *x.shape[1:]), x.dtype)])


def compute_features(model: cnn.PaperCNN, images: np.ndarray, batch_size: int) -> np.ndarray:
  """The conv stack's output ``float32 [N, 3, 3, 32]`` (one compiled shape)."""
  out = []
  for start, stop in _chunks(len(images), batch_size):
    h = _features_step(model, _pad(images[start:stop], batch_size))
    out.append(np.asarray(h)[: stop - start])
  return np.concatenate(out)


def head_logits(model: cnn.PaperCNN, features: jax.Array, *, train: bool = False) -> jax.Array:
  """The layers after the conv stack (``cnn.PaperCNN.head``)."""
  return model.head(features, train=train)


@nnx.jit
def head_train_step(
  model: cnn.PaperCNN, optimizer: nnx.Optimizer, features: jax.Array, labels: jax.Array
) -> jax.Array:
  """One Adam step of the head on cached features; returns the mean loss.

  Only what ``optimizer.wrt`` selects (see ``models.trainable``) is
  differentiated and updated.
  """

  def loss_fn(model):
    logits = model.head(features, train=True)
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

  loss, grads = nnx.value_and_grad(loss_fn, argnums=nnx.DiffState(0, optimizer.wrt))(model)
  optimizer.update(model, grads)
  return loss


@nnx.jit
def _head_eval_step(model, features, labels, mask):
  logits = model.head(features)
  losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  correct = (logits.argmax(-1) == labels).astype(jnp.float32)
  return (losses * mask).sum(), (correct * mask).sum()


def evaluate_head(
  model: cnn.PaperCNN, features: np.ndarray, labels: np.ndarray, batch_size: int
) -> dict[str, float]:
  """Mean loss and error (%) of the head on cached features."""
  loss = correct = 0.0
  for start, stop in _chunks(len(labels), batch_size):
    mask = _pad(np.ones(stop - start, np.float32), batch_size)
    batch_loss, batch_correct = _head_eval_step(
      model, _pad(features[start:stop], batch_size), _pad(labels[start:stop], batch_size), mask
    )
    loss, correct = loss + float(batch_loss), correct + float(batch_correct)
  n = len(labels)
  return {"loss": loss / n, "error": 100.0 * (1.0 - correct / n)}


def finetune_head(
  model: cnn.PaperCNN,
  features: Mapping[str, np.ndarray],
  labels: Mapping[str, np.ndarray],
  *,
  config: Any,
  seed: int,
  wrt: nnx.filterlib.Filter,
) -> dict[str, Any]:
  """Fine-tunes what ``wrt`` selects of the head on cached features.

  ``config.finetune_epochs`` epochs of ``50,000 // batch_size`` steps (the
  same for every method); the parameters of the epoch with the lowest
  validation error are kept (in ``model``) and tested.

  Args:
    model: the compressed network; updated in place.
    features: ``train``/``validation``/``test`` conv features.
    labels: their labels.
    config: the configuration.
    seed: shuffling (the dropout stream is the model's).
    wrt: the trainable parameters (the rest stays frozen).

  Returns:
    ``best_epoch``, ``best_val_error``, ``test_error``, ``test_loss``,
    ``steps``, ``history`` and ``seconds``.
  """
  start = time.perf_counter()
  n = len(labels["train"])
  steps = n // config.batch_size
  if steps < 1:
    raise ValueError(f"{n} training examples make no batch of {config.batch_size}.")
  optimizer = loop.create_optimizer(model, config, config.finetune_epochs * steps, wrt=wrt)
  rng = np.random.default_rng(seed)

  def evaluate(split):
    return evaluate_head(model, features[split], labels[split], config.eval_batch_size)

  best_val, best_epoch, best_params = float("inf"), 0, None
  history = []
  for epoch in range(1, config.finetune_epochs + 1):
    order = rng.permutation(n)
    losses = []
    for i in range(steps):
      idx = np.sort(order[i * config.batch_size : (i + 1) * config.batch_size])
      losses.append(head_train_step(model, optimizer, features["train"][idx], labels["train"][idx]))
    val = evaluate("validation")
    history.append(
      {
        "epoch": epoch,
        "train_loss": float(np.mean(jax.device_get(losses))),
        "val_error": val["error"],
        "val_loss": val["loss"],
      }
    )
    if val["error"] < best_val:
      best_val, best_epoch = val["error"], epoch
      best_params = loop.params_on_host(model)
  if best_params is not None:
    nnx.update(model, best_params)
  else:  # No fine-tuning: the compressed model as it is.
    best_val = evaluate("validation")["error"]
  test = evaluate("test")
  return {
    "best_epoch": best_epoch,
    "best_val_error": best_val,
    "test_error": test["error"],
    "test_loss": test["loss"],
    "steps": config.finetune_epochs * steps,
    "history": history,
    "seconds": time.perf_counter() - start,
  }
