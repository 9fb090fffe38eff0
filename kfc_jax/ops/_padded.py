"""Multiplication by Kronecker factors padded past the layer's sizes.

The KFC paper pads awkward (e.g. prime) sizes with dummy features; here the
padding is invisible to the caller (``docs/DESIGN.md``, "KFC formulations").
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax.numpy as jnp

from kfc_jax import _checks, _dtypes
from kfc_jax.ops import _kron


def padded_kron_matmul(
  x: Any,
  factors: Sequence[Any],
  out_features: int,
  **kwargs: Any,
) -> jnp.ndarray:
  """``x @ kron(factors)[:x.shape[-1], :out_features]``, for padded shapes.

  The KFC paper pads awkward (e.g. prime) sizes with dummy features. This pads
  ``x`` with zero features up to ``prod(m_t)`` and drops the outputs past
  ``out_features``, so the result is exactly the unpadded maths: the padded
  rows of ``W`` only ever meet zeros.

  Args:
    x: ``[*batch, in_features]`` with ``in_features <= prod(m_t)``.
    factors: as for :func:`kron_matmul`.
    out_features: ``<= prod(n_t)``.
    **kwargs: passed to :func:`kron_matmul`.

  Example usage::

    >>> import numpy as np, kfc_jax
    >>> rng = np.random.default_rng(0)
    >>> a, b, x = (rng.standard_normal(s).astype(np.float32)
    ...            for s in [(3, 2), (4, 3), (5, 10)])  # a 12 -> 6 map; 10 inputs
    >>> y = kfc_jax.padded_kron_matmul(x, [a, b], 4)
    >>> y.shape, np.allclose(y, x @ np.kron(a, b)[:10, :4], atol=1e-4)
    ((5, 4), True)
  """
  fs = _checks.factor_list(factors)
  m = math.prod(f.shape[1] for f in fs)
  n = math.prod(f.shape[2] for f in fs)
  out_features = _checks.positive_int(out_features, "out_features")
  x = _dtypes.as_array(x, "x")
  if x.ndim < 1 or x.shape[-1] > m:
    raise ValueError(
      f"x must have shape [*batch, in_features] with in_features <= {m} (the"
      f" factors' padded input size), got x with shape {tuple(x.shape)}."
    )
  if out_features > n:
    raise ValueError(
      f"out_features must be <= {n} (the factors' padded output size), got {out_features}."
    )
  if x.shape[-1] < m:
    x = jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, m - x.shape[-1])])
  y = _kron.kron_matmul(x, fs, **kwargs)
  return y[..., :out_features] if out_features < n else y
