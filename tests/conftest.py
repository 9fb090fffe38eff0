"""Shared fixtures: float64 NumPy references and x64 on demand."""

from __future__ import annotations

import zlib

import jax
import numpy as np
import pytest


@pytest.fixture
def x64():
  """Enables float64 in JAX for one test (references are float64 NumPy)."""
  with jax.enable_x64(True):
    yield


@pytest.fixture
def rng(request):
  """A fresh NumPy generator per test, seeded from the test's name."""
  return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))


def np_kron(factors) -> np.ndarray:
  """float64 reference: sum_r np.kron(F_1[r], ..., F_k[r])."""
  fs = [np.asarray(f, np.float64) for f in factors]
  fs = [f[None] if f.ndim == 2 else f for f in fs]
  total = 0.0
  for r in range(fs[0].shape[0]):
    w = np.ones((1, 1))
    for f in fs:
      w = np.kron(w, f[r])
    total = total + w
  return total


def random_factors(rng, in_factors, out_factors, rank, dtype=np.float64):
  return [rng.standard_normal((rank, m, n)).astype(dtype)
          for m, n in zip(in_factors, out_factors)]
