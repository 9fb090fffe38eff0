"""The network to compress, the budgets and the three ways to compress it.

* the baseline: the KFC paper's MNIST CNN with its dense FC layer 288 -> 256
  (``examples/_common/cnn.py``; the MNIST example's ``Baseline``, so that
  example's orbax checkpoints load into it: :func:`restore_baseline`);
* :func:`matched_budgets` -- KFC ranks and the low ranks with (nearly) the
  same number of FC-layer parameters;
* :func:`build_compressed` -- the three methods on one budget: ``kfc_nkp``
  and ``low_rank_svd`` through the library's one call,
  ``kfc_jax.compress(model, policy)`` (nearest Kronecker product and
  truncated SVD of the trained kernel), and ``kfc_scratch``, the same KFC
  layer randomly initialised (the rest of the network is the baseline's);
* :func:`trainable` -- the ``nnx`` filter that picks what a fine-tune trains.
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path
from typing import Any

import jax
from flax import nnx

import kfc_jax
from examples._common import cnn, loop
from examples.compress_mnist.configs import default

FEATURE_SHAPE = cnn.MNIST.feature_shape  # 3 x 3 x 32
FC_IN = math.prod(FEATURE_SHAPE)  # 288
FC_OUT = cnn.FC_FEATURES  # 256
DENSE_FC_PARAMS = FC_IN * FC_OUT + FC_OUT  # 73,984 (73,728 + bias)
FC_PATH = "fc"
METHOD_LABELS = {
  "kfc_nkp": "KFC, NKP init",
  "low_rank_svd": "Low rank, SVD init",
  "kfc_scratch": "KFC, from scratch",
}
count_params = cnn.count_params


def create_baseline(*, seed: int = 0, dropout_rate: float = 0.5) -> cnn.PaperCNN:
  """The MNIST CNN with a dense FC layer, seeded as the MNIST example seeds it."""
  params_key, dropout_key = jax.random.split(jax.random.key(seed))
  return cnn.PaperCNN(
    cnn.MNIST,
    "Baseline",
    dropout_rate=dropout_rate,
    rngs=nnx.Rngs(params=params_key, dropout=dropout_key),
  )


def checkpoint_path(checkpoint: str | os.PathLike[str], seed: int) -> Path:
  """``<checkpoint>/seed_<seed>`` when it exists, else ``checkpoint`` itself.

  Raises:
    FileNotFoundError: neither exists, or ``checkpoint`` holds ``seed_*``
      directories but not this seed's.
  """
  root = Path(checkpoint).resolve()
  per_seed = root / f"seed_{seed}"
  if per_seed.is_dir():
    return per_seed
  if root.is_dir() and not any(root.glob("seed_*")):
    return root
  found = sorted(p.name for p in root.glob("seed_*")) if root.is_dir() else []
  raise FileNotFoundError(
    f"no baseline checkpoint for seed {seed}: {per_seed} does not exist"
    + (f" (found {', '.join(found)})" if found else f" and {root} is not a checkpoint directory")
    + ". Pass --seeds matching the checkpoints, or leave --baseline_checkpoint"
    " out to train the baselines here."
  )


def restore_baseline(
  path: str | os.PathLike[str], *, seed: int, dropout_rate: float = 0.5
) -> cnn.PaperCNN:
  """The Baseline CNN with the params of an orbax checkpoint (MNIST example's).

  Dropout draws from ``seed``'s stream (as the MNIST example's models do).
  """
  model = create_baseline(seed=seed, dropout_rate=dropout_rate)
  loop.restore_params(path, model)
  return model


def fc_params(model: cnn.PaperCNN) -> tuple[int, int]:
  """The FC layer's parameters with and without its bias."""
  return (count_params(model.fc), count_params(model.fc, biases=False))


# ----------------------------------------------------------------------------
# Budgets.
# ----------------------------------------------------------------------------


def kfc_terms(config: Any, rank: int) -> list[tuple[str, tuple[int, ...], int]]:
  """The KFC layer's one term at ``rank``: ``[(formulation, out_factors, rank)]``."""
  return [(config.formulation, tuple(config.out_factors), rank)]


def _abstract_kfc(config: Any, rank: int) -> kfc_jax.nnx.KFC:
  return nnx.eval_shape(
    lambda: kfc_jax.nnx.KFC(
      FEATURE_SHAPE, FC_OUT, terms=kfc_terms(config, rank), use_bias=False, rngs=nnx.Rngs(0)
    )
  )


