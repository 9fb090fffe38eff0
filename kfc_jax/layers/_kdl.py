"""``KDL``'s layout: the Kronecker multi-layer block of Hogue, Kirby and Narayan."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

from kfc_jax import _checks
from kfc_jax.layers import _params
from kfc_jax.layers._cost import LayerCost, replacing_dense
from kfc_jax.ops import kron

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class KDLLayout:
  """Sizes of a KDL block ``[m1*m2] -> [n1*n2]`` with ``rank`` branches."""

  in_factors: tuple[int, int]
  out_factors: tuple[int, int]
  rank: int

  @property
  def in_features(self) -> int:
    return math.prod(self.in_factors)

  @property
  def out_features(self) -> int:
    return math.prod(self.out_factors)

  @property
  def left_shape(self) -> tuple[int, int, int]:
    return (self.rank, self.in_factors[0], self.out_factors[0])

  @property
  def right_shape(self) -> tuple[int, int, int]:
    return (self.rank, self.in_factors[1], self.out_factors[1])

  @property
  def right_bias_shape(self) -> tuple[int, int, int]:
    return (self.rank, self.in_factors[0], self.out_factors[1])

  @property
  def left_bias_shape(self) -> tuple[int, int, int]:
    return (self.rank, *self.out_factors)

  def param_specs(
    self, factor_metadata: Any = None, bias_metadata: Any = None
  ) -> list[_params.ParamSpec]:
    """``left``, ``right``, then ``left_bias``, ``right_bias``."""
    # Lecun-normal for each of the two layers, the branches sharing the variance.
    c = math.sqrt(1 / self.rank)
    left_meta, right_meta = _params.pair_metadata(factor_metadata)
    return [
      _params.ParamSpec(
        "left", self.left_shape, True, math.sqrt(c / self.in_factors[0]), left_meta
      ),
      _params.ParamSpec(
        "right", self.right_shape, True, math.sqrt(c / self.in_factors[1]), right_meta
      ),
      *_params.bias_specs(
        {"left_bias": self.left_bias_shape, "right_bias": self.right_bias_shape}, bias_metadata
      ),
    ]

  def apply(
    self,
    params: Mapping[str, Any],
    x: Any,
    activation: Callable[[Array], Array] | None,
    *,
    dtype: Any = None,
    precision: Any = None,
    preferred_element_type: Any = None,
  ) -> Array:
    """Right layer then left layer per branch, branches summed (DESIGN: KDL block)."""
    x, left, right, left_bias, right_bias = _params.promote(
      [x, params["left"], params["right"], params.get("left_bias"), params.get("right_bias")], dtype
    )
    _params.check_features(x, self.in_features)
    act = activation or (lambda z: z)
    xm = x.reshape(*x.shape[:-1], *self.in_factors)
    kw = dict(precision=precision, preferred_element_type=preferred_element_type)
    z = act(_params.add_bias(jnp.einsum("...ij,rjk->...rik", xm, right, **kw), right_bias))
    y = act(_params.add_bias(jnp.einsum("rip,...rik->...rpk", left, z, **kw), left_bias))
    return y.sum(axis=-3).reshape(*x.shape[:-1], self.out_features)

  def materialize(self, params: Mapping[str, Any], precision: Any = None) -> Array:
    """``sum_r L[r] ⊗ R[r]``: the block's kernel when it is linear."""
    return kron([params["left"], params["right"]], precision=precision)

  def cost(self, kind: str, *, use_bias: bool, batch: int) -> LayerCost:
    (r, m1, n1), (_, m2, n2) = self.left_shape, self.right_shape
    biases = r * (m1 * n2 + n1 * n2) if use_bias else 0
    return replacing_dense(
      kind,
      self.in_features,
      self.out_features,
      params=r * (m1 * n1 + m2 * n2) + biases,
      flops=2 * batch * r * (m1 * m2 * n2 + m1 * n1 * n2),
      use_bias=use_bias,
      batch=batch,
      detail=f"{self.in_factors}->{self.out_factors} r={r}",
    )


def _two_factors(value: Any, name: str, size: int) -> tuple[int, int]:
  f = _checks.int_tuple(value, name)
  if len(f) != 2 or math.prod(f) != size:
    pairs = _checks.balanced_pairs(size)
    raise ValueError(
      f"{name} must be two positive integers multiplying to {size}, got"
      f" {f!r}; e.g. {', '.join(map(str, pairs))}."
    )
  return f  # type: ignore[return-value]


def kdl_layout(
  in_features: Any, out_features: Any, in_factors: Any, out_factors: Any, rank: Any
) -> KDLLayout:
  """Validates ``KDL``'s arguments."""
  in_features = _checks.positive_int(in_features, "in_features")
  out_features = _checks.positive_int(out_features, "out_features")
  return KDLLayout(
    _two_factors(in_factors, "in_factors", in_features),
    _two_factors(out_factors, "out_factors", out_features),
    _checks.positive_int(rank, "rank"),
  )
