"""Tests of the MNIST example's full table and offset ablation (issue 13).

The nine-variant ``paper`` config and the committed ``paper12`` one, the
ablation arms (each the control with one change), and one tiny train step
per variant the committed table never trained and per ablation option.
"""

# ruff: noqa: E402 (the repository root goes on sys.path first)
from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
  sys.path.insert(0, str(REPO))

# pylint: disable=g-import-not-at-top,wrong-import-position
from examples._common import configs, loop, pipeline, reporting
from examples.mnist import models, train
from examples.mnist.configs import _ablation, default, paper, paper12

# pylint: enable=g-import-not-at-top,wrong-import-position

ARMS = {
  "epochs20": {"epochs": 20},
  "epochs40": {"epochs": 40},
  "mean": {"input_scaling": "mean"},
  "valid_stack": {"conv_stack": "valid"},
  "lecun_init": {"kernel_init": "lecun_normal"},
  "gaussian_init": {"kernel_init": "gaussian_0.01"},
}


def test_paper_config_has_the_nine_rows_and_paper12_the_committed_table():
  config = paper.get_config()
  assert config.variants == (
    "Baseline",
    "Cut-96",
    "LowRank-96",
    "KFC-I",
    "KFC-II",
    "KFC-III",
    "KFC-IV",
    "KFC-Combined",
    "KFC-Rank-10",
  )
  assert (config.seeds, config.epochs, config.lr_schedule) == ((0, 1, 2), 20, "cosine")
  committed = reporting.load_json(train.COMMITTED_RESULTS)["config"]
  ours = dataclasses.asdict(paper12.get_config())
  assert {k: v for k, v in ours.items() if k in committed and k != "progress"} == {
    k: (tuple(v) if isinstance(v, list) else v) for k, v in committed.items() if k != "progress"
  }
  for config in (paper.get_config(), paper12.get_config()):
    train.check_config(config)


@pytest.mark.parametrize("arm", list(ARMS))
def test_each_ablation_arm_changes_one_thing(arm):
  config = configs.load_config_module(f"ablation_{arm}", "mnist").get_config()
  control = _ablation.arm()
  assert control.variants == ("Baseline",) and control.seeds == (0, 1, 2)
  assert control.epochs == 12
  changed = {
    k: v for k, v in dataclasses.asdict(config).items() if dataclasses.asdict(control)[k] != v
  }
  assert changed == ARMS[arm]
  train.check_config(config)


def test_bad_ablation_settings_are_named():
  with pytest.raises(ValueError, match="Unknown input_scaling 'zscore'"):
    train.check_config(dataclasses.replace(default.get_config(), input_scaling="zscore"))
  with pytest.raises(ValueError, match="Unknown conv_stack 'deep'"):
    train.check_config(dataclasses.replace(default.get_config(), conv_stack="deep"))


def test_valid_stack_and_mean_scaling():
  # 5x5 1->12, 5x5 12->20, 3x3 20->32, 3x3 32->32, each with its bias.
  conv = 25 * 12 + 12 + 25 * 12 * 20 + 20 + 9 * 20 * 32 + 32 + 9 * 32 * 32 + 32
  assert conv == 21_372
  counts = train.param_counts("Baseline", "valid")
  assert counts["model"] == conv + 288 * 256 + 256 + 2570
  model = train.create_model("KFC-II", conv_stack="valid")
  assert model.features(jnp.zeros((1, 28, 28, 1))).shape == (1, 3, 3, 32)
  images = jnp.asarray([[0, 255]], jnp.uint8)
  np.testing.assert_allclose(train.PREPROCESS["mean"](images), [[-0.1307, 1 - 0.1307]], rtol=1e-6)


def _one_step(model, preprocess):
  mesh = pipeline.make_data_mesh()
  config = dataclasses.replace(default.get_config(), batch_size=8)
  optimizer = loop.create_optimizer(model, config)
  rng = np.random.default_rng(0)
  batch = jax.device_put(
    {
      "image": rng.integers(0, 256, (8, 28, 28, 1), dtype=np.uint8),
      "label": rng.integers(0, 10, 8).astype(np.int32),
    },
    pipeline.batch_sharding(mesh),
  )
  before = jax.device_get(nnx.state(model, nnx.Param))
  sums = jax.device_get(loop.train_step(model, optimizer, batch, preprocess=preprocess))
  assert sums["count"] == 8 and 0.5 < sums["loss"] / 8 < 5  # ~ln(10).
  after = jax.device_get(nnx.state(model, nnx.Param))
  for (path, old), new in zip(
    jax.tree_util.tree_leaves_with_path(before), jax.tree.leaves(after), strict=True
  ):
    assert not np.allclose(old, new), f"{path} did not move"


