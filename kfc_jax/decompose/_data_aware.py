"""Kronecker decompositions that minimise the error of a layer's outputs.

The weight is a tensor ``t`` whose first ``n_in`` axes index the layer's input
(row-major, ``m = prod`` of them) and whose other axes index its output; the
approximation is ``t_hat = sum_r prod_f F_f[r, group f]`` with the factor
groups partitioning the axes (as :func:`~kfc_jax.nearest_kronecker_tensor`).
For an input covariance ``C`` (``[m, m]``, positive definite after the ridge)
the objective is ``tr(D^T C D)`` with ``D = (t - t_hat)`` as ``[m, out]``.

*Closed form.* Let ``I_f`` be the input axes of group ``f``. If ``C`` is a
Kronecker product over those groups, ``C = ⊗_f C_f`` (axes permuted as the
groups take them), then ``S = ⊗_f S_f`` with ``S_f`` the symmetric root of
``C_f``, and ``S t_hat = sum_r prod_f (S_f F_f[r])``: the nearest Kronecker
sum to the whitened ``S t`` is optimal for the data objective, and each factor
is un-whitened by ``S_f^{-1}`` on its own input axes.

*General C.* ``C`` is projected to its nearest product ``⊗_f C_f`` (power
iteration on the rearranged ``C``, each ``C_f`` made symmetric PSD and given
the same ridge), the closed form above is the start, and alternating least
squares refines it on the true objective: with all factors but ``F_f`` fixed
the objective is quadratic in ``F_f``, and its normal equations share one
``[rank * |I_f|]`` square matrix across all of ``F_f``'s output entries, so
they are solved at once (no Kronecker-sized system is formed). Each step
minimises exactly, and is kept only if it does not raise the objective, so
the objective never increases.
"""

from __future__ import annotations

import math
import string
from collections.abc import Callable, Sequence

import numpy as np
import scipy.linalg

from kfc_jax.decompose._covariance import data_objective, is_scaled_identity

_R, _S = "Y", "Z"  # einsum letters of the two rank indices
_LETTERS = string.ascii_letters.replace(_R, "").replace(_S, "")


def reconstruct(factors: Sequence[np.ndarray], factor_axes, shape) -> np.ndarray:
  """``sum_r prod_f F_f[r, group f]`` as a tensor of ``shape``."""
  operands = ",".join(_R + "".join(_LETTERS[a] for a in g) for g in factor_axes)
  out = "".join(_LETTERS[a] for a in range(len(shape)))
  return np.einsum(f"{operands}->{out}", *factors, optimize=True)


def apply_along(t: np.ndarray, axes: Sequence[int], mat: np.ndarray) -> np.ndarray:
  """Multiplies ``t`` by ``mat`` over the (row-major grouped) ``axes``."""
  axes = list(axes)
  moved = np.moveaxis(t, axes, range(len(axes)))
  front = moved.shape[: len(axes)]
  out = (mat @ moved.reshape(math.prod(front), -1)).reshape(moved.shape)
  return np.moveaxis(out, range(len(axes)), axes)


def _psd_root(c: np.ndarray, cov_reg: float) -> tuple[np.ndarray, np.ndarray]:
  """``(S, S^{-1})`` for the symmetric PSD part of ``c`` plus its ridge."""
  c = (c + c.T) / 2
  if np.trace(c) < 0:  # a Kronecker factor is defined up to sign
    c = -c
  vals, vecs = np.linalg.eigh(c)
  vals = np.clip(vals, 0.0, None)
  vals = vals + cov_reg * vals.mean()
  vals = np.maximum(vals, 1e-12 * vals.max())
  root = np.sqrt(vals)
  return (vecs * root) @ vecs.T, (vecs / root) @ vecs.T


def kronecker_factors_of(
  cov_t: np.ndarray, groups: list[list[int]], n_in: int, iterations: int = 100
) -> list[np.ndarray]:
  """Nearest ``⊗_f C_f`` to the covariance tensor ``[*in, *in]``, by groups.

  Alternating rank-one power iteration from identities (which a PSD ``C``
  never is orthogonal to); exact in one step when ``C`` is such a product.
  """
  sizes = [math.prod(cov_t.shape[a] for a in g) for g in groups]
  if len(groups) == 1:
    g = groups[0]
    return [np.transpose(cov_t, g + [a + n_in for a in g]).reshape(sizes[0], -1)]
  # Rearranged once to [vec C_1, vec C_2, ...]: C ≈ ⊗ C_f is a rank-one fit.
  perm = [a for g in groups for a in g + [n_in + x for x in g]]
  rearranged = np.transpose(cov_t, perm).reshape([p * p for p in sizes])
  vecs = [np.eye(p).ravel() / math.sqrt(p) for p in sizes]
  for _ in range(iterations):
    change = 0.0
    for f in range(len(groups)):
      new = rearranged
      for u in reversed(range(len(groups))):  # high axes first: indices stay valid
        if u != f:
          new = np.tensordot(new, vecs[u], axes=([u], [0]))
      new = new / np.linalg.norm(new)
      change = max(change, float(np.linalg.norm(new - vecs[f])))
      vecs[f] = new
    if change < 1e-10:
      break
  return [v.reshape(p, p) for v, p in zip(vecs, sizes, strict=True)]


