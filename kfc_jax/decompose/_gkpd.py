"""GKPD: nearest sum of generalised Kronecker products to a conv kernel.

Hameed et al., *Convolutional Neural Network Compression through Generalized
Kronecker Product Decomposition* (AAAI 2022). A kernel ``K: [kh, kw, C_in,
C_out]`` (HWIO) with a split ``kh = ah*bh``, ``kw = aw*bw``, ``C_in = ai*bi``,
``C_out = ao*bo`` is approximated by
``K[(p1,p2),(q1,q2),(i1,i2),(o1,o2)] ≈ sum_r A[r,p1,q1,i1,o1] B[r,p2,q2,i2,o2]``
(the convention of :func:`~kfc_jax.kron_conv`). Reshaping ``K`` to
``[ah, bh, aw, bw, ai, bi, ao, bo]`` and grouping the ``a`` and the ``b`` axes
turns this into the Van Loan–Pitsianis problem, solved optimally by a truncated
SVD (:func:`~kfc_jax.nearest_kronecker_tensor`).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from typing import Any, Literal, cast

import numpy as np

from kfc_jax import _checks
from kfc_jax._checks import divisor_pairs
from kfc_jax.decompose import _covariance
from kfc_jax.decompose._covariance import DEFAULT_COV_REG
from kfc_jax.decompose._nkp import (
  KroneckerDecomposition,
  data_aware_decomposition,
  nearest_kronecker_tensor,
)
from kfc_jax.shapes import KronConvShape

_AXES = ("height", "width", "in_channels", "out_channels")


def _check_split(kernel_shape, a_shape, b_shape):
  a = _checks.int_tuple(a_shape, "a_shape")
  b = _checks.int_tuple(b_shape, "b_shape")
  for name, s in (("a_shape", a), ("b_shape", b)):
    if len(s) != 4:
      raise ValueError(f"{name} must be (h, w, in, out), 4 positive ints, got {s}.")
  for axis, k, p, q in zip(_AXES, kernel_shape, a, b, strict=True):
    if p * q != k:
      raise ValueError(
        f"a_shape {a} and b_shape {b} must multiply to the kernel shape"
        f" {tuple(kernel_shape)} axis by axis, but on {axis}"
        f" {p} * {q} = {p * q} != {k}; valid (a, b) pairs for {k}:"
        f" {divisor_pairs(k)}."
      )
  return a, b


def gkpd(
  kernel: Any,
  a_shape: Sequence[int],
  b_shape: Sequence[int],
  rank: int = 1,
  *,
  input_cov: Any = None,
  cov_reg: float = DEFAULT_COV_REG,
  max_sweeps: int | None = None,
  tol: float = 1e-10,
) -> KroneckerDecomposition:
  """Optimal rank-``rank`` Kronecker decomposition of an HWIO conv kernel.

  *Data-aware* (``input_cov=C``): a conv is a dense layer on its patches, so
  with ``C`` the second moment of the ``kh*kw*C_in`` input patches, flattened
  ``(kh, kw, C_in)`` row-major like the kernel reshaped to
  ``[kh*kw*C_in, C_out]`` (:func:`~kfc_jax.decompose.patch_covariance` builds
  it), the decomposition minimises the error of the conv's outputs on those
  inputs, ``tr((K - K_hat)^T C (K - K_hat))``. The generalised Kronecker
  product is a Kronecker product after a fixed permutation of the patch axes
  (``(p1, p2, q1, q2, i1, i2) -> ((p1, q1, i1), (p2, q2, i2))``); ``C`` is
  read through the same permutation, and the method is that of
  :func:`~kfc_jax.nearest_kronecker`: exact when ``C`` is a (generalised)
  Kronecker product ``C_A ⊗ C_B`` over the split, alternating least squares
  from that closed form otherwise, never worse than the weight-only answer
  on the data; ridge ``C + cov_reg * mean(diag C) * I``.

  Args:
    kernel: ``[kh, kw, C_in, C_out]`` (Flax's conv ``kernel``), finite.
    a_shape: ``(ah, aw, ai, ao)``.
    b_shape: ``(bh, bw, bi, bo)``, with ``a_shape[t] * b_shape[t] ==
      kernel.shape[t]`` for every axis; any split works, including ones where
      neither factor is 1 spatially.
    rank: number of Kronecker terms, at most ``min(prod(a_shape),
      prod(b_shape))``.
    input_cov: ``[kh*kw*C_in, kh*kw*C_in]`` patch covariance, or a
      :class:`~kfc_jax.decompose.RunningCovariance`; ``None`` for the weight
      error.
    cov_reg: the ridge on ``input_cov``, relative to its mean variance.
    max_sweeps: data-aware ALS sweeps at most (default 50).
    tol: stop ALS when a sweep lowers the data objective by less than this
      fraction.

  Returns:
    A :class:`~kfc_jax.KroneckerDecomposition` with ``factors = (A, B)``,
    ``A: [rank, ah, aw, ai, ao]`` and ``B: [rank, bh, bw, bi, bo]`` (float64
    NumPy, each term's factors scaled to equal norms), ready for
    :func:`~kfc_jax.kron_conv`; ``singular_values`` of the rearranged kernel,
    so ``relative_error == sqrt(sum(s[rank:]**2) / sum(s**2))``; with
    ``input_cov``, ``data_error`` (the relative output error) and no
    ``singular_values``.

  Example usage::

    >>> import numpy as np, kfc_jax
    >>> k = np.random.randn(3, 3, 64, 64)
    >>> dec = kfc_jax.gkpd(k, (3, 3, 16, 16), (1, 1, 4, 4), rank=2)
    >>> [f.shape for f in dec.factors]
    [(2, 3, 3, 16, 16), (2, 1, 1, 4, 4)]
    >>> s = dec.singular_values
    >>> bool(np.isclose(dec.relative_error, np.sqrt((s[2:]**2).sum() / (s**2).sum())))
    True
  """
  k = np.asarray(kernel)
  k = _covariance.real_array(k, "kernel", ndim=4)
  a, b = _check_split(k.shape, a_shape, b_shape)
  rank = _checks.positive_int(rank, "rank")
  max_rank = min(math.prod(a), math.prod(b))
  if rank > max_rank:
    raise ValueError(
      f"rank must be at most min(prod(a_shape), prod(b_shape)) = {max_rank}"
      f" for a_shape {a} and b_shape {b}, got rank={rank}."
    )
  t = k.reshape(a[0], b[0], a[1], b[1], a[2], b[2], a[3], b[3])
  axes = [(0, 2, 4, 6), (1, 3, 5, 7)]
  dec = nearest_kronecker_tensor(t, axes, rank)
  if input_cov is None:
    return dec
  # The first six axes of t are the patch axes (p1, p2, q1, q2, i1, i2),
  # row-major as in the [kh*kw*C_in] patch: C reshapes to them unpermuted.
  return data_aware_decomposition(
    t,
    axes,
    6,
    rank,
    dec,
    input_cov,
    cov_reg,
    f"the kernel's patch size kh*kw*C_in = {k.shape[0]}*{k.shape[1]}*{k.shape[2]}",
    max_sweeps=max_sweeps,
    tol=tol,
  )


def _gkpd_error(kernel: np.ndarray, a, b, rank: int) -> float:
  t = kernel.reshape(a[0], b[0], a[1], b[1], a[2], b[2], a[3], b[3])
  m = t.transpose(0, 2, 4, 6, 1, 3, 5, 7).reshape(math.prod(a), math.prod(b))
  # Squared singular values are the Gram matrix's eigenvalues: one GEMM and a
  # small symmetric eigenproblem, ~10x faster than an SVD. Sums of squares are
  # all we need, and the Gram's rounding (relative to s_max^2) does not hurt.
  gram = m @ m.T if m.shape[0] <= m.shape[1] else m.T @ m
  s2 = np.clip(np.linalg.eigvalsh(gram)[::-1], 0.0, None)
  total = s2.sum()
  return float(np.sqrt(s2[rank:].sum() / total)) if total > 0 else 0.0


def suggest_conv_factors(
  kernel_shape: Sequence[int],
  *,
  compression: float | None = 5.0,
  max_params: int | None = None,
  rank: int | None = None,
  prefer: Literal["params", "flops", "error"] | None = None,
  kernel: Any = None,
) -> KronConvShape:
  """Suggests a Kronecker split (and rank) of a conv kernel for a budget.

  Every split of ``(kh, kw, C_in, C_out)`` into ``a_shape * b_shape`` is taken
  at the largest rank its parameters fit in the budget (or at ``rank``). Among
  those, ``prefer="error"`` (the default when ``kernel`` is given) returns the
  one whose :func:`gkpd` of ``kernel`` has the smallest error (one SVD per
  split, from its Gram matrix: ~10 s for a 3x3x256x256 kernel on 2 cores);
  ``prefer="params"`` (the default otherwise) the one with the most
  parameters (the most expressive that fits); ``prefer="flops"`` the one
  whose factored convolution does the fewest FLOPs. Ties go to fewer FLOPs,
  then more parameters, then balanced channel splits.

  Without a kernel the criteria favour lopsided splits (one factor a channel
  vector: a low-rank bottleneck); with the trained kernel the choice is the
  one that keeps most of it.

  Args:
    kernel_shape: ``(kh, kw, C_in, C_out)``.
    compression: target ratio of dense to Kronecker parameters (> 1).
    max_params: a parameter budget instead of ``compression``.
    rank: fix the rank instead of choosing it.
    prefer: ``"error"``, ``"params"`` or ``"flops"``.
    kernel: the trained ``[kh, kw, C_in, C_out]`` kernel, for ``"error"``.

  Returns:
    A :class:`KronConvShape`.

  Example usage::

    >>> import numpy as np, kfc_jax
    >>> s = kfc_jax.suggest_conv_factors((3, 3, 64, 64), compression=5, prefer="flops")
    >>> s.a_shape, s.b_shape, s.rank, s.compression >= 5
    ((3, 3, 8, 64), (1, 1, 8, 1), 1, True)
    >>> a, b = (np.random.randn(*shape).astype(np.float32)
    ...         for shape in [(3, 3, 8, 8), (1, 1, 8, 8)])
    >>> k = np.asarray(kfc_jax.kron_kernel((a, b)))
    >>> s = kfc_jax.suggest_conv_factors(k.shape, compression=5, kernel=k)
    >>> dec = kfc_jax.gkpd(k, s.a_shape, s.b_shape, s.rank)
    >>> s.compression >= 5, dec.relative_error < 1e-6   # float32 kernel: exact
    (True, True)
  """
  shape = _checks.int_tuple(kernel_shape, "kernel_shape")
  if len(shape) != 4:
    raise ValueError(f"kernel_shape must be (kh, kw, C_in, C_out), 4 positive ints, got {shape}.")
  if kernel is not None:
    kernel = _covariance.real_array(kernel, "kernel", ndim=4)
    if kernel.shape != shape:
      raise ValueError(f"kernel must have shape kernel_shape = {shape}, got {kernel.shape}.")
  if prefer is None:
    prefer = "error" if kernel is not None else "params"
  if prefer not in ("params", "flops", "error"):
    raise ValueError(f"prefer must be 'error', 'params' or 'flops', got {prefer!r}.")
  if prefer == "error" and kernel is None:
    raise ValueError("prefer='error' needs the kernel to decompose; pass kernel=.")
  if rank is not None:
    rank = _checks.positive_int(rank, "rank")
  if max_params is not None:
    max_params = _checks.positive_int(max_params, "max_params")
  elif compression is None:
    raise ValueError("pass one of compression and max_params, got neither.")
  else:
    compression = _checks.compression_ratio(compression)
    max_params = int(math.prod(shape) / compression)
    if max_params < 1:
      raise ValueError(
        f"no Kronecker split of kernel_shape {shape} fits compression="
        f"{compression!r}: it leaves int({math.prod(shape)} / {compression!r}) ="
        f" {max_params} parameters. Lower the compression."
      )
  best, smallest = None, None
  for pairs in itertools.product(*(divisor_pairs(k) for k in shape)):
    a = tuple(p for p, _ in pairs)
    b = tuple(q for _, q in pairs)
    per_rank = math.prod(a) + math.prod(b)
    limit = min(math.prod(a), math.prod(b))
    smallest = per_rank if smallest is None else min(smallest, per_rank)
    r = rank if rank is not None else min(limit, max_params // per_rank)
    if r < 1 or r > limit or r * per_rank > max_params:
      continue
    s = KronConvShape(
      shape, cast(tuple[int, int, int, int], a), cast(tuple[int, int, int, int], b), r
    )
    imbalance = abs(math.log(a[2] * b[3] / max(1, a[3] * b[2])))
    keys: dict[str, tuple[Any, ...] | Callable[[], tuple[Any, ...]]] = {
      "params": (s.params, -s.flops_per_pixel),
      "flops": (-s.flops_per_pixel, s.params),
      "error": lambda a=a, b=b, r=r, s=s: (
        -_gkpd_error(cast(np.ndarray, kernel), a, b, r),
        -s.flops_per_pixel,
        s.params,
      ),
    }
    key = keys[prefer]
    key = (key() if callable(key) else key) + (-imbalance, a, b)
    if best is None or key > best[0]:
      best = (key, s)
  if best is None:
    raise ValueError(
      f"no Kronecker split of kernel_shape {shape}"
      f"{'' if rank is None else f' at rank {rank}'} fits max_params="
      f"{max_params}; the smallest split has {smallest} parameters per rank."
      " Lower the compression or the rank."
    )
  return best[1]
