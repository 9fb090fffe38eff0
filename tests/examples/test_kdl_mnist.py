"""Tests of the KDL MNIST example (examples/kdl_mnist): one train step and
one evaluation on tiny synthetic data, the paper's parameter counts, the
report and the command line's errors."""

# ruff: noqa: E402 (the repository root goes on sys.path first)
from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
  sys.path.insert(0, str(REPO))

# pylint: disable=g-import-not-at-top,wrong-import-position
import kfc_jax
from examples._common import pipeline, tfds_data
from examples.kdl_mnist import main as kdl_main
from examples.kdl_mnist import models, train
from examples.kdl_mnist.configs import default, paper

# pylint: enable=g-import-not-at-top,wrong-import-position


def _split(rng, n):
  return (
    rng.integers(0, 256, (n, 28, 28, 1), dtype=np.uint8),
    rng.integers(0, 10, n).astype(np.int32),
  )


def _config(**overrides) -> default.Config:
  base = dict(progress=False, batch_size=8, eval_batch_size=8, log_every=1)
  base.update(overrides)
  return dataclasses.replace(default.get_config(), **base)


def test_param_counts_are_the_papers():
  # Paper: KDL rank 1 with 6,534 parameters; dense MLP with 1.24M.
  assert train.param_count("KDL-Rank-1") == 6_534
  assert train.param_count("Dense") == 1_238_730
  assert train.param_count("KDL-Rank-3") == 3 * 6_534
  model = train.create_model("KDL-Rank-1")
  assert all(isinstance(layer, kfc_jax.nnx.KDL) for layer in model.layers)
  assert [layer.out_features for layer in model.layers] == [784, 784, 10]


def test_unknown_variant_lists_the_valid_ones(capsys, tmp_path):
  with pytest.raises(ValueError, match="Valid variants: Dense, KDL-Rank-<r>"):
    models.MLP("KDL-Rank-0", rngs=nnx.Rngs(0))
  assert kdl_main.main(["--workdir", str(tmp_path), "--variants", "Dense,KFC"]) == 2
  assert "Unknown variant 'KFC'" in capsys.readouterr().err
  for config in (default.get_config(), paper.get_config()):
    train.check_config(config)
  assert paper.get_config().epochs == 20


@pytest.mark.parametrize("variant", ["KDL-Rank-1", "Dense"])
def test_train_step_and_eval(variant):
  mesh = pipeline.make_data_mesh()
  model = train.create_model(variant, seed=0)
  optimizer = train.create_optimizer(model, _config(learning_rate=1e-2))
  train.replicate((model, optimizer), mesh)
  images, labels = _split(np.random.default_rng(0), 16)
  batch = jax.device_put({"image": images, "label": labels}, pipeline.batch_sharding(mesh))
  before = train.evaluate(model, images, labels, batch_size=8, mesh=mesh)
  params = jax.device_get(nnx.state(model, nnx.Param))
  sums = jax.device_get(train.train_step(model, optimizer, batch))
  assert sums["count"] == 16 and np.isfinite(sums["loss"])
  moved = jax.device_get(nnx.state(model, nnx.Param))
  for old, new in zip(jax.tree.leaves(params), jax.tree.leaves(moved), strict=True):
    assert not np.allclose(old, new)  # Every factor and bias is trained.
  for _ in range(15):
    train.train_step(model, optimizer, batch)
  after = train.evaluate(model, images, labels, batch_size=8, mesh=mesh)
  assert after["count"] == 16
  assert after["loss"] < 0.5 * before["loss"]  # It fits the batch.


def test_train_and_evaluate_writes_the_report(tmp_path):
  rng = np.random.default_rng(1)
  data = tfds_data.Splits(train=_split(rng, 16), validation=_split(rng, 8), test=_split(rng, 12))
  results = train.train_and_evaluate(
    _config(variants=("KDL-Rank-1",), epochs=2), tmp_path, data=data
  )
  on_disk = json.loads((tmp_path / "results.json").read_text())
  assert on_disk["summary"] == results["summary"]
  (run,) = on_disk["runs"]
  assert run["model_params"] == 6_534 and run["epochs"] == 2
  assert 0 <= run["test_accuracy"] <= 100 and len(run["history"]) == 2
  table = (tmp_path / "table.md").read_text()
  assert "| KDL-Rank-1" in table and "96.94" in table and "6,534" in table
