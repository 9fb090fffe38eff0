"""examples/compress_minilm: the port, its loading errors, the corpus, one tiny run."""

from __future__ import annotations

import dataclasses
import json
import pathlib
import zipfile

import numpy as np
import pytest

from examples.compress_minilm import corpus, models, train

FIXTURES = pathlib.Path(__file__).resolve().parents[2] / "examples" / "compress_minilm" / "fixtures"


@pytest.fixture(scope="module")
def pretrained():
  return models.load_pretrained()


def _cosine(a, b):
  return np.sum(a * b, -1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)


def test_port_matches_sentence_transformers(pretrained):
  model, tokenizer = pretrained
  meta = json.loads((FIXTURES / "reference_embeddings.json").read_text())
  reference = np.load(FIXTURES / "reference_embeddings.npz")["embeddings"]
  ids, mask = tokenizer.encode(meta["sentences"], max_len=meta["max_seq_length"])
  ours = np.asarray(model(ids, mask))
  assert np.all(_cosine(ours, reference) >= 0.99999), _cosine(ours, reference)
  i, j = meta["similarity_pair"]
  assert ours[i] @ ours[j] == pytest.approx(meta["similarity"], abs=1e-4)
  # The documented figure for this pair, to two digits (the fixture has more).
  assert round(meta["similarity"], 2) == 0.76


def test_tokenise_and_forward(pretrained):
  model, tokenizer = pretrained
  assert model.config.max_seq_length == 256
  sentences = ["A man is eating food.", "Kronecker factors are small."]
  ids, mask = tokenizer.encode(sentences, max_len=16)
  assert ids.shape == mask.shape == (2, 16) and ids.dtype == np.int32
  assert ids[0, 0] == 101 and mask[0].sum() == 8  # [CLS] a man ... . [SEP]
  emb = np.asarray(model(ids, mask))
  assert emb.shape == (2, 384)
  np.testing.assert_allclose(np.linalg.norm(emb, axis=-1), 1.0, rtol=1e-5)
  # Padding is invisible: the same sentences padded to 32 tokens.
  ids32, mask32 = tokenizer.encode(sentences, max_len=32)
  np.testing.assert_allclose(np.asarray(model(ids32, mask32)), emb, atol=2e-6)
  # A truncated sentence keeps [SEP] last.
  ids4, mask4 = tokenizer.encode(sentences[:1], max_len=4)
  assert ids4[0, -1] == 102 and mask4.sum() == 4
  with pytest.raises(TypeError, match="one string"):
    tokenizer.encode("A man.", max_len=8)
  with pytest.raises(ValueError, match="max_len"):
    tokenizer.encode(sentences, max_len=1)


# ----------------------------------------------------------------------------
# Bad input: clear errors before anything is built.
# ----------------------------------------------------------------------------


def _real_members() -> dict[str, bytes]:
  with zipfile.ZipFile(models.locate_model_zip()) as archive:
    return {name: archive.read(name) for name in archive.namelist()}


def _zip_with(tmp_path, members) -> pathlib.Path:
  path = tmp_path / "model.zip"
  with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
    for name, data in members.items():
      archive.writestr(name, data)
  return path


def test_missing_archive_and_files(tmp_path):
  with pytest.raises(FileNotFoundError, match="does not exist"):
    models.load_pretrained(tmp_path / "nothing.zip")
  members = _real_members()
  del members[models.WEIGHTS_FILE]
  with pytest.raises(FileNotFoundError, match=r"has no model\.safetensors"):
    models.load_pretrained(_zip_with(tmp_path, members))
  (tmp_path / "junk.zip").write_text("not a zip")
  with pytest.raises(ValueError, match="not a zip archive"):
    models.load_pretrained(tmp_path / "junk.zip")


def test_config_with_other_sizes():
  config = json.loads(_real_members()[models.CONFIG_FILE])
  models.BertConfig.from_json(config)  # the real one passes
  with pytest.raises(ValueError, match=r"hidden_size=256 \(needs 384\)"):
    models.BertConfig.from_json({**config, "hidden_size": 256})
  with pytest.raises(ValueError, match=r"num_hidden_layers=12 \(needs 6\)"):
    models.BertConfig.from_json({**config, "num_hidden_layers": 12})
  with pytest.raises(ValueError, match="hidden_act='relu'"):
    models.BertConfig.from_json({**config, "hidden_act": "relu"})


