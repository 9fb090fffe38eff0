"""Parameter descriptions shared by every layer family and both frameworks.

A layout says *which* parameters a layer has with :class:`ParamSpec`; the
NNX and Linen ``make_params`` turn the specs into parameters, each in one loop.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
Initializer = Callable[..., Array]
EMPTY_METADATA: Mapping[str, Any] = MappingProxyType({})


@dataclasses.dataclass(frozen=True)
class ParamSpec:
  """One parameter of a layer: its name, shape, role and default scale.

  Attributes:
    name: the parameter's name, identical in NNX and Linen.
    shape: its shape.
    is_factor: a Kronecker (or low-rank) factor, initialised by
      ``factor_init`` (default: normal with ``stddev``) and typed
      ``KroneckerFactor`` in NNX; otherwise a bias, initialised by ``bias_init``.
    stddev: the default normal initialiser's standard deviation (factors).
    metadata: parameter metadata (e.g. ``out_sharding``).
  """

  name: str
  shape: tuple[int, ...]
  is_factor: bool
  stddev: float = 0.0
  metadata: Mapping[str, Any] = dataclasses.field(default_factory=dict)


def bias_specs(shapes: Mapping[str, tuple[int, ...]], metadata: Any) -> list[ParamSpec]:
  """One bias spec per ``{name: shape}``, all with ``bias_metadata``."""
  return [
    ParamSpec(name, shape, False, metadata=dict(metadata or {})) for name, shape in shapes.items()
  ]


def normal_init(stddev: float) -> Initializer:
  """``N(0, stddev^2)`` entries."""

  def init(key, shape, dtype=jnp.float32):
    # Drawn flat: XLA on CPU compiles the 3-D random kernel several times
    # slower than the 1-D one, and layers are built eagerly.
    flat = jax.random.normal(key, (math.prod(shape),), dtype)
    return (stddev * flat).reshape(shape)

  return init


def factor_name(term: int, factor: int) -> str:
  """Parameter name of factor ``factor`` of term ``term`` (NNX and Linen)."""
  return f"factor_{term}_{factor}"


def promote(arrays: Sequence[Any], dtype: Any) -> list[Any]:
  """Casts arrays (``None`` kept) to ``dtype``, or to their common float type."""
  present = [a for a in arrays if a is not None]
  if dtype is None:
    dtype = jnp.result_type(*present)
    if not jnp.issubdtype(dtype, jnp.inexact):
      dtype = jnp.promote_types(dtype, jnp.float32)
  return [None if a is None else jnp.asarray(a, dtype) for a in arrays]


def add_bias(y: Array, bias: Array | None) -> Array:
  return y if bias is None else y + bias


def check_features(x: Any, in_features: int) -> None:
  """Raises unless ``x`` is ``[*batch, in_features]``."""
  if x.ndim < 1 or x.shape[-1] != in_features:
    raise ValueError(
      f"x must have shape [*batch, {in_features}] (in_features), got shape {tuple(x.shape)}."
    )


def with_bias(
  params: dict[str, np.ndarray], bias: Any, out_features: int, use_bias: bool
) -> dict[str, np.ndarray]:
  """``params`` plus the copied bias (zeros if the dense layer had none)."""
  if use_bias:
    params["bias"] = np.zeros(out_features) if bias is None else np.asarray(bias)
  return params


def per_factor_metadata(
  metadata: Any, factors_per_term: Sequence[int], name: str = "factor_metadata"
) -> list[list[Mapping[str, Any]]]:
  """Expands ``factor_metadata`` to one mapping per term and factor.

  A mapping applies to every factor; a sequence gives one mapping per factor
  position (every term must then have that many factors).
  """
  if metadata is None:
    metadata = {}
  if isinstance(metadata, Mapping):
    return [[dict(metadata)] * k for k in factors_per_term]
  ks = set(factors_per_term)
  if (
    not isinstance(metadata, Sequence)
    or len(ks) != 1
    or len(metadata) != next(iter(ks))
    or not all(isinstance(m, Mapping) for m in metadata)
  ):
    raise TypeError(
      f"{name} must be a mapping (applied to every factor) or a sequence of"
      f" one mapping per factor ({sorted(ks)} factors per term), got"
      f" {metadata!r}."
    )
  return [[dict(m) for m in metadata] for _ in factors_per_term]


def pair_metadata(
  metadata: Any, name: str = "factor_metadata"
) -> tuple[Mapping[str, Any], Mapping[str, Any]]:
  """``factor_metadata`` of a two-factor layer: one mapping for both, or a pair."""
  if metadata is None:
    return {}, {}
  if isinstance(metadata, Mapping):
    return dict(metadata), dict(metadata)
  if (
    isinstance(metadata, Sequence)
    and len(metadata) == 2
    and all(isinstance(m, Mapping) for m in metadata)
  ):
    return dict(metadata[0]), dict(metadata[1])
  raise TypeError(
    f"{name} must be a mapping (applied to both factors) or a pair of mappings, got {metadata!r}."
  )