def whitened_start(
  t, factor_axes, n_in, rank, cov, cov_reg, tensor_fit: Callable
) -> list[np.ndarray]:
  """The closed form for the nearest Kronecker-factored part of ``cov``."""
  in_shape = t.shape[:n_in]
  cov_t = cov.reshape(*in_shape, *in_shape)
  in_groups = [[a for a in g if a < n_in] for g in factor_axes]
  with_inputs = [f for f, g in enumerate(in_groups) if g]
  facs = kronecker_factors_of(cov_t, [in_groups[f] for f in with_inputs], n_in)
  roots = {f: _psd_root(c, cov_reg) for f, c in zip(with_inputs, facs, strict=True)}
  whitened = t
  for f, (root, _) in roots.items():
    whitened = apply_along(whitened, in_groups[f], root)
  factors = list(tensor_fit(whitened, factor_axes, rank))
  for f, (_, inv) in roots.items():
    positions = [1 + list(factor_axes[f]).index(a) for a in in_groups[f]]
    factors[f] = apply_along(factors[f], positions, inv)
  return factors


def _solve(h: np.ndarray, b: np.ndarray) -> np.ndarray:
  try:
    return scipy.linalg.cho_solve(scipy.linalg.cho_factor(h), b)
  except np.linalg.LinAlgError:  # dependent terms: any minimiser will do
    return np.linalg.lstsq(h, b, rcond=None)[0]


def balance(factors: list[np.ndarray]) -> list[np.ndarray]:
  """Equal norms for every factor of a term (``t_hat`` unchanged)."""
  rank = factors[0].shape[0]
  norms = np.stack([np.linalg.norm(f.reshape(rank, -1), axis=1) for f in factors])
  target = np.prod(norms, axis=0) ** (1.0 / len(factors))
  scale = np.where(norms > 0, target / np.where(norms > 0, norms, 1.0), 0.0)
  return [f * s.reshape(-1, *[1] * (f.ndim - 1)) for f, s in zip(factors, scale, strict=True)]


