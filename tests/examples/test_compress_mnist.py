"""Tests of the compress_mnist example on tiny synthetic data.

The sweep end to end (an own baseline, trained one tiny epoch and saved with
orbax, then loaded back as a checkpoint), matched budgets, exactness of
compression at full rank, freezing, and the command line's errors.
"""

# ruff: noqa: E402 (the repository root goes on sys.path first)
from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import chex
import jax
import numpy as np
import pytest
from flax import nnx

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
  sys.path.insert(0, str(REPO))

# pylint: disable=g-import-not-at-top,wrong-import-position
import kfc_jax
from examples._common import loop, tfds_data
from examples.compress_mnist import head, models, train
from examples.compress_mnist import main as cm_main
from examples.compress_mnist.configs import default
from examples.mnist import models as mnist_models

# pylint: enable=g-import-not-at-top,wrong-import-position


def _split(rng, n):
  return (
    rng.integers(0, 256, (n, 28, 28, 1), dtype=np.uint8),
    rng.integers(0, 10, n).astype(np.int32),
  )


def _data(seed=0, n=16):
  rng = np.random.default_rng(seed)
  return tfds_data.Splits(_split(rng, n), _split(rng, n), _split(rng, n))


def _config(**overrides) -> default.Config:
  base = dict(
    seeds=(0,),
    kfc_ranks=(1,),
    finetune_epochs=1,
    batch_size=8,
    eval_batch_size=8,
    baseline_epochs=1,
  )
  base.update(overrides)
  return dataclasses.replace(default.get_config(), **base)


@pytest.fixture(scope="module")
def baseline():
  """An untrained Baseline CNN; the code under test compresses copies of it."""
  return models.create_baseline(seed=0)


def _images(n=4):
  return head.preprocess(_split(np.random.default_rng(1), n)[0])


def test_matched_budgets_are_equal_within_a_few_percent(baseline):
  budgets = models.matched_budgets(default.get_config())
  assert [b.kfc_rank for b in budgets] == [1, 2, 6, 12, 24]
  assert [b.kfc_params for b in budgets] == [2_084 * r for r in (1, 2, 6, 12, 24)]
  assert [b.low_rank for b in budgets] == [4, 8, 23, 46, 92]
  for b in budgets:
    assert b.low_rank_params == b.low_rank * (288 + 256)
    assert 0 <= b.mismatch_pct < 4.5  # Never fewer for low rank than for KFC.
  # The compressed layers really have those sizes (bias on top of both).
  model = baseline
  for b in budgets[:1]:
    sizes = {}
    for method in ("kfc_nkp", "low_rank_svd", "kfc_scratch"):
      new, report = models.build_compressed(method, b, model, config=default.get_config(), seed=0)
      sizes[method] = models.fc_params(new)
      if report is not None:
        assert report.rows[0].params_after == sizes[method][0]
    assert sizes["kfc_nkp"] == sizes["kfc_scratch"] == (b.kfc_params + 256, b.kfc_params)
    assert sizes["low_rank_svd"] == (b.low_rank_params + 256, b.low_rank_params)
  assert type(model.fc).__name__ == "Linear"  # Compressing copies.


def test_the_mnist_examples_checkpoints_fit_the_baseline(tmp_path):
  """Its Baseline saved with orbax loads here: the same parameter tree."""
  mnist = mnist_models.MnistCNN("Baseline", rngs=nnx.Rngs(3))
  params = loop.params_on_host(mnist)
  loop.save_params(tmp_path / "seed_0", params)
  restored = models.restore_baseline(models.checkpoint_path(tmp_path, 0), seed=0)
  chex.assert_trees_all_equal(loop.params_on_host(restored), params)


def test_compressing_at_full_rank_keeps_the_logits(baseline):
  model = baseline
  x = _images()
  expected = model(x)
  config = dataclasses.replace(default.get_config(), kfc_ranks=(36,))
  full = models.Budget(kfc_rank=36, low_rank=256, kfc_params=36 * 2_084, low_rank_params=256 * 544)
  for method in ("kfc_nkp", "low_rank_svd"):
    new, report = models.build_compressed(method, full, model, config=config, seed=0)
    assert report.rows[0].relative_error < 1e-5
    chex.assert_trees_all_close(new(x), expected, atol=2e-5, rtol=1e-5)
  # The head on cached features is the model's own forward pass.
  chex.assert_trees_all_close(head.head_logits(model, model.features(x)), expected, atol=1e-6)


