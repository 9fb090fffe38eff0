"""Tests of the ResNet/GKPD example (examples/resnet_gkpd): parameter counts
by formula, forward shapes, GKPD compression (5x on the block convs, exact at
full rank), a fine-tune step, the whole experiment on ``tfds.testing.mock_data``
(CIFAR-10) and a train step on mocked MNIST, the real MNIST files when TFDS
has them prepared, and the error messages.

Most tests use ResNet-8 (one block per stage: every stage, shortcut and
compression path of ResNet-20, a third of the compile time)."""

# ruff: noqa: E402 (the repository root goes on sys.path first)
from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import kfc_jax

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
  sys.path.insert(0, str(REPO))

# pylint: disable=g-import-not-at-top,wrong-import-position
from examples._common import mnist_data as mnist_input
from examples._common import pipeline, tfds_data
from examples.resnet_gkpd import input_pipeline, models, recovery, train
from examples.resnet_gkpd import main as resnet_main
from examples.resnet_gkpd.configs import default

# pylint: enable=g-import-not-at-top,wrong-import-position


def _expected(depth: int, in_channels: int) -> int:
  """He et al.'s count, written out: 3x3 conv weights, BatchNorm scale and
  bias, no conv biases, parameter-free (option A) shortcuts."""
  n = (depth - 2) // 6
  conv = lambda c_in, c_out: 9 * c_in * c_out + 2 * c_out  # + its BatchNorm
  stem = conv(in_channels, 16)
  stage1 = 2 * n * conv(16, 16)
  stage2 = conv(16, 32) + (2 * n - 1) * conv(32, 32)
  stage3 = conv(32, 64) + (2 * n - 1) * conv(64, 64)
  return stem + stage1 + stage2 + stage3 + 64 * 10 + 10


def _config(**overrides) -> default.Config:
  base = dict(
    depth=8,
    progress=False,
    batch_size=8,
    eval_batch_size=8,
    log_every=1,
    warmup_steps=0,
    prefetch=1,
  )
  base.update(overrides)
  return dataclasses.replace(default.get_config(), **base)


@pytest.mark.parametrize(
  "depth,in_channels,count", [(20, 3, 269_722), (20, 1, 269_434), (32, 3, 464_154), (8, 3, 75_290)]
)
def test_param_counts_by_formula(depth, in_channels, count):
  model = nnx.eval_shape(lambda: models.ResNet(depth, in_channels=in_channels, rngs=nnx.Rngs(0)))
  assert models.count_params(model) == _expected(depth, in_channels) == count
  assert models.expected_params(depth, in_channels) == count
  if in_channels == 3 and depth in (20, 32):
    # He et al., Table 6: ResNet-20 0.27M, ResNet-32 0.46M.
    assert round(count / 1e6, 2) == {20: 0.27, 32: 0.46}[depth]
  # The block convs are what GKPD compresses: all but 9 * C_in * 16 + the
  # BatchNorms and the classifier.
  assert len(models.block_conv_paths(model)) == 2 * (depth - 2) // 6 * 3


def test_forward_shapes_resnet20():
  model = train.create_model(20, in_channels=3, seed=0)
  x = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
  h = nnx.relu(model.stem_bn(model.stem(x), use_running_average=True))
  shapes = []
  for block in model.blocks:
    h = block(h, train=False)
    shapes.append(h.shape)
  assert shapes == [(2, 32, 32, 16)] * 3 + [(2, 16, 16, 32)] * 3 + [(2, 8, 8, 64)] * 3
  chex.assert_shape(model(x), (2, 10))


def test_bad_depth_and_channels():
  with pytest.raises(ValueError, match=r"depth must be 6n\+2.*got 21"):
    models.ResNet(21, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="in_channels"):
    models.ResNet(20, in_channels=0, rngs=nnx.Rngs(0))


