"""CNNs whose convolutions are Kronecker layers, trained from scratch (KConv).

Zhou, Wu, Wu & Zhou ("Exploiting local structures with the Kronecker layer
in convolutional networks", 2015) replace a conv kernel ``K: [kh, kw, C_in,
C_out]`` by ``sum_r A_r ⊗ B_r`` and train the factors from scratch, trading
accuracy for parameters and speed; they also sum terms of *different* factor
shapes ("combinations of different shapes"). This module builds one network
per (architecture, variant):

* an **architecture** is a conv stack (kernel size, output channels,
  padding, or a 2x2 max pool) and a head; :data:`ARCHITECTURES` holds the
  KFC paper's MNIST CNN (``paper``: 8-12-20-32 channels, 288 -> 256 FC,
  dropout, classifier) and a wider one (``wide``: 64-64-128-128 channels,
  global average pool, classifier), where the convs hold 99% of the
  parameters and FLOPs and a cheaper conv has room to pay off;
* a **variant** says how every conv but the first (a 1- or 3-channel input
  cannot be split) is built: ``Dense`` (``nnx.Conv``) or a
  ``kfc_jax.nnx.KroneckerConv`` whose terms come from :data:`VARIANTS`.

Channel splits ``ch<s>``: ``A = (k, k, C_in/s, C_out/s)``, ``B = (1, 1, s,
s)``, so A holds the window and B mixes ``s x s`` channel blocks (about
``s**2`` fewer weights, and fewer FLOPs: the conv runs on ``C_in/s``
channels). Spatial split ``sp``: ``A = (k, 1, C_in/2, C_out/2)``, ``B = (1,
k, 2, 2)``, a separable-like kernel (``4k`` times fewer weights).
``-r<r>`` sums ``r`` such terms; ``Mixed`` sums a ``ch4`` and an ``sp``
term (:func:`expected_conv_params` counts them all).

Every kernel (dense or Kronecker) starts with the variance of Flax's default
``lecun_normal`` conv (``1 / (kh * kw * C_in)``), so the variants differ only
in structure.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
from flax import nnx

import kfc_jax

NUM_CLASSES = 10
# (kernel size, output channels, padding); "pool" is a 2x2/2 max pool.
ConvStack = tuple[tuple[int, int, str] | str, ...]
# A Kronecker conv's terms for a (kernel size, C_in, C_out) conv:
# [(a_shape, b_shape, rank), ...] as KroneckerConv's ``terms``.
Terms = list[tuple[tuple[int, ...], tuple[int, ...], int]]


@dataclasses.dataclass(frozen=True)
class Architecture:
  """A conv stack and its head.

  Attributes:
    name: ``paper`` or ``wide``.
    conv_stack: the convs and pools, input to output.
    fc_features: width of a ReLU + dropout FC layer on the flattened map
      before the classifier (``None``: global average pool, then the
      classifier).
  """

  name: str
  conv_stack: ConvStack
  fc_features: int | None


ARCHITECTURES = {
  # The KFC paper's MNIST CNN (examples/_common/cnn.py has its derivation).
  "paper": Architecture(
    "paper",
    ((3, 8, "SAME"), (3, 12, "SAME"), "pool", (5, 20, "VALID"), (5, 32, "VALID"), "pool"),
    256,
  ),
  # Wide enough that the convs dominate: 64-64-128-128 channels.
  "wide": Architecture(
    "wide",
    ((3, 64, "SAME"), (3, 64, "SAME"), "pool", (3, 128, "SAME"), (3, 128, "SAME"), "pool"),
    None,
  ),
}


def _channel_split(split: int, rank: int = 1) -> Callable[..., Terms]:
  def terms(k, c_in, c_out):
    return [((k, k, c_in // split, c_out // split), (1, 1, split, split), rank)]

  return terms


def _spatial_split(rank: int = 1) -> Callable[..., Terms]:
  def terms(k, c_in, c_out):
    return [((k, 1, c_in // 2, c_out // 2), (1, k, 2, 2), rank)]

  return terms


def _mixed(k, c_in, c_out):
  return _channel_split(4)(k, c_in, c_out) + _spatial_split()(k, c_in, c_out)


# variant -> terms of its Kronecker convs (None: dense convs).
VARIANTS: dict[str, Callable[..., Terms] | None] = {
  "Dense": None,
  "KConv-ch2": _channel_split(2),
  "KConv-ch4": _channel_split(4),
  "KConv-ch4-r2": _channel_split(4, rank=2),
  "KConv-sp": _spatial_split(),
  "KConv-sp-r2": _spatial_split(rank=2),
  "KConv-Mixed": _mixed,
}


def conv_terms(variant: str, kernel_size: int, c_in: int, c_out: int) -> Terms | None:
  """The Kronecker terms of one conv of ``variant`` (``None``: dense).

  Raises:
    ValueError: an unknown variant, or channels the split does not divide.
  """
  if variant not in VARIANTS:
    raise ValueError(f"Unknown variant {variant!r}. Valid variants: {', '.join(VARIANTS)}.")
  make = VARIANTS[variant]
  if make is None:
    return None
  terms = make(kernel_size, c_in, c_out)
  for a_shape, b_shape, _ in terms:
    if a_shape[2] * b_shape[2] != c_in or a_shape[3] * b_shape[3] != c_out:
      raise ValueError(
        f"{variant} cannot split a {c_in} -> {c_out} conv: "
        f"channels must be multiples of {b_shape[2]}."
      )
  return terms


def expected_conv_params(variant: str, kernel_size: int, c_in: int, c_out: int) -> int:
  """Weights and bias of one conv of ``variant``, from the factor shapes."""
  terms = conv_terms(variant, kernel_size, c_in, c_out)
  if terms is None:
    return kernel_size**2 * c_in * c_out + c_out
  return c_out + sum(r * (math.prod(a) + math.prod(b)) for a, b, r in terms)


class KConvCNN(nnx.Module):
  """A CNN of :data:`ARCHITECTURES` with the convs of a :data:`VARIANTS` entry.

  Example usage::

    >>> import jax.numpy as jnp
    >>> model = KConvCNN("wide", "KConv-ch4", rngs=nnx.Rngs(0))
    >>> model(jnp.zeros((2, 28, 28, 1))).shape
    (2, 10)
    >>> type(model.convs[1]).__name__, model.convs[1].cost().params
    ('KroneckerConv', 2384)
  """

  def __init__(
    self,
    architecture: str = "paper",
    variant: str = "Dense",
    *,
    image_shape: Sequence[int] = (28, 28, 1),
    dropout_rate: float = 0.5,
    rngs: nnx.Rngs,
  ):
    """Builds the network.

    Args:
      architecture: a key of :data:`ARCHITECTURES`.
      variant: a key of :data:`VARIANTS`.
      image_shape: ``(H, W, C)`` of the input images.
      dropout_rate: dropout after the FC layer (``paper`` only).
      rngs: ``params`` for initialisation and ``dropout`` for training.

    Raises:
      ValueError: an unknown architecture or variant.
    """
    if architecture not in ARCHITECTURES:
      raise ValueError(
        f"Unknown architecture {architecture!r}; use one of {', '.join(ARCHITECTURES)}."
      )
    arch = ARCHITECTURES[architecture]
    self.variant = variant
    self.conv_stack = arch.conv_stack
    height, width, channels = image_shape
    convs, self.conv_inputs = [], []
    for layer in arch.conv_stack:
      if layer == "pool":
        height, width = height // 2, width // 2
        continue
      size, features, padding = layer
      terms = None if not convs else conv_terms(variant, size, channels, features)
      if terms is None:
        conv = nnx.Conv(channels, features, (size, size), padding=padding, rngs=rngs)
      else:
        conv = kfc_jax.nnx.KroneckerConv(
          channels, features, size, padding=padding, terms=terms, rngs=rngs
        )
      convs.append(conv)
      self.conv_inputs.append((height, width, channels))
      if padding == "VALID":
        height, width = height - size + 1, width - size + 1
      channels = features
    self.convs = nnx.List(convs)
    self.feature_shape = (height, width, channels)
    if arch.fc_features is None:
      self.fc = None
      head_in = channels
    else:
      self.fc = nnx.Linear(height * width * channels, arch.fc_features, rngs=rngs)
      head_in = arch.fc_features
    self.dropout = nnx.Dropout(dropout_rate, rngs=rngs)
    self.classifier = nnx.Linear(head_in, NUM_CLASSES, rngs=rngs)

  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    """Logits ``[*batch, 10]`` for images ``[*batch, H, W, C]`` in [0, 1]."""
    convs = iter(self.convs)
    for layer in self.conv_stack:
      x = nnx.max_pool(x, (2, 2), strides=(2, 2)) if layer == "pool" else nnx.relu(next(convs)(x))
    if self.fc is None:
      x = x.mean(axis=(-3, -2))
    else:
      x = nnx.relu(self.fc(x.reshape(*x.shape[:-3], -1)))
      x = self.dropout(x, deterministic=not train)
    return self.classifier(x)


def count_params(module: nnx.Module) -> int:
  """The number of scalars in the module's ``nnx.Param`` s (and subclasses)."""
  return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(nnx.state(module, nnx.Param)))


