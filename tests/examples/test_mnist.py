"""Tests of the MNIST example (examples/mnist, examples/_common's MNIST data).

One train step and one evaluation on tiny data (synthetic arrays and
``tfds.testing.mock_data``), the sharded step on 8 fake CPU devices (in a
subprocess: the device count is fixed when JAX starts), the error messages,
and one test that prepares the real MNIST files when ``../shared/data/mnist``
exists next to the repository.
"""

# ruff: noqa: E402 (the repository root goes on sys.path first)
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shlex
import subprocess
import sys
import textwrap
import time
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
from examples._common import cli, configs, mnist_data, pipeline, reporting, tfds_data
from examples.mnist import main as mnist_main
from examples.mnist import models, reference, train
from examples.mnist.configs import default, paper

# pylint: enable=g-import-not-at-top,wrong-import-position

# Every test starts (once) the background preparation of the real MNIST files
# that the last test checks; see `real_mnist_job`.
pytestmark = pytest.mark.usefixtures("real_mnist_job")


# (layer params, layer params without bias, model params). The conv stack has
# 23,008 parameters; the classifier 256 * 10 + 10 (Cut-96: 96 * 10 + 10).
# KFC factor counts follow docs/DESIGN.md ("KFC formulations") for a 3x3x32 map, O = 256.
EXPECTED_PARAMS = {
  "Baseline": (288 * 256 + 256, 288 * 256, 99_562),
  "Cut-96": (288 * 96 + 96, 288 * 96, 23_008 + 27_744 + 970),
  "LowRank-96": (288 * 96 + 96 * 256 + 256, 288 * 96 + 96 * 256, 23_008 + 52_480 + 2_570),
  "KFC-I": (32 * 256 + 9 + 256, 32 * 256 + 9, 23_008 + 8_457 + 2_570),
  "KFC-II": (2_084 + 256, 2_084, 23_008 + 2_340 + 2_570),
  "KFC-III": (96 * 128 + 3 * 2 + 256, 12_294, 23_008 + 12_550 + 2_570),
  "KFC-IV": (96 * 128 + 3 * 2 + 256, 12_294, 23_008 + 12_550 + 2_570),
  "KFC-Combined": (26_672 + 256, 26_672, 23_008 + 26_928 + 2_570),
  "KFC-Rank-10": (10 * 2_084 + 256, 20_840, 23_008 + 21_096 + 2_570),
}


def _images(rng, n):
  return {
    "image": rng.integers(0, 256, (n, 28, 28, 1), dtype=np.uint8),
    "label": rng.integers(0, 10, n).astype(np.int32),
  }


def _config(**overrides) -> default.Config:
  base = dict(progress=False, save_checkpoints=False, batch_size=8, eval_batch_size=8, log_every=1)
  base.update(overrides)
  return dataclasses.replace(default.get_config(), **base)


@contextlib.contextmanager
def _count_compilations():
  """Counts XLA compilations (``jax.monitoring``) inside the block."""
  events = []

  def listener(event, duration, **kwargs):
    del duration, kwargs
    if event == "/jax/core/compile/backend_compile_duration":
      events.append(event)

  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    yield events
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)


# ----------------------------------------------------------------------------
# The model and its variants.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("variant", list(EXPECTED_PARAMS))
def test_param_counts(variant):
  counts = train.param_counts(variant)
  assert (counts["layer"], counts["layer_weights"], counts["model"]) == EXPECTED_PARAMS[variant]


def test_baseline_matches_the_paper_and_kfc_reaches_its_reductions():
  base = train.param_counts("Baseline")
  assert reporting.format_count(base["layer"]) == "74.0K"  # Paper: 74.0K.
  assert abs(base["model"] - 99_500) / 99_500 < 0.001  # Paper: 99.5K.
  conv = base["model"] - base["layer"] - 2_570
  assert conv == 23_008  # Paper: "about 23K".
  for variant, paper_pct in (("KFC-II", 97.2), ("KFC-Combined", 63.5)):
    weights = train.param_counts(variant)["layer_weights"]
    # The paper's percentages come from its rounded counts (e.g. 2.1K/74.0K).
    assert abs(100 * (1 - weights / base["layer_weights"]) - paper_pct) < 0.5


