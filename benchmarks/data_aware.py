"""Data-aware vs weight-only decompositions: output errors and time.

Part A, real inputs: MNIST images (the original files in ``/work/shared/data/mnist``,
read directly: gzip + idx header) feed a dense layer ``784 -> 256`` and a
``5x5x1x32`` conv, with random Gaussian weights (the inputs are what is real).
The covariance is taken on the 60,000 training images; the output error is
measured on the 10,000 test images by running the layer (``x @ W`` or
``lax.conv``), so it checks that fitting the training statistics carries over.

Part B, time at MiniLM FFN sizes (``384 x 1536`` and ``1536 x 384``) with a
general (not Kronecker-factored) covariance of 3,000 synthetic rows with
uneven scales.

Run (2-core shared CPU, loaded by other work; single-threaded BLAS, because
multithreaded BLAS on an oversubscribed machine is many times slower)::

  OPENBLAS_NUM_THREADS=1 .venv/bin/python benchmarks/data_aware.py
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import sys
import time

import jax
import numpy as np

import kfc_jax
from kfc_jax.decompose import input_covariance, patch_covariance

DATA = "/work/shared/data/mnist"


def mnist_images(name: str) -> np.ndarray:
  with gzip.open(os.path.join(DATA, name)) as f:
    raw = f.read()
  count, rows, cols = (int.from_bytes(raw[4 * i : 4 * i + 4], "big") for i in (1, 2, 3))
  return np.frombuffer(raw, np.uint8, offset=16).reshape(count, rows, cols) / 255.0


def output_error(y, y_hat) -> float:
  return float(np.linalg.norm(y - y_hat) / np.linalg.norm(y))


def conv(x, kernel):
  with jax.enable_x64(True):
    return np.asarray(
      jax.lax.conv_general_dilated(
        x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
      )
    )


def dense_rows(train, test, rng):
  w = rng.standard_normal((784, 256)) / 28.0
  x_train, x_test = train.reshape(-1, 784), test.reshape(-1, 784)
  cov = input_covariance(x_train)
  y_test = x_test @ w
  rows = []

  def add(method, params, weight, data, seconds):
    rows.append(
      {
        "layer": "dense 784->256",
        "method": method,
        "params": params,
        "weight_error": weight.relative_error if hasattr(weight, "relative_error") else None,
        "test_output_error_weight_only": output_error(y_test, x_test @ weight_w(weight)),
        "test_output_error_data_aware": output_error(y_test, x_test @ weight_w(data)),
        "train_data_error_data_aware": data.data_error,
        "data_aware_seconds": seconds,
      }
    )

  for rank in (8, 32):
    start = time.perf_counter()
    data = kfc_jax.low_rank(w, rank, input_cov=cov)
    add(
      f"low rank {rank}",
      rank * (784 + 256),
      kfc_jax.low_rank(w, rank),
      data,
      time.perf_counter() - start,
    )
  for rank in (4, 16):
    start = time.perf_counter()
    data = kfc_jax.nearest_kronecker(w, (28, 28), (16, 16), rank, input_cov=cov)
    add(
      f"(28,16)x(28,16) rank {rank}",
      rank * 2 * 28 * 16,
      kfc_jax.nearest_kronecker(w, (28, 28), (16, 16), rank),
      data,
      time.perf_counter() - start,
    )
  return rows


def weight_w(dec) -> np.ndarray:
  if isinstance(dec, kfc_jax.decompose.LowRankDecomposition):
    return dec.u @ dec.v
  a, b = dec.factors
  return sum(np.kron(a[r], b[r]) for r in range(a.shape[0]))


def conv_rows(train, test, rng):
  kernel = rng.standard_normal((5, 5, 1, 32)) / 5.0
  stats = None
  for chunk in np.array_split(train[..., None], 20):
    stats = patch_covariance(chunk, 5, padding="SAME", running=stats)
  x_test = test[:2000, ..., None]
  y_test = conv(x_test, kernel)
  rows = []
  for a_shape, b_shape, rank in (((5, 1, 1, 8), (1, 5, 1, 4), 2), ((5, 1, 1, 4), (1, 5, 1, 8), 4)):
    weight = kfc_jax.gkpd(kernel, a_shape, b_shape, rank)
    start = time.perf_counter()
    data = kfc_jax.gkpd(kernel, a_shape, b_shape, rank, input_cov=stats)
    seconds = time.perf_counter() - start
    k = lambda d, rank=rank: sum(np.kron(d.factors[0][r], d.factors[1][r]) for r in range(rank))
    rows.append(
      {
        "layer": "conv 5x5x1x32",
        "method": f"gkpd {a_shape}x{b_shape} rank {rank}",
        "params": rank * (int(np.prod(a_shape)) + int(np.prod(b_shape))),
        "weight_error": weight.relative_error,
        "test_output_error_weight_only": output_error(y_test, conv(x_test, k(weight))),
        "test_output_error_data_aware": output_error(y_test, conv(x_test, k(data))),
        "train_data_error_data_aware": data.data_error,
        "data_aware_seconds": seconds,
      }
    )
  return rows


def timing_rows(rng):
  rows = []
  for (m, n), ms, ns in (((384, 1536), (16, 24), (32, 48)), ((1536, 384), (32, 48), (16, 24))):
    w = rng.standard_normal((m, n))
    x = rng.standard_normal((3000, m)) * np.exp(rng.standard_normal(m))
    cov = input_covariance(x @ (np.eye(m) + rng.standard_normal((m, m)) / np.sqrt(m)))
    for rank in (4, 16):
      start = time.perf_counter()
      weight = kfc_jax.nearest_kronecker(w, ms, ns, rank)
      t_weight = time.perf_counter() - start
      start = time.perf_counter()
      data = kfc_jax.nearest_kronecker(w, ms, ns, rank, input_cov=cov)
      t_data = time.perf_counter() - start
      rows.append(
        {
          "shape": [m, n],
          "split": [ms, ns],
          "rank": rank,
          "weight_only_seconds": t_weight,
          "data_aware_seconds": t_data,
          "data_error_weight_only": float(
            np.sqrt(
              np.sum((w - weight_w(weight)) * (cov.covariance @ (w - weight_w(weight))))
              / np.sum(w * (cov.covariance @ w))
            )
          ),
          "data_error_data_aware": data.data_error,
        }
      )
    start = time.perf_counter()
    low = kfc_jax.low_rank(w, 64, input_cov=cov)
    rows.append(
      {
        "shape": [m, n],
        "split": "low rank",
        "rank": 64,
        "data_aware_seconds": time.perf_counter() - start,
        "data_error_data_aware": low.data_error,
      }
    )
  return rows


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
  args = parser.parse_args(argv)
  rng = np.random.default_rng(0)
  train = mnist_images("train-images-idx3-ubyte.gz")
  test = mnist_images("t10k-images-idx3-ubyte.gz")
  quality = dense_rows(train, test, rng) + conv_rows(train, test, rng)
  timing = timing_rows(rng)
  env = {
    "machine": f"{platform.machine()}, {os.cpu_count()} cores (shared, loaded by"
    " other work), OPENBLAS_NUM_THREADS="
    f"{os.environ.get('OPENBLAS_NUM_THREADS', 'unset')}",
    "command": " ".join(["python", *sys.argv]),
    "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
  }
  os.makedirs(args.out, exist_ok=True)
  stem = os.path.join(args.out, "data_aware")
  with open(stem + ".json", "w") as f:
    json.dump({"env": env, "quality": quality, "timing": timing}, f, indent=1)
  lines = [
    "# Data-aware vs weight-only decompositions",
    "",
    f"`{env['command']}` on {env['machine']}, {env['date']}.",
    "",
    "Output error = ||y - y_hat|| / ||y|| of the layer on the 10,000 MNIST test"
    " images (2,000 for the conv); the covariance is from the 60,000 training"
    " images. Weights are random Gaussian; the inputs are real.",
    "",
    "| layer | method | params | weight error | output error, weight-only |"
    " output error, data-aware | data-aware time (s) |",
    "|---|---|---|---|---|---|---|",
  ]
  for r in quality:
    lines.append(
      f"| {r['layer']} | {r['method']} | {r['params']:,} | {r['weight_error']:.3f} |"
      f" {r['test_output_error_weight_only']:.3f} | {r['test_output_error_data_aware']:.3f}"
      f" | {r['data_aware_seconds']:.2f} |"
    )
  lines += [
    "",
    "Time at MiniLM FFN sizes, general covariance (3,000 synthetic rows):",
    "",
    "| shape | split | rank | weight-only (s) | data-aware (s) |"
    " data error, weight-only | data error, data-aware |",
    "|---|---|---|---|---|---|---|",
  ]
  for r in timing:
    lines.append(
      f"| {r['shape'][0]}x{r['shape'][1]} | {r['split']} | {r['rank']} |"
      f" {r.get('weight_only_seconds', float('nan')):.2f} | {r['data_aware_seconds']:.2f} |"
      f" {r.get('data_error_weight_only', float('nan')):.3f} |"
      f" {r['data_error_data_aware']:.3f} |"
    )
  with open(stem + ".md", "w") as f:
    f.write("\n".join(lines) + "\n")
  print("\n".join(lines))


if __name__ == "__main__":
  main()