def conv_costs(model: KConvCNN) -> list[dict[str, Any]]:
  """Per conv: parameters and FLOPs of one image, and the dense conv's.

  Kronecker convs report the FLOPs of their factored structure (the two
  small convs), whichever plan ``strategy="auto"`` runs: on few channels the
  layer forms the kernel and does the dense conv's FLOPs, because that is
  faster there (``benchmarks/conv_plans.py``); the measured times show it. A
  dense conv's FLOPs are ``2 * H_out * W_out * k * k * C_in * C_out``
  (multiply-adds as two, bias left out, as the layers' costs count them).
  """
  rows = []
  for conv, (height, width, c_in) in zip(model.convs, model.conv_inputs, strict=True):
    if isinstance(conv, kfc_jax.nnx.KroneckerConv):
      cost = conv.layout.cost(
        type(conv).__name__,
        use_bias=conv.use_bias,
        batch=1,
        input_size=(height, width),
        strategy="factored",
        dtype=conv.param_dtype,
      )
      rows.append(
        {
          "params": cost.params,
          "flops": cost.flops,
          "dense_params": cost.dense_params,
          "dense_flops": cost.dense_flops,
          "detail": cost.detail,
        }
      )
      continue
    kh, kw = conv.kernel_size
    c_out = conv.out_features
    out_h, out_w = (height, width) if conv.padding == "SAME" else (height - kh + 1, width - kw + 1)
    flops = 2 * out_h * out_w * kh * kw * c_in * c_out
    params = count_params(conv)
    rows.append(
      {
        "params": params,
        "flops": flops,
        "dense_params": params,
        "dense_flops": flops,
        "detail": f"dense {kh}x{kw}x{c_in}x{c_out} @{height}x{width}",
      }
    )
  return rows


def network_cost(model: KConvCNN) -> dict[str, int]:
  """``params`` (all), ``conv_params``, ``conv_flops`` and ``flops`` per image.

  ``flops`` adds the FC layer and classifier (``2 * in * out`` each) to the
  convs'; pools, ReLUs and biases are left out.
  """
  convs = conv_costs(model)
  head = sum(
    2 * layer.in_features * layer.out_features
    for layer in (model.fc, model.classifier)
    if layer is not None
  )
  conv_flops = sum(c["flops"] for c in convs)
  return {
    "params": count_params(model),
    "conv_params": sum(c["params"] for c in convs),
    "conv_flops": conv_flops,
    "flops": conv_flops + head,
  }