# One variant per kind of FC layer (every variant is built in
# test_param_counts; the layers themselves are tested with the library).
@pytest.mark.parametrize(
  "variant", ["Baseline", "Cut-96", "LowRank-96", "KFC-Combined", "KFC-Rank-2"]
)
def test_forward_shapes_and_dropout(variant):
  model = train.create_model(variant, seed=0)
  x = train.preprocess(_images(np.random.default_rng(0), 4)["image"])
  chex.assert_shape(model.features(x), (4, 3, 3, 32))
  logits = model(x)
  chex.assert_shape(logits, (4, 10))
  assert np.all(np.isfinite(logits))
  chex.assert_trees_all_equal(model(x), logits)  # Evaluation: no dropout.
  assert not np.allclose(model(x, train=True), logits)  # Training: dropout.


@pytest.mark.parametrize("name", ["KFC-V", "Cut-0", "baseline", "KFC-Rank-", "LowRank-96x"])
def test_unknown_variant_lists_the_valid_ones(name):
  with pytest.raises(ValueError, match="Unknown variant") as info:
    models.MnistCNN(name, rngs=nnx.Rngs(0))
  message = str(info.value)
  assert repr(name) in message
  for valid in (
    "Baseline",
    "Cut-<k>",
    "LowRank-<k>",
    "KFC-I",
    "KFC-II",
    "KFC-III",
    "KFC-IV",
    "KFC-Combined",
    "KFC-Rank-<r>",
  ):
    assert valid in message


def test_configs_name_only_valid_variants():
  for config in (default.get_config(), paper.get_config()):
    for variant in config.variants:
      models.get_variant(variant)
  assert set(models.PAPER_VARIANTS) <= set(paper.get_config().variants)
  assert len(paper.get_config().seeds) >= 3


def test_check_config_rejects_bad_settings():
  with pytest.raises(ValueError, match="lr_schedule"):
    train.check_config(_config(lr_schedule="step"))
  with pytest.raises(ValueError, match="epochs"):
    train.check_config(_config(epochs=0))
  with pytest.raises(ValueError, match="non-empty"):
    train.check_config(_config(seeds=()))
  counts = train.check_config(_config(variants=("Baseline", "Cut-96")))
  assert counts["Cut-96"]["model"] == EXPECTED_PARAMS["Cut-96"][2]


def test_optimizer_is_adam_with_coupled_weight_decay():
  """One step from zero state: w - lr * sign(g + wd * w), Adam's first step."""
  params = {"w": np.array([1.0, -2.0, 0.5], np.float32)}
  grads = {"w": np.array([0.0, 0.3, -1e-3], np.float32)}
  for schedule in ("constant", "cosine"):
    tx = train.make_tx(1e-2, 0.1, schedule, 10)
    updates, _ = tx.update(grads, tx.init(params), params)
    coupled = grads["w"] + 0.1 * params["w"]
    np.testing.assert_allclose(updates["w"], -1e-2 * np.sign(coupled), rtol=1e-4)
  # Cached, so that new optimizers do not retrace the steps.
  assert train.make_tx(1e-3, 1e-4) is train.make_tx(1e-3, 1e-4)
  cosine = train.make_tx(1.0, 0.0, "cosine", 4)
  state = cosine.init(params)
  for _ in range(5):  # The 5th update uses step 4 = total_steps.
    updates, state = cosine.update(grads, state, params)
  np.testing.assert_allclose(updates["w"], 0.0, atol=1e-6)  # Decayed to 0.