def test_different_weights_file(tmp_path):
  from safetensors.numpy import save  # pylint: disable=g-import-not-at-top

  config = models.BertConfig()
  shapes = models.expected_shapes(config)
  weights = {name: np.zeros(shape, np.float32) for name, shape in shapes.items()}
  models.check_weights(weights, config)  # every tensor, every shape: passes
  bad = dict(weights)
  bad["encoder.layer.3.intermediate.dense.weight"] = np.zeros((1024, 384), np.float32)
  with pytest.raises(
    ValueError,
    match=r"'encoder.layer.3.intermediate.dense.weight'"
    r" has shape \(1024, 384\), needs \(1536, 384\)",
  ):
    models.check_weights(bad, config)
  missing = {k: v for k, v in weights.items() if "layer.5" not in k}
  with pytest.raises(ValueError, match="tensors are missing"):
    models.check_weights(missing, config)
  # Through the loader: another model's safetensors in the archive.
  members = _real_members()
  members[models.WEIGHTS_FILE] = save({"weight": np.zeros((4, 4), np.float32)})
  with pytest.raises(ValueError, match="not all-MiniLM-L6-v2's"):
    models.load_pretrained(_zip_with(tmp_path, members))
  members[models.WEIGHTS_FILE] = b"garbage"
  with pytest.raises(ValueError, match="not a readable safetensors"):
    models.load_pretrained(_zip_with(tmp_path, members))


def test_tokenizer_vocabulary_must_match_embeddings(tmp_path):
  members = _real_members()
  tokenizer = json.loads(members[models.TOKENIZER_FILE])
  vocab = tokenizer["model"]["vocab"]
  # Drop the 100 tokens with the highest ids: a smaller vocabulary.
  for token in sorted(vocab, key=vocab.get)[-100:]:
    del vocab[token]
  members[models.TOKENIZER_FILE] = json.dumps(tokenizer).encode()
  with pytest.raises(
    ValueError, match="vocabulary of 30422 tokens, but the embedding table has 30522 rows"
  ):
    models.load_pretrained(_zip_with(tmp_path, members))


# ----------------------------------------------------------------------------
# The corpus.
# ----------------------------------------------------------------------------


def test_corpus_filter_split_and_determinism():
  text = (
    "Return the number of items in the container. Then X = f(y)\n\n"
    "Short one. This sentence has enough plain words to be kept here. "
    "This sentence has enough plain words to be kept here. "
    "It mentions some_identifier and so it is dropped from the corpus.\n\n"
    + " ".join(
      f"Sentence number {w} talks about nothing in particular."
      for w in (
        "one",
        "two",
        "three",
        "four",
        "five",
        "six",
        "seven",
        "eight",
        "nine",
        "ten",
        "eleven",
      )
    )
  )
  built = corpus.build_corpus([("doc/a", text)], eval_every=3)
  everything = built["distill"] + built["eval"]
  assert "Return the number of items in the container." in everything
  assert "Short one." not in everything  # under 6 words
  assert not any("some_identifier" in s for s in everything)  # code marker
  assert everything.count("This sentence has enough plain words to be kept here.") == 1
  assert not set(built["distill"]) & set(built["eval"])
  assert len(everything) == 13
  # The split follows each sentence's own hash: alone, it lands the same way.
  for s in built["eval"]:
    assert corpus.build_corpus([("x", s)], eval_every=3)["eval"] == [s]
  for s in built["distill"]:
    assert corpus.build_corpus([("x", s)], eval_every=3)["distill"] == [s]
  with pytest.raises(ValueError, match="eval_every"):
    corpus.build_corpus([], eval_every=1)


def test_corpus_too_small_is_an_error(tmp_path):
  (tmp_path / "corpus.json").write_text(
    json.dumps({"distill": ["A b c d e f."], "eval": [], "sources": {}})
  )
  with pytest.raises(ValueError, match="1 distillation and 0 evaluation"):
    corpus.load_or_build(tmp_path)


# ----------------------------------------------------------------------------
# Compression and distillation, tiny.
# ----------------------------------------------------------------------------


