"""The kron_conv backward benchmark runs (--quick), checks its mixes' gradients
and writes its JSON and Markdown."""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from references import np_conv_kernel, random_term

BENCHMARKS = os.path.join(os.path.dirname(__file__), os.pardir, os.pardir, "benchmarks")


@pytest.mark.slow
def test_quick_run_writes_results(tmp_path, monkeypatch):
  monkeypatch.syspath_prepend(BENCHMARKS)
  import conv_backward

  assert conv_backward.main(["--quick", "--repeats", "1", "--out", str(tmp_path)]) == 0
  stem = tmp_path / "conv_backward_cpu_float32_quick"
  payload = json.loads(stem.with_suffix(".json").read_text())
  results = payload["rows"][0]["results"]
  assert set(results) >= {"dense", "F/F/F", "M/M/M", *conv_backward.MIXES}
  assert all(v["ms"] > 0 for v in results.values())
  assert len(payload["mix_gains"]) == 1
  assert "| layer | split | dense |" in stem.with_suffix(".md").read_text()


def _np_grads(x, a, b, ct):
  """float64 gradients of <conv_SAME(x, sum_r kron(A[r], B[r])), ct> (3x3, stride 1)."""
  k = np_conv_kernel(a, b)
  xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  _, h, w, _ = x.shape
  dk = np.zeros_like(k)
  dxp = np.zeros_like(xp)
  for p in range(3):
    for q in range(3):
      window = xp[:, p : p + h, q : q + w]
      dk[p, q] = np.einsum("nhwi,nhwo->io", window, ct)
      dxp[:, p : p + h, q : q + w] += np.einsum("nhwo,io->nhwi", ct, k[p, q])
  (_, ah, aw, ai, ao), (_, bh, bw, bi, bo) = a.shape, b.shape
  dk6 = dk.reshape(ah, bh, aw, bw, ai, bi, ao, bo)
  da = np.einsum("aebfcgdh,refgh->rabcd", dk6, b)
  db = np.einsum("aebfcgdh,rabcd->refgh", dk6, a)
  return dxp[:, 1:-1, 1:-1], da, db


def test_every_mix_is_exact(x64, rng, monkeypatch):
  """Each mixed backward equals the float64 gradients of the np.kron kernel's conv."""
  monkeypatch.syspath_prepend(BENCHMARKS)
  import conv_backward

  x = rng.standard_normal((2, 5, 5, 6))
  a, b = random_term(rng, (3, 3, 3, 2), (1, 1, 2, 3), rank=2)
  ct = rng.standard_normal((2, 5, 5, 6))
  want = _np_grads(x, a, b, ct)
  for name in ("F/F/F", "M/M/M", *conv_backward.MIXES):
    f = conv_backward.mixed(name)
    got = jax.grad(lambda x, a, b, f=f: jnp.vdot(f(x, a, b), ct), (0, 1, 2))(x, a, b)
    for g, w in zip(got, want, strict=True):
      np.testing.assert_allclose(g, w, rtol=1e-10, atol=1e-10, err_msg=name)
