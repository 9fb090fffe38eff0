"""``LowRankLinear``'s layout: ``y = (x @ u) @ v + b``, the KFC paper's baseline."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from kfc_jax import _checks
from kfc_jax.decompose import low_rank
from kfc_jax.layers import _params
from kfc_jax.layers._cost import LayerCost, replacing_dense

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class LowRankLayout:
  """Sizes of ``u: [in_features, rank]`` and ``v: [rank, out_features]``."""

  in_features: int
  out_features: int
  rank: int

  @property
  def params(self) -> int:
    return self.rank * (self.in_features + self.out_features)

  def param_specs(
    self, factor_metadata: Any = None, bias_metadata: Any = None
  ) -> list[_params.ParamSpec]:
    """``u``, ``v`` (each lecun-normal on its own), then ``bias``."""
    # The product's entries have variance rank * (1 / in) * (1 / rank) = 1 / in,
    # as for a dense lecun-normal layer.
    u_meta, v_meta = _params.pair_metadata(factor_metadata)
    return [
      _params.ParamSpec(
        "u", (self.in_features, self.rank), True, 1 / math.sqrt(self.in_features), u_meta
      ),
      _params.ParamSpec(
        "v", (self.rank, self.out_features), True, 1 / math.sqrt(self.rank), v_meta
      ),
      *_params.bias_specs({"bias": (self.out_features,)}, bias_metadata),
    ]

  def apply(
    self,
    params: Mapping[str, Any],
    x: Any,
    *,
    dtype: Any = None,
    precision: Any = None,
    preferred_element_type: Any = None,
  ) -> Array:
    """``(x @ u) @ v + bias``."""
    x, u, v, bias = _params.promote([x, params["u"], params["v"], params.get("bias")], dtype)
    _params.check_features(x, self.in_features)
    dot = lambda a, b: jax.lax.dot_general(
      a,
      b,
      (((a.ndim - 1,), (0,)), ((), ())),
      precision=precision,
      preferred_element_type=preferred_element_type,
    )
    return _params.add_bias(dot(dot(x, u), v), bias)

  def materialize(self, params: Mapping[str, Any], precision: Any = None) -> Array:
    """The effective dense kernel ``u @ v``."""
    return jnp.matmul(params["u"], params["v"], precision=precision)

  def fit(
    self, w: Any, bias: Any = None, *, use_bias: bool, input_cov: Any = None
  ) -> tuple[dict[str, np.ndarray], float]:
    """``u``, ``v`` (truncated SVD, optimal) and bias nearest to a dense layer."""
    w = _checks.finite_matrix(w, "kernel")
    u, v = low_rank(w, self.rank, input_cov=input_cov)
    return (
      _params.with_bias({"u": u, "v": v}, bias, w.shape[1], use_bias),
      _checks.relative_error(w, u @ v),
    )

  def cost(self, kind: str, *, use_bias: bool, batch: int) -> LayerCost:
    return replacing_dense(
      kind,
      self.in_features,
      self.out_features,
      params=self.params + (self.out_features if use_bias else 0),
      flops=2 * batch * self.params,
      use_bias=use_bias,
      batch=batch,
      detail=f"rank {self.rank}",
    )


def low_rank_layout(in_features: Any, out_features: Any, rank: Any) -> LowRankLayout:
  """Validates ``LowRankLinear``'s arguments."""
  in_features = _checks.positive_int(in_features, "in_features")
  out_features = _checks.positive_int(out_features, "out_features")
  rank = _checks.positive_int(rank, "rank")
  if rank > min(in_features, out_features):
    raise ValueError(
      f"rank must be at most min(in_features, out_features) ="
      f" {min(in_features, out_features)} (a higher rank stores more than the"
      f" dense {in_features}x{out_features} layer it replaces), got rank={rank}."
    )
  return LowRankLayout(in_features, out_features, rank)