def kfc_weight_params(config: Any, rank: int) -> int:
  """Factor parameters (no bias) of the KFC layer at ``rank``, abstractly."""
  return count_params(_abstract_kfc(config, rank))


def kfc_full_rank(config: Any) -> int | None:
  """The rank at which the KFC term is exact (two factors), else ``None``.

  A two-factor term's rearranged weight is ``[m0 * n0, m1 * n1]``; its rank,
  hence the nearest-Kronecker fit's, is at most the smaller side.
  """
  shapes = [
    f.shape
    for f in jax.tree.leaves(nnx.state(_abstract_kfc(config, 1), kfc_jax.nnx.KroneckerFactor))
  ]
  if len(shapes) != 2:
    return None
  return min(m * n for _, m, n in shapes)


@dataclasses.dataclass(frozen=True)
class Budget:
  """One point of the sweep: a KFC rank and the low rank of equal size.

  Parameter counts are the layers' weights; each has a 256-entry bias on top.
  """

  kfc_rank: int
  low_rank: int
  kfc_params: int
  low_rank_params: int

  @property
  def mismatch_pct(self) -> float:
    """How many more parameters (%) the low-rank layer has than the KFC one."""
    return 100.0 * (self.low_rank_params - self.kfc_params) / self.kfc_params


def matched_budgets(config: Any) -> list[Budget]:
  """For each KFC rank, the low rank whose weight count is nearest.

  A rank-``k`` low-rank layer has ``k * (288 + 256)`` weights; KFC-II (64, 4)
  has ``2,084`` per rank, so the two match to 4.4% or better (to 0.06% at
  ranks 6, 12 and 24).
  """
  per_rank = FC_IN + FC_OUT
  budgets = []
  for r in config.kfc_ranks:
    p = kfc_weight_params(config, r)
    k = int(min(max(1, round(p / per_rank)), min(FC_IN, FC_OUT)))
    budgets.append(Budget(r, k, p, k * per_rank))
  return budgets


# ----------------------------------------------------------------------------
# The three methods.
# ----------------------------------------------------------------------------


def policy_for(method: str, budget: Budget, config: Any) -> kfc_jax.CompressionPolicy:
  """The ``kfc_jax.compress`` policy of a decomposition method on one budget."""
  if method == "kfc_nkp":
    rule = kfc_jax.LayerRule(
      FC_PATH, "kfc", in_shape=FEATURE_SHAPE, terms=kfc_terms(config, budget.kfc_rank)
    )
  elif method == "low_rank_svd":
    rule = kfc_jax.LayerRule(FC_PATH, "low_rank", rank=budget.low_rank)
  else:
    raise ValueError(f"method {method!r} is not a decomposition; use kfc_nkp or low_rank_svd.")
  return kfc_jax.CompressionPolicy([rule])


def build_compressed(
  method: str, budget: Budget, baseline: cnn.PaperCNN, *, config: Any, seed: int
) -> tuple[cnn.PaperCNN, kfc_jax.CompressionReport | None]:
  """A copy of ``baseline`` with its FC layer replaced by ``method``'s layer.

  ``kfc_nkp``/``low_rank_svd``: ``kfc_jax.compress`` with :func:`policy_for`
  (returns its report). ``kfc_scratch``: the KFC layer of ``kfc_nkp`` with the
  library's random initialisation and a zero bias (no report).
  """
  if method == "kfc_scratch":
    model = nnx.clone(baseline)
    key = jax.random.fold_in(jax.random.key(seed), budget.kfc_rank)
    model.fc = kfc_jax.nnx.KFC(
      FEATURE_SHAPE, FC_OUT, terms=kfc_terms(config, budget.kfc_rank), rngs=nnx.Rngs(params=key)
    )
    return model, None
  return kfc_jax.compress(baseline, policy_for(method, budget, config))


def trainable(finetune: str) -> nnx.filterlib.Filter:
  """The params a fine-tune trains: an ``nnx`` filter (the rest is frozen)."""
  if finetune == "fc":
    return nnx.All(nnx.Param, nnx.PathContains(FC_PATH))
  if finetune == "head":
    return nnx.All(nnx.Param, nnx.Not(nnx.PathContains("convs")))
  if finetune == "all":
    return nnx.Param
  raise ValueError(f"finetune must be one of {default.FINETUNE_MODES}; got {finetune!r}.")
