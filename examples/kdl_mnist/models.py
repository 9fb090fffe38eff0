"""The KDL paper's MLP on raw MNIST pixels, dense or with KDL blocks.

Hogue, Kirby & Narayan (arXiv 2204.04273; docs/DESIGN.md, "KDL block")
report, for MNIST after 20 epochs, a rank-1 KDL network with 6,534 parameters
at 96.94% test accuracy against a dense MLP with 1.24M parameters at 97.72%.
Neither network is spelled out in the copy we hold; both counts are
reproduced *exactly* by the MLP with two hidden layers as wide as the input,
784 -> 784 -> 784 -> 10:

* ``Dense``: ``3 * (784 * 784 + 784) - (784 * 784 + 784) + (784 * 10 + 10)
  = 615,440 + 615,440 + 7,850 = 1,238,730`` parameters ("1.24M").
* ``KDL-Rank-1``: every dense layer becomes a :class:`kfc_jax.nnx.KDL` block
  with 784 = 28 x 28 (the image's rows and columns) and 10 = 5 x 2. A block
  ``(m1, m2) -> (n1, n2)`` of rank r has ``r * (m1*n1 + m2*n2)`` factor entries
  and ``r * (m1*n2 + n1*n2)`` biases (one per hidden unit of the "extended"
  network it sparsifies), so

  - 28 x 28 -> 28 x 28: ``28*28 + 28*28 + 28*28 + 28*28 = 3,136``, twice;
  - 28 x 28 -> 5 x 2: ``28*5 + 28*2 + 28*2 + 5*2 = 262``;

  ``3,136 + 3,136 + 262 = 6,534`` -- the paper's count to the parameter. (Of the
  other splits of 10, 2 x 5 gives 6,618 and 1 x 10 gives 6,870.)

Hidden blocks and layers use ReLU (the paper's activation is not in our
copy); the last block/layer is linear (its output is the logits) and the
softmax is in the loss. Rank r > 1 (``KDL-Rank-<r>``) sums r branches per block.
"""

from __future__ import annotations

import itertools
import math
import re

import jax
from flax import nnx

import kfc_jax

IMAGE_SHAPE = (28, 28, 1)
IN_FACTORS = (28, 28)  # 784 pixels as the image's rows x columns.
HIDDEN = 784
HIDDEN_FACTORS = (28, 28)
NUM_CLASSES = 10
OUT_FACTORS = (5, 2)
NUM_HIDDEN_LAYERS = 2

# The one table of variants. ``<r>`` is a positive integer rank.
VARIANTS = ("Dense", "KDL-Rank-<r>")
PAPER_VARIANTS = ("Dense", "KDL-Rank-1")


def parse_variant(name: str) -> int | None:
  """``None`` for ``"Dense"``, the rank for ``"KDL-Rank-<r>"``.

  Raises:
    ValueError: an unknown name; the message lists the valid ones.
  """
  if name == "Dense":
    return None
  match = re.fullmatch(r"KDL-Rank-([1-9][0-9]*)", name)
  if match:
    return int(match.group(1))
  raise ValueError(
    f"Unknown variant {name!r}. Valid variants: "
    f"{', '.join(VARIANTS)} (<r> a positive integer, e.g. "
    "KDL-Rank-1)."
  )


class MLP(nnx.Module):
  """784 -> 784 -> 784 -> 10 on flattened pixels, dense or KDL.

  Example usage::

    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> kdl = MLP("KDL-Rank-1", rngs=nnx.Rngs(0))
    >>> kdl(jnp.zeros((2, 28, 28, 1))).shape
    (2, 10)
    >>> count_params(kdl), count_params(MLP("Dense", rngs=nnx.Rngs(0)))
    (6534, 1238730)
  """

  def __init__(self, variant: str = "KDL-Rank-1", *, rngs: nnx.Rngs):
    """Builds the network.

    Args:
      variant: ``"Dense"`` or ``"KDL-Rank-<r>"``.
      rngs: ``params`` for initialisation.

    Raises:
      ValueError: ``variant`` is unknown.
    """
    rank = parse_variant(variant)
    self.variant = variant
    sizes = [(math.prod(IN_FACTORS), IN_FACTORS)]
    sizes += [(HIDDEN, HIDDEN_FACTORS)] * NUM_HIDDEN_LAYERS
    sizes += [(NUM_CLASSES, OUT_FACTORS)]
    layers = []
    for i, ((m, m_f), (n, n_f)) in enumerate(itertools.pairwise(sizes)):
      last = i == len(sizes) - 2
      if rank is None:
        layers.append(nnx.Linear(m, n, rngs=rngs))
      else:
        # A block applies its activation inside (after both of its layers);
        # the last one stays linear: it computes the logits.
        layers.append(
          kfc_jax.nnx.KDL(
            m,
            n,
            in_factors=m_f,
            out_factors=n_f,
            rank=rank,
            activation=None if last else jax.nn.relu,
            rngs=rngs,
          )
        )
    self.layers = nnx.List(layers)
    self.dense = rank is None

  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    """Logits ``[*batch, 10]`` for images ``[*batch, 28, 28, 1]`` in [0, 1].

    Args:
      x: the images.
      train: unused (no dropout); the signature of the MNIST example's steps.
    """
    del train
    h = x.reshape(*x.shape[:-3], -1)
    for i, layer in enumerate(self.layers):
      h = layer(h)
      if self.dense and i < len(self.layers) - 1:
        h = nnx.relu(h)
    return h


def count_params(module: nnx.Module) -> int:
  """The number of scalars in the module's ``nnx.Param`` s (abstract or not)."""
  return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(nnx.state(module, nnx.Param)))
