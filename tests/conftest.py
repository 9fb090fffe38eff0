"""Shared fixtures: float64 NumPy references and x64 on demand."""

from __future__ import annotations

import zlib

import jax
import numpy as np
import pytest

# Older test modules import these from here; new ones from `references`.
from references import np_kron as np_kron
from references import random_factors as random_factors

from kfc_jax.ops import _autotune


@pytest.fixture
def x64():
  """Enables float64 in JAX for one test (references are float64 NumPy)."""
  with jax.enable_x64(True):
    yield


@pytest.fixture
def rng(request):
  """A fresh NumPy generator per test, seeded from the test's name."""
  return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
  """A fresh autotune cache: empty memory, disk under tmp_path."""
  monkeypatch.setenv("KFC_JAX_CACHE_DIR", str(tmp_path))
  _autotune.clear_cache()
  yield tmp_path
  _autotune.clear_cache()