# ----------------------------------------------------------------------------
# Steps.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["KFC-Combined"])
def test_train_step_updates_and_fits_a_batch(variant):
  config = _config(batch_size=32, learning_rate=3e-3)
  mesh = pipeline.make_data_mesh()
  # No dropout, so that a few steps visibly fit the batch (dropout has its own
  # test; the end-to-end test trains with it).
  model = train.create_model(variant, seed=0, dropout_rate=0.0)
  optimizer = train.create_optimizer(model, config)
  train.replicate((model, optimizer), mesh)
  host = _images(np.random.default_rng(1), 32)
  batch = jax.device_put(host, pipeline.batch_sharding(mesh))
  masked = jax.device_put({**host, "mask": np.ones(32, np.float32)}, pipeline.batch_sharding(mesh))

  before = jax.device_get(nnx.state(model, nnx.Param))
  start = train.eval_step(model, masked)
  sums = jax.device_get(train.train_step(model, optimizer, batch))
  assert sums["count"] == 32 and 0 <= sums["correct"] <= 32
  assert 0.5 < sums["loss"] / 32 < 5  # About ln(10) at initialisation.
  after = jax.device_get(nnx.state(model, nnx.Param))
  for (path, old), new in zip(
    jax.tree_util.tree_leaves_with_path(before), jax.tree.leaves(after), strict=True
  ):
    assert not np.allclose(old, new), f"{path} did not move"
  assert int(optimizer.step[...]) == 1

  for _ in range(20):
    train.train_step(model, optimizer, batch)
  end = jax.device_get(train.eval_step(model, masked))
  # Adam memorises 32 examples: the loss falls far below ln(10).
  assert end["loss"] < 0.5 * float(start["loss"])

  # A second model of the same variant reuses the compiled step.
  other = train.create_model(variant, seed=1, dropout_rate=0.0)
  other_opt = train.create_optimizer(other, config)
  train.replicate((other, other_opt), mesh)
  with _count_compilations() as compiled:
    jax.block_until_ready(train.train_step(other, other_opt, batch))
  assert not compiled


def test_evaluate_counts_every_example_once():
  """10 examples in batches of 4: the padded last batch must not count twice."""
  mesh = pipeline.make_data_mesh()
  model = train.create_model("Baseline", seed=0)
  data = _images(np.random.default_rng(2), 10)
  got = train.evaluate(model, data["image"], data["label"], batch_size=4, mesh=mesh)
  logits = np.asarray(model(train.preprocess(data["image"])), np.float64)
  log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  want_loss = -log_probs[np.arange(10), data["label"]].mean()
  want_error = 100 * np.mean(logits.argmax(-1) != data["label"])
  assert got["count"] == 10
  np.testing.assert_allclose(got["loss"], want_loss, rtol=1e-5)
  assert got["error"] == pytest.approx(want_error)


def test_batches_cover_an_epoch_and_pad_for_evaluation():
  arrays = {"x": np.arange(10), "y": np.arange(10) * 2}
  train_batches = list(pipeline.batches(arrays, 4, rng=np.random.default_rng(0)))
  assert len(train_batches) == 2 == pipeline.num_batches(10, 4, True)
  seen = np.concatenate([b["x"] for b in train_batches])
  assert len(set(seen.tolist())) == 8  # A permutation, remainder dropped.
  for b in train_batches:
    np.testing.assert_array_equal(b["y"], 2 * b["x"])
  eval_batches = list(pipeline.batches(arrays, 4, drop_remainder=False))
  assert len(eval_batches) == 3 == pipeline.num_batches(10, 4, False)
  np.testing.assert_array_equal(eval_batches[-1]["mask"], [1, 1, 0, 0])
  real = np.concatenate([b["x"][b["mask"] > 0] for b in eval_batches])
  np.testing.assert_array_equal(real, np.arange(10))


def test_prefetch_keeps_order_and_reraises():
  mesh = pipeline.make_data_mesh()
  items = [{"a": np.full(2, i)} for i in range(5)]
  got = list(pipeline.prefetch_to_mesh(iter(items), pipeline.batch_sharding(mesh)))
  assert [int(g["a"][0]) for g in got] == list(range(5))
  assert all(isinstance(g["a"], jax.Array) for g in got)

  def failing():
    yield {"a": np.zeros(2)}
    raise OSError("disk on fire")

  with pytest.raises(OSError, match="disk on fire"):
    list(pipeline.prefetch_to_mesh(failing(), pipeline.batch_sharding(mesh)))


# ----------------------------------------------------------------------------
# Data parallelism on 8 fake CPU devices.
# ----------------------------------------------------------------------------

