"""Tests of what the examples share (examples/_common): the loop and the CLI.

The steps, evaluation and input pipeline are tested through the MNIST
example (``test_mnist.py``); here the best-epoch fit and its resuming, on a
tiny model, and the command-line helpers.
"""

# ruff: noqa: E402 (the repository root goes on sys.path first)
from __future__ import annotations

import argparse
import dataclasses
import sys
import types
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
  sys.path.insert(0, str(REPO))

# pylint: disable=g-import-not-at-top,wrong-import-position
from examples._common import cli, configs, loop, pipeline

# pylint: enable=g-import-not-at-top,wrong-import-position


class _Tiny(nnx.Module):
  """A linear classifier with dropout: parameters, optimizer and RNG state."""

  def __init__(self, seed: int):
    params, dropout = jax.random.split(jax.random.key(seed))
    self.linear = nnx.Linear(16, 10, rngs=nnx.Rngs(params))
    self.dropout = nnx.Dropout(0.3, rngs=nnx.Rngs(dropout=dropout))

  def __call__(self, x, *, train=False):
    h = self.dropout(x.reshape(*x.shape[:-3], -1), deterministic=not train)
    return self.linear(h)


def _preprocess(images):
  return images.astype(jnp.float32) / 255.0


def _split(rng, n):
  return (
    rng.integers(0, 256, (n, 4, 4, 1), dtype=np.uint8),
    rng.integers(0, 10, n).astype(np.int32),
  )


def _fit(tmp_path, config, resume_dir):
  mesh = pipeline.make_data_mesh()
  rng = np.random.default_rng(0)
  train, validation, test = _split(rng, 32), _split(rng, 16), _split(rng, 16)
  model = _Tiny(seed=0)
  optimizer = loop.create_optimizer(model, config, 4 * config.epochs)
  pipeline.replicate((model, optimizer), mesh)
  run = loop.fit(
    model,
    optimizer,
    train=train,
    validation=validation,
    test=test,
    config=config,
    mesh=mesh,
    seed=1,
    name="tiny",
    preprocess=_preprocess,
    best_dir=tmp_path / "best",
    resume_dir=resume_dir,
  )
  return run, jax.device_get(nnx.state(model, nnx.Param))


def _config(**overrides):
  return dataclasses.replace(
    configs.TrainConfig(
      variants=("tiny",),
      epochs=3,
      batch_size=8,
      eval_batch_size=8,
      learning_rate=0.05,
      lr_schedule="cosine",
      progress=False,
      log_every=1,
    ),
    **overrides,
  )


def test_fit_resumes_where_it_stopped(tmp_path, monkeypatch):
  """Interrupted after epoch 1 and run again: the same run as unbroken."""
  config = _config()
  whole, whole_params = _fit(tmp_path / "a", config, tmp_path / "a" / "resume")

  calls = []
  train_epoch = loop.train_epoch

  def crash_in_epoch_2(*args, **kwargs):
    calls.append(1)
    if len(calls) == 2:
      raise KeyboardInterrupt("stopped")
    return train_epoch(*args, **kwargs)

  monkeypatch.setattr(loop, "train_epoch", crash_in_epoch_2)
  with pytest.raises(KeyboardInterrupt):
    _fit(tmp_path / "b", config, tmp_path / "b" / "resume")
  monkeypatch.setattr(loop, "train_epoch", train_epoch)
  calls.clear()
  resumed, resumed_params = _fit(tmp_path / "b", config, tmp_path / "b" / "resume")

  # Shuffling, dropout, optimizer state and the best epoch all carried over.
  for key in ("best_epoch", "best_val_error", "test_error", "last_epoch_test_error"):
    assert resumed[key] == whole[key], key
  for h_whole, h_resumed in zip(whole["history"], resumed["history"], strict=True):
    assert h_whole["train_loss"] == pytest.approx(h_resumed["train_loss"])
    assert h_whole["val_error"] == h_resumed["val_error"]
  chex.assert_trees_all_close(resumed_params, whole_params, atol=1e-6)
  # The best parameters were saved with orbax and load back.
  model = _Tiny(seed=5)
  loop.restore_params(resumed["checkpoint"], model)
  chex.assert_trees_all_close(jax.device_get(nnx.state(model, nnx.Param)), resumed_params)

  # Run again as it was (the progress bar aside): nothing left to train.
  again, again_params = _fit(tmp_path / "b", _config(progress=True), tmp_path / "b" / "resume")
  assert again["history"] == resumed["history"]
  chex.assert_trees_all_close(again_params, resumed_params)
  # Other settings in the same directory: a fresh run, not a resumed one.
  longer, _ = _fit(tmp_path / "b", _config(epochs=4), tmp_path / "b" / "resume")
  assert [h["epoch"] for h in longer["history"]] == [1, 2, 3, 4]


def test_check_config_names_the_bad_field():
  loop.check_config(_config())
  for overrides, match in (
    ({"seeds": ()}, "non-empty"),
    ({"epochs": 0}, "epochs must be >= 1"),
    ({"lr_schedule": "step"}, "lr_schedule"),
    ({"batch_size": 0}, "batch_size must be"),
  ):
    with pytest.raises(ValueError, match=match):
      loop.check_config(_config(**overrides))
  with pytest.raises(ValueError, match="Unknown lr_schedule 'step'"):
    loop.adam_with_l2(1e-3, 0.0, "step")


def test_cli_overrides_and_negations():
  parser = cli.parser("test", "out")
  cli.add_data_flags(parser, "files", "data")
  cli.add_variant_flags(parser, ["A", "B-<k>"])
  args = parser.parse_args(
    ["--workdir=w", "--variants=A, B-2", "--seeds=0,1", "--no_download", "--no_progress"]
  )
  assert cli.overrides(args, cli.VARIANT_FIELDS) == {
    "variants": ("A", "B-2"),
    "seeds": (0, 1),
    "download": False,
    "progress": False,
  }
  assert isinstance(args, argparse.Namespace) and args.config == "default"


def test_cli_run_reports_bad_settings_without_a_traceback(capsys):
  args = types.SimpleNamespace(config="nope", workdir="w")
  status = cli.run(
    args, example="mnist", fields=(), check=lambda c: None, experiment=lambda c, w: None
  )
  assert status == 2
  err = capsys.readouterr().err
  assert "Unknown config 'nope'" in err and "Traceback" not in err
