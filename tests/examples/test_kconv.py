"""Tests of the KConv example (examples/kconv): parameter counts against
formulas written out here, FLOPs against the dense conv's, one train step per
variant, the whole experiment on tiny synthetic MNIST and on
``tfds.testing.mock_data`` SVHN, the timings' shape and the error exits."""

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
from examples._common import pipeline, tfds_data
from examples.kconv import main as kconv_main
from examples.kconv import models, train
from examples.kconv.configs import default, paper
from examples.svhn import input_pipeline

# pylint: enable=g-import-not-at-top,wrong-import-position

# Conv weights + biases of each network, written out by hand from the layer
# shapes (the first conv stays dense in every variant).
# paper: 3x3 1->8, 3x3 8->12, 5x5 12->20, 5x5 20->32; head 288->256->10.
# wide:  3x3 1->64, 3x3 64->64, 3x3 64->128, 3x3 128->128; head 128->10.
_PAPER_FIRST, _WIDE_FIRST = 9 * 8 + 8, 9 * 64 + 64
_PAPER_HEAD, _WIDE_HEAD = 288 * 256 + 256 + 2570, 1290
EXPECTED_CONV_PARAMS = {
  ("paper", "Dense"): 23_008,
  # A = (k,k,ci/2,co/2), B = (1,1,2,2): 9*4*6 + 25*6*10 + 25*10*16, +4 each.
  ("paper", "KConv-ch2"): _PAPER_FIRST + (216 + 4 + 12) + (1500 + 4 + 20) + (4000 + 4 + 32),
  ("paper", "KConv-ch4"): _PAPER_FIRST
  + (9 * 2 * 3 + 16 + 12)
  + (25 * 3 * 5 + 16 + 20)
  + (25 * 5 * 8 + 16 + 32),
  # A = (k,1,ci/2,co/2), B = (1,k,2,2).
  ("paper", "KConv-sp"): _PAPER_FIRST
  + (3 * 24 + 12 + 12)
  + (5 * 60 + 20 + 20)
  + (5 * 160 + 20 + 32),
  ("wide", "Dense"): 640 + 36_928 + 73_856 + 147_584,
  ("wide", "KConv-ch4"): _WIDE_FIRST
  + (9 * 16 * 16 + 16 + 64)
  + (9 * 16 * 32 + 16 + 128)
  + (9 * 32 * 32 + 16 + 128),
  ("wide", "KConv-ch4-r2"): _WIDE_FIRST
  + (2 * (9 * 256 + 16) + 64)
  + (2 * (9 * 512 + 16) + 128)
  + (2 * (9 * 1024 + 16) + 128),
  ("wide", "KConv-Mixed"): _WIDE_FIRST
  + (9 * 256 + 16 + 3 * 32 * 32 + 12 + 64)
  + (9 * 512 + 16 + 3 * 32 * 64 + 12 + 128)
  + (9 * 1024 + 16 + 3 * 64 * 64 + 12 + 128),
}


def _config(**overrides) -> default.Config:
  base = dict(
    progress=False,
    save_checkpoints=False,
    batch_size=8,
    eval_batch_size=8,
    log_every=1,
    train_subset=None,
    time_batch=0,
  )
  base.update(overrides)
  return dataclasses.replace(default.get_config(), **base)


def _splits(n: int, shape=(28, 28, 1)) -> tfds_data.Splits:
  rng = np.random.default_rng(0)

  def split():
    return (
      rng.integers(0, 256, (n, *shape), dtype=np.uint8),
      rng.integers(0, 10, n).astype(np.int32),
    )

  return tfds_data.Splits(train=split(), validation=split(), test=split())


@pytest.mark.parametrize(("architecture", "variant"), list(EXPECTED_CONV_PARAMS))
def test_param_counts_match_the_formulas(architecture, variant):
  cost = train.network_cost(architecture, variant)
  assert cost["conv_params"] == EXPECTED_CONV_PARAMS[architecture, variant]
  head = _PAPER_HEAD if architecture == "paper" else _WIDE_HEAD
  assert cost["params"] == cost["conv_params"] + head
  model = nnx.eval_shape(lambda: train.create_model(architecture, variant))
  stack = [c for c in models.ARCHITECTURES[architecture].conv_stack if c != "pool"]
  c_in = 1
  for conv, (k, c_out, _) in zip(model.convs, stack, strict=True):
    # The first conv is dense in every variant.
    expected = (
      k * k * c_out + c_out if c_in == 1 else models.expected_conv_params(variant, k, c_in, c_out)
    )
    assert models.count_params(conv) == expected
    c_in = c_out


@pytest.mark.parametrize("architecture", list(models.ARCHITECTURES))
def test_flops_against_the_dense_network(architecture):
  dense = models.conv_costs(nnx.eval_shape(lambda: train.create_model(architecture, "Dense")))
  for variant in models.VARIANTS:
    costs = models.conv_costs(nnx.eval_shape(lambda v=variant: train.create_model(architecture, v)))
    # Each Kronecker conv's own dense reference is our formula's dense conv.
    assert [c["dense_flops"] for c in costs] == [c["flops"] for c in dense]
    assert [c["dense_params"] for c in costs] == [c["params"] for c in dense]
    if variant in ("KConv-ch2", "KConv-ch4", "KConv-sp"):
      assert sum(c["flops"] for c in costs) < sum(c["flops"] for c in dense)
  # wide, 3x3 64->64 at 28x28 (SAME): 2 * 784 * 9 * 64 * 64.
  if architecture == "wide":
    assert dense[1]["flops"] == 2 * 784 * 9 * 64 * 64