_SHARDED_SCRIPT = textwrap.dedent("""
    import json, sys
    import chex, jax, numpy as np
    from flax import nnx
    sys.path.insert(0, sys.argv[1])
    from examples._common import pipeline
    from examples.mnist import train
    from examples.mnist.configs import default

    assert jax.device_count() == 8, jax.devices()
    config = default.get_config()
    rng = np.random.default_rng(0)
    host = [{"image": rng.integers(0, 256, (16, 28, 28, 1), dtype=np.uint8),
             "label": rng.integers(0, 10, 16).astype(np.int32)}
            for _ in range(2)]
    test = {"image": rng.integers(0, 256, (20, 28, 28, 1), dtype=np.uint8),
            "label": rng.integers(0, 10, 20).astype(np.int32)}

    def run(mesh):
      model = train.create_model("Baseline", seed=0)
      optimizer = train.create_optimizer(model, config)
      train.replicate((model, optimizer), mesh)
      sums = []
      for b in pipeline.prefetch_to_mesh(iter(host),
                                         pipeline.batch_sharding(mesh)):
        assert len(b["image"].sharding.device_set) == mesh.devices.size
        assert b["image"].addressable_shards[0].data.shape[0] == (
            16 // mesh.devices.size)
        sums.append(jax.device_get(train.train_step(model, optimizer, b)))
      params = nnx.state(model, nnx.Param)
      replicated = all(
          p.sharding.is_fully_replicated
          and len(p.sharding.device_set) == mesh.devices.size
          for p in jax.tree.leaves(params))
      ev = train.evaluate(model, test["image"], test["label"], batch_size=8,
                          mesh=mesh)
      return sums, jax.device_get(params), replicated, ev

    mesh8 = pipeline.make_data_mesh()
    sums8, params8, replicated8, ev8 = run(mesh8)
    sums1, params1, replicated1, ev1 = run(
        pipeline.make_data_mesh(jax.devices()[:1]))
    chex.assert_trees_all_close(sums8, sums1, rtol=1e-5, atol=1e-5)
    chex.assert_trees_all_close(params8, params1, rtol=1e-4, atol=1e-6)
    try:
      pipeline.check_batch_size(12, mesh8)
      bad_batch = "accepted"
    except ValueError as e:
      bad_batch = str(e)
    print("RESULT " + json.dumps({
        "devices": mesh8.devices.size, "replicated": replicated8,
        "loss8": [float(s["loss"]) for s in sums8],
        "loss1": [float(s["loss"]) for s in sums1],
        "eval8": ev8, "eval1": ev1, "bad_batch": bad_batch}))
    """)


def test_sharded_train_step_on_8_fake_devices(tmp_path):
  """Batch split 8 ways, state replicated, same numbers as on one device."""
  script = tmp_path / "sharded.py"
  script.write_text(_SHARDED_SCRIPT)
  env = {
    **os.environ,
    "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
    "JAX_PLATFORMS": "cpu",
  }
  proc = subprocess.run(
    [sys.executable, str(script), str(REPO)],
    env=env,
    capture_output=True,
    text=True,
    timeout=600,
    check=False,
  )
  assert proc.returncode == 0, proc.stderr[-4000:]
  line = [text for text in proc.stdout.splitlines() if text.startswith("RESULT ")][-1]
  result = json.loads(line[len("RESULT ") :])
  assert result["devices"] == 8
  assert result["replicated"]
  np.testing.assert_allclose(result["loss8"], result["loss1"], rtol=1e-5)
  assert result["loss8"][0] != result["loss8"][1]  # The step did update.
  assert result["eval8"]["count"] == result["eval1"]["count"] == 20
  assert result["eval8"]["error"] == pytest.approx(result["eval1"]["error"])
  assert "multiple of the number of devices (8)" in result["bad_batch"]


# ----------------------------------------------------------------------------
# Data: mocked TFDS end to end, missing data, the real files.
# ----------------------------------------------------------------------------


