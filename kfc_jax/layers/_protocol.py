"""What every kfc_jax layer is, NNX and Linen alike: :class:`KroneckerLayer`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from kfc_jax.layers._cost import LayerCost


class KroneckerLayer:
  """Base of every kfc_jax layer (``kfc_jax.nnx`` and ``kfc_jax.linen``).

  Whole-model tools (:func:`kfc_jax.summarize`, :func:`kfc_jax.compress`)
  recognise the library's layers by this class and ask them for their cost;
  a new layer family subclasses it (next to ``nnx.Module`` or
  ``linen.Module``) and sets ``replaces``.

  Attributes:
    replaces: the dense layer the layer stands for, ``"linear"`` (a
      ``[in_features, out_features]`` kernel) or ``"conv"`` (an HWIO kernel).
    layout: the validated sizes and terms (a ``kfc_jax.layers`` layout).

  Example usage::

    >>> import kfc_jax
    >>> from flax import nnx
    >>> layer = kfc_jax.nnx.LowRankLinear(8, 8, rank=2, rngs=nnx.Rngs(0))
    >>> isinstance(layer, kfc_jax.layers.KroneckerLayer), layer.replaces
    (True, 'linear')
  """

  replaces: ClassVar[str] = "linear"

  def cost(self, batch: int = 1) -> LayerCost:
    """Parameters and FLOPs against the dense layer this one replaces."""
    raise NotImplementedError

  def cost_for_input(self, batch: int, input_shape: Sequence[int]) -> LayerCost:
    """The cost of a call on inputs of ``input_shape`` (one example's or a batch's).

    Dense layers cost the same for any input; convolutions override this to
    count the images' pixels.
    """
    del input_shape
    return self.cost(batch)

  def materialize(self) -> Any:
    """The effective dense kernel (``[in, out]``, or HWIO for a conv)."""
    raise NotImplementedError
