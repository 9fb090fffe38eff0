"""The KFC paper's SVHN network: a CNN, then an FC/KFC layer, then softmax.

Zhou & Wu (arXiv 1507.05775, Section 4; docs/DESIGN.md, "KFC formulations")
use for SVHN "a larger network of the same shape" as for MNIST: its conv
stack ends in a 5x5x256 map, the FC layer maps it to 256 (1.64M parameters)
and the whole baseline has 2.20M. Our stack (``examples/_common/cnn.py``
has its layer table; NHWC, 32x32x3 input, ReLU after each conv and the FC
layer) keeps the MNIST net's shape -- two full-resolution 3x3 convs, a pool,
a 5x5 and a smaller conv, a pool -- with the last conv 3x3 so that 32x32
ends at 5x5.

558,216 conv parameters and 2,199,442 in all (the paper: 2.20M). The
channel widths are our choice (the paper gives only the totals): they grow
with depth, as in the MNIST net, and land the total on the paper's.

Variants (:data:`VARIANTS`): ``Baseline``, ``Cut-<k>`` (the FC layer with k
outputs), ``LowRank-<k>`` (6400 -> k -> 256), ``KFC-I`` ... ``KFC-IV``,
``KFC-Combined`` and ``KFC-Rank-<r>``, with the factor shapes of docs/DESIGN.md
("KFC formulations"; KFC-II: 16,484 factor entries, 99.0% fewer than the FC layer's
1,638,400; KFC-Combined 344,184, 79.0%; KFC-Rank-10 164,840, 89.9%).
"""

from __future__ import annotations

from flax import nnx

from examples._common import cnn

IMAGE_SHAPE = cnn.SVHN.image_shape
FEATURE_SHAPE = cnn.SVHN.feature_shape  # H, W, C of the map the FC layer sees.
FC_IN = FEATURE_SHAPE[0] * FEATURE_SHAPE[1] * FEATURE_SHAPE[2]
FC_FEATURES = cnn.FC_FEATURES
NUM_CLASSES = cnn.NUM_CLASSES
VARIANTS = cnn.VARIANT_NAMES
count_params = cnn.count_params

# The variants of the paper's SVHN table, in its order.
PAPER_VARIANTS = ("Baseline", "LowRank-128", "KFC-II", "KFC-Combined", "KFC-Rank-10")


def get_variant(name: str) -> cnn.FcVariant:
  """The FC variant ``name`` over SVHN's 5x5x256 map (see ``cnn.get_variant``)."""
  return cnn.get_variant(name, cnn.SVHN)


class SvhnCNN(cnn.PaperCNN):
  """The SVHN CNN with the FC layer of ``variant``.

  Example usage::

    >>> import jax.numpy as jnp
    >>> model = SvhnCNN("KFC-II", rngs=nnx.Rngs(0))
    >>> model(jnp.zeros((2, 32, 32, 3))).shape
    (2, 10)
    >>> count_params(SvhnCNN("Baseline", rngs=nnx.Rngs(0)))
    2199442
  """

  def __init__(self, variant: str = "Baseline", *, dropout_rate: float = 0.5, rngs: nnx.Rngs):
    super().__init__(cnn.SVHN, variant, dropout_rate=dropout_rate, rngs=rngs)