def test_train_and_evaluate_on_mock_tfds(tmp_path, monkeypatch):
  tfds = tfds_data.import_tfds()
  # Mocked TFDS never downloads; this only gets past our offline check.
  monkeypatch.setattr(tfds_data, "network_available", lambda *a, **k: True)
  config = _config(
    variants=("Cut-96",),
    seeds=(0,),
    epochs=2,
    save_checkpoints=True,
    data_dir=str(tmp_path / "tfds"),
    manual_dir=str(tmp_path / "no_files"),
  )
  workdir = tmp_path / "work"
  with tfds.testing.mock_data(num_examples=24):
    data = mnist_data.load_mnist(data_dir=config.data_dir, manual_dir=config.manual_dir)
  # Loading (above) is the tested part of TFDS; reuse it (each mocked load
  # costs seconds of tf.data tracing).
  results = train.train_and_evaluate(config, workdir, data=data)

  for split in (data.train, data.validation, data.test):
    chex.assert_shape(split[0], (24, 28, 28, 1))
    assert split[0].dtype == np.uint8 and split[1].dtype == np.int32
  saved = json.loads((workdir / "results.json").read_text())
  assert saved["summary"] == json.loads(json.dumps(results["summary"]))
  (r,) = saved["runs"]
  assert (r["variant"], r["seed"]) == ("Cut-96", 0)
  assert r["model_params"] == EXPECTED_PARAMS["Cut-96"][2]
  assert r["layer_reduction_pct"] == pytest.approx(62.5)  # 96 of 256 outputs.
  assert len(r["history"]) == 2
  assert r["best_epoch"] in (1, 2)
  best = min(h["val_error"] for h in r["history"])
  assert r["best_val_error"] == best
  assert r["history"][r["best_epoch"] - 1]["val_error"] == best
  assert 0 <= r["test_error"] <= 100
  assert (r["test_error"] * 24 / 100) == pytest.approx(
    round(r["test_error"] * 24 / 100)
  )  # k/24 of the mocked test set.
  assert r["train_time_per_epoch_s"] > 0
  table = (workdir / "table.md").read_text()
  assert "| Cut-96" in table and "27.7K (62.5%)" in table
  assert "0.58" in table  # The paper's Cut-96 test error beside ours.
  png = (workdir / "test_error_vs_params.png").read_bytes()
  assert png.startswith(b"\x89PNG") and len(png) > 10_000

  # The orbax checkpoint holds the best-validation parameters: restored, they
  # give the reported test error again.
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top

  model = train.create_model("Cut-96", seed=123)
  abstract = jax.tree.map(np.asarray, nnx.state(model, nnx.Param))
  with ocp.StandardCheckpointer() as checkpointer:
    restored = checkpointer.restore(r["checkpoint"], abstract)
  nnx.update(model, restored)
  got = train.evaluate(model, *data.test, batch_size=8, mesh=pipeline.make_data_mesh())
  assert got["error"] == pytest.approx(r["test_error"])


def test_demo_says_what_it_is_and_ends_beside_the_committed_results(tmp_path, capsys):
  """`make demo`: a shortened run that ends with the committed full table."""
  committed = reporting.load_json(train.COMMITTED_RESULTS)
  assert committed is not None, f"{train.COMMITTED_RESULTS} is missing"
  assert committed["config"]["epochs"] == 12
  assert len(committed["config"]["seeds"]) == 3
  demo = default.get_config()
  intro = reporting.describe_run(demo, committed, train.COMMITTED_COMMAND)
  assert "5 variants x 1 seed(s) x 2 epochs" in intro
  assert "shortened run" in intro and "`make paper12`" in intro
  assert "minutes" in intro

  rng = np.random.default_rng(3)
  splits = [_images(rng, n) for n in (16, 8, 8)]
  data = tfds_data.Splits(*[(s["image"], s["label"]) for s in splits])
  config = _config(variants=("Baseline", "KFC-II"), epochs=1)
  results = train.train_and_evaluate(config, tmp_path, data=data)
  out = capsys.readouterr().out
  assert out.startswith("This run: 2 variants x 1 seed(s) x 1 epochs")
  final = out[out.index("Beside the committed full results") :]
  assert "`make paper12`" in final
  ours = {s["variant"]: s for s in results["summary"]}
  theirs = {s["variant"]: s for s in committed["summary"]}
  rows = {
    line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
    for line in final.splitlines()[3:]
    if line.startswith("| ")
  }
  assert set(rows) == set(theirs)  # Every committed variant, ours among them.
  for variant, (this_run, full, paper_error) in rows.items():
    if variant in ours:
      assert this_run == f"{ours[variant]['test_error_mean']:.2f}"
    else:
      assert this_run == "—"
    t = theirs[variant]
    assert full == (f"{t['test_error_mean']:.2f} ± {t['test_error_std']:.2f}")
    # Our copy of the paper prints test errors for five of the nine rows.
    paper = reference.PAPER.get(variant)
    assert paper_error == (f"{paper['test_error']:.2f}" if paper else "—")