def test_kronecker_splits_fit_the_budget_and_rank_by_error():
  splits = train.kronecker_splits(24, 36, budget=24 * 36 // 4)
  assert splits
  for (m1, m2), (n1, n2), rank in splits:
    assert m1 * m2 == 24 and n1 * n2 == 36 and min(m1, m2, n1, n2) >= 2
    assert 1 <= rank * (m1 * n1 + m2 * n2) <= 24 * 36 // 4
  rng = np.random.default_rng(0)
  w = rng.standard_normal((24, 36))
  ranked = train.ranked_kronecker_splits(w, 24 * 36 // 4)
  errors = [e for e, *_ in ranked]
  assert errors == sorted(errors)
  # Each priced error is the optimum's, checked against a fresh SVD.
  for error, in_f, out_f, rank in ranked[:5]:
    s = np.linalg.svd(train._rearranged(w, in_f, out_f), compute_uv=False)
    assert error == pytest.approx(np.sqrt(np.sum(s[rank:] ** 2)) / np.linalg.norm(w), rel=1e-6)


@dataclasses.dataclass(frozen=True)
class TinyConfig:
  distill_steps: int = 2
  batch_size: int = 4
  distill_max_len: int = 16
  learning_rate: float = 1e-3
  warmup_steps: int = 0
  weight_decay: float = 0.0
  hidden_weight: float = 1.0
  checkpoint_every: int = 1
  progress: bool = False


SENTENCES = [
  "A man is eating food.",
  "A man is eating a piece of bread.",
  "The new movie is awesome.",
  "The cat sits outside.",
  "Return the number of items in a container.",
  "Open the file and read every line of it.",
  "The result is cached for later calls.",
  "Raise an error when the argument is negative.",
]


@pytest.fixture(scope="module")
def tiny_teacher():
  """A 2-layer MiniLM with random weights: the full code path, fast."""
  from flax import nnx  # pylint: disable=g-import-not-at-top

  config = models.BertConfig(
    hidden_size=48,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=96,
    max_position_embeddings=64,
  )
  return models.MiniLM(config, rngs=nnx.Rngs(0))


@pytest.mark.parametrize("method", ["low_rank", "kronecker"])
def test_compress_and_distil_two_steps(pretrained, tiny_teacher, method, tmp_path):
  _, tokenizer = pretrained
  teacher = tiny_teacher
  paths = teacher.matrix_paths("ffn")
  covs = train.input_covariances(teacher, tokenizer, SENTENCES, paths, max_len=16)
  for p in paths:
    n = np.shape(teacher.get_matrix(p).kernel[...])[0]
    assert covs[p].shape == (n, n) and np.allclose(covs[p], covs[p].T)
  row = train.Row("ffn", method, 4, "data")
  student, infos = train.compress_model(
    teacher, row, covariances=covs, paths=paths, top_splits=2, als_sweeps=0, progress=False
  )
  weight_only, weight_infos = train.compress_model(
    teacher, train.Row("ffn", method, 4, "weight"), paths=paths, progress=False
  )
  for p in paths:
    info = infos[p]
    assert info["params"] <= info["dense_params"] // 4
    _n_in, _n_out = np.shape(teacher.get_matrix(p).kernel[...])
    dense_kernel = np.asarray(teacher.get_matrix(p).kernel[...])
    # Data-aware: no worse on its own objective than the weight-only fit.
    w_only = train.output_error(dense_kernel, train.materialize(weight_only.get_matrix(p)), covs[p])
    assert info["calibration_output_error"] <= w_only + 1e-6
    assert weight_infos[p]["weight_error"] <= info["weight_error"] + 1e-6
    assert type(student.get_matrix(p)).__name__ == (
      "LowRankLinear" if method == "low_rank" else "KroneckerLinear"
    )
  assert models.count_params(student) < models.count_params(teacher)
  # The teacher is untouched.
  assert type(teacher.get_matrix(paths[0])).__name__ == "Linear"

  ids, mask = tokenizer.encode(SENTENCES, max_len=16)
  teacher_emb = np.asarray(teacher(ids, mask))
  before = train.embedding_metrics(np.asarray(student(ids, mask)), teacher_emb)
  assert 0 < before["mean_cosine"] < 1
  kernel_before = train.materialize(student.get_matrix(paths[0]))
  embeddings_before = np.asarray(student.word_embeddings.embedding[...])
  log = train.distill(
    student, teacher, tokenizer, SENTENCES, TinyConfig(), seed=0, checkpoint_dir=tmp_path / "state"
  )
  assert len(log["losses"]) == 2 and np.all(np.isfinite(log["losses"]))
  assert not np.allclose(train.materialize(student.get_matrix(paths[0])), kernel_before)
  np.testing.assert_array_equal(student.word_embeddings.embedding[...], embeddings_before)  # frozen
  # The checkpoint after step 1 resumes: a rerun does only the last step.
  again = train.distill(
    nnx_clone(weight_only),
    teacher,
    tokenizer,
    SENTENCES,
    TinyConfig(),
    seed=0,
    checkpoint_dir=tmp_path / "state",
  )
  assert again["first_step"] == 1 and len(again["losses"]) == 1
  errors = train.matrix_output_errors(student, teacher, paths, covs)
  assert set(errors) == set(paths) and all(0 < e < 2 for e in errors.values())


def nnx_clone(model):
  from flax import nnx  # pylint: disable=g-import-not-at-top

  return nnx.clone(model)


def test_embedding_metrics_against_direct_formulas():
  rng = np.random.default_rng(1)
  teacher = rng.standard_normal((50, 8))
  student = teacher + 0.3 * rng.standard_normal((50, 8))
  student[7] = teacher[3]  # sentence 7's nearest teacher embedding is 3's
  got = train.embedding_metrics(student, teacher)
  cos = [
    float(s @ t / np.linalg.norm(s) / np.linalg.norm(t))
    for s, t in zip(student, teacher, strict=True)
  ]
  assert got["mean_cosine"] == pytest.approx(np.mean(cos))
  assert got["p5_cosine"] == pytest.approx(np.percentile(cos, 5))
  own = [int(np.argmax([s @ t for t in teacher]) == i) for i, s in enumerate(student)]
  assert got["top1"] == pytest.approx(np.mean(own)) and got["top1"] < 1


def test_rows_reject_bad_values():
  with pytest.raises(ValueError, match="method must be one of"):
    train.Row("ffn", "svd", 4, "weight")
  with pytest.raises(ValueError, match="compression must be an int >= 2"):
    train.Row("ffn", "low_rank", 1, "weight")
  with pytest.raises(ValueError, match="matrices must be one of"):
    train.Row("mlp", "low_rank", 4, "weight")


def test_report_table_winners_and_plot(tmp_path):
  from examples.compress_minilm import report  # pylint: disable=g-import-not-at-top

  def write(matrices, method, fit, before, afters):
    name = f"{matrices}-{method}-4x-{fit}"
    info = {"params": 10, "dense_params": 40, "weight_error": 0.5, "rank": 2}
    if method == "kronecker":
      info.update(in_factors=[2, 3], out_factors=[4, 5])
    for seed, after in enumerate(afters):
      result = {
        "row": {"matrices": matrices, "method": method, "compression": 4, "calibration": fit},
        "name": name,
        "matrices_params": 10,
        "matrices_dense_params": 40,
        "model_params": 100,
        "dense_model_params": 130,
        "compress_seconds": 1.0,
        "matrices": {"layers/0/ffn/output": info},
        "before": {
          "mean_cosine": before,
          "p5_cosine": before - 0.1,
          "top1": 0.9,
          "output_errors": {"layers/0/ffn/output": 0.4},
        },
        "after": {
          "mean_cosine": after,
          "p5_cosine": after - 0.1,
          "top1": 0.95,
          "output_errors": {"layers/0/ffn/output": 0.3},
        },
        "distill": {"losses": [1.0, 0.5], "first_step": 0, "seconds_per_step": 0.1},
        "seed": seed,
      }
      path = tmp_path / "rows" / name / f"seed_{seed}.json"
      path.parent.mkdir(parents=True, exist_ok=True)
      path.write_text(json.dumps(result))

  write("ffn", "low_rank", "weight", 0.5, [0.90, 0.92])
  write("ffn", "kronecker", "weight", 0.4, [0.93])
  (tmp_path / "timing.json").write_text(
    json.dumps({"median_seconds": {"dense": 0.2, "ffn-low_rank-4x": 0.1}})
  )
  out = tmp_path / "out"
  report.write_report(tmp_path, out)
  rows = json.loads((out / "results.json").read_text())["rows"]
  low = next(r for r in rows if r["method"] == "low_rank")
  assert low["after_mean_cosine"] == pytest.approx(0.91)
  assert low["after_mean_cosine_std"] == pytest.approx(np.std([0.90, 0.92], ddof=1))
  text = (out / "table.md").read_text()
  assert "0.910 ± 0.014" in text and "100 (0.50×)" in text
  assert "ffn 4×: best after distillation kronecker/weight (0.930, +0.020 over" in text
  assert "weight: Kronecker − low rank = -0.100 before, +0.020 after." in text
  assert (out / "cosine_vs_params.png").stat().st_size > 1000
