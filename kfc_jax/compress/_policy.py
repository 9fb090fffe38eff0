"""What to compress and how: :class:`LayerRule` and :class:`CompressionPolicy`."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from typing import Any

from kfc_jax import _checks

METHODS = ("kronecker", "kfc", "low_rank", "auto", "keep")


@dataclasses.dataclass(frozen=True)
class LayerRule:
  """How to compress the layers whose path matches ``pattern``.

  A path is the layer's attribute names joined by ``/`` (``"fc1"``,
  ``"blocks/0/conv"``); ``pattern`` is a regular expression that must match
  the whole path (:func:`re.fullmatch`).

  ``method`` picks the replacement:

  * ``"kronecker"``: ``KroneckerLinear`` for an ``nnx.Linear``/``nn.Dense``
    (``in_factors``, ``out_factors``, ``rank``, ``k`` or ``terms``) and
    ``KroneckerConv`` for a 2-D conv (``a_shape``, ``b_shape``, ``rank`` or
    ``terms``).
  * ``"kfc"``: ``KFC`` over the feature map ``in_shape = (H, W, C)`` the
    linear layer reads flattened (NHWC), with KFC ``terms``.
  * ``"low_rank"``: ``LowRankLinear`` (truncated SVD) of rank ``rank``.
  * ``"auto"``: whichever has the lowest error at the budget among the
    Kronecker splits, low rank and, with ``in_shape``, the KFC formulations
    (convs: every GKPD split, the low-rank conv among them); needs
    ``compression`` or ``max_params``. The report names the choice and its
    runner-up.
  * ``"keep"``: leave the matched layers dense (e.g. the output layer, ahead
    of a catch-all rule).

  Instead of shapes, a budget: ``compression`` (dense kernel parameters over
  factor parameters, biases left out) or ``max_params`` (factor parameters).
  The shapes are then chosen per layer by the error they reach on the trained
  weights (on the outputs, with :func:`kfc_jax.compress`'s ``calibration=``):
  the best two-factor split and rank (``suggest_factors(prefer="error")``) for
  ``"kronecker"`` linear layers (``k`` factors, ``rank`` fixed if given),
  :func:`kfc_jax.suggest_conv_factors` for convs, the largest rank that fits
  for ``"kfc"`` (one term, ``(formulation, out_factors)``) and ``"low_rank"``.

  Example usage::

    >>> import kfc_jax
    >>> kfc_jax.LayerRule("fc", "kfc", in_shape=(3, 3, 32), terms=[("II", (64, 4))],
    ...                   compression=20).method
    'kfc'
  """

  pattern: str
  method: str = "kronecker"
  in_factors: tuple[int, ...] | None = None
  out_factors: tuple[int, ...] | None = None
  rank: int | None = None
  terms: Any = None
  k: int = 2
  in_shape: tuple[int, int, int] | None = None
  a_shape: tuple[int, int, int, int] | None = None
  b_shape: tuple[int, int, int, int] | None = None
  compression: float | None = None
  max_params: int | None = None
  sweeps: int = 20

  def __post_init__(self):
    if not isinstance(self.pattern, str):
      raise TypeError(f"pattern must be a regular expression string, got {self.pattern!r}.")
    try:
      re.compile(self.pattern)
    except re.error as e:
      raise ValueError(
        f"pattern {self.pattern!r} is not a valid regular expression: {e}."
      ) from None
    if self.method not in METHODS:
      raise ValueError(f"method must be one of {METHODS}, got {self.method!r}.")
    budget = self.compression is not None or self.max_params is not None
    if self.compression is not None and self.max_params is not None:
      raise ValueError(
        "pass at most one of compression and max_params, got"
        f" compression={self.compression!r} and"
        f" max_params={self.max_params!r}."
      )
    if self.compression is not None:
      _checks.compression_ratio(self.compression)
    if self.max_params is not None:
      _checks.positive_int(self.max_params, "max_params")
    if self.rank is not None:
      _checks.positive_int(self.rank, "rank")
    shapes = {
      n: getattr(self, n)
      for n in ("in_factors", "out_factors", "a_shape", "b_shape")
      if getattr(self, n) is not None
    }
    if budget and (shapes or (self.terms is not None and self.method != "kfc")):
      raise ValueError(
        "pass either a budget (compression/max_params) or factor shapes/terms,"
        f" not both; got {sorted(shapes) or ['terms']} with a budget."
      )
    if self.method == "kfc" and (self.in_shape is None or self.terms is None):
      raise ValueError(
        "method='kfc' needs in_shape=(H, W, C) (the feature map the layer reads"
        " flattened) and terms (e.g. [('II', (64, 4))]); got"
        f" in_shape={self.in_shape!r}, terms={self.terms!r}."
      )
    if self.method == "low_rank" and self.rank is None and not budget:
      raise ValueError("method='low_rank' needs rank, compression or max_params.")
    if self.method == "auto" and not budget:
      raise ValueError(
        "method='auto' compares methods at one budget; pass compression or max_params."
      )


def rules_of(policy: Any) -> tuple[LayerRule, ...]:
  if isinstance(policy, CompressionPolicy):
    return policy.rules
  if isinstance(policy, LayerRule):
    return (policy,)
  if (
    isinstance(policy, Sequence)
    and not isinstance(policy, str)
    and all(isinstance(r, LayerRule) for r in policy)
  ):
    return tuple(policy)
  raise TypeError(
    f"policy must be a CompressionPolicy, a LayerRule or a list of LayerRule, got {policy!r}."
  )


@dataclasses.dataclass(frozen=True)
class CompressionPolicy:
  """Ordered :class:`LayerRule` list; each layer takes the first rule it matches.

  Layers no rule matches stay as they are.

  Example usage::

    >>> import kfc_jax
    >>> policy = kfc_jax.CompressionPolicy([
    ...     kfc_jax.LayerRule("head", method="keep"),
    ...     kfc_jax.LayerRule(".*", method="low_rank", compression=4)])
    >>> policy.rule_for("head").method, policy.rule_for("blocks/0/fc").method
    ('keep', 'low_rank')
  """

  rules: tuple[LayerRule, ...]

  def __post_init__(self):
    if isinstance(self.rules, LayerRule):
      object.__setattr__(self, "rules", (self.rules,))
    if not isinstance(self.rules, Sequence) or not all(
      isinstance(r, LayerRule) for r in self.rules
    ):
      raise TypeError(f"rules must be a sequence of LayerRule, got {self.rules!r}.")
    object.__setattr__(self, "rules", tuple(self.rules))

  def rule_for(self, path: str) -> LayerRule | None:
    """The first rule whose pattern matches ``path`` in full, or ``None``."""
    index = self.match(path)
    return None if index is None else self.rules[index]

  def match(self, path: str) -> int | None:
    """The index of the first rule whose pattern matches ``path``, or ``None``."""
    for i, rule in enumerate(self.rules):
      if re.fullmatch(rule.pattern, path):
        return i
    return None
