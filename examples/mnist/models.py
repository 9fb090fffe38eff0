"""The KFC paper's MNIST CNN, with its FC layer chosen by variant name.

Zhou & Wu (arXiv 1507.05775, Section 4) describe the network only as four
convolutional and two pooling layers giving a 3x3x32 feature map (about 23K
parameters), an FC layer 288 -> 256 with dropout 0.5, and a softmax over ten
classes: 99.5K parameters in all. Kernel sizes and channel counts are not
given; we chose

====================  ==============  ==========  ======
layer                 output (NHWC)   padding     params
====================  ==============  ==========  ======
conv 3x3, 1 -> 8      28 x 28 x 8     SAME            80
conv 3x3, 8 -> 12     28 x 28 x 12    SAME           876
max pool 2x2          14 x 14 x 12
conv 5x5, 12 -> 20    10 x 10 x 20    VALID        6,020
conv 5x5, 20 -> 32     6 x  6 x 32    VALID       16,032
max pool 2x2           3 x  3 x 32
FC 288 -> 256         256                         73,984
classifier 256 -> 10  10                           2,570
====================  ==============  ==========  ======

(ReLU after every conv and after the FC layer): 23,008 conv parameters and
99,562 in all, within 0.1% of the paper's 99.5K, with cheap full-resolution
early layers and channels growing with depth. Conv and dense kernels start
from Caffe's ``xavier`` filler (:func:`caffe_xavier_uniform`); the library's
Kronecker layers use their own initialisers. Dropout (0.5) acts on the FC
layer's output; before or after the ReLU is the same function, since
``relu(m * x / p) == m * relu(x) / p`` for a non-negative mask ``m``.

The FC layer is picked from :data:`VARIANTS` by name (``Baseline``,
``Cut-96``, ``LowRank-96``, ``KFC-II``, ``KFC-Combined``, ``KFC-Rank-10``, ...).
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

import kfc_jax

IMAGE_SHAPE = (28, 28, 1)
FEATURE_SHAPE = (3, 3, 32)  # H, W, C of the map the FC layer sees.
FC_FEATURES = 256
NUM_CLASSES = 10


def caffe_xavier_uniform(key: jax.Array, shape: tuple[int, ...],
                         dtype=jnp.float32) -> jax.Array:
  """Caffe's ``xavier`` filler: U(-a, a), ``a = sqrt(3 / fan_in)``.

  What the paper's Caffe-era nets used for convolutions and inner products
  (variance ``1 / fan_in``, like ``nnx.initializers.lecun_uniform``), with
  ``fan_in`` the product of all but the last (output) axis of a Flax kernel.
  The draw is flat and then reshaped: on XLA:CPU, compiling the eager draw
  of some 4-D shapes directly (3x3x8x12 here) takes 15-30 s.
  """
  fan_in = math.prod(shape[:-1])
  limit = math.sqrt(3.0 / fan_in)
  flat = jax.random.uniform(key, (math.prod(shape),), dtype, -limit, limit)
  return flat.reshape(shape)


KERNEL_INIT = caffe_xavier_uniform

# (kernel size, output channels, padding); "pool" is a 2x2/2 max pool.
CONV_STACK = ((3, 8, "SAME"), (3, 12, "SAME"), "pool",
              (5, 20, "VALID"), (5, 32, "VALID"), "pool")


@dataclasses.dataclass(frozen=True)
class FcVariant:
  """How to build the layer between the conv stack and the classifier.

  Attributes:
    name: the variant's name, e.g. ``"KFC-II"``.
    features: the layer's output width (the classifier's input).
    flatten_input: whether the layer takes the flattened ``[*batch, 288]``
      features (dense, low-rank) rather than the ``[*batch, 3, 3, 32]`` map
      (KFC).
    build: ``rngs -> nnx.Module``.
  """

  name: str
  features: int
  flatten_input: bool
  build: Callable[[nnx.Rngs], nnx.Module]


def _dense(name: str, features: int) -> FcVariant:
  in_features = FEATURE_SHAPE[0] * FEATURE_SHAPE[1] * FEATURE_SHAPE[2]
  return FcVariant(
      name, features, True,
      lambda rngs: nnx.Linear(in_features, features, kernel_init=KERNEL_INIT,
                              rngs=rngs))


def _low_rank(name: str, rank: int) -> FcVariant:
  in_features = FEATURE_SHAPE[0] * FEATURE_SHAPE[1] * FEATURE_SHAPE[2]
  return FcVariant(
      name, FC_FEATURES, True,
      lambda rngs: kfc_jax.nnx.LowRankLinear(
          in_features, FC_FEATURES, rank=rank, rngs=rngs))


def _kfc(name: str, terms) -> FcVariant:
  return FcVariant(
      name, FC_FEATURES, False,
      lambda rngs: kfc_jax.nnx.KFC(
          FEATURE_SHAPE, FC_FEATURES, terms=terms, use_bias=True, rngs=rngs))


# The one table of variants: name -> factory. A ``<k>``/``<r>`` in a name is a
# positive integer argument of the factory (``Cut-96``, ``KFC-Rank-10``).
# KFC terms are (formulation, (O1, O2)[, rank]) with O1 * O2 = 256; see
# docs/DESIGN.md section 4 for how these reproduce the paper's parameter counts.
VARIANTS: dict[str, Callable[..., FcVariant]] = {
    "Baseline": lambda: _dense("Baseline", FC_FEATURES),
    "Cut-<k>": lambda k: _dense(f"Cut-{k}", k),
    "LowRank-<k>": lambda k: _low_rank(f"LowRank-{k}", k),
    "KFC-I": lambda: _kfc("KFC-I", [("I", (256, 1))]),
    "KFC-II": lambda: _kfc("KFC-II", [("II", (64, 4))]),
    "KFC-III": lambda: _kfc("KFC-III", [("III", (128, 2))]),
    "KFC-IV": lambda: _kfc("KFC-IV", [("IV", (128, 2))]),
    "KFC-Combined": lambda: _kfc(
        "KFC-Combined", [("II", (64, 4)), ("III", (128, 2)), ("IV", (128, 2))]),
    "KFC-Rank-<r>": lambda r: _kfc(f"KFC-Rank-{r}", [("II", (64, 4), r)]),
}

# The variants of the paper's MNIST table, in its order.
PAPER_VARIANTS = ("Baseline", "Cut-96", "LowRank-96", "KFC-II", "KFC-Combined")
# Every formulation once, plus a rank-2 sum.
ALL_VARIANTS = ("Baseline", "Cut-96", "LowRank-96", "KFC-I", "KFC-II",
                "KFC-III", "KFC-IV", "KFC-Combined", "KFC-Rank-2")


def get_variant(name: str) -> FcVariant:
  """Looks ``name`` up in :data:`VARIANTS`.

  Args:
    name: e.g. ``"KFC-II"`` or ``"Cut-96"``.

  Returns:
    The :class:`FcVariant`.

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
      "(<k> and <r> are positive integers, e.g. Cut-96, LowRank-96, "
      "KFC-Rank-10).")


