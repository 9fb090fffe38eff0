"""CIFAR-style ResNets (He et al. 2016, Section 4.2) in NNX, with dense convs.

ResNet-``6n+2``: a 3x3 conv to 16 channels, then three stages of ``n`` basic
blocks (two 3x3 convs each, BatchNorm after every conv) at 16, 32 and 64
channels on 32x32, 16x16 and 8x8 maps, global average pooling and a 10-way
classifier. Shortcuts are the paper's option A: identity, and where a stage
halves the map and doubles the channels, the input subsampled by 2 and
padded with zero channels (no parameters). ResNet-20 (``n = 3``) has 0.27M
parameters, ResNet-32 (``n = 5``) 0.46M, as in the paper; the GKPD paper
compresses ResNet-32.

The convs are plain ``nnx.Conv`` (no bias: BatchNorm follows) so that
``kfc_jax.compress`` can replace the 3x3 ones by ``KroneckerConv`` s; the
BatchNorms stay.
"""

from __future__ import annotations

import math
import re

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import kfc_jax

NUM_CLASSES = 10
STAGE_CHANNELS = (16, 32, 64)
SPLITS = ("suggest", "blocks")
_BLOCK = 4  # channel block of split="blocks"


def he_normal(key: jax.Array, shape: tuple[int, ...], dtype=jnp.float32) -> jax.Array:
  """He et al.'s ``N(0, 2 / fan_in)``, ``fan_in`` = all but the last axis.

  Drawn flat and reshaped: on XLA:CPU the eager draw of a 4-D shape (and
  Flax's truncated-normal initialisers) compiles for seconds per shape, which
  made building a ResNet-20 take 20 s; this takes well under one.
  """
  fan_in = math.prod(shape[:-1])
  flat = jax.random.normal(key, (math.prod(shape),), dtype)
  return (flat * math.sqrt(2.0 / fan_in)).reshape(shape)


def _conv(c_in: int, c_out: int, strides: int, rngs: nnx.Rngs) -> nnx.Conv:
  return nnx.Conv(
    c_in,
    c_out,
    (3, 3),
    strides=strides,
    padding="SAME",
    use_bias=False,
    kernel_init=he_normal,
    rngs=rngs,
  )


def _bn(channels: int, rngs: nnx.Rngs) -> nnx.BatchNorm:
  return nnx.BatchNorm(channels, momentum=0.9, epsilon=1e-5, rngs=rngs)