def test_unknown_names_and_bad_splits(tmp_path, capsys):
  with pytest.raises(ValueError, match="Unknown variant 'KConv-ch3'"):
    models.KConvCNN("paper", "KConv-ch3", rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="Unknown architecture"):
    models.KConvCNN("resnet", "Dense", rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="cannot split a 6 -> 8 conv"):
    models.conv_terms("KConv-ch4", 3, 6, 8)
  assert kconv_main.main(["--workdir", str(tmp_path), "--variants", "Dense,KConv-ch3"]) == 2
  assert "Unknown variant 'KConv-ch3'" in capsys.readouterr().err
  for config in (default.get_config(), paper.get_config()):
    train.check_config(config)


@pytest.mark.parametrize("variant", list(models.VARIANTS))
def test_one_train_step_moves_every_parameter(variant):
  mesh = pipeline.make_data_mesh()
  model = train.create_model("paper", variant, seed=0)
  optimizer = loop_optimizer(model)
  rng = np.random.default_rng(0)
  batch = jax.device_put(
    {
      "image": rng.integers(0, 256, (8, 28, 28, 1), dtype=np.uint8),
      "label": rng.integers(0, 10, 8).astype(np.int32),
    },
    pipeline.batch_sharding(mesh),
  )
  before = jax.device_get(nnx.state(model, nnx.Param))
  sums = jax.device_get(train.train_step(model, optimizer, batch))
  assert sums["count"] == 8 and 0.5 < sums["loss"] / 8 < 5  # ~ln(10).
  after = jax.device_get(nnx.state(model, nnx.Param))
  for (path, old), new in zip(
    jax.tree_util.tree_leaves_with_path(before), jax.tree.leaves(after), strict=True
  ):
    assert not np.allclose(old, new), f"{path} did not move"


def loop_optimizer(model):
  from examples._common import loop  # pylint: disable=g-import-not-at-top

  return loop.create_optimizer(model, _config())


def test_experiment_on_tiny_mnist_with_timings_and_resume(tmp_path):
  config = _config(
    architectures=("paper",),
    variants=("Dense", "KConv-ch4"),
    train_subset=16,
    time_batch=4,
    time_rounds=2,
  )
  data = _splits(24)
  results = train.train_and_evaluate(config, tmp_path / "work", data=data)
  saved = json.loads((tmp_path / "work" / "results.json").read_text())
  assert saved["summary"] == json.loads(json.dumps(results["summary"]))
  dense, kron = saved["summary"]
  assert (dense["variant"], kron["variant"]) == ("Dense", "KConv-ch4")
  assert dense["infer_vs_dense"] == 1.0 and kron["infer_ms"] > 0
  assert kron["conv_params"] == EXPECTED_CONV_PARAMS["paper", "KConv-ch4"]
  for run in saved["runs"]:
    assert run["history"][0]["epoch"] == 1
    # 16 of the 24 training images: two steps of 8.
    assert run["test_error"] * 24 / 100 == pytest.approx(round(run["test_error"] * 24 / 100))
  table = (tmp_path / "work" / "table.md").read_text()
  assert "| paper" in table and "KConv-ch4" in table
  png = (tmp_path / "work" / "error_vs_params_and_time.png").read_bytes()
  assert png.startswith(b"\x89PNG")
  # Started again with the timings off, the finished runs train nothing.
  again = train.train_and_evaluate(
    dataclasses.replace(config, time_batch=0), tmp_path / "work", data=data
  )
  assert [r["history"] for r in again["runs"]] == [r["history"] for r in saved["runs"]]


def test_svhn_path_on_mock_tfds(tmp_path, monkeypatch):
  tfds = tfds_data.import_tfds()
  # Mocked TFDS never downloads; this only gets past our offline check.
  monkeypatch.setattr(tfds_data, "network_available", lambda *a, **k: True)
  config = _config(
    dataset="svhn",
    architectures=("wide",),
    variants=("KConv-ch4",),
    num_validation=8,
    data_dir=str(tmp_path / "tfds"),
    manual_dir=str(tmp_path / "no_files"),
  )
  with tfds.testing.mock_data(num_examples=16):
    data = train.load_data(config)
  assert data.train[0].shape == (16, 32, 32, 3)
  assert input_pipeline.TRAIN_SIZE == 73_257
  results = train.train_and_evaluate(config, tmp_path / "work", data=data)
  (run,) = results["runs"]
  assert run["architecture"] == "wide" and run["best_epoch"] == 1
  # The first conv sees 3 channels: 3x3x3x64 + 64.
  assert run["conv_params"] == (
    EXPECTED_CONV_PARAMS["wide", "KConv-ch4"] - _WIDE_FIRST + 27 * 64 + 64
  )


def test_time_only_from_the_command_line(tmp_path, capsys):
  status = kconv_main.main(
    [
      "--workdir",
      str(tmp_path),
      "--architectures=paper",
      "--variants=Dense,KConv-sp",
      "--time_only",
      "--time_batch=2",
      "--time_rounds=1",
      "--no_progress",
    ]
  )
  assert status == 0
  saved = json.loads((tmp_path / "results.json").read_text())
  assert saved["runs"] == [] and saved["config"]["train"] is False
  _, sp = saved["summary"]
  assert sp["infer_ms"] > 0 and sp["train_step_vs_dense"] > 0
  assert sp["conv_params"] == EXPECTED_CONV_PARAMS["paper", "KConv-sp"]
  assert "not run" in (tmp_path / "table.md").read_text()
  assert "nothing trained" in capsys.readouterr().out