def _make_recipe(target: str) -> list[str]:
  """The arguments ``make <target>`` passes to examples/mnist/main.py."""
  text = (REPO / "Makefile").read_text().replace("\\\n", " ")
  recipe = text.split(f"\n{target}:")[1].split("\n")[1]
  return shlex.split(recipe.split("examples/mnist/main.py")[1])


def test_make_paper_reproduces_the_committed_config():
  """The command the demo names for the committed results is theirs."""
  committed = reporting.load_json(train.COMMITTED_RESULTS)["config"]
  args = mnist_main.parse_args(_make_recipe("paper12"))
  config = configs.load_config_module(args.config, "mnist").get_config()
  config = dataclasses.replace(config, **cli.overrides(args, cli.VARIANT_FIELDS))
  ours = json.loads(json.dumps(dataclasses.asdict(config)))
  differ = {k for k in committed if ours.get(k) != committed[k]}
  assert differ <= {"progress"}, differ  # The bar is off in the logged runs.
  # And `make demo` is the default config: the shortened run.
  demo = mnist_main.parse_args(_make_recipe("demo"))
  assert demo.config == "default" and demo.workdir == "runs/mnist_demo"
  assert cli.overrides(demo, cli.VARIANT_FIELDS) == {}


def test_missing_dataset_says_how_to_get_it(tmp_path, monkeypatch, capsys):
  empty = tmp_path / "manual"
  empty.mkdir()
  (empty / mnist_data.MNIST_FILES[0]).write_bytes(b"")
  (empty / mnist_data.MNIST_FILES[3]).write_bytes(b"")
  with pytest.raises(tfds_data.DatasetUnavailableError) as info:
    mnist_data.load_mnist(data_dir=tmp_path / "tfds", manual_dir=empty, download=False)
  message = str(info.value)
  assert "downloading is disabled" in message
  assert str(empty) in message and "network" in message
  assert mnist_data.MANUAL_DIR_ENV in message
  lacks = message.split("lacks")[1].split("\n")[0]
  assert mnist_data.MNIST_FILES[1] in lacks
  assert mnist_data.MNIST_FILES[2] in lacks
  assert mnist_data.MNIST_FILES[0] not in lacks

  monkeypatch.setattr(tfds_data, "network_available", lambda *a, **k: False)
  with pytest.raises(tfds_data.DatasetUnavailableError, match="there is no network"):
    mnist_data.load_mnist(data_dir=tmp_path / "tfds", manual_dir=empty)

  # The command line prints the message and exits with 2, no stack trace.
  status = mnist_main.main(
    [
      "--workdir",
      str(tmp_path / "work"),
      "--data_dir",
      str(tmp_path / "tfds"),
      "--manual_dir",
      str(empty),
      "--no_download",
      "--variants",
      "Baseline",
      "--no_progress",
    ]
  )
  err = capsys.readouterr().err
  assert status == 2
  assert "is not prepared" in err and "Traceback" not in err


def test_command_line_rejects_bad_arguments(tmp_path, capsys):
  assert mnist_main.main(["--workdir", str(tmp_path), "--variants", "Baseline,KFC-V"]) == 2
  assert "Unknown variant 'KFC-V'" in capsys.readouterr().err
  assert mnist_main.main(["--workdir", str(tmp_path), "--config", "nope"]) == 2
  assert "Unknown config 'nope'" in capsys.readouterr().err
  assert mnist_main.main(["--workdir", str(tmp_path), "--batch_size", "0"]) == 2
  assert "batch_size must be a positive multiple" in capsys.readouterr().err


def test_manual_dir_defaults(monkeypatch, tmp_path):
  monkeypatch.setenv(mnist_data.MANUAL_DIR_ENV, str(tmp_path))
  assert mnist_data.default_manual_dir() == tmp_path
  monkeypatch.delenv(mnist_data.MANUAL_DIR_ENV)
  expected = mnist_data.PROJECT_MANUAL_DIR if mnist_data.PROJECT_MANUAL_DIR.is_dir() else None
  assert mnist_data.default_manual_dir() == expected
  assert (REPO.parent / "shared" / "data" / "mnist") == mnist_data.PROJECT_MANUAL_DIR


# The label counts of the original MNIST files.
_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]