class BasicBlock(nnx.Module):
  """Two 3x3 conv + BatchNorm layers with an option-A shortcut."""

  def __init__(self, c_in: int, c_out: int, strides: int, *, rngs: nnx.Rngs):
    self.conv1 = _conv(c_in, c_out, strides, rngs)
    self.bn1 = _bn(c_out, rngs)
    self.conv2 = _conv(c_out, c_out, 1, rngs)
    self.bn2 = _bn(c_out, rngs)
    self.strides = strides
    self.pad = c_out - c_in

  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    y = nnx.relu(self.bn1(self.conv1(x), use_running_average=not train))
    y = self.bn2(self.conv2(y), use_running_average=not train)
    shortcut = x[:, :: self.strides, :: self.strides, :]
    if self.pad:
      shortcut = jnp.pad(
        shortcut, ((0, 0), (0, 0), (0, 0), (self.pad // 2, self.pad - self.pad // 2))
      )
    return nnx.relu(y + shortcut)


def blocks_per_stage(depth: int) -> int:
  """``n`` of ResNet-``6n+2``.

  Raises:
    ValueError: ``depth`` is not ``6n + 2`` for an ``n >= 1``.
  """
  if not isinstance(depth, int) or depth < 8 or (depth - 2) % 6:
    raise ValueError(f"depth must be 6n+2 for n >= 1 (20, 32, 44, ...); got {depth!r}.")
  return (depth - 2) // 6


class ResNet(nnx.Module):
  """CIFAR ResNet-``depth`` on ``[B, 32, 32, in_channels]`` images.

  Args:
    depth: ``6n + 2``: 20, 32, 44, 56, 110, ...
    in_channels: 3 (CIFAR-10) or 1 (MNIST).
    num_classes: outputs of the classifier.
    rngs: initialisation randomness.

  Raises:
    ValueError: a bad ``depth`` or ``in_channels``.
  """

  def __init__(
    self, depth: int = 20, *, in_channels: int = 3, num_classes: int = NUM_CLASSES, rngs: nnx.Rngs
  ):
    n = blocks_per_stage(depth)
    if not isinstance(in_channels, int) or in_channels < 1:
      raise ValueError(f"in_channels must be a positive int; got {in_channels!r}.")
    self.depth = depth
    self.stem = _conv(in_channels, STAGE_CHANNELS[0], 1, rngs)
    self.stem_bn = _bn(STAGE_CHANNELS[0], rngs)
    blocks = []
    c_in = STAGE_CHANNELS[0]
    for stage, c_out in enumerate(STAGE_CHANNELS):
      for i in range(n):
        strides = 2 if stage > 0 and i == 0 else 1
        blocks.append(BasicBlock(c_in, c_out, strides, rngs=rngs))
        c_in = c_out
    self.blocks = nnx.List(blocks)
    # Flax's default (LeCun normal, truncated), drawn flat for speed as above.
    self.head = nnx.Linear(
      c_in,
      num_classes,
      rngs=rngs,
      kernel_init=lambda k, s, d=jnp.float32: he_normal(k, s, d) / math.sqrt(2),
    )

  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    x = nnx.relu(self.stem_bn(self.stem(x), use_running_average=not train))
    for block in self.blocks:
      x = block(x, train=train)
    return self.head(x.mean(axis=(1, 2)))


def expected_params(depth: int, in_channels: int = 3, num_classes: int = NUM_CLASSES) -> int:
  """The parameter count of :class:`ResNet` by formula (BatchNorm included).

  Each 3x3 conv ``c_in -> c_out`` has ``9 c_in c_out`` weights and its
  BatchNorm ``2 c_out`` (scale, bias); the shortcuts have none.
  """
  n = blocks_per_stage(depth)
  c0 = STAGE_CHANNELS[0]
  total = 9 * in_channels * c0 + 2 * c0
  c_in = c0
  for c in STAGE_CHANNELS:
    total += 9 * c_in * c + 2 * c + (2 * n - 1) * (9 * c * c + 2 * c)
    c_in = c
  return total + c_in * num_classes + num_classes


def count_params(module: nnx.Module) -> int:
  """Scalars in the module's ``nnx.Param`` s (BatchNorm statistics excluded)."""
  return sum(math.prod(x.shape) for x in jax.tree.leaves(nnx.state(module, nnx.Param)))


def block_conv_paths(model: ResNet) -> list[str]:
  """Paths (as ``kfc_jax.compress`` spells them) of the blocks' 3x3 convs."""
  return [f"blocks/{i}/{name}" for i in range(len(model.blocks)) for name in ("conv1", "conv2")]


# ----------------------------------------------------------------------------
# GKPD compression of the block convs.
# ----------------------------------------------------------------------------


def _block_rule(path: str, kernel_shape: tuple[int, ...], compression: float) -> kfc_jax.LayerRule:
  kh, kw, c_in, c_out = kernel_shape
  if c_in % _BLOCK or c_out % _BLOCK:
    raise ValueError(
      f"split='blocks' needs channels divisible by {_BLOCK}; layer {path!r} has {c_in} -> {c_out}."
    )
  a = (kh, kw, c_in // _BLOCK, c_out // _BLOCK)
  b = (1, 1, _BLOCK, _BLOCK)
  per_rank = int(np.prod(a)) + int(np.prod(b))
  rank = max(1, round(np.prod(kernel_shape) / compression / per_rank))
  return kfc_jax.LayerRule(re.escape(path), a_shape=a, b_shape=b, rank=int(rank))


def compression_policy(
  model: ResNet, *, compression: float = 5.0, split: str = "suggest"
) -> kfc_jax.CompressionPolicy:
  """The policy that turns every block conv of ``model`` into a KroneckerConv.

  The stem conv (``3 -> 16`` or ``1 -> 16``: 432 or 144 weights) and the
  classifier stay dense; so do the BatchNorms.

  Args:
    model: the (trained) ResNet.
    compression: dense / Kronecker parameters of each block conv.
    split: ``"suggest"`` (per-layer search by GKPD error) or ``"blocks"``
      (4x4 channel blocks, see ``configs/default.py``).

  Returns:
    A ``kfc_jax.CompressionPolicy``.

  Raises:
    ValueError: an unknown ``split`` or ``compression < 1``.
  """
  if split not in SPLITS:
    raise ValueError(f"split must be one of {SPLITS}; got {split!r}.")
  if not compression >= 1:
    raise ValueError(f"compression must be >= 1; got {compression!r}.")
  if split == "suggest":
    return kfc_jax.CompressionPolicy(
      [kfc_jax.LayerRule(r"blocks/\d+/conv[12]", compression=compression)]
    )
  rules = []
  for path in block_conv_paths(model):
    block, name = path.split("/")[1:]
    conv = getattr(model.blocks[int(block)], name)
    rules.append(_block_rule(path, conv.kernel.shape, compression))
  return kfc_jax.CompressionPolicy(rules)


def conv_params(model: ResNet) -> int:
  """Parameters of the block convs (dense kernels or Kronecker factors)."""
  return sum(count_params(getattr(b, n)) for b in model.blocks for n in ("conv1", "conv2"))
