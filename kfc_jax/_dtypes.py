"""The dtype policy of the primitives and of the layers' options.

Split from ``_checks.py`` (argument normalisers); the checks raise
``TypeError`` naming the argument, what it received and what it accepts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax.numpy as jnp

# The dtype policy of the primitives (kron, kron_matmul, padded_kron_matmul,
# kron_kernel, kron_conv, kron_conv_sum), stated once here and in
# docs/DESIGN.md, "Conventions":
#
# * factors: real floating (float16, bfloat16, float32, float64);
# * x: real floating, or integer/bool (converted to the compute dtype);
# * complex x or factors: rejected, naming the argument (the layers, the cost
#   model and the decompositions are real-valued);
# * compute dtype: jnp.result_type(x, *factors) (JAX's promotion: an integer x
#   takes the factors' dtype; bfloat16 with float16 gives float32);
# * preferred_element_type: None or a real floating dtype; every contraction
#   accumulates in it and the result has it;
# * result dtype: preferred_element_type if given, else the compute dtype.
REAL_FLOATING = ("float16", "bfloat16", "float32", "float64")


def factor_dtype(dtype: Any, name: str) -> None:
  """Checks that a factor's dtype is real floating (the dtype policy)."""
  if not jnp.issubdtype(dtype, jnp.floating):
    extra = (
      " (complex factors are not supported: kfc_jax's ops, layers and"
      " decompositions are real-valued)"
      if jnp.issubdtype(dtype, jnp.complexfloating)
      else ""
    )
    raise TypeError(
      f"{name} must have a real floating dtype (one of {REAL_FLOATING}), got {dtype}{extra}."
    )


def compute_dtype(
  x: Any, factors: Sequence[Any], preferred_element_type: Any, name: str = "x"
) -> tuple[Any, Any]:
  """Applies the dtype policy to validated factors and ``x``.

  Returns:
    ``(dtype, pet)``: the compute dtype (what ``x`` and the factors are cast
    to) and ``preferred_element_type`` as a dtype (or ``None``). The result of
    every op is ``pet`` if given, else ``dtype``.
  """
  x_dtype = x.dtype
  if not (
    jnp.issubdtype(x_dtype, jnp.floating)
    or jnp.issubdtype(x_dtype, jnp.integer)
    or jnp.issubdtype(x_dtype, jnp.bool_)
  ):
    extra = (
      " (complex inputs are not supported: kfc_jax's ops, layers and"
      " decompositions are real-valued)"
      if jnp.issubdtype(x_dtype, jnp.complexfloating)
      else ""
    )
    raise TypeError(
      f"{name} must have a real floating, integer or bool dtype, got {x_dtype}{extra}."
    )
  dtype = jnp.result_type(x_dtype, *(f.dtype for f in factors))
  pet = optional_float_dtype(preferred_element_type, "preferred_element_type")
  return dtype, pet


def as_array(value: Any, name: str) -> Any:
  """``value`` as a JAX array (arrays pass through), naming it if it is not one."""
  if hasattr(value, "ndim") and hasattr(value, "dtype"):
    return value
  try:
    return jnp.asarray(value)
  except (TypeError, ValueError) as e:
    raise TypeError(
      f"{name} must be an array of numbers, got {value!r} of type {type(value).__name__}."
    ) from e


def optional_float_dtype(value: Any, name: str, allow_none: bool = True) -> Any:
  """Returns ``value`` as a real floating dtype (or ``None``), or raises."""
  if value is None and allow_none:
    return None
  try:
    dtype = jnp.dtype(value)
  except TypeError:
    dtype = None
  if dtype is None or not jnp.issubdtype(dtype, jnp.floating):
    none = "None or " if allow_none else ""
    shown = dtype.name if dtype is not None else repr(value)
    raise TypeError(
      f"{name} must be {none}a real floating dtype (one of {REAL_FLOATING}), got {shown}."
    )
  return dtype


def layer_options(
  *,
  dtype: Any,
  param_dtype: Any,
  preferred_element_type: Any,
  rngs: Any = None,
  check_rngs: bool = False,
) -> None:
  """Checks the options every layer shares (the dtype policy, ``rngs``)."""
  optional_float_dtype(dtype, "dtype")
  optional_float_dtype(param_dtype, "param_dtype", allow_none=False)
  optional_float_dtype(preferred_element_type, "preferred_element_type")
  if check_rngs:
    from flax import nnx  # the NNX layers only

    if not isinstance(rngs, nnx.Rngs):
      raise TypeError(
        f"rngs must be an nnx.Rngs (e.g. nnx.Rngs(0)), got {rngs!r} of type {type(rngs).__name__}."
      )