def test_blocks_policy_compresses_resnet20_5x():
  model = train.create_model(20, in_channels=3, seed=0)
  policy = models.compression_policy(model, compression=5.0, split="blocks")
  small, report = kfc_jax.compress(model, policy)
  assert [r.path for r in report.rows] == sorted(models.block_conv_paths(model))
  for row in report.rows:
    assert row.after.startswith("KroneckerConv") and "r=3" in row.after
    assert 4.8 <= row.params_before / row.params_after <= 5.35, row
  assert report.params_before == 267_264 == models.conv_params(model)
  assert report.params_after == models.conv_params(small)
  assert 5.0 < report.params_before / report.params_after < 5.3
  # Stem, BatchNorms and classifier unchanged; the original left alone.
  assert models.count_params(small) == 269_722 - 267_264 + report.params_after
  assert isinstance(model.blocks[0].conv1, nnx.Conv)
  assert isinstance(small.stem, nnx.Conv)


def test_full_rank_compression_is_exact():
  model = train.create_model(8, in_channels=3, seed=0)
  # Train-mode calls give the BatchNorms non-trivial statistics.
  x = jax.random.normal(jax.random.key(1), (4, 32, 32, 3))
  model(x, train=True)
  rules = []
  for path in models.block_conv_paths(model):
    block, name = path.split("/")[1:]
    _, _, c_in, c_out = getattr(model.blocks[int(block)], name).kernel.shape
    # 3x3 (x) 1x1 channel blocks of 4: full rank is min(9 c_in c_out / 16, 16).
    rules.append(
      kfc_jax.LayerRule(path, a_shape=(3, 3, c_in // 4, c_out // 4), b_shape=(1, 1, 4, 4), rank=16)
    )
  small, report = kfc_jax.compress(model, kfc_jax.CompressionPolicy(rules))
  assert max(r.relative_error for r in report.rows) < 1e-5
  want, got = model(x), small(x)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * float(jnp.abs(want).max()))


def test_suggest_policy_reaches_the_budget_per_layer():
  model = train.create_model(8, in_channels=1, seed=0)
  small, report = train.compress(model, _config(split="suggest"))
  assert len(report.rows) == 6
  for row in report.rows:
    assert row.params_before / row.params_after >= 5.0, row
    assert 0 < row.relative_error < 1
  assert models.conv_params(small) == report.params_after


def test_finetune_step_moves_every_parameter():
  config = _config(split="blocks")
  model = train.create_model(8, in_channels=1, seed=0)
  small, _ = train.compress(model, config)
  mesh = pipeline.make_data_mesh()
  optimizer = train.create_optimizer(small, config, 10, finetune=True)
  train.replicate((small, optimizer), mesh)
  rng = np.random.default_rng(0)
  batch = jax.device_put(
    {
      "image": rng.integers(0, 256, (8, 32, 32, 1), dtype=np.uint8),
      "label": rng.integers(0, 10, 8).astype(np.int32),
    },
    pipeline.batch_sharding(mesh),
  )
  before = jax.device_get(nnx.state(small, nnx.Param))
  stats = jax.device_get(nnx.state(small, nnx.BatchStat))
  sums = jax.device_get(train.train_step(small, optimizer, batch))
  assert sums["count"] == 8 and 0.5 < sums["loss"] / 8 < 10
  after = jax.device_get(nnx.state(small, nnx.Param))
  factors = 0
  for (path, old), new in zip(
    jax.tree_util.tree_leaves_with_path(before), jax.tree.leaves(after), strict=True
  ):
    assert not np.allclose(old, new), f"{path} did not move"
    factors += "conv" in jax.tree_util.keystr(path)
  assert factors == 12  # A and B of six KroneckerConvs.
  moved = jax.tree.map(
    lambda a, b: not np.allclose(a, b), stats, jax.device_get(nnx.state(small, nnx.BatchStat))
  )
  assert all(jax.tree.leaves(moved))  # BatchNorm statistics updated too.


def test_train_and_evaluate_on_mock_cifar10(tmp_path, monkeypatch):
  tfds = tfds_data.import_tfds()
  # Mocked TFDS never downloads; this only gets past our offline check.
  monkeypatch.setattr(tfds_data, "network_available", lambda *a, **k: True)
  config = _config(
    dataset="cifar10",
    num_train=16,
    split="blocks",
    epochs=1,
    finetune_epochs=1,
    data_dir=str(tmp_path / "tfds"),
    manual_dir=str(tmp_path / "no_files"),
  )
  with tfds.testing.mock_data(num_examples=24):
    data = input_pipeline.load(
      "cifar10", num_train=16, num_test=8, data_dir=config.data_dir, manual_dir=config.manual_dir
    )
  chex.assert_shape(data.train[0], (16, 32, 32, 3))
  chex.assert_shape(data.test[0], (8, 32, 32, 3))
  for x, y in (data.train, data.test):
    assert x.dtype == np.uint8 and y.dtype == np.int32
    assert y.min() >= 0 and y.max() < 10
  results = train.train_and_evaluate(config, tmp_path / "work", data=data)
  saved = json.loads((tmp_path / "work" / "results.json").read_text())
  assert [p["phase"] for p in saved["phases"]] == [
    "dense",
    "compressed (no fine-tune)",
    "fine-tuned",
  ]
  dense, compressed, tuned = saved["phases"]
  assert dense["params"] == 75_290
  assert 5.0 < dense["conv_params"] / compressed["conv_params"] < 5.3
  assert compressed["params"] == tuned["params"] < dense["params"]
  for p in saved["phases"]:
    assert p["test_accuracy"] * 8 / 100 == pytest.approx(
      round(p["test_accuracy"] * 8 / 100)
    )  # k/8 of the mocked test set.
  assert [h["steps"] for h in saved["history"]["dense"]] == [2]
  assert results["phases"][0]["test_accuracy"] == dense["test_accuracy"]
  report = (tmp_path / "work" / "report.md").read_text()
  assert "| fine-tuned |" in report and "92.55" in report
  assert "KroneckerConv" in (tmp_path / "work" / "compression.txt").read_text()


def test_mock_mnist_is_padded_and_trains(tmp_path, monkeypatch):
  tfds = tfds_data.import_tfds()
  monkeypatch.setattr(tfds_data, "network_available", lambda *a, **k: True)
  with tfds.testing.mock_data(num_examples=16):
    data = input_pipeline.load(
      "mnist", num_train=8, data_dir=str(tmp_path / "tfds"), manual_dir=str(tmp_path / "no_files")
    )
  chex.assert_shape(data.train[0], (8, 32, 32, 1))
  chex.assert_shape(data.test[0], (16, 32, 32, 1))
  assert data.channels == 1
  for x in (data.train[0], data.test[0]):  # A 2-pixel zero frame.
    assert not x[:, :2].any() and not x[:, -2:].any()
    assert not x[:, :, :2].any() and not x[:, :, -2:].any()
  mesh = pipeline.make_data_mesh()
  config = _config(dataset="mnist")
  model = train.create_model(config.depth, in_channels=1, seed=0)
  optimizer = train.create_optimizer(model, config, 1)
  train.replicate((model, optimizer), mesh)
  record = train.train_epoch(
    model, optimizer, *data.train, config=config, mesh=mesh, rng=np.random.default_rng(0)
  )
  assert record["steps"] == 1 and record["count"] == 8
  assert np.isfinite(record["loss"]) and 0 <= record["accuracy"] <= 100


@pytest.mark.slow
def test_real_mnist_prepared_offline(tmp_path):
  """The project's MNIST files through the example's loader (TFDS prepares
  them offline into a fresh data dir: ~30 s of one core)."""
  if not mnist_input.PROJECT_MANUAL_DIR.is_dir():
    pytest.skip(f"{mnist_input.PROJECT_MANUAL_DIR} does not exist")
  data = input_pipeline.load(
    "mnist",
    num_train=64,
    num_test=64,
    data_dir=str(tmp_path / "tfds"),
    manual_dir=str(mnist_input.PROJECT_MANUAL_DIR),
    download=False,
  )
  chex.assert_shape(data.train[0], (64, 32, 32, 1))
  chex.assert_shape(data.test[0], (64, 32, 32, 1))
  x = data.train[0]
  assert x.dtype == np.uint8 and x.max() == 255
  assert not x[:, :2].any() and not x[:, :, -2:].any()
  assert 20 < x.mean() < 30  # MNIST's 33.3 diluted by the frame: 25.5.
  assert len(np.unique(data.train[1])) == 10


def test_augment_crops_and_flips():
  rng = np.random.default_rng(0)
  images = rng.integers(1, 256, (64, 32, 32, 3), dtype=np.uint8)
  out = input_pipeline.augment(images, rng)
  assert out.shape == images.shape and out.dtype == np.uint8
  # Every output is a shifted (maybe mirrored) window of its padded input.
  padded = np.pad(images, ((0, 0), (4, 4), (4, 4), (0, 0)))
  for i in range(8):
    hits = [
      (dy, dx, f)
      for dy in range(9)
      for dx in range(9)
      for f in (False, True)
      if np.array_equal(
        padded[i, dy : dy + 32, dx : dx + 32][:, ::-1]
        if f
        else padded[i, dy : dy + 32, dx : dx + 32],
        out[i],
      )
    ]
    assert hits, i


def test_config_errors(tmp_path, capsys):
  train.check_config(default.get_config())
  for field, value, match in (
    ("dataset", "svhn", "dataset must be one of"),
    ("depth", 21, "depth must be 6n\\+2"),
    ("split", "rows", "split must be one of"),
    ("compression", 0.5, "compression must be >= 1"),
    ("epochs", 0, "epochs must be >= 1"),
    ("num_train", -1, "num_train must be a positive int"),
  ):
    with pytest.raises(ValueError, match=match):
      train.check_config(dataclasses.replace(default.get_config(), **{field: value}))
  with pytest.raises(ValueError, match="dataset must be one of"):
    input_pipeline.load("svhn")
  with pytest.raises(ValueError, match="images must be"):
    input_pipeline.pad_to_32(np.zeros((1, 40, 40, 1), np.uint8))
  assert resnet_main.main(["--workdir", str(tmp_path), "--depth", "21"]) == 2
  assert "depth must be 6n+2" in capsys.readouterr().err


def test_missing_cifar10_says_how_to_get_it(tmp_path, monkeypatch, capsys):
  monkeypatch.setattr(tfds_data, "network_available", lambda *a, **k: False)
  status = resnet_main.main(
    [
      "--workdir",
      str(tmp_path / "work"),
      "--dataset",
      "cifar10",
      "--data_dir",
      str(tmp_path / "tfds"),
      "--manual_dir",
      str(tmp_path / "manual"),
      "--no_progress",
    ]
  )
  err = capsys.readouterr().err
  assert status == 2
  assert "is not prepared" in err and "cifar-10-binary.tar.gz" in err
  assert input_pipeline.CIFAR10_MANUAL_DIR_ENV in err
  assert "Traceback" not in err


# ----------------------------------------------------------------------------
# recovery.py: GKPD weight-only and data-aware, BN recalibration, distillation.
# ----------------------------------------------------------------------------


def _tiny_splits(n_train: int = 16, n_test: int = 8) -> input_pipeline.Splits:
  rng = np.random.default_rng(0)
  images = lambda n: rng.integers(0, 256, (n, 32, 32, 1), dtype=np.uint8)
  labels = lambda n: rng.integers(0, 10, n).astype(np.int32)
  return input_pipeline.Splits(
    train=(images(n_train), labels(n_train)), test=(images(n_test), labels(n_test))
  )


def test_recalibration_sets_batchnorm_to_the_batch_statistics():
  config = _config(calibration_batches=2)
  data = _tiny_splits()
  dense = train.create_model(8, in_channels=1, seed=0)
  small, _ = recovery.compress_gkpd(dense, config)
  calibration = recovery.calibration_batches(config, data.train[0])
  assert [x.shape for x in calibration] == [(8, 32, 32, 1)] * 2
  new = recovery.recalibrate(small, calibration)
  # blocks/0/bn1 normalises conv1's outputs; its inputs come through the
  # stem with the stem's BatchNorm on each batch's own statistics.
  outs = []
  for x in calibration:
    h = small.stem(jnp.asarray(x))
    mu, var = h.mean((0, 1, 2)), h.var((0, 1, 2))
    bn = small.stem_bn
    h = nnx.relu((h - mu) / jnp.sqrt(var + bn.epsilon) * bn.scale[...] + bn.bias[...])
    outs.append(np.asarray(small.blocks[0].conv1(h), np.float64))
  z = np.concatenate(outs).reshape(-1, 16)
  bn1 = new.blocks[0].bn1
  np.testing.assert_allclose(bn1.mean[...], z.mean(0), rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(bn1.var[...], z.var(0), rtol=1e-3, atol=1e-4)
  # The stale statistics were different, and the input model is unchanged.
  assert not np.allclose(small.blocks[0].bn1.mean[...], z.mean(0), atol=1e-2)
  assert np.allclose(small.blocks[0].bn1.var[...], 1.0)


def _first_block_only(monkeypatch):
  """Compress only blocks/0 (16 -> 16 channels): the data-aware fits of the
  wider convs take minutes of CPU, too long for a smoke test."""
  policy = models.compression_policy

  def first_block(model, **kwargs):
    rules = [
      dataclasses.replace(r, pattern=r"blocks/0/conv[12]") for r in policy(model, **kwargs).rules
    ]
    return kfc_jax.CompressionPolicy(rules)

  monkeypatch.setattr(models, "compression_policy", first_block)


def test_data_aware_output_error_is_at_most_weight_only(monkeypatch):
  _first_block_only(monkeypatch)
  config = _config(calibration_batches=2)
  data = _tiny_splits()
  dense = train.create_model(8, in_channels=1, seed=0)
  calibration = recovery.calibration_batches(config, data.train[0])
  covs = kfc_jax.recovery.collect_input_covariances(
    dense, calibration, models.block_conv_paths(dense)
  )
  weight_only, weight_report = recovery.compress_gkpd(dense, config)
  # At the same splits and ranks (the fast path): only the objective differs.
  aware, report = kfc_jax.compress(
    dense, recovery.same_splits_policy(weight_only), calibration=calibration
  )
  assert [r.after for r in report.rows] == [r.after for r in weight_report.rows]
  before = recovery.output_errors(dense, weight_only, covs)
  after = recovery.output_errors(dense, aware, covs)
  assert sorted(before) == sorted(after) == ["blocks/0/conv1", "blocks/0/conv2"]
  for path in before:
    assert 0 < after[path] <= before[path] * (1 + 1e-6), path
  assert sum(after.values()) < sum(before.values())
  # Same budget: the same factor shapes, 5.5x on each of the two convs.
  assert models.conv_params(aware) == models.conv_params(weight_only)
  assert (
    models.count_params(dense.blocks[0].conv1) / models.count_params(aware.blocks[0].conv1) >= 5
  )


def test_recovery_stages_run_and_resume(tmp_path, monkeypatch):
  _first_block_only(monkeypatch)
  config = _config(
    epochs=1,
    num_train=16,
    calibration_batches=2,
    distill_steps=1,
    eval_batch_size=8,
    data_aware_splits="weight-only",
  )
  data = _tiny_splits()
  results = recovery.run(config, tmp_path, data=data)
  names = [r["stage"] for r in results["stages"]]
  assert names == ["dense"] + [v + s for v in recovery.variants(config) for s in recovery.STEPS]
  assert names[4] == "data-aware GKPD (weight-only splits)"
  dense = results["stages"][0]
  # Only blocks/0 compressed, at the same shapes in both variants.
  assert len({r["conv_params"] for r in results["stages"][1:]}) == 1
  for r in results["stages"][1:]:
    assert r["conv_params"] < dense["conv_params"] - 2 * 2_304 * 0.8
    assert r["test_accuracy"] * 8 / 100 == pytest.approx(round(r["test_accuracy"] * 8 / 100))
  bn_only = results["stages"][2]
  assert bn_only["params"] == results["stages"][1]["params"]
  table = (tmp_path / "recovery.md").read_text()
  assert "| data-aware GKPD (weight-only splits) + distillation |" in table
  # A rerun with the same settings trains and compresses nothing.
  monkeypatch.setattr(recovery, "compress_gkpd", _must_not_run)
  monkeypatch.setattr(train, "train_epoch", _must_not_run)
  again = recovery.run(config, tmp_path, data=data)
  assert again["stages"] == json.loads(json.dumps(results["stages"]))


def _must_not_run(*args, **kwargs):
  raise AssertionError("a finished stage ran again")


def test_recovery_config_errors():
  with pytest.raises(ValueError, match="distill_steps"):
    recovery.check_config(_config(distill_steps=0))
  with pytest.raises(ValueError, match="distill_label_weight"):
    recovery.check_config(_config(distill_label_weight=2.0))
  with pytest.raises(ValueError, match="data_aware_splits"):
    recovery.check_config(_config(data_aware_splits="best"))
