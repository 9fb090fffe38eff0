"""Compress all-MiniLM-L6-v2 with kfc_jax and distil it back: the sweep.

Command (from the repository root)::

  python examples/compress_minilm/main.py --workdir=runs/minilm
  python examples/compress_minilm/main.py --workdir=runs/minilm --stage=timing
  python examples/compress_minilm/main.py --workdir=runs/minilm --stage=report

Stages (``--stage=all`` runs them in turn):

- ``sweep``: the corpus (cached in ``<workdir>/corpus.json``), the teacher's
  evaluation embeddings and the matrices' input covariances (cached as
  ``.npz``), then every row of the config: compress, evaluate, distil,
  evaluate: for each matrix set, every row is first compressed and evaluated
  (``<workdir>/rows/<row>/before.json``, its parameters an orbax checkpoint
  beside it), then the rows are distilled in the config's ``distill_order``
  (``seed_<s>.json``, distillation state checkpointed with orbax), so a
  stopped sweep resumes (finished rows are skipped, a half-distilled one
  continues).
- ``timing``: the encoder (batch 32, sequence 128) with each row structure's
  matrices against the dense one, interleaved in one run.
- ``report``: ``<workdir>/results.json``, the Markdown table and the plot of
  cosine against parameters (copied into the example's ``results/``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import pathlib
import sys
import time

if __package__ in (None, ""):  # run as a script: make `examples` importable
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

import jax  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top
from flax import nnx  # pylint: disable=g-import-not-at-top

from examples._common import configs as common_configs  # pylint: disable=g-import-not-at-top
from examples.compress_minilm import corpus as corpus_lib  # pylint: disable=g-import-not-at-top
from examples.compress_minilm import models, train  # pylint: disable=g-import-not-at-top

logger = logging.getLogger("compress_minilm")


def _json_ready(value):
  if isinstance(value, dict):
    return {str(k): _json_ready(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_json_ready(v) for v in value]
  if isinstance(value, (np.floating, np.integer)):
    return value.item()
  return value


def _write_json(path: pathlib.Path, data) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_suffix(".tmp")
  tmp.write_text(json.dumps(_json_ready(data), indent=1))
  tmp.replace(path)


class Setup:
  """What every row shares: the teacher, tokenizer, corpus and caches."""

  def __init__(self, workdir: pathlib.Path, config):
    self.workdir, self.config = workdir, config
    self.teacher, self.tokenizer = models.load_pretrained()
    self.corpus = corpus_lib.load_or_build(workdir)
    evaluation = self.corpus["eval"]
    if config.eval_sentences is not None:
      evaluation = evaluation[: config.eval_sentences]
    self.eval_sentences = evaluation
    self.distill_sentences = self.corpus["distill"]
    cache = workdir / "teacher_eval.npz"
    if cache.is_file():
      self.teacher_eval = np.load(cache)["embeddings"]
    else:
      self.teacher_eval = train.embed(
        self.teacher, self.tokenizer, evaluation, max_len=config.eval_max_len, desc="teacher eval"
      )
      np.savez(cache, embeddings=self.teacher_eval)
    paths = self.teacher.matrix_paths("all")
    self.calibration = self._covariances(
      "calibration_cov.npz",
      self.distill_sentences[: config.calibration_sentences],
      config.calibration_max_len,
      paths,
    )
    self.eval_cov = self._covariances("eval_cov.npz", evaluation, config.eval_max_len, paths)

  def _covariances(self, name, sentences, max_len, paths):
    path = self.workdir / name
    if path.is_file():
      data = np.load(path)
      return {p: data[p.replace("/", ".")] for p in paths}
    covs = train.input_covariances(
      self.teacher, self.tokenizer, sentences, paths, max_len=max_len, desc=name
    )
    np.savez(path, **{p.replace("/", "."): c for p, c in covs.items()})
    return covs

  def evaluate(self, model) -> dict:
    emb = train.embed(
      model, self.tokenizer, self.eval_sentences, max_len=self.config.eval_max_len, desc="eval"
    )
    return train.embedding_metrics(emb, self.teacher_eval)


def _compressed(setup: Setup, row: train.Row, row_dir: pathlib.Path):
  """The row's compressed model and infos: made once, then read back.

  The first call compresses, evaluates (``before.json``) and saves the
  parameters with orbax; later calls (the distillation pass, a resumed
  sweep) rebuild the structure from the infos and restore them.
  """
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top

  before_path = row_dir / "before.json"
  if before_path.is_file():
    before = json.loads(before_path.read_text())
    student = train.with_structure(setup.teacher, row.method, before["matrices"])
    abstract = jax.tree.map(np.asarray, nnx.state(student, nnx.Param))
    with ocp.StandardCheckpointer() as checkpointer:
      nnx.update(student, checkpointer.restore((row_dir / "compressed").resolve(), abstract))
    return student, before
  config = setup.config
  t0 = time.perf_counter()
  student, infos = train.compress_model(
    setup.teacher,
    row,
    covariances=setup.calibration,
    top_splits=config.kron_top_splits,
    als_sweeps=config.als_sweeps,
    progress=config.progress,
  )
  compress_seconds = time.perf_counter() - t0
  metrics = setup.evaluate(student)
  metrics["output_errors"] = train.matrix_output_errors(
    student, setup.teacher, list(infos), setup.eval_cov
  )
  before = {
    "row": dataclasses.asdict(row),
    "name": row.name,
    "matrices_params": sum(i["params"] for i in infos.values()),
    "matrices_dense_params": sum(i["dense_params"] for i in infos.values()),
    "model_params": models.count_params(student),
    "dense_model_params": models.count_params(setup.teacher),
    "compress_seconds": compress_seconds,
    "matrices": infos,
    "before": metrics,
  }
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(
      (row_dir / "compressed").resolve(), jax.device_get(nnx.state(student, nnx.Param)), force=True
    )
  _write_json(before_path, before)
  logger.info(
    "%s as compressed: mean cosine %.4f, top-1 %.3f (%.0f s)",
    row.name,
    metrics["mean_cosine"],
    metrics["top1"],
    compress_seconds,
  )
  return student, before


def distill_row(setup: Setup, row: train.Row, seed: int) -> None:
  """Distils the row's compressed model with ``seed`` and evaluates it."""
  row_dir = setup.workdir / "rows" / row.name
  if (row_dir / f"seed_{seed}.json").is_file():
    return
  student, before = _compressed(setup, row, row_dir)
  log = train.distill(
    student,
    setup.teacher,
    setup.tokenizer,
    setup.distill_sentences,
    setup.config,
    seed=seed,
    checkpoint_dir=row_dir / f"state_seed_{seed}",
    desc=f"distil {row.name} s{seed}",
  )
  after = setup.evaluate(student)
  after["output_errors"] = train.matrix_output_errors(
    student, setup.teacher, list(before["matrices"]), setup.eval_cov
  )
  _write_json(
    row_dir / f"seed_{seed}.json", {**before, "seed": seed, "after": after, "distill": log}
  )
  logger.info(
    "%s seed %d: mean cosine %.4f -> %.4f, top-1 %.3f -> %.3f",
    row.name,
    seed,
    before["before"]["mean_cosine"],
    after["mean_cosine"],
    before["before"]["top1"],
    after["top1"],
  )


