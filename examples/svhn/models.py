"""The KFC paper's SVHN network: a CNN, then an FC/KFC layer, then softmax.

Zhou & Wu (arXiv 1507.05775, Section 4; docs/DESIGN.md §4) use for SVHN "a larger
network of the same shape" as for MNIST: its conv stack ends in a 5x5x256 map,
the FC layer maps it to 256 (1.64M parameters) and the whole baseline has
2.20M. Our stack (NHWC, 32x32x3 input, ReLU after each conv and the FC layer)
keeps the MNIST net's shape -- two full-resolution 3x3 convs, a pool, a 5x5
and a smaller conv, a pool -- with the last conv 3x3 so that 32x32 ends at
5x5:

====================  ==============  ==========  =========
layer                 output          padding     params
====================  ==============  ==========  =========
conv 3x3, 3 -> 48     32 x 32 x 48    SAME            1,344
conv 3x3, 48 -> 72    32 x 32 x 72    SAME           31,176
max pool 2x2          16 x 16 x 72
conv 5x5, 72 -> 128   12 x 12 x 128   VALID         230,528
conv 3x3, 128 -> 256  10 x 10 x 256   VALID         295,168
max pool 2x2           5 x  5 x 256
FC 6400 -> 256        256                         1,638,656
classifier 256 -> 10  10                              2,570
====================  ==============  ==========  =========

558,216 conv parameters and 2,199,442 in all (the paper: 2.20M). The
channel widths are our choice (the paper gives only the totals): they grow
with depth, as in the MNIST net, and land the total on the paper's.

Variants (:data:`VARIANTS`): ``Baseline``, ``Cut-<k>`` (the FC layer with k
outputs), ``LowRank-<k>`` (6400 -> k -> 256), ``KFC-I`` ... ``KFC-IV``,
``KFC-Combined`` and ``KFC-Rank-<r>``, with the factor shapes of docs/DESIGN.md
§4 (KFC-II: 16,484 factor entries, 99.0% fewer than the FC layer's
1,638,400; KFC-Combined 344,184, 79.0%; KFC-Rank-10 164,840, 89.9%).
"""

from __future__ import annotations

import re
from collections.abc import Callable

import jax
from flax import nnx

import kfc_jax
from examples.mnist import models as mnist_models

IMAGE_SHAPE = (32, 32, 3)
FEATURE_SHAPE = (5, 5, 256)  # H, W, C of the map the FC layer sees.
FC_IN = FEATURE_SHAPE[0] * FEATURE_SHAPE[1] * FEATURE_SHAPE[2]
FC_FEATURES = 256
NUM_CLASSES = 10

# (kernel size, output channels, padding); "pool" is a 2x2/2 max pool.
CONV_STACK = ((3, 48, "SAME"), (3, 72, "SAME"), "pool",
              (5, 128, "VALID"), (3, 256, "VALID"), "pool")

# Shared with the MNIST example: Caffe's xavier filler, the variant record
# and the parameter count.
KERNEL_INIT = mnist_models.caffe_xavier_uniform
FcVariant = mnist_models.FcVariant
count_params = mnist_models.count_params


def _dense(name: str, features: int) -> FcVariant:
  return FcVariant(name, features, True, lambda rngs: nnx.Linear(
      FC_IN, features, kernel_init=KERNEL_INIT, rngs=rngs))


def _low_rank(name: str, rank: int) -> FcVariant:
  return FcVariant(name, FC_FEATURES, True, lambda rngs: (
      kfc_jax.nnx.LowRankLinear(FC_IN, FC_FEATURES, rank=rank, rngs=rngs)))


def _kfc(name: str, terms) -> FcVariant:
  return FcVariant(name, FC_FEATURES, False, lambda rngs: kfc_jax.nnx.KFC(
      FEATURE_SHAPE, FC_FEATURES, terms=terms, use_bias=True, rngs=rngs))


