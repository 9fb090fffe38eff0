"""The KFC paper's MNIST CNN, with its FC layer chosen by variant name.

The network (``examples/_common/cnn.py`` has its layer table): four convs
and two max pools giving a 3x3x32 map (23,008 parameters), an FC layer
288 -> 256 (ReLU, dropout 0.5) and a classifier 256 -> 10: 99,562
parameters in all, within 0.1% of the paper's 99.5K.

The FC layer is picked from :data:`VARIANTS` by name (``Baseline``,
``Cut-96``, ``LowRank-96``, ``KFC-II``, ``KFC-Combined``, ``KFC-Rank-10``, ...).
"""

from __future__ import annotations

from flax import nnx

from examples._common import cnn

IMAGE_SHAPE = cnn.MNIST.image_shape
FEATURE_SHAPE = cnn.MNIST.feature_shape  # H, W, C of the map the FC layer sees.
FC_FEATURES = cnn.FC_FEATURES
NUM_CLASSES = cnn.NUM_CLASSES
VARIANTS = cnn.VARIANT_NAMES
count_params = cnn.count_params

# The variants of the paper's MNIST table, in its order.
PAPER_VARIANTS = ("Baseline", "Cut-96", "LowRank-96", "KFC-II", "KFC-Combined")
# Every formulation once, plus a rank-2 sum.
ALL_VARIANTS = ("Baseline", "Cut-96", "LowRank-96", "KFC-I", "KFC-II",
                "KFC-III", "KFC-IV", "KFC-Combined", "KFC-Rank-2")


def get_variant(name: str) -> cnn.FcVariant:
  """The FC variant ``name`` over MNIST's 3x3x32 map (see ``cnn.get_variant``)."""
  return cnn.get_variant(name, cnn.MNIST)


class MnistCNN(cnn.PaperCNN):
  """The paper's MNIST CNN with the FC layer of ``variant``.

  Example usage::

    >>> import jax.numpy as jnp
    >>> model = MnistCNN("KFC-II", rngs=nnx.Rngs(0))
    >>> model(jnp.zeros((2, 28, 28, 1))).shape
    (2, 10)
    >>> count_params(model.fc, biases=False)
    2084
  """

  def __init__(self, variant: str = "Baseline", *, dropout_rate: float = 0.5,
               rngs: nnx.Rngs):
    super().__init__(cnn.MNIST, variant, dropout_rate=dropout_rate, rngs=rngs)
