"""Multiplication by a sum of Kronecker products, without forming the product.

Conventions (``docs/DESIGN.md``, "Conventions"): row-vector layout
``y = x @ W``; Kronecker order of ``jnp.kron``; each factor carries a leading rank axis,
``F_t: [r, m_t, n_t]``, and ``W = sum_r F_1[r] ⊗ ... ⊗ F_k[r]`` has shape
``[prod(m_t), prod(n_t)]``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any, Literal

import jax
import jax.numpy as jnp
from jax import lax

from kfc_jax import _checks, _dtypes
from kfc_jax.ops import _vjp
from kfc_jax.ops._cost import CostModel, Strategy, default_cost_model, kron_matmul_plan

Array = jax.Array
PrecisionLike = Any


# ---------------------------------------------------------------------------
# Computation
# ---------------------------------------------------------------------------


def _dot(a, b, dims, precision, preferred_element_type):
  return lax.dot_general(
    a, b, dims, precision=precision, preferred_element_type=preferred_element_type
  )


def _factored(x, factors, order, precision, pet):
  """Contracts one factor at a time; the contracted axis is always last.

  ``t`` carries labelled axes. Before each step they are put in the canonical
  order ``[rank?, batch, outs (by factor), ins (by factor), target]`` so that
  each step is a plain (rank-batched) GEMM on a contiguous last axis.
  """
  k = len(factors)
  batch = x.shape[0]
  t = x.reshape(batch, *(f.shape[1] for f in factors))
  labels = ["batch"] + [("in", i) for i in range(k)]

  def canonical(target, rank_next_to_target=False):
    outs = sorted((lab for lab in labels if lab[0] == "out"), key=lambda lab: lab[1])
    ins = sorted(
      (lab for lab in labels if lab[0] == "in" and lab != target), key=lambda lab: lab[1]
    )
    head = ["rank"] if "rank" in labels and not rank_next_to_target else []
    tail = ["rank"] if "rank" in labels and rank_next_to_target else []
    return [*head, "batch", *outs, *ins, *tail, target]

  def permute(new_labels):
    nonlocal t, labels
    perm = [labels.index(lab) for lab in new_labels]
    if perm != list(range(len(perm))):
      t = jnp.transpose(t, perm)
    labels = list(new_labels)

  for step, i in enumerate(order):
    f = factors[i]
    first, last = step == 0, step == k - 1
    target = ("in", i)
    if last and not first:
      # Contract the rank and this factor's input axis in one GEMM.
      permute(canonical(target, rank_next_to_target=True))
      nd = t.ndim
      t = _dot(t, f, (((nd - 2, nd - 1), (0, 1)), ((), ())), precision, pet)
      labels = [*labels[:-2], ("out", i)]
    elif first:
      permute(canonical(target))
      t = _dot(t, f, (((t.ndim - 1,), (1,)), ((), ())), precision, pet)
      labels = [*labels[:-1], "rank", ("out", i)]
    else:
      permute(canonical(target))
      t = _dot(t, f, (((t.ndim - 1,), (1,)), ((0,), (0,))), precision, pet)
      labels = ["rank", *labels[1:-1], ("out", i)]
    if pet is None:
      t = t.astype(x.dtype)
  permute(["batch"] + [("out", i) for i in range(k)])
  return t.reshape(batch, -1)


def _materialized(x, factors, precision, pet):
  """``x @ kron(factors)`` with ``W`` formed. ``W`` is an intermediate like any
  other: held in the accumulation dtype, so every plan rounds the same way."""
  w = kron(list(factors), precision=precision, preferred_element_type=pet)
  return _dot(x, w, (((1,), (0,)), ((), ())), precision, pet)


def kron(
  factors: Sequence[Any],
  *,
  precision: PrecisionLike = None,
  preferred_element_type: Any = None,
) -> Array:
  """Materialises ``W = sum_r kron(F_1[r], ..., F_k[r])``.

  Args:
    factors: ``k >= 1`` arrays, each ``[r, m_t, n_t]`` (or ``[m_t, n_t]``, r = 1),
      all with the same ``r``.
    precision: passed to the rank contraction (``lax.Precision``).
    preferred_element_type: accumulation dtype of the rank contraction.

  Returns:
    ``W`` of shape ``[prod(m_t), prod(n_t)]``, in ``jnp.kron`` order.

  Example usage::

    >>> import jax.numpy as jnp, kfc_jax
    >>> a, b = jnp.ones((2, 3)), jnp.ones((4, 5))
    >>> kfc_jax.kron([a, b]).shape
    (8, 15)
  """
  fs = _checks.factor_list(factors)
  dtype = jnp.result_type(*fs)
  _, preferred_element_type = _dtypes.compute_dtype(
    fs[0], fs, preferred_element_type, name="factors[0]"
  )
  fs = [f.astype(dtype) for f in fs]
  r = fs[0].shape[0]
  acc = fs[0]  # [r, M, N]
  for f in fs[1:-1]:
    acc = (acc[:, :, None, :, None] * f[:, None, :, None, :]).reshape(
      r, acc.shape[1] * f.shape[1], acc.shape[2] * f.shape[2]
    )
  if len(fs) == 1:
    return (
      acc.sum(0) if preferred_element_type is None else acc.sum(0, dtype=preferred_element_type)
    )
  f = fs[-1]
  w = jnp.einsum(
    "rab,rcd->acbd", acc, f, precision=precision, preferred_element_type=preferred_element_type
  )
  return w.reshape(acc.shape[1] * f.shape[1], acc.shape[2] * f.shape[2])


def kron_matmul(
  x: Any,
  factors: Sequence[Any],
  *,
  precision: PrecisionLike = None,
  preferred_element_type: Any = None,
  strategy: Strategy = "auto",
  cost_model: CostModel | None = None,
  backward: Literal["planned", "autodiff"] = "planned",
) -> Array:
  """Computes ``x @ sum_r kron(F_1[r], ..., F_k[r])`` without forming the product.

  ``x`` is reshaped (for free, row-major) to ``[batch, m_1, ..., m_k]`` and the
  factors are contracted one at a time, each as one GEMM, in the order the cost
  model predicts is fastest (see :func:`kron_matmul_plan`). When the factors
  are small and the batch large, forming ``W`` and running one GEMM can win;
  ``strategy="auto"`` does that only when ``W`` is no larger than ``x`` and
  ``y`` together.

  Dtypes (one policy for every strategy, :func:`kron` and the conv ops; see
  ``docs/DESIGN.md``, "Conventions"): factors are real floating (float16,
  bfloat16, float32, float64); ``x`` is real floating, integer or bool; both
  are cast to ``jnp.result_type(x, *factors)``. Complex ``x`` or factors raise
  ``TypeError`` naming the argument. ``preferred_element_type`` is ``None`` or
  a real floating dtype (anything else raises ``TypeError``). An empty batch
  (e.g. ``x: [0, m]``) gives an empty result; a zero-size factor dimension
  raises ``ValueError`` naming ``factors``.

  Args:
    x: ``[*batch, prod(m_t)]``, any number of batch axes (including none).
    factors: ``k >= 1`` arrays, each ``[r, m_t, n_t]`` (or ``[m_t, n_t]``,
      meaning r = 1), all with the same ``r``.
    precision: ``lax.Precision`` for every contraction.
    preferred_element_type: accumulation/result dtype of every contraction;
      intermediates (a materialised ``W`` included) are held in it.
    strategy: ``"auto"``, ``"factored"``, ``"materialize"``, ``"autotune"``
      or a permutation of factor indices; see :func:`kron_matmul_plan`.
      ``"autotune"`` runs the plan measured fastest forward + backward when
      differentiated, and (planned backward) the one measured fastest
      forward alone when not.
    cost_model: device model for the plan; defaults to
      :func:`default_cost_model`.
    backward: ``"planned"`` (default): a factored plan gets a custom VJP whose
      ``dx`` and factor gradients are planned too (``kfc_jax/ops/_vjp.py``);
      reverse mode only, so ``jax.jvp``/``jacfwd``/``hessian`` raise.
      ``"autodiff"``: JAX differentiates the forward (every mode works).

  Returns:
    ``[*batch, prod(n_t)]``, of dtype ``preferred_element_type`` or the
    promoted dtype of ``x`` and the factors.

  Example usage::

    >>> import jax, jax.numpy as jnp, kfc_jax
    >>> x = jnp.ones((8, 6))
    >>> a, b = jnp.ones((2, 4)), jnp.ones((3, 5))   # W: [6, 20]
    >>> kfc_jax.kron_matmul(x, [a, b]).shape
    (8, 20)
  """
  fs = _checks.factor_list(factors)
  if backward not in ("planned", "autodiff"):
    raise ValueError(f'backward must be "planned" or "autodiff", got {backward!r}.')
  x = _dtypes.as_array(x, "x")
  ms = tuple(f.shape[1] for f in fs)
  ns = tuple(f.shape[2] for f in fs)
  m = math.prod(ms)
  if x.ndim < 1 or x.shape[-1] != m:
    raise ValueError(
      f"x must have shape [*batch, {m}] (the product of the factors' input"
      f" sizes {ms}), got x with shape {tuple(x.shape)}."
    )
  dtype, preferred_element_type = _dtypes.compute_dtype(x, fs, preferred_element_type)
  x = x.astype(dtype)
  fs = [f.astype(dtype) for f in fs]
  batch_shape = x.shape[:-1]
  strategy = _checks.strategy(strategy, len(fs))
  if x.size == 0:
    # An empty batch: nothing to plan or time (and reshape(-1) cannot infer
    # a batch of 0). JAX differentiates the constant to zero gradients.
    return jnp.zeros((*batch_shape, math.prod(ns)), preferred_element_type or dtype)
  x2 = x.reshape(-1, m)
  plan = kron_matmul_plan(
    x2.shape, [f.shape for f in fs], dtype=dtype, strategy=strategy, cost_model=cost_model
  )
  if plan.strategy == "materialize" and strategy == "autotune" and backward == "planned":
    # Forming W was fastest forward + backward; undifferentiated, the
    # forward-only pick runs (it may be factored).
    y = _vjp.autotuned_materialize(x2, fs, precision, preferred_element_type)
  elif plan.strategy == "materialize":
    y = _materialized(x2, fs, precision, preferred_element_type)
  elif backward == "planned":
    y = _vjp.planned_matmul(
      x2,
      fs,
      plan,
      precision,
      preferred_element_type,
      cost_model or default_cost_model(),
      tune_inference=strategy == "autotune",
    )
  elif plan.chosen.chunk_rows:
    y = _chunked(
      functools.partial(
        _factored, factors=fs, order=plan.order, precision=precision, pet=preferred_element_type
      ),
      x2,
      plan.chosen.chunk_rows,
    )
  else:
    y = _factored(x2, fs, plan.order, precision, preferred_element_type)
  return y.reshape(*batch_shape, math.prod(ns))


def _chunked(fn, x, rows):
  """Applies ``fn`` to blocks of ``rows`` rows (keeps intermediates in cache)."""
  blocks, rest = divmod(x.shape[0], rows)
  head = lax.map(fn, x[: blocks * rows].reshape(blocks, rows, x.shape[1]))
  head = head.reshape(blocks * rows, -1)
  return jnp.concatenate([head, fn(x[blocks * rows :])]) if rest else head