@pytest.mark.parametrize("finetune", ["fc", "head"])
def test_finetune_step_trains_only_what_it_should(finetune, baseline):
  budget = models.matched_budgets(_config())[0]
  model, _ = models.build_compressed("kfc_nkp", budget, baseline, config=_config(), seed=0)
  before = jax.device_get(nnx.state(model, nnx.Param))
  optimizer = nnx.Optimizer(model, loop.adam_with_l2(1e-2, 1e-4), wrt=models.trainable(finetune))
  feats = np.asarray(model.features(_images(8)))
  labels = np.arange(8, dtype=np.int32)
  loss = head.head_train_step(model, optimizer, feats, labels)
  assert np.isfinite(loss)
  after = jax.device_get(nnx.state(model, nnx.Param))
  for name in ("convs", "fc", "classifier"):
    changed = not all(
      np.array_equal(a, b)
      for a, b in zip(jax.tree.leaves(before[name]), jax.tree.leaves(after[name]), strict=True)
    )
    frozen = name == "convs" or (name == "classifier" and finetune == "fc")
    assert changed != frozen, (name, finetune)
  # "all" trains every parameter, the conv stack included.
  assert "convs" in nnx.state(model, models.trainable("all"))
  assert "convs" not in nnx.state(model, models.trainable("head"))


def test_sweep_end_to_end_then_again_from_its_checkpoint(tmp_path, capsys):
  data = _data()
  config = _config(methods=("kfc_nkp", "low_rank_svd", "kfc_scratch"))
  results = train.run_sweep(config, tmp_path / "own", data=data)
  saved = json.loads((tmp_path / "own" / "results.json").read_text())
  assert saved["summary"] == json.loads(json.dumps(results["summary"]))
  assert len(saved["runs"]) == 3
  for r in saved["runs"]:
    assert 0 <= r["test_error"] <= 100 and 0 <= r["before_test_error"] <= 100
    assert r["steps"] == 16 // 8 and r["best_epoch"] == 1
    assert (r["relative_error"] is None) == (r["method"] == "kfc_scratch")
  (base,) = saved["baselines"]
  assert base["trained_here"] and Path(base["checkpoint"]).is_dir()
  assert base["finetuned"]["steps"] == 2  # The control: dense, fine-tuned alike.
  assert {(v["kfc_rank"], v["method"]) for v in saved["summary"]["vs_dense"]} == {
    (1, "kfc_nkp"),
    (1, "low_rank_svd"),
    (1, "kfc_scratch"),
  }
  assert {(p["kfc_rank"], p["versus"]) for p in saved["summary"]["paired"]} == {
    (1, "low_rank_svd"),
    (1, "kfc_scratch"),
  }
  table = (tmp_path / "own" / "table.md").read_text()
  assert "| KFC, NKP init" in table and "2,340 (96.8%)" in table  # 2,084 + 256.
  assert "| Low rank, SVD init" in table and "2,432 (96.7%)" in table  # k = 4.
  png = (tmp_path / "own" / "test_error_vs_fc_params.png").read_bytes()
  assert png.startswith(b"\x89PNG") and len(png) > 10_000
  out = capsys.readouterr().out
  assert "Paired differences" in out and "fine-tuned dense" in out

  # The baseline's orbax checkpoint, loaded: the same errors before fine-tuning.
  checkpoints = str(Path(base["checkpoint"]).parent)  # .../Baseline/seed_0
  again = train.run_sweep(
    dataclasses.replace(
      config, baseline_checkpoint=checkpoints, methods=("kfc_nkp",), finetune_baseline=False
    ),
    tmp_path / "loaded",
    data=data,
  )
  assert again["baselines"][0]["test_error"] == base["test_error"]
  assert again["runs"][0]["before_test_error"] == saved["runs"][0]["before_test_error"]


def test_command_line_rejects_bad_settings(tmp_path, capsys):
  assert cm_main.main([f"--workdir={tmp_path}", "--methods=kfc,low_rank_svd"]) == 2
  assert "unknown methods" in capsys.readouterr().err
  assert cm_main.main([f"--workdir={tmp_path}", "--kfc_ranks=37"]) == 2
  assert "rank" in capsys.readouterr().err
  (tmp_path / "ckpt" / "seed_0").mkdir(parents=True)
  assert (
    cm_main.main(
      [f"--workdir={tmp_path}", "--seeds=0,1", f"--baseline_checkpoint={tmp_path / 'ckpt'}"]
    )
    == 2
  )
  err = capsys.readouterr().err
  assert "seed 1" in err and "seed_0" in err
  with pytest.raises(ValueError, match="finetune"):
    train.check_config(_config(finetune="conv"))
  assert isinstance(
    models.policy_for("low_rank_svd", models.matched_budgets(_config())[0], _config()),
    kfc_jax.CompressionPolicy,
  )
