"""KroneckerConv (NNX and Linen): what only convolutions have.

Costs at an input size, the default split and init, ``from_conv`` (GKPD),
summaries and argument errors. The cross-cutting checks (float64 reference,
dtypes, gradients, jit, Linen twin, metadata, counts) run over the conv cases
of the shared table (``layer_cases.CASES``, ``test_layer_table.py``).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from references import np_conv_kernel

import kfc_jax


def test_cost_at_an_input_size_is_the_plan():
  layer = kfc_jax.nnx.KroneckerConv(
    64,
    64,
    3,
    a_shape=(3, 3, 16, 16),
    b_shape=(1, 1, 4, 4),
    rank=3,
    strategy="factored",
    rngs=nnx.Rngs(0),
  )
  plan = kfc_jax.kron_conv_plan(
    (8, 32, 32, 64), [(3, 3, 3, 16, 16), (3, 1, 1, 4, 4)], strategy="factored"
  )
  cost = layer.cost(8, input_size=(32, 32))
  assert (cost.flops, cost.dense_flops) == (plan.chosen.flops, plan.dense_flops)
  assert cost.params == 3 * (9 * 256 + 16) + 64


def test_cost_of_several_terms_is_what_kron_conv_sum_runs():
  def layer(terms):
    return kfc_jax.nnx.KroneckerConv(64, 64, 3, terms=terms, rngs=nnx.Rngs(0))

  # 60x fewer parameters: every term runs factored, at the factored count
  # (SAME, stride 1: per output pixel times the pixels).
  cheap = layer([((3, 3, 8, 8), (1, 1, 8, 8), 1), ((1, 1, 8, 8), (3, 3, 8, 8), 1)])
  assert cheap.cost(8, input_size=(32, 32)).flops == cheap.cost(8 * 32 * 32).flops
  # 5x: one dense conv by the summed kernel (plus forming it), not one per term.
  dear = layer([((3, 3, 16, 16), (1, 1, 4, 4), 3), ((1, 1, 4, 4), (3, 3, 16, 16), 3)])
  cost = dear.cost(8, input_size=(32, 32))
  assert cost.dense_flops == 2 * 8 * 32 * 32 * 9 * 64 * 64
  assert cost.dense_flops <= cost.flops < 1.01 * cost.dense_flops


def test_default_init_scale_is_lecun():
  layer = kfc_jax.nnx.KroneckerConv(64, 64, 3, rank=4, rngs=nnx.Rngs(0))
  k = np.asarray(layer.materialize())
  np.testing.assert_allclose(k.var(), 1 / (9 * 64), rtol=0.3)


def test_default_split():
  layer = kfc_jax.nnx.KroneckerConv(32, 16, (3, 5), rngs=nnx.Rngs(0))
  (term,) = layer.layout.terms
  assert (term.a_shape, term.b_shape, term.rank) == ((3, 5, 8, 4), (1, 1, 4, 4), 1)
  layer = kfc_jax.nnx.KroneckerConv(32, 16, 3, b_shape=(3, 1, 2, 4), rngs=nnx.Rngs(0))
  assert layer.layout.terms[0].a_shape == (1, 3, 16, 4)
  shape = kfc_jax.suggest_conv_factors((3, 3, 32, 16), compression=4)
  layer = kfc_jax.nnx.KroneckerConv(32, 16, 3, terms=[shape], rngs=nnx.Rngs(0))
  assert layer.layout.terms == (shape,)


class TestFromConv:
  def _conv_with_kernel(self, kernel, **kwargs):
    conv = nnx.Conv(
      kernel.shape[2],
      kernel.shape[3],
      kernel.shape[:2],
      param_dtype=jnp.float64,
      rngs=nnx.Rngs(0),
      **kwargs,
    )
    conv.kernel.set_value(jnp.asarray(kernel))
    conv.bias.set_value(jnp.arange(kernel.shape[3], dtype=jnp.float64))
    return conv

  def test_recovers_a_kronecker_kernel(self, x64, rng):
    a, b = rng.standard_normal((2, 2, 3, 2, 4)), rng.standard_normal((2, 2, 1, 3, 2))
    conv = self._conv_with_kernel(np_conv_kernel(a, b), strides=2, padding="VALID")
    layer = kfc_jax.nnx.KroneckerConv.from_conv(conv, a_shape=(2, 3, 2, 4), rank=2)
    assert layer.relative_error < 1e-12
    assert layer.strides == (2, 2) and layer.padding == "VALID"
    assert layer.param_dtype == jnp.float64 and layer.use_bias
    x = jnp.asarray(rng.standard_normal((2, 9, 10, 6)))
    np.testing.assert_allclose(layer(x), conv(x), rtol=1e-10, atol=1e-10)

  def test_error_is_gkpd_and_more_terms_help(self, x64, rng):
    kernel = rng.standard_normal((3, 3, 8, 8))
    conv = self._conv_with_kernel(kernel)
    one = kfc_jax.nnx.KroneckerConv.from_conv(conv, a_shape=(3, 3, 4, 4), rank=2)
    dec = kfc_jax.gkpd(kernel, (3, 3, 4, 4), (1, 1, 2, 2), 2)
    np.testing.assert_allclose(one.relative_error, dec.relative_error, rtol=1e-10)
    two = kfc_jax.nnx.KroneckerConv.from_conv(
      conv, terms=[((3, 3, 4, 4), None, 2), ((3, 1, 2, 8), None, 2)], sweeps=10
    )
    actual = np.linalg.norm(np.asarray(two.materialize()) - kernel) / np.linalg.norm(kernel)
    np.testing.assert_allclose(two.relative_error, actual, rtol=1e-6)
    assert two.relative_error < one.relative_error

  def test_compression(self, rng):
    conv = nnx.Conv(16, 32, (3, 3), rngs=nnx.Rngs(0))
    layer = kfc_jax.nnx.KroneckerConv.from_conv(conv, compression=4)
    cost = layer.cost()
    assert (cost.dense_params - 32) / (cost.params - 32) >= 4
    assert 0 < layer.relative_error < 1

  def test_linen_from_conv_params_matches_nnx(self, rng):
    kernel = rng.standard_normal((3, 3, 8, 4)).astype(np.float32)
    params = {"params": {"kernel": jnp.asarray(kernel), "bias": jnp.ones(4)}}
    new = kfc_jax.linen.KroneckerConv.from_conv_params(
      params, strides=2, a_shape=(3, 3, 4, 2), rank=2
    )
    conv = nnx.Conv(8, 4, (3, 3), strides=2, rngs=nnx.Rngs(0))
    conv.kernel.set_value(jnp.asarray(kernel))
    conv.bias.set_value(jnp.ones(4))
    layer = kfc_jax.nnx.KroneckerConv.from_conv(conv, a_shape=(3, 3, 4, 2), rank=2)
    assert new.relative_error == pytest.approx(layer.relative_error)
    x = jnp.asarray(rng.standard_normal((2, 8, 8, 8)), jnp.float32)
    np.testing.assert_allclose(
      new.module.apply({"params": new.params}, x), layer(x), rtol=1e-5, atol=1e-5
    )

  def test_errors(self):
    with pytest.raises(
      TypeError,
      match=r"conv must be a 2-D nnx.Conv \(a 4-D HWIO"
      r" kernel.*got Linear with kernel shape \(2, 2\)",
    ):
      kfc_jax.nnx.KroneckerConv.from_conv(nnx.Linear(2, 2, rngs=nnx.Rngs(0)))
    grouped = nnx.Conv(4, 4, (3, 3), feature_group_count=2, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"conv.feature_group_count must be 1.*got 2"):
      kfc_jax.nnx.KroneckerConv.from_conv(grouped)
    conv = nnx.Conv(4, 4, (3, 3), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="pass either compression or a_shape"):
      kfc_jax.nnx.KroneckerConv.from_conv(conv, compression=4, rank=2)
    with pytest.raises(ValueError, match=r"params\['kernel'\] must be 4-D"):
      kfc_jax.linen.KroneckerConv.from_conv_params({"kernel": jnp.ones((3, 3))})
    with pytest.raises(TypeError, match="params must be a Linen Conv param dict"):
      kfc_jax.linen.KroneckerConv.from_conv_params({"w": jnp.ones((3, 3))})


class TestSummary:
  def test_nnx_rows(self):
    class Net(nnx.Module):
      def __init__(self, rngs):
        self.stem = nnx.Conv(3, 16, (3, 3), rngs=rngs)
        self.body = kfc_jax.nnx.KroneckerConv(16, 16, 3, rank=2, rngs=rngs)

    s = kfc_jax.summarize(Net(nnx.Rngs(0)), batch=10)
    rows = {r.path: r.cost for r in s.rows}
    assert rows["stem"].params == 3 * 3 * 3 * 16 + 16
    assert rows["stem"].flops == 10 * 2 * 9 * 3 * 16
    assert rows["body"].kind == "KroneckerConv"
    assert rows["body"].dense_params == 9 * 16 * 16 + 16
    assert rows["body"].dense_flops == 10 * 2 * 9 * 16 * 16
    assert "KroneckerConv" in str(s)

  def test_linen_rows_use_the_traced_input_size(self):
    class Net(nn.Module):
      @nn.compact
      def __call__(self, x):
        x = nn.Conv(16, (3, 3), strides=2)(x)
        return kfc_jax.linen.KroneckerConv(16, 16, 3, rank=2, strategy="factored")(x)

    s = kfc_jax.summarize_linen(Net(), None, jnp.ones((1, 16, 16, 3)), batch=2)
    rows = {r.path: r.cost for r in s.rows}
    assert rows["Conv_0"].flops == 2 * 8 * 8 * 2 * 9 * 3 * 16  # 8x8 outputs
    plan = kfc_jax.kron_conv_plan(
      (2, 8, 8, 16), [(2, 3, 3, 4, 4), (2, 1, 1, 4, 4)], strategy="factored"
    )
    assert rows["KroneckerConv_0"].flops == plan.chosen.flops
    assert rows["KroneckerConv_0"].dense_flops == plan.dense_flops


class TestErrors:
  def test_split_does_not_multiply(self):
    with pytest.raises(
      ValueError,
      match=r"a_shape \(3, 3, 4, 4\) and b_shape \(1, 1, 2, 3\)"
      r" must multiply to the kernel shape \(3, 3, 8, 8\).*on"
      r" out_features 4 \* 3 = 12 != 8",
    ):
      kfc_jax.nnx.KroneckerConv(
        8, 8, 3, a_shape=(3, 3, 4, 4), b_shape=(1, 1, 2, 3), rngs=nnx.Rngs(0)
      )

  def test_half_split_must_divide(self):
    with pytest.raises(
      ValueError,
      match=r"a_shape \(3, 3, 3, 4\) must divide the kernel"
      r" shape \(3, 3, 8, 8\).*in_features 8 is not a multiple of 3;"
      r" choose from \[1, 2, 4, 8\]",
    ):
      kfc_jax.nnx.KroneckerConv(8, 8, 3, a_shape=(3, 3, 3, 4), rngs=nnx.Rngs(0))

  def test_split_length(self):
    with pytest.raises(
      ValueError,
      match=r"b_shape must be \(h, w, in, out\), 4 positive"
      r" ints, got \(1, 2, 2\)",
    ):
      kfc_jax.nnx.KroneckerConv(8, 8, 3, b_shape=(1, 2, 2), rngs=nnx.Rngs(0))

  def test_rank_too_high(self):
    with pytest.raises(
      ValueError,
      match=r"rank must be at most min\(prod\(a_shape\),"
      r" prod\(b_shape\)\) = 4 .* got rank=5",
    ):
      kfc_jax.nnx.KroneckerConv(4, 4, 3, a_shape=(3, 3, 2, 2), rank=5, rngs=nnx.Rngs(0))

  def test_terms_and_shapes(self):
    with pytest.raises(ValueError, match="pass either terms or a_shape/b_shape/rank"):
      kfc_jax.nnx.KroneckerConv(4, 4, 3, terms=[(None, None)], rank=2, rngs=nnx.Rngs(0))
    with pytest.raises(TypeError, match="terms must be a non-empty list"):
      kfc_jax.nnx.KroneckerConv(4, 4, 3, terms=[], rngs=nnx.Rngs(0))
    with pytest.raises(TypeError, match=r"terms\[1\] must be \(a_shape, b_shape\)"):
      kfc_jax.nnx.KroneckerConv(4, 4, 3, terms=[(None, None), (3, 3, 2, 2)], rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"terms\[0\] rank must be a positive integer"):
      kfc_jax.nnx.KroneckerConv(4, 4, 3, terms=[(None, None, 0)], rngs=nnx.Rngs(0))

  @pytest.mark.parametrize(
    "kwargs,match",
    [
      (dict(strides=0), r"strides must be a positive integer \(>= 1\), got 0"),
      (dict(kernel_dilation=(1, 2, 3)), r"kernel_dilation must be a positive int or a pair"),
      (dict(padding="FULL"), r"padding must be one of \('SAME', 'VALID'"),
      (dict(strategy="fast"), r"strategy must be one of \('auto', 'factored'"),
      (dict(factor_metadata=[{}, {}, {}]), r"factor_metadata must be a mapping"),
    ],
    ids=str,
  )
  def test_conv_arguments(self, kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
      kfc_jax.nnx.KroneckerConv(4, 4, 3, rngs=nnx.Rngs(0), **kwargs)

  def test_kernel_size(self):
    with pytest.raises(ValueError, match=r"kernel_size must be a positive int or a pair"):
      kfc_jax.nnx.KroneckerConv(4, 4, (3, 3, 3), rngs=nnx.Rngs(0))

  def test_input_channels(self):
    layer = kfc_jax.nnx.KroneckerConv(4, 4, 3, rngs=nnx.Rngs(0))
    with pytest.raises(
      ValueError,
      match=r"x must have shape \[\*batch, height, width, 4\]"
      r" \(NHWC, in_features channels\), got shape \(1, 5, 5, 3\)",
    ):
      layer(jnp.ones((1, 5, 5, 3)))

  def test_linen_errors_at_first_call_not_construction(self):
    bad = kfc_jax.linen.KroneckerConv(4, 4, 3, rank=0)
    with pytest.raises(ValueError, match="rank must be a positive integer"):
      bad.init(jax.random.key(0), jnp.ones((1, 5, 5, 4)))
