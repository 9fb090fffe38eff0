"""Data-aware and ``method="auto"`` rows for the MNIST FC compression sweep.

The sweep of ``main.py`` compresses the FC layer (288 -> 256) of the MNIST
example's Baseline CNN with weight-only decompositions. This adds, at the same
matched budgets and with the same head fine-tune (``--finetune=head``):

* ``kfc_nkp_data`` / ``low_rank_data``: the same KFC-II term / low rank,
  fitted to the FC layer's *outputs* on calibration images
  (``kfc_jax.compress(..., calibration=batches)``: the layer's input
  covariance from the batches, then the whitened / ALS decomposition);
* ``auto`` / ``auto_data``: ``LayerRule(method="auto")`` at the KFC term's
  budget, which compares every Kronecker split, the KFC formulations over the
  3 x 3 x 32 feature map and low rank, and keeps the one with the lowest
  weight (``auto``) or output (``auto_data``) error;

next to the weight-only ``kfc_nkp`` and ``low_rank_svd`` rows for reference.
Each row: FC parameters, weight error, output error on held-out validation
features, test error before and after the fine-tune.

From the repository root, on the MNIST example's Baseline checkpoints::

  python examples/compress_mnist/data_aware.py --workdir=/tmp/compress_mnist_data \\
      --baseline_checkpoint=/tmp/mnist_run/checkpoints/Baseline --seeds=0
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

if __package__ in (None, ""):
  sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

# pylint: disable=g-import-not-at-top,wrong-import-position
import kfc_jax
from examples._common import mnist_data
from examples.compress_mnist import head, models
from examples.compress_mnist.configs import default

# pylint: enable=g-import-not-at-top,wrong-import-position

METHODS = ("kfc_nkp", "kfc_nkp_data", "low_rank_svd", "low_rank_data", "auto", "auto_data")
LABELS = {
  "kfc_nkp": "KFC-II, NKP (weights)",
  "kfc_nkp_data": "KFC-II, data-aware",
  "low_rank_svd": "Low rank, SVD (weights)",
  "low_rank_data": "Low rank, data-aware (whitened SVD)",
  "auto": "auto (weights)",
  "auto_data": "auto, data-aware",
}


def rule_for(method: str, budget: models.Budget, config) -> kfc_jax.LayerRule:
  base = method.removesuffix("_data")
  if base == "kfc_nkp":
    return kfc_jax.LayerRule(
      models.FC_PATH,
      "kfc",
      in_shape=models.FEATURE_SHAPE,
      terms=models.kfc_terms(config, budget.kfc_rank),
    )
  if base == "low_rank_svd" or base == "low_rank":
    return kfc_jax.LayerRule(models.FC_PATH, "low_rank", rank=budget.low_rank)
  return kfc_jax.LayerRule(
    models.FC_PATH, "auto", in_shape=models.FEATURE_SHAPE, max_params=budget.kfc_params
  )


def output_error(baseline, model, features: np.ndarray) -> float:
  """``||fc'(x) - fc(x)|| / ||fc(x) - b||`` on the conv features (before the ReLU)."""
  x = features.reshape(len(features), -1)
  y = np.asarray(baseline.fc(x), np.float64)
  y_hat = np.asarray(model.fc(x), np.float64)  # the head feeds fc flattened too
  return float(np.linalg.norm(y_hat - y) / np.linalg.norm(y - np.asarray(baseline.fc.bias[...])))