# name -> factory; ``<k>``/``<r>`` is a positive integer argument. KFC terms
# are (formulation, (O1, O2)[, rank]) with O1 * O2 = 256 (docs/DESIGN.md §4).
_COMBINED = [("II", (64, 4)), ("III", (128, 2)), ("IV", (128, 2))]
VARIANTS: dict[str, Callable[..., FcVariant]] = {
    "Baseline": lambda: _dense("Baseline", FC_FEATURES),
    "Cut-<k>": lambda k: _dense(f"Cut-{k}", k),
    "LowRank-<k>": lambda k: _low_rank(f"LowRank-{k}", k),
    "KFC-I": lambda: _kfc("KFC-I", [("I", (256, 1))]),
    "KFC-II": lambda: _kfc("KFC-II", [("II", (64, 4))]),
    "KFC-III": lambda: _kfc("KFC-III", [("III", (128, 2))]),
    "KFC-IV": lambda: _kfc("KFC-IV", [("IV", (128, 2))]),
    "KFC-Combined": lambda: _kfc("KFC-Combined", _COMBINED),
    "KFC-Rank-<r>": lambda r: _kfc(f"KFC-Rank-{r}", [("II", (64, 4), r)]),
}

# The variants of the paper's SVHN table, in its order.
PAPER_VARIANTS = ("Baseline", "LowRank-128", "KFC-II", "KFC-Combined",
                  "KFC-Rank-10")


def get_variant(name: str) -> FcVariant:
  """Looks ``name`` up in :data:`VARIANTS`.

  Raises:
    ValueError: ``name`` matches no entry; the message lists the valid ones.
  """
  for pattern, factory in VARIANTS.items():
    if "<" not in pattern:
      if name == pattern:
        return factory()
      continue
    prefix = pattern[:pattern.index("<")]
    match = re.fullmatch(re.escape(prefix) + r"([1-9][0-9]*)", name)
    if match:
      return factory(int(match.group(1)))
  raise ValueError(
      f"Unknown variant {name!r}. Valid variants: {', '.join(VARIANTS)} "
      "(<k> and <r> are positive integers, e.g. Cut-128, LowRank-128, "
      "KFC-Rank-10).")


class SvhnCNN(nnx.Module):
  """Four convs, two max pools, an FC/KFC layer (ReLU, dropout), a classifier.

  Example usage::

    >>> import jax.numpy as jnp
    >>> model = SvhnCNN("KFC-II", rngs=nnx.Rngs(0))
    >>> model(jnp.zeros((2, 32, 32, 3))).shape
    (2, 10)
    >>> count_params(SvhnCNN("Baseline", rngs=nnx.Rngs(0)))
    2199442
  """

  def __init__(self, variant: str = "Baseline", *, dropout_rate: float = 0.5,
               rngs: nnx.Rngs):
    """Builds the network.

    Args:
      variant: the FC layer's variant name (see :data:`VARIANTS`).
      dropout_rate: dropout on the FC layer's output during training.
      rngs: ``params`` for initialisation and ``dropout`` for training.

    Raises:
      ValueError: ``variant`` is unknown.
    """
    spec = get_variant(variant)
    self.variant = spec.name
    convs = []
    channels = IMAGE_SHAPE[-1]
    for layer in CONV_STACK:
      if layer == "pool":
        continue
      size, features, padding = layer
      convs.append(nnx.Conv(channels, features, (size, size), padding=padding,
                            kernel_init=KERNEL_INIT, rngs=rngs))
      channels = features
    self.convs = nnx.List(convs)
    self.fc = spec.build(rngs)
    self.flatten_fc_input = spec.flatten_input
    self.dropout = nnx.Dropout(dropout_rate, rngs=rngs)
    self.classifier = nnx.Linear(spec.features, NUM_CLASSES,
                                 kernel_init=KERNEL_INIT, rngs=rngs)

  def features(self, x: jax.Array) -> jax.Array:
    """The conv stack: ``[*batch, 32, 32, 3] -> [*batch, 5, 5, 256]``."""
    convs = iter(self.convs)
    for layer in CONV_STACK:
      if layer == "pool":
        x = nnx.max_pool(x, (2, 2), strides=(2, 2))
      else:
        x = nnx.relu(next(convs)(x))
    return x

  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    """Logits ``[*batch, 10]`` for images ``[*batch, 32, 32, 3]`` in [0, 1]."""
    h = self.features(x)
    if self.flatten_fc_input:
      h = h.reshape(*h.shape[:-3], -1)
    h = nnx.relu(self.fc(h))
    h = self.dropout(h, deterministic=not train)
    return self.classifier(h)