def run_sweep(workdir: pathlib.Path, config) -> None:
  """For each matrix set: every row compressed and evaluated, then
  distilled in the config's ``distill_order`` (what matters most first)."""
  setup = Setup(workdir, config)
  _write_json(
    workdir / "corpus_stats.json",
    {
      "distill": len(setup.distill_sentences),
      "eval": len(setup.eval_sentences),
      "sources": setup.corpus["sources"],
      "python": setup.corpus["python"],
      "packages": setup.corpus.get("packages"),
    },
  )
  rank = {(m, c): i for i, (m, c) in enumerate(config.distill_order)}
  for matrices in config.matrices:  # one matrix set finished before the next
    rows = [r for r in train.rows_of(config) if r.matrices == matrices]
    for row in rows:
      _compressed(setup, row, workdir / "rows" / row.name)
    rows.sort(key=lambda r: rank.get((r.matrices, r.compression), len(rank)))
    for row in rows:
      seeds = tuple(config.seeds) + (
        tuple(config.extra_seeds) if row.name in config.extra_seed_rows else ()
      )
      for seed in seeds:
        distill_row(setup, row, seed)


def run_timing(workdir: pathlib.Path, config) -> None:
  """The dense encoder against each row structure, interleaved in one run.

  The structures (factor shapes and ranks) are read from the sweep's
  ``before.json`` files; the weights do not change the time, so they stay
  zeros.
  """
  teacher, _ = models.load_pretrained()
  encoders = {"dense": teacher}
  for row in train.rows_of(config):
    key = f"{row.matrices}-{row.method}-{row.compression}x"
    result = workdir / "rows" / row.name / "before.json"
    if key in encoders or not result.is_file():
      continue
    infos = json.loads(result.read_text())["matrices"]
    encoders[key] = train.with_structure(teacher, row.method, infos)
  seconds = train.time_encoders(encoders, rounds=config.timing_rounds)
  _write_json(
    workdir / "timing.json",
    {"batch": 32, "seq_len": 128, "rounds": config.timing_rounds, "median_seconds": seconds},
  )


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", default="runs/minilm")
  parser.add_argument(
    "--config", default="default", help="a config in configs/ or a .py file with get_config()"
  )
  parser.add_argument("--stage", default="all", choices=("all", "sweep", "timing", "report"))
  parser.add_argument(
    "--matrices",
    default=None,
    choices=train.MATRIX_SETS,
    help="run only this matrix set's rows (e.g. one process per set, sharing the work directory)",
  )
  args = parser.parse_args(argv)
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
  config = common_configs.load_config_module(args.config, "compress_minilm").get_config()
  if args.matrices is not None:
    config = dataclasses.replace(config, matrices=(args.matrices,))
  workdir = pathlib.Path(args.workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  if args.stage in ("all", "sweep"):
    run_sweep(workdir, config)
  if args.stage in ("all", "timing"):
    run_timing(workdir, config)
  if args.stage in ("all", "report"):
    from examples.compress_minilm import report  # pylint: disable=g-import-not-at-top

    report.write_report(workdir, pathlib.Path(__file__).parent / "results")


if __name__ == "__main__":
  main()
