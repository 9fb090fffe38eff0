"""KroneckerConv: a 2-D convolution whose kernel is a sum of Kronecker products."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from kfc_jax import layers
from kfc_jax.nnx import _common

Array = jax.Array


def conv_kernel(conv: Any) -> tuple[np.ndarray, Any, Any]:
  """The HWIO kernel (float64), bias (or None) and dtype of an ``nnx.Conv``."""
  kernel = getattr(conv, "kernel", None)
  if kernel is None or getattr(kernel[...], "ndim", 0) != 4:
    raise TypeError(
      "conv must be a 2-D nnx.Conv (a 4-D HWIO kernel [kh, kw, in_features,"
      f" out_features]), got {type(conv).__name__}"
      f"{'' if kernel is None else f' with kernel shape {tuple(kernel[...].shape)}'}."
    )
  for name in ("input_dilation", "feature_group_count"):
    value = getattr(conv, name, 1)
    if value not in (None, 1, (1, 1)):
      raise ValueError(f"conv.{name} must be 1 (KroneckerConv has no {name}), got {value!r}.")
  if getattr(conv, "mask", None) is not None:
    raise ValueError(
      "conv.mask must be None (a masked kernel has no Kronecker structure to keep), got a mask."
    )
  bias = getattr(conv, "bias", None)
  bias = None if bias is None else np.asarray(bias[...])
  kernel = kernel[...]
  return np.asarray(kernel, np.float64), bias, kernel.dtype


class KroneckerConv(_common.KroneckerModule):
  """2-D conv with kernel ``K = sum_r A[r] ⊗ B[r]`` (KConv; GKPD's layer).

  ``A: [rank, ah, aw, ai, ao]`` and ``B: [rank, bh, bw, bi, bo]`` (HWIO) make
  ``K: [kh, kw, in_features, out_features]`` with ``kh = ah*bh``, ...,
  ``out_features = ao*bo`` (:func:`kfc_jax.kron_kernel`); the layer runs
  :func:`kfc_jax.kron_conv_sum`, which never forms ``K`` when that is faster.
  Any split works, including ones where neither factor is 1 spatially.
  ``terms`` sums several splits in one layer (KConv's combinations of shapes).
  Built from a trained ``nnx.Conv`` by :meth:`from_conv` (GKPD).

  The arguments are ``nnx.Conv``'s (``in_features``, ``out_features``,
  ``kernel_size``, ``strides``, ``padding``, ``kernel_dilation``,
  ``use_bias``, ``dtype``, ``param_dtype``, ``precision``,
  ``preferred_element_type``, ``bias_init``, ``bias_metadata``) and the
  Kronecker layers' (``rank``, ``terms``, ``factor_init``,
  ``factor_metadata``, ``strategy``). Inputs are NHWC ``[*batch, H, W,
  in_features]`` (no batch axes works too).

  Parameters: ``factor_{t}_0`` (A) and ``factor_{t}_1`` (B) of term ``t``
  (:class:`KroneckerFactor`), and ``bias`` (``[out_features]``).

  Example usage::

    >>> import jax, jax.numpy as jnp, kfc_jax
    >>> from flax import nnx
    >>> layer = kfc_jax.nnx.KroneckerConv(
    ...     64, 64, (3, 3), a_shape=(3, 3, 16, 16), b_shape=(1, 1, 4, 4), rank=3,
    ...     rngs=nnx.Rngs(0))
    >>> jax.tree.map(jnp.shape, nnx.state(layer, kfc_jax.nnx.KroneckerFactor))
    State({
      'factor_0_0': KroneckerFactor(
        value=(3, 3, 3, 16, 16)
      ),
      'factor_0_1': KroneckerFactor(
        value=(3, 1, 1, 4, 4)
      )
    })
    >>> layer(jnp.ones((2, 8, 8, 64))).shape, layer.materialize().shape
    ((2, 8, 8, 64), (3, 3, 64, 64))
    >>> mixed = kfc_jax.nnx.KroneckerConv(      # 3x1 (x) 1x3 plus 3x3 (x) 1x1
    ...     16, 32, 3, strides=2, terms=[((3, 1, 4, 4), (1, 3, 4, 8), 2),
    ...                                  ((3, 3, 2, 8), None)], rngs=nnx.Rngs(0))
    >>> mixed(jnp.ones((9, 9, 16))).shape
    (5, 5, 32)

  Args:
    in_features: input channels ``C_in``.
    out_features: output channels ``C_out``.
    kernel_size: ``kh`` or ``(kh, kw)``.
    strides: int or ``(sh, sw)``.
    padding: ``"SAME"``, ``"VALID"``, ``"SAME_LOWER"``, ``"CIRCULAR"``, an
      int, a pair, or ``((top, bottom), (left, right))``.
    kernel_dilation: int or ``(dh, dw)``.
    a_shape: ``(ah, aw, ai, ao)``; ``None`` with ``b_shape`` given takes the
      rest of the kernel; both ``None``: the whole window in A and the
      channels split evenly (``(kh, kw, ai, ao) ⊗ (1, 1, bi, bo)``).
    b_shape: ``(bh, bw, bi, bo)``, as ``a_shape``.
    rank: number of Kronecker products summed.
    terms: instead of the three above, a list of ``(a_shape, b_shape)``,
      ``(a_shape, b_shape, rank)`` or :class:`kfc_jax.KronConvShape`, summed.
    use_bias: whether to add a bias.
    dtype: computation dtype (default: inferred from inputs and params).
    param_dtype: parameter dtype.
    precision: ``jax.lax.Precision`` of both convolutions.
    preferred_element_type: accumulation dtype of both convolutions.
    factor_init: initialiser ``init(key, (rank, h, w, i, o), dtype)`` of every
      factor; by default normal, scaled so ``K``'s entries have variance
      ``1 / (kh*kw*in_features)`` like Flax's default ``lecun_normal`` conv.
    bias_init: initialiser of the bias.
    factor_metadata: metadata (e.g. ``out_sharding``) for both factors, or a
      pair of mappings (A, B), as ``nnx.Conv``'s ``kernel_metadata``.
    bias_metadata: metadata of the bias.
    strategy: ``"auto"``, ``"factored"``, ``"materialize"`` or
      ``"autotune"`` (see :func:`kfc_jax.kron_conv_plan` and
      :func:`kfc_jax.kron_conv`).
    rngs: random number generators.
  """

  replaces = "conv"

  def __init__(
    self,
    in_features: int,
    out_features: int,
    kernel_size: int | Sequence[int],
    strides: int | Sequence[int] = 1,
    *,
    padding: Any = "SAME",
    kernel_dilation: int | Sequence[int] = 1,
    a_shape: Sequence[int] | None = None,
    b_shape: Sequence[int] | None = None,
    rank: int = 1,
    terms: Sequence[Any] | None = None,
    use_bias: bool = True,
    dtype: Any = None,
    param_dtype: Any = jnp.float32,
    precision: Any = None,
    preferred_element_type: Any = None,
    factor_init: Any = None,
    bias_init: Any = _common.default_bias_init,
    factor_metadata: Any = layers.EMPTY_METADATA,
    bias_metadata: Mapping[str, Any] = layers.EMPTY_METADATA,
    strategy: Any = "auto",
    rngs: nnx.Rngs,
  ):
    layout = layers.conv_layout(
      in_features,
      out_features,
      kernel_size,
      strides,
      padding=padding,
      kernel_dilation=kernel_dilation,
      a_shape=a_shape,
      b_shape=b_shape,
      rank=rank,
      terms=terms,
    )
    self.kernel_size = layout.kernel_size
    self.strides = layout.strides
    self.padding = padding
    self.kernel_dilation = layout.kernel_dilation
    self.strategy = layout.check_strategy(strategy)
    self._init_layer(
      layout,
      use_bias=use_bias,
      dtype=dtype,
      param_dtype=param_dtype,
      precision=precision,
      preferred_element_type=preferred_element_type,
      factor_init=factor_init,
      bias_init=bias_init,
      factor_metadata=factor_metadata,
      bias_metadata=bias_metadata,
      rngs=rngs,
    )

  @property
  def factors(self) -> list[tuple[Array, Array]]:
    """``[(A, B), ...]``, one pair per term."""
    return self.layout.factors(self.param_values)

  def __call__(self, x: Array) -> Array:
    """Applies the conv to ``x: [*batch, H, W, in_features]``."""
    return self.layout.apply(self.param_values, x, strategy=self.strategy, **self.compute_options)

  def cost(self, batch: int = 1, input_size: Sequence[int] | None = None) -> layers.LayerCost:
    """Parameters and FLOPs against the dense conv this one replaces.

    FLOPs of ``batch`` images of ``input_size = (H, W)``, or without it of
    ``batch`` output pixels at stride 1.
    """
    return self.layout.cost(
      type(self).__name__,
      use_bias=self.use_bias,
      batch=batch,
      input_size=input_size,
      strategy=self.strategy,
      dtype=self.param_dtype,
    )

  def cost_for_input(self, batch: int, input_shape: Sequence[int]) -> layers.LayerCost:
    """The cost of ``batch`` images of ``input_shape = [..., H, W, C]``."""
    return self.cost(batch, input_size=tuple(input_shape[-3:-1]))

  @classmethod
  def from_conv(
    cls,
    conv: nnx.Conv,
    *,
    a_shape: Sequence[int] | None = None,
    b_shape: Sequence[int] | None = None,
    rank: int = 1,
    terms: Sequence[Any] | None = None,
    compression: float | None = None,
    sweeps: int = 20,
    input_cov: Any = None,
    **kwargs: Any,
  ) -> KroneckerConv:
    """The layer nearest to a trained ``nnx.Conv`` (GKPD); see ``relative_error``.

    One term is the optimal decomposition (:func:`kfc_jax.gkpd`); several are
    fitted greedily and refined (:func:`kfc_jax.nearest_kronecker_sum`). With
    ``compression`` (and no shapes) the split and rank are the ones
    :func:`kfc_jax.suggest_conv_factors` finds best for this kernel. The conv's
    ``kernel_size``, ``strides``, ``padding``, ``kernel_dilation``, bias,
    ``dtype``, ``param_dtype`` and ``precision`` are kept unless overridden.
    ``relative_error`` holds ``||K - K_hat||_F / ||K||_F``. With ``input_cov``
    (the second moment of the conv's ``kh*kw*C_in`` input patches) the factors
    minimise the output error on that data instead.

    Example usage::

      >>> import jax.numpy as jnp, kfc_jax
      >>> from flax import nnx
      >>> conv = nnx.Conv(32, 32, (3, 3), strides=2, rngs=nnx.Rngs(0))
      >>> layer = kfc_jax.nnx.KroneckerConv.from_conv(conv, compression=5)
      >>> layer.cost().dense_params / layer.cost().params >= 5, layer.strides
      (True, (2, 2))
      >>> x = jnp.ones((1, 8, 8, 32))
      >>> err = jnp.linalg.norm(layer(x) - conv(x)) / jnp.linalg.norm(conv(x))
      >>> bool(err < 1.0), 0 < layer.relative_error < 1
      (True, True)
    """
    kernel, bias, dtype = conv_kernel(conv)
    kwargs = _common.from_dense_kwargs(
      conv, bias, dtype, kwargs, ("strides", "padding", "kernel_dilation", "dtype", "precision")
    )
    terms = layers.compression_terms(kernel, compression, a_shape, b_shape, rank, terms)
    kh, kw, c, o = kernel.shape
    layer = cls(c, o, (kh, kw), a_shape=a_shape, b_shape=b_shape, rank=rank, terms=terms, **kwargs)
    layer._fit(kernel, bias, sweeps=sweeps, input_cov=input_cov)
    return layer
