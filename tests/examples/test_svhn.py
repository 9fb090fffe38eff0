"""Tests of the SVHN example (examples/svhn): the paper's parameter counts,
one train step and one evaluation end to end on ``tfds.testing.mock_data``
(SVHN cannot be downloaded here), and the error messages."""

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
from examples._common import pipeline, tfds_data
from examples.svhn import input_pipeline, models, train
from examples.svhn import main as svhn_main
from examples.svhn.configs import default, paper

# pylint: enable=g-import-not-at-top,wrong-import-position

_CONV = 558_216  # The conv stack.
_HEAD = 256 * 10 + 10  # The classifier.
# variant -> (layer params, layer params without bias, model params); KFC
# factor counts from docs/DESIGN.md ("KFC formulations") for a 5x5x256 map, O = 256.
EXPECTED_PARAMS = {
  "Baseline": (1_638_656, 1_638_400, 2_199_442),
  "Cut-128": (6400 * 128 + 128, 6400 * 128, _CONV + 819_328 + 1_290),
  "LowRank-128": (6400 * 128 + 128 * 256 + 256, 6400 * 128 + 128 * 256, _CONV + 852_224 + _HEAD),
  "KFC-II": (16_484 + 256, 16_484, _CONV + 16_740 + _HEAD),
  "KFC-Combined": (344_184 + 256, 344_184, _CONV + 344_440 + _HEAD),
  "KFC-Rank-10": (164_840 + 256, 164_840, _CONV + 165_096 + _HEAD),
}


def _config(**overrides) -> default.Config:
  base = dict(progress=False, save_checkpoints=False, batch_size=8, eval_batch_size=8, log_every=1)
  base.update(overrides)
  return dataclasses.replace(default.get_config(), **base)


@pytest.mark.parametrize("variant", list(EXPECTED_PARAMS))
def test_param_counts(variant):
  counts = train.param_counts(variant)
  assert (counts["layer"], counts["layer_weights"], counts["model"]) == EXPECTED_PARAMS[variant]


def test_counts_reach_the_papers():
  base = train.param_counts("Baseline")
  assert abs(base["model"] - 2_200_000) / 2_200_000 < 0.001  # Paper: 2.20M.
  # The paper's reductions of the FC layer (its percentages are computed
  # from rounded counts, hence the tolerance).
  for variant, pct in (("KFC-II", 99.0), ("KFC-Combined", 79.3), ("KFC-Rank-10", 89.6)):
    weights = train.param_counts(variant)["layer_weights"]
    assert abs(100 * (1 - weights / base["layer_weights"]) - pct) < 0.5


def test_unknown_variant_and_configs(tmp_path, capsys):
  with pytest.raises(ValueError, match="Unknown variant 'KFC-V'") as info:
    models.SvhnCNN("KFC-V", rngs=nnx.Rngs(0))
  for valid in ("Baseline", "Cut-<k>", "LowRank-<k>", "KFC-II", "KFC-Combined", "KFC-Rank-<r>"):
    assert valid in str(info.value)
  assert svhn_main.main(["--workdir", str(tmp_path), "--variants", "Baseline,KFC-V"]) == 2
  assert "Unknown variant 'KFC-V'" in capsys.readouterr().err
  for config in (default.get_config(), paper.get_config()):
    train.check_config(config)
  assert set(models.PAPER_VARIANTS) <= set(paper.get_config().variants)


def test_train_step_moves_every_parameter():
  mesh = pipeline.make_data_mesh()
  # KFC-II as in the mock-TFDS test, which then reuses the compiled step.
  model = train.create_model("KFC-II", seed=0)
  optimizer = train.create_optimizer(model, _config())
  train.replicate((model, optimizer), mesh)
  rng = np.random.default_rng(0)
  batch = jax.device_put(
    {
      "image": rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8),
      "label": rng.integers(0, 10, 8).astype(np.int32),
    },
    pipeline.batch_sharding(mesh),
  )
  chex.assert_shape(model.features(train.preprocess(batch["image"])), (8, 5, 5, 256))
  before = jax.device_get(nnx.state(model, nnx.Param))
  sums = jax.device_get(train.train_step(model, optimizer, batch))
  assert sums["count"] == 8 and 0.5 < sums["loss"] / 8 < 5  # ~ln(10).
  after = jax.device_get(nnx.state(model, nnx.Param))
  for (path, old), new in zip(
    jax.tree_util.tree_leaves_with_path(before), jax.tree.leaves(after), strict=True
  ):
    assert not np.allclose(old, new), f"{path} did not move"


def test_train_and_evaluate_on_mock_tfds(tmp_path, monkeypatch):
  tfds = tfds_data.import_tfds()
  # Mocked TFDS never downloads; this only gets past our offline check.
  monkeypatch.setattr(tfds_data, "network_available", lambda *a, **k: True)
  config = _config(
    variants=("KFC-II",),
    epochs=1,
    num_validation=8,
    data_dir=str(tmp_path / "tfds"),
    manual_dir=str(tmp_path / "no_files"),
  )
  with tfds.testing.mock_data(num_examples=16):
    data = input_pipeline.load_svhn(
      data_dir=config.data_dir, manual_dir=config.manual_dir, num_validation=config.num_validation
    )
  for split in (data.train, data.validation, data.test):
    chex.assert_shape(split[0], (16, 32, 32, 3))
    assert split[0].dtype == np.uint8 and split[1].dtype == np.int32
    assert split[1].min() >= 0 and split[1].max() < 10
  results = train.train_and_evaluate(config, tmp_path / "work", data=data)
  saved = json.loads((tmp_path / "work" / "results.json").read_text())
  assert saved["summary"] == json.loads(json.dumps(results["summary"]))
  (r,) = saved["runs"]
  assert r["variant"] == "KFC-II" and r["best_epoch"] == 1
  assert r["model_params"] == EXPECTED_PARAMS["KFC-II"][2]
  assert r["layer_weight_reduction_pct"] == pytest.approx(100 * (1 - 16_484 / 1_638_400))
  assert r["test_error"] * 16 / 100 == pytest.approx(
    round(r["test_error"] * 16 / 100)
  )  # k/16 of the mocked test set.
  table = (tmp_path / "work" / "table.md").read_text()
  assert "| KFC-II" in table and "3.33" in table  # The paper's beside ours.
  png = (tmp_path / "work" / "test_error_vs_params.png").read_bytes()
  assert png.startswith(b"\x89PNG")


def test_missing_dataset_says_how_to_get_it(tmp_path, monkeypatch, capsys):
  monkeypatch.setattr(tfds_data, "network_available", lambda *a, **k: False)
  manual = tmp_path / "manual"
  manual.mkdir()
  (manual / "train_32x32.mat").write_bytes(b"")
  with pytest.raises(tfds_data.DatasetUnavailableError) as info:
    input_pipeline.load_svhn(data_dir=tmp_path / "tfds", manual_dir=manual)
  message = str(info.value)
  assert "there is no network" in message and str(manual) in message
  assert "test_32x32.mat, extra_32x32.mat" in message.split("lacks")[1]
  assert input_pipeline.MANUAL_DIR_ENV in message
  assert "ufldl.stanford.edu/housenumbers" in message
  status = svhn_main.main(
    [
      "--workdir",
      str(tmp_path / "work"),
      "--data_dir",
      str(tmp_path / "tfds"),
      "--manual_dir",
      str(manual),
      "--no_download",
      "--variants",
      "KFC-II",
      "--no_progress",
    ]
  )
  err = capsys.readouterr().err
  assert status == 2
  assert "is not prepared" in err and "Traceback" not in err
