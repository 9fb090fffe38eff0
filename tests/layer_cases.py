"""The table of layers every cross-cutting test runs over, with float64 references.

Each case builds the NNX layer and its Linen twin from the same arguments, and
computes the layer's output in float64 NumPy from its parameters alone: the
effective kernel is materialised with ``np.kron`` (never with the library's own
``kron``; for KFC its rows are moved to NHWC order by index arithmetic written
here independently) and applied by a matmul or, for convolutions, by the NumPy
convolution of ``references``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx
from references import np_conv, np_conv_kernel, np_kron

import kfc_jax

AXES = ("H", "W", "C")


def kfc_term_kernel(factors, in_shape, groups) -> np.ndarray:
  """``np.kron`` of a KFC term, rows reordered from group order to NHWC."""
  w = np_kron(factors)  # rows indexed row-major over the axes in group order
  order = [a for g in groups for a in g]
  sizes = dict(zip(AXES, in_shape, strict=True))
  h, wi, c = np.meshgrid(*(np.arange(s) for s in in_shape), indexing="ij")
  coords = dict(H=h.ravel(), W=wi.ravel(), C=c.ravel())  # NHWC row order
  kron_rows = np.ravel_multi_index([coords[a] for a in order], [sizes[a] for a in order])
  return w[kron_rows]


def _p(params, name):
  return np.asarray(params[name], np.float64)


_INIT_RNG = np.random.default_rng(0)


def numpy_init(key, shape, dtype=jnp.float32):
  """Random O(1) values drawn by NumPy (the key is ignored; it may be traced).

  Tests build hundreds of small layers; XLA compiling ``jax.random`` for every
  new shape and dtype would dominate their runtime. The default initialisers
  have tests of their own.
  """
  del key
  values = _INIT_RNG.standard_normal(shape)
  scale = math.sqrt(shape[-2]) if len(shape) >= 2 else 1.0
  return jnp.asarray(values / scale, dtype)


FAST_INIT = dict(factor_init=numpy_init, bias_init=numpy_init)


@dataclasses.dataclass(frozen=True)
class Case:
  """One layer configuration.

  ``reference(params, x)`` maps a batch ``x: [N, *x_shape]`` to the output;
  ``kernel(params)`` is the effective kernel of a linear layer (``[in, out]``
  or HWIO) and ``apply_kernel(x, w)`` what the layer computes with it.
  """

  id: str
  nnx_cls: Any
  linen_cls: Any
  args: tuple
  kwargs: dict
  x_shape: tuple[int, ...]  # one example's input shape
  reference: Callable[[dict, np.ndarray], np.ndarray]
  kernel: Callable[[dict], np.ndarray] | None = None  # None: not linear (KDL)
  conv: dict | None = None  # the conv's strides, padding, dilation

  @property
  def linear(self) -> bool:
    return self.kernel is not None

  def apply_kernel(self, x: np.ndarray, w: np.ndarray) -> np.ndarray:
    if self.conv is not None:
      return np_conv(x, w, **self.conv)
    return x.reshape(x.shape[0], -1) @ w

  @property
  def kernel_size(self) -> int:
    """Entries of the dense kernel the layer stands for."""
    if self.conv is None:
      return math.prod(self.x_shape) * self.args[1]
    kernel_size = self.args[2]
    window = (kernel_size,) * 2 if isinstance(kernel_size, int) else kernel_size
    return math.prod(window) * self.args[0] * self.args[1]

  def nnx(self, rngs=None, **overrides):
    kw = {**FAST_INIT, **self.kwargs, **overrides}
    return self.nnx_cls(*self.args, **kw, rngs=rngs or nnx.Rngs(0))

  def linen(self, **overrides):
    return self.linen_cls(*self.args, **{**FAST_INIT, **self.kwargs, **overrides})

  @property
  def in_features(self) -> int:
    return math.prod(self.x_shape)


def _kron_linear_kernel(in_features, out_features, n_terms, n_factors):
  def kernel(params):
    return sum(
      np_kron([_p(params, f"factor_{t}_{f}") for f in range(k)])[:in_features, :out_features]
      for t, k in zip(range(n_terms), n_factors, strict=True)
    )

  return kernel


def _kfc_kernel(in_shape, formulations):
  def kernel(params):
    total = 0.0
    for t, name in enumerate(formulations):
      groups = kfc_jax.get_formulation(name).groups
      fs = [_p(params, f"factor_{t}_{f}") for f in range(len(groups))]
      total = total + kfc_term_kernel(fs, in_shape, groups)
    return total

  return kernel


def _dense_case(id, nnx_cls, linen_cls, args, kwargs, x_shape, kernel_fn):
  def forward(params, x):
    y = x.reshape(x.shape[0], -1) @ kernel_fn(params)
    return y + _p(params, "bias") if "bias" in params else y

  return Case(id, nnx_cls, linen_cls, args, kwargs, x_shape, forward, kernel_fn)


def _conv_case(id, args, kwargs, hw):
  """A KroneckerConv case: ``args = (in, out, kernel_size[, strides])``."""
  conv = dict(
    strides=args[3] if len(args) > 3 else 1,
    padding=kwargs.get("padding", "SAME"),
    dilation=kwargs.get("kernel_dilation", 1),
  )

  def kernel_fn(params):
    n_terms = len([k for k in params if k.endswith("_0")])
    return sum(
      np_conv_kernel(_p(params, f"factor_{t}_0"), _p(params, f"factor_{t}_1"))
      for t in range(n_terms)
    )

  def forward(params, x):
    y = np_conv(x, kernel_fn(params), **conv)
    return y + _p(params, "bias") if "bias" in params else y

  return Case(
    id,
    kfc_jax.nnx.KroneckerConv,
    kfc_jax.linen.KroneckerConv,
    args,
    kwargs,
    (*hw, args[0]),
    forward,
    kernel_fn,
    conv,
  )


def _kdl_reference(in_factors, out_factors, activation):
  def forward(params, x):
    m1, m2 = in_factors
    act = activation or (lambda z: z)
    xm = x.reshape(*x.shape[:-1], m1, m2)
    left, right = _p(params, "left"), _p(params, "right")
    total = 0.0
    for r in range(left.shape[0]):
      z = xm @ right[r]
      if "right_bias" in params:
        z = z + _p(params, "right_bias")[r]
      z = act(z)
      y = np.swapaxes(np.swapaxes(z, -1, -2) @ left[r], -1, -2)  # L^T Z
      if "left_bias" in params:
        y = y + _p(params, "left_bias")[r]
      total = total + act(y)
    return total.reshape(*x.shape[:-1], -1)

  return forward


def np_relu(z):
  return np.maximum(z, 0)


CASES = [
  _dense_case(
    "linear-2f-r2",
    kfc_jax.nnx.KroneckerLinear,
    kfc_jax.linen.KroneckerLinear,
    (12, 10),
    dict(in_factors=(3, 4), out_factors=(5, 2), rank=2),
    (12,),
    _kron_linear_kernel(12, 10, 1, [2]),
  ),
  _dense_case(
    "linear-3f-padded",
    kfc_jax.nnx.KroneckerLinear,
    kfc_jax.linen.KroneckerLinear,
    (13, 7),
    dict(in_factors=(2, 2, 4), out_factors=(2, 2, 2)),
    (13,),
    _kron_linear_kernel(13, 7, 1, [3]),
  ),
  _dense_case(
    "linear-terms",
    kfc_jax.nnx.KroneckerLinear,
    kfc_jax.linen.KroneckerLinear,
    (12, 6),
    dict(terms=[((3, 4), (2, 3)), ((2, 2, 3), (1, 2, 3), 2)]),
    (12,),
    _kron_linear_kernel(12, 6, 2, [2, 3]),
  ),
  _dense_case(
    "kfc-II",
    kfc_jax.nnx.KFC,
    kfc_jax.linen.KFC,
    ((3, 4, 5), 6),
    dict(terms=[("II", (3, 2))]),
    (3, 4, 5),
    _kfc_kernel((3, 4, 5), ["II"]),
  ),
  _dense_case(
    "kfc-combined",
    kfc_jax.nnx.KFC,
    kfc_jax.linen.KFC,
    ((3, 4, 5), 6),
    dict(terms=[("I", (6, 1)), ("III", (2, 3), 2), ("IV", (3, 2)), ("CHW", (1, 2, 3))]),
    (3, 4, 5),
    _kfc_kernel((3, 4, 5), ["I", "III", "IV", "CHW"]),
  ),
  _dense_case(
    "low-rank",
    kfc_jax.nnx.LowRankLinear,
    kfc_jax.linen.LowRankLinear,
    (12, 10),
    dict(rank=3),
    (12,),
    lambda p: _p(p, "u") @ _p(p, "v"),
  ),
  Case(
    "kdl-relu",
    kfc_jax.nnx.KDL,
    kfc_jax.linen.KDL,
    (12, 10),
    dict(in_factors=(3, 4), out_factors=(5, 2), rank=2),
    (12,),
    _kdl_reference((3, 4), (5, 2), np_relu),
  ),
  _conv_case(
    "conv-3x3(x)1x1-r2", (8, 6, 3), dict(a_shape=(3, 3, 4, 3), b_shape=(1, 1, 2, 2), rank=2), (7, 8)
  ),
  _conv_case(
    "conv-2x2(x)2x2-stride2-valid",
    (6, 4, 4, 2),
    dict(a_shape=(2, 2, 2, 2), b_shape=(2, 2, 3, 2), padding="VALID"),
    (9, 10),
  ),
  _conv_case(
    "conv-terms-dilated",
    (4, 8, (3, 3)),
    dict(terms=[((3, 1, 2, 2), (1, 3, 2, 4), 2), ((3, 3, 4, 2), None)], kernel_dilation=2),
    (7, 8),
  ),
  _conv_case(
    "conv-default-split-no-bias-explicit-pad",
    (8, 8, (2, 3), 2),
    dict(use_bias=False, padding=((1, 0), (2, 1))),
    (7, 8),
  ),
]

CASE_IDS = [c.id for c in CASES]


def nnx_params(layer) -> dict[str, np.ndarray]:
  """A layer's params by name, as NumPy arrays (the names Linen uses too)."""
  state = nnx.to_pure_dict(nnx.state(layer, nnx.Param))
  return {k: np.asarray(v) for k, v in state.items()}


def randomize(layer, rng) -> None:
  """Gives every param (biases too) fresh O(1) random values, never zeros."""
  for name, value in nnx_params(layer).items():
    scale = math.sqrt(value.shape[-2]) if value.ndim >= 2 else 1.0
    getattr(layer, name).set_value(
      jnp.asarray(rng.standard_normal(value.shape) / scale, value.dtype)
    )