# Prepares the real files into a fresh TFDS data dir through load_mnist (the
# example's own path, offline) and summarises the splits as JSON.
_REAL_MNIST_SCRIPT = textwrap.dedent("""
    import hashlib, json, sys, traceback
    from pathlib import Path
    import numpy as np
    repo, data_dir, out = sys.argv[1:4]
    sys.path.insert(0, repo)
    try:
      from examples._common import mnist_data
      data = mnist_data.load_mnist(
          data_dir=data_dir, manual_dir=mnist_data.PROJECT_MANUAL_DIR,
          download=False)
      summary = {}
      for name in ("train", "validation", "test"):
        x, y = getattr(data, name)
        summary[name] = {
            "shape": list(x.shape), "dtype": str(x.dtype),
            "label_shape": list(y.shape), "label_dtype": str(y.dtype),
            "label_counts": np.bincount(y, minlength=10).tolist(),
            "min": int(x.min()), "max": int(x.max()),
            "mean": float(x.mean())}
      digest = lambda x: {hashlib.sha1(i.tobytes()).digest() for i in x}
      summary["validation_in_train"] = len(
          digest(data.validation[0]) & digest(data.train[0]))
    except Exception:  # Reported by the test.
      summary = {"error": traceback.format_exc()}
    tmp = Path(out + ".tmp")
    tmp.write_text(json.dumps(summary))
    tmp.replace(out)
    """)


@pytest.fixture(scope="session")
def real_mnist_job(tmp_path_factory):
  """Starts preparing the project's MNIST files in the background, once.

  Preparing takes about 30 s of one core (TFDS encodes 70,000 PNGs), so it
  runs in a subprocess from this module's first test on, beside the others;
  :func:`test_real_mnist_prepares_offline_with_the_paper_split` waits for it.
  Under pytest-xdist the workers share one job (the first to create the
  marker file starts it).

  Yields:
    The JSON summary's path, or None when the files are not there.
  """
  if not mnist_data.PROJECT_MANUAL_DIR.is_dir():
    yield None
    return
  root = tmp_path_factory.getbasetemp()
  if os.environ.get("PYTEST_XDIST_WORKER"):
    root = root.parent  # Shared by the workers of this session.
  root = root / "real_mnist"
  root.mkdir(exist_ok=True)
  summary = root / "summary.json"
  try:
    os.close(os.open(root / "started", os.O_CREAT | os.O_EXCL))
  except FileExistsError:
    yield summary  # Another worker runs the job.
    return
  with open(root / "log.txt", "w") as log:
    proc = subprocess.Popen(
      [sys.executable, "-c", _REAL_MNIST_SCRIPT, str(REPO), str(root / "tfds"), str(summary)],
      stdout=log,
      stderr=subprocess.STDOUT,
    )
    yield summary
    try:
      proc.wait(timeout=600)
    except subprocess.TimeoutExpired:
      proc.kill()
      proc.wait()


def test_real_mnist_prepares_offline_with_the_paper_split(real_mnist_job):
  if real_mnist_job is None:
    pytest.skip(f"{mnist_data.PROJECT_MANUAL_DIR} does not exist")
  deadline = time.monotonic() + 600
  while not real_mnist_job.exists():
    assert time.monotonic() < deadline, "preparing MNIST took over 10 min"
    time.sleep(0.2)
  summary = json.loads(real_mnist_job.read_text())
  assert "error" not in summary, summary.get("error")
  sizes = {"train": 50_000, "validation": 10_000, "test": 10_000}
  for name, n in sizes.items():
    split = summary[name]
    assert split["shape"] == [n, 28, 28, 1] and split["dtype"] == "uint8"
    assert split["label_shape"] == [n] and split["label_dtype"] == "int32"
    assert (split["min"], split["max"]) == (0, 255)
    assert 30 < split["mean"] < 37  # MNIST's mean pixel is about 33.3.
    assert sum(split["label_counts"]) == n
  assert summary["test"]["label_counts"] == _TEST_COUNTS
  train_and_val = np.add(summary["train"]["label_counts"], summary["validation"]["label_counts"])
  assert train_and_val.tolist() == _TRAIN_COUNTS
  # Validation is held out: none of its images is also a training image.
  assert summary["validation_in_train"] == 0
