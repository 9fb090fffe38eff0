"""Error-driven planning: budgets and ``method="auto"`` choose by the error reached.

With a budget (``compression=`` / ``max_params=``) the split and rank are the
ones the search (:mod:`kfc_jax._search`) finds best for the trained kernel, and
``method="auto"`` also lets low rank and (for a layer that reads a flattened
``in_shape = (H, W, C)`` feature map) the KFC formulations compete at the same
budget. With calibration data (``input_cov`` on the layer) the error is the
output error on that data. The report names the choice and its runner-up.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from kfc_jax import _search
from kfc_jax.decompose import _covariance


@dataclasses.dataclass(frozen=True)
class Choice:
  """What the search picked for a layer, and what came second."""

  chosen: _search.SearchCandidate
  runner_up: _search.SearchCandidate | None
  objective: str

  def __str__(self) -> str:
    what = "output" if self.objective == "data" else "weight"
    text = f"chose {self.chosen.label} ({what} error {self.chosen.relative_error:.3g})"
    if self.runner_up is not None:
      text += f"; runner-up {self.runner_up.label} ({self.runner_up.relative_error:.3g})"
    return text


def dense_methods(rule: Any) -> tuple[str, ...]:
  """The methods a rule lets compete for a dense layer."""
  if rule.method == "auto":
    return ("kronecker", "low_rank") + (("kfc",) if rule.in_shape is not None else ())
  return (rule.method,)


def search(
  rule: Any, kernel: np.ndarray, budget: int, input_cov: Any = None
) -> _search.SearchResult:
  """Scores the candidates ``rule`` allows for ``kernel`` within ``budget``."""
  if kernel.ndim == 4:
    return _search.search_conv(kernel, max_params=budget, rank=rule.rank, input_cov=input_cov)
  return _search.search_dense(
    kernel,
    max_params=budget,
    methods=dense_methods(rule),
    in_shape=rule.in_shape,
    rank=rule.rank,
    input_cov=input_cov,
  )


def choose(
  rule: Any, kernel: np.ndarray, budget: int, input_cov: Any = None
) -> tuple[str, dict[str, Any], Choice]:
  """The family name and ``from_*`` options of the best candidate, and the choice.

  Returns ``(family, options, choice)`` with ``family`` one of
  ``"KroneckerLinear"``, ``"LowRankLinear"``, ``"KFC"``, ``"KroneckerConv"``.
  """
  result = search(rule, kernel, budget, input_cov)
  best = result.best
  runner_up = next((c for c in result.candidates[1:] if c.label != best.label), None)
  choice = Choice(best, runner_up, result.objective)
  if kernel.ndim == 4:  # GKPD; the low-rank conv is a split too
    return (
      "KroneckerConv",
      dict(terms=[(best.a_shape, best.b_shape, best.rank)], sweeps=rule.sweeps),
      choice,
    )
  if best.method == "low_rank":
    return "LowRankLinear", dict(rank=best.rank), choice
  if best.method == "kfc":
    return (
      "KFC",
      dict(
        in_shape=rule.in_shape,
        terms=[(best.formulation, best.out_factors, best.rank)],
        sweeps=rule.sweeps,
      ),
      choice,
    )
  return (
    "KroneckerLinear",
    dict(
      in_factors=best.in_factors, out_factors=best.out_factors, rank=best.rank, sweeps=rule.sweeps
    ),
    choice,
  )


def output_error(kernel: np.ndarray, approx: Any, input_cov: Any) -> float:
  """``||S (W - W_hat)|| / ||S W||`` (``SᵀS = C``), kernels as ``[in, out]``."""
  w = np.asarray(kernel, np.float64)
  w_hat = np.asarray(approx, np.float64).reshape(w.shape)
  if w.ndim == 4:
    w, w_hat = w.reshape(-1, w.shape[-1]), w_hat.reshape(-1, w.shape[-1])
  return _covariance.data_error(w, w_hat, np.asarray(input_cov, np.float64))