def als(
  t: np.ndarray,
  factor_axes,
  n_in: int,
  cov: np.ndarray,
  start: Sequence[np.ndarray],
  max_sweeps: int,
  tol: float,
) -> tuple[list[np.ndarray], list[float]]:
  """Alternating least squares on ``tr(D^T C D)`` from ``start``.

  Returns the factors and the objective after each sweep (the first entry at
  ``start``), non-increasing. Stops when a sweep lowers the objective by less
  than ``tol`` times its value, or after ``max_sweeps``.
  """
  groups = [list(g) for g in factor_axes]
  in_shape = t.shape[:n_in]
  m = math.prod(in_shape)
  cov_t = cov.reshape(*in_shape, *in_shape)
  ct = (cov @ t.reshape(m, -1)).reshape(t.shape)  # C t, labelled by the rows
  total = float(np.sum(t * ct))
  row = "".join(_LETTERS[a] for a in range(t.ndim))
  col = "".join(_LETTERS[t.ndim + a] for a in range(n_in))
  factors = [np.array(f, np.float64) for f in start]
  rank = factors[0].shape[0]
  size = lambda axes: math.prod(t.shape[a] for a in axes)

  # Per factor, C and C t permuted once so that each step is two GEMMs:
  # C as [I_f I_f', rest rest'] against the others' Grams [rest rest', r s],
  # and C t as [I_f O_f, others' axes] against the others' product.
  plans = []
  for f, g in enumerate(groups):
    others = [u for u in range(len(groups)) if u != f]
    ins = [a for a in g if a < n_in]
    outs = [a for a in g if a >= n_in]
    rest = [a for u in others for a in groups[u]]
    rest_in = [a for a in rest if a < n_in]
    cov_f = np.transpose(
      cov_t, ins + [n_in + a for a in ins] + rest_in + [n_in + a for a in rest_in]
    ).reshape(size(ins) ** 2, -1)
    ct_f = np.transpose(ct, ins + outs + rest).reshape(size(ins) * size(outs), -1)
    gram_spec = (
      ",".join(
        f"{_R}{''.join(row[a] for a in groups[u])},"
        f"{_S}{''.join(col[a] if a < n_in else row[a] for a in groups[u])}"
        for u in others
      )
      + f"->{''.join(row[a] for a in rest_in)}"
      f"{''.join(col[a] for a in rest_in)}{_R}{_S}"
    )
    product_spec = (
      ",".join(_R + "".join(row[a] for a in groups[u]) for u in others)
      + f"->{_R}{''.join(row[a] for a in rest)}"
    )
    plans.append((others, ins, outs, cov_f, ct_f, gram_spec, product_spec))

  def objective_at(h, b, x):
    return total - 2 * float(np.sum(b * x)) + float(np.sum(x * (h @ x)))

  diff = (t - reconstruct(factors, groups, t.shape)).reshape(m, -1)
  history = [float(np.sum(diff * (cov @ diff)))]
  for _ in range(max_sweeps):
    for f, g in enumerate(groups):
      others, ins, outs, cov_f, ct_f, gram_spec, product_spec = plans[f]
      p_in, p_out = size(ins), size(outs)
      operands = [x for u in others for x in (factors[u], factors[u])]
      gram = np.einsum(gram_spec, *operands, optimize=True).reshape(-1, rank, rank)
      # Block (s, r) of H is block (r, s) transposed (C and the Grams are
      # symmetric): one GEMM for the pairs r <= s only.
      rs = np.triu_indices(rank)
      blocks = (cov_f @ gram[:, rs[0], rs[1]]).reshape(p_in, p_in, -1)
      h = np.empty((rank, p_in, rank, p_in))
      h[rs[0], :, rs[1], :] = blocks.transpose(2, 0, 1)
      h[rs[1], :, rs[0], :] = blocks.transpose(2, 1, 0)
      h = h.reshape(rank * p_in, rank * p_in)
      product = np.einsum(product_spec, *[factors[u] for u in others], optimize=True)
      b = (ct_f @ product.reshape(rank, -1).T).reshape(p_in, p_out, rank)
      b = b.transpose(2, 0, 1).reshape(rank * p_in, p_out)
      order = [1 + g.index(a) for a in ins + outs]
      old = np.transpose(factors[f], [0, *order]).reshape(rank * p_in, p_out)
      new = _solve(h, b)
      before, after = objective_at(h, b, old), objective_at(h, b, new)
      if after <= before:  # exact minimiser, unless H was near singular
        shape = [rank] + [t.shape[a] for a in ins + outs]
        factors[f] = np.transpose(new.reshape(shape), np.argsort([0, *order]))
      current = min(before, after)
    factors = balance(factors)
    history.append(max(current, 0.0))
    if history[-2] - history[-1] <= tol * history[-2] + 1e-15 * total:
      break
  return factors, history


def fit(
  t: np.ndarray,
  factor_axes,
  n_in: int,
  rank: int,
  cov,
  cov_reg: float,
  weight_only: Sequence[np.ndarray],
  tensor_fit: Callable,
  max_sweeps: int,
  tol: float,
) -> tuple[list[np.ndarray], float]:
  """The data-aware factors and their data error; never worse than ``weight_only``.

  Args:
    t: the weight as a tensor, input axes first.
    factor_axes: the factor groups.
    n_in: how many leading axes of ``t`` index the input.
    rank: number of terms.
    cov: a checked :class:`~kfc_jax.decompose._covariance.Covariance`.
    cov_reg: the ridge, also given to each Kronecker factor of ``cov``.
    weight_only: the factors that minimise the weight error.
    tensor_fit: ``(t, factor_axes, rank) -> factors``, the weight-only fit.
    max_sweeps: ALS sweeps at most.
    tol: stop when a sweep improves the objective by less than this fraction.
  """
  m = math.prod(t.shape[:n_in])
  w = t.reshape(m, -1)

  total = data_objective(w, cov.raw)

  def error_of(factors):
    approx = reconstruct(factors, factor_axes, t.shape).reshape(m, -1)
    return math.sqrt(max(data_objective(w - approx, cov.raw), 0.0) / total)

  baseline = error_of(weight_only)
  if is_scaled_identity(cov.raw):  # the data objective is the weight objective
    return list(weight_only), baseline
  start = whitened_start(t, factor_axes, n_in, rank, cov.reg, cov_reg, tensor_fit)
  factors, _ = als(t, factor_axes, n_in, cov.reg, start, max_sweeps, tol)
  error = error_of(factors)
  return (factors, error) if error < baseline else (list(weight_only), baseline)