class MnistCNN(nnx.Module):
  """Four convs, two max pools, an FC/KFC layer (ReLU, dropout), a classifier.

  Example usage::

    >>> from flax import nnx
    >>> import jax.numpy as jnp
    >>> model = MnistCNN("Baseline", rngs=nnx.Rngs(0))
    >>> model(jnp.zeros((2, 28, 28, 1))).shape
    (2, 10)
    >>> count_params(model), count_params(model.fc)
    (99562, 73984)
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
    """The conv stack: ``[*batch, 28, 28, 1] -> [*batch, 3, 3, 32]``."""
    convs = iter(self.convs)
    for layer in CONV_STACK:
      if layer == "pool":
        x = nnx.max_pool(x, (2, 2), strides=(2, 2))
      else:
        x = nnx.relu(next(convs)(x))
    return x

  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    """Logits ``[*batch, 10]`` for images ``[*batch, 28, 28, 1]`` in [0, 1].

    Args:
      x: the images.
      train: apply dropout (drawing from the ``dropout`` stream).
    """
    h = self.features(x)
    if self.flatten_fc_input:
      h = h.reshape(*h.shape[:-3], -1)
    h = nnx.relu(self.fc(h))
    h = self.dropout(h, deterministic=not train)
    return self.classifier(h)


def count_params(module: nnx.Module, *, biases: bool = True) -> int:
  """The number of scalars in the module's ``nnx.Param`` s (and subclasses).

  Works on abstract modules from ``nnx.eval_shape`` too.

  Args:
    module: the module.
    biases: count parameters named ``bias`` too. The paper counts the
      baseline FC layer with its bias (74.0K) but its KFC layers without
      (KFC-II: 2.1K = 2,084 factor entries), so both counts are reported.
  """
  total = 0
  for path, leaf in jax.tree_util.tree_leaves_with_path(
      nnx.state(module, nnx.Param)):
    if biases or not any(getattr(k, "key", None) == "bias" for k in path):
      total += math.prod(leaf.shape)
  return total