# The variants the committed 12-epoch table never trained.
@pytest.mark.parametrize("variant", ["KFC-I", "KFC-III", "KFC-IV", "KFC-Rank-10"])
def test_one_step_of_each_new_variant(variant):
  assert variant in models.ALL_VARIANTS
  _one_step(train.create_model(variant, seed=1), train.preprocess)


@pytest.mark.parametrize("arm", ["mean", "valid_stack", "lecun_init", "gaussian_init"])
def test_one_step_of_each_ablation_option(arm):
  config = configs.load_config_module(f"ablation_{arm}", "mnist").get_config()
  model = train.create_model(
    "Baseline", seed=0, conv_stack=config.conv_stack, kernel_init=config.kernel_init
  )
  if arm == "gaussian_init":
    std = float(jnp.std(model.fc.kernel[...]))
    assert 0.009 < std < 0.011
  _one_step(model, train.PREPROCESS[config.input_scaling])


# ----------------------------------------------------------------------------
# examples/mnist/merge.py: one table from runs made in parts.
# ----------------------------------------------------------------------------


def _part(variants, seeds, **config_changes):
  """A results.json of fake runs (real parameter counts, made-up errors)."""
  config = dataclasses.replace(paper12.get_config(), variants=tuple(variants), seeds=tuple(seeds))
  config = dataclasses.replace(config, **config_changes)
  baseline = train.param_counts("Baseline", config.conv_stack)
  runs = [
    {
      "variant": v,
      "seed": s,
      **reporting.param_reductions(train.param_counts(v, config.conv_stack), baseline),
      "test_error": 0.5 + 0.1 * i + 0.01 * s,
      "best_epoch": 12,
      "train_time_per_epoch_s": 30.0,
    }
    for i, v in enumerate(variants)
    for s in seeds
  ]
  return {"config": dataclasses.asdict(config), "runs": runs}


def test_merge_joins_parts_in_variant_order():
  from examples.mnist import merge

  config, runs = merge.merge(
    [("b", _part(["KFC-IV", "Baseline"], [1])), ("a", _part(["Baseline", "Cut-96"], [0, 2]))]
  )
  # The paper's table order (models.ALL_VARIANTS), whatever the parts' order.
  assert [(r["variant"], r["seed"]) for r in runs] == [
    ("Baseline", 0),
    ("Baseline", 1),
    ("Baseline", 2),
    ("Cut-96", 0),
    ("Cut-96", 2),
    ("KFC-IV", 1),
  ]
  assert config.variants == ("Baseline", "Cut-96", "KFC-IV") and config.seeds == (0, 1, 2)
  summary = reporting.summarise_variants(runs)
  np.testing.assert_allclose(summary[0]["test_error_mean"], np.mean([0.5, 0.61, 0.52]))


def test_merge_refuses_other_protocols_and_repeated_runs():
  from examples.mnist import merge

  with pytest.raises(ValueError, match=r"different protocol.*epochs: 12 vs 20"):
    merge.merge([("a", _part(["Baseline"], [0])), ("b", _part(["KFC-I"], [0], epochs=20))])
  with pytest.raises(ValueError, match=r"Baseline seed 0 is in both a and b"):
    merge.merge([("a", _part(["Baseline"], [0])), ("b", _part(["Baseline"], [0, 1]))])
  with pytest.raises(ValueError, match="at least one"):
    merge.merge([])


def test_merge_reads_a_missing_field_as_its_default():
  from examples.mnist import merge

  old = _part(["Baseline"], [0])
  del old["config"]["input_scaling"]  # written before the field existed
  merge.merge([("old", old), ("new", _part(["KFC-I"], [0]))])
  with pytest.raises(ValueError, match="input_scaling: 'unit' vs 'mean'"):
    merge.merge([("old", old), ("new", _part(["KFC-I"], [0], input_scaling="mean"))])


def test_merge_command_writes_the_reports(tmp_path, capsys):
  from examples.mnist import merge

  paths = []
  for name, part in {"a": _part(["Baseline"], [0]), "b": _part(["KFC-II"], [0])}.items():
    paths.append(tmp_path / f"{name}.json")
    reporting.write_json(paths[-1], part)
  out = tmp_path / "merged"
  assert merge.main([f"--workdir={out}", *map(str, paths)]) == 0
  merged = reporting.load_json(out / "results.json")
  assert [r["variant"] for r in merged["summary"]] == ["Baseline", "KFC-II"]
  assert "KFC-II" in (out / "table.md").read_text()
  assert merge.main([f"--workdir={out}", str(tmp_path / "missing.json")]) == 2
  assert "no results.json" in capsys.readouterr().err