def run(args, data: mnist_data.MnistSplits | None = None) -> dict:
  """Every seed x budget x method; ``data`` preloaded (tests) or MNIST."""
  config = dataclasses.replace(
    default.get_config(),
    seeds=tuple(args.seeds),
    finetune="head",
    manual_dir=args.manual_dir,
    download=False,
  )
  if args.kfc_ranks:
    config = dataclasses.replace(config, kfc_ranks=tuple(args.kfc_ranks))
  if args.finetune_epochs:
    config = dataclasses.replace(
      config,
      finetune_epochs=args.finetune_epochs,
      batch_size=min(config.batch_size, args.batch_size),
      eval_batch_size=min(config.eval_batch_size, args.batch_size),
    )
  if data is None:
    data = mnist_data.load_mnist(
      manual_dir=config.manual_dir, download=False, num_validation=config.num_validation
    )
  labels = {"train": data.train[1], "validation": data.validation[1], "test": data.test[1]}
  budgets = models.matched_budgets(config)
  rows, baselines = [], []
  for seed in config.seeds:
    baseline = models.restore_baseline(
      models.checkpoint_path(args.baseline_checkpoint, seed),
      seed=seed,
      dropout_rate=config.dropout_rate,
    )
    features = {
      s: head.compute_features(baseline, getattr(data, s)[0], config.eval_batch_size)
      for s in ("train", "validation", "test")
    }
    test = head.evaluate_head(baseline, features["test"], labels["test"], config.eval_batch_size)
    baselines.append({"seed": seed, "test_error": test["error"]})
    # Calibration: the first images of the training split, as the model sees them.
    images = head.preprocess(data.train[0][: args.calibration_images])
    calibration = [images[i : i + 500] for i in range(0, len(images), 500)]
    for budget in budgets:
      for method in args.methods:
        start = time.perf_counter()
        model, report = kfc_jax.compress(
          baseline,
          rule_for(method, budget, config),
          calibration=calibration if method.endswith("_data") else None,
        )
        compress_s = time.perf_counter() - start
        row = report.rows[0]
        before = head.evaluate_head(
          model, features["test"], labels["test"], config.eval_batch_size
        )["error"]
        tuned = head.finetune_head(
          model, features, labels, config=config, seed=seed, wrt=models.trainable("head")
        )
        rows.append(
          {
            "seed": seed,
            "method": method,
            "kfc_rank": budget.kfc_rank,
            "budget": budget.kfc_params,
            "after": row.after,
            "fc_params": row.params_after,
            "relative_error": row.relative_error,
            "calibration_output_error": row.data_error,
            "choice": row.choice,
            "validation_output_error": output_error(baseline, model, features["validation"]),
            "before_test_error": before,
            "test_error": tuned["test_error"],
            "best_epoch": tuned["best_epoch"],
            "compress_seconds": compress_s,
            "finetune_seconds": tuned["seconds"],
          }
        )
        print(
          f"seed {seed} r={budget.kfc_rank} {method:14s} {row.after:40s}"
          f" w-err {row.relative_error:.3f} out-err"
          f" {rows[-1]['validation_output_error']:.3f} test {before:.2f}% ->"
          f" {tuned['test_error']:.2f}% ({compress_s:.1f} s)",
          flush=True,
        )
  return {"rows": rows, "baselines": baselines, "calibration_images": args.calibration_images}


def table(results: dict) -> str:
  lines = [
    "| Method | KFC rank (budget) | Layer chosen | FC params | Weight error |"
    " Output error (validation) | Test error % before FT | after FT |",
    "|---|---|---|---|---|---|---|---|",
  ]
  rows = results["rows"]
  keys = sorted(
    {(r["kfc_rank"], r["method"]) for r in rows}, key=lambda k: (k[0], METHODS.index(k[1]))
  )
  for rank, method in keys:
    rs = [r for r in rows if r["kfc_rank"] == rank and r["method"] == method]

    def stat(key, rs=rs, fmt="{:.2f}"):
      v = np.array([r[key] for r in rs], float)
      return fmt.format(v.mean()) + (f" ± {fmt.format(v.std(ddof=1))}" if len(v) > 1 else "")

    lines.append(
      f"| {LABELS[method]} | {rank} ({rs[0]['budget']:,}) | {rs[0]['after']} |"
      f" {rs[0]['fc_params']:,} | {stat('relative_error', fmt='{:.3f}')} |"
      f" {stat('validation_output_error', fmt='{:.3f}')} |"
      f" {stat('before_test_error')} | {stat('test_error')} |"
    )
  return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--workdir", required=True)
  parser.add_argument(
    "--baseline_checkpoint",
    required=True,
    help="the MNIST example's checkpoints (seed_<s> sub-directories)",
  )
  parser.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",")], default=[0])
  parser.add_argument("--methods", type=lambda s: s.split(","), default=list(METHODS))
  parser.add_argument("--calibration_images", type=int, default=5000)
  parser.add_argument("--manual_dir", default="../shared/data/mnist")
  parser.add_argument(
    "--kfc_ranks",
    type=lambda s: [int(x) for x in s.split(",")],
    default=None,
    help="default: the sweep's (1,2,6,12,24)",
  )
  parser.add_argument(
    "--finetune_epochs",
    type=int,
    default=None,
    help="default: the sweep's (3); with --batch_size for tests",
  )
  parser.add_argument("--batch_size", type=int, default=128)
  return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
  args = parse_args(argv)
  start = time.perf_counter()
  results = run(args)
  results["wall_seconds"] = time.perf_counter() - start
  out = Path(args.workdir)
  out.mkdir(parents=True, exist_ok=True)
  (out / "data_aware.json").write_text(json.dumps(results, indent=1))
  (out / "data_aware.md").write_text(table(results) + "\n")
  print(table(results))
  return 0


if __name__ == "__main__":
  sys.exit(main())
