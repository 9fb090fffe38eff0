"""Linen twins: from_dense_params, errors at first call, sharding metadata."""

from __future__ import annotations

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import np_kron, random_factors
from flax import nnx
from layer_cases import FAST_INIT

import kfc_jax


def _dense_params(rng, kernel, bias=True):
  params = {"kernel": jnp.asarray(kernel)}
  if bias:
    params["bias"] = jnp.asarray(rng.standard_normal(kernel.shape[1]))
  return {"params": params}


def _dense_apply(variables, x):
  return nn.Dense(
    variables["params"]["kernel"].shape[1], use_bias="bias" in variables["params"]
  ).apply(variables, x)


def test_kronecker_linear_from_exact_dense_params(x64, rng):
  w = np_kron(random_factors(rng, (3, 4), (5, 2), 2))
  dense = _dense_params(rng, w)
  conv = kfc_jax.linen.KroneckerLinear.from_dense_params(
    dense, in_factors=(3, 4), out_factors=(5, 2), rank=2
  )
  assert conv.relative_error < 1e-12
  assert set(conv.params) == {"bias", "factor_0_0", "factor_0_1"}
  x = jnp.asarray(rng.standard_normal((4, 12)))
  np.testing.assert_allclose(
    conv.module.apply({"params": conv.params}, x), _dense_apply(dense, x), rtol=1e-11, atol=1e-11
  )


def test_linen_and_nnx_conversions_agree(x64, rng):
  """The functional Linen conversion and NNX ``from_linear`` give the same layer."""
  w = rng.standard_normal((3 * 4 * 5, 6))
  dense = _dense_params(rng, w)
  terms = [("II", (3, 2)), ("IV", (2, 3))]
  conv = kfc_jax.linen.KFC.from_dense_params(dense, (3, 4, 5), terms, sweeps=5)
  linear = nnx.Linear(60, 6, param_dtype=jnp.float64, rngs=nnx.Rngs(0))
  linear.kernel.set_value(dense["params"]["kernel"])
  linear.bias.set_value(dense["params"]["bias"])
  layer = kfc_jax.nnx.KFC.from_linear(linear, (3, 4, 5), terms, sweeps=5)
  assert conv.relative_error == pytest.approx(layer.relative_error, rel=1e-12)
  x = jnp.asarray(rng.standard_normal((2, 3, 4, 5)))
  np.testing.assert_allclose(
    conv.module.apply({"params": conv.params}, x), layer(x), rtol=1e-12, atol=1e-12
  )


def test_low_rank_from_dense_params_without_bias(x64, rng):
  w = rng.standard_normal((12, 10))
  conv = kfc_jax.linen.LowRankLinear.from_dense_params(_dense_params(rng, w, bias=False), rank=3)
  s = np.linalg.svd(w, compute_uv=False)
  np.testing.assert_allclose(
    conv.relative_error, np.sqrt(np.sum(s[3:] ** 2)) / np.linalg.norm(w), rtol=1e-9
  )
  assert not conv.module.use_bias and set(conv.params) == {"u", "v"}


def test_from_dense_params_accepts_bare_param_dict(rng):
  dense = nn.Dense(8).init(jax.random.key(0), jnp.ones((1, 16)))["params"]
  conv = kfc_jax.linen.KroneckerLinear.from_dense_params(dense, rank=2)
  assert conv.params["factor_0_0"].dtype == jnp.float32


@pytest.mark.parametrize(
  "build,error,fragments",
  [
    (
      lambda: kfc_jax.linen.KroneckerLinear.from_dense_params({"w": 1}),
      TypeError,
      ["Linen Dense param dict", r"\['w'\]"],
    ),
    (
      lambda: kfc_jax.linen.KroneckerLinear.from_dense_params({"kernel": jnp.ones((3,))}),
      ValueError,
      [r"params\['kernel'\] must be 2-D"],
    ),
    (
      lambda: kfc_jax.linen.KFC.from_dense_params(
        {"kernel": jnp.ones((100, 4))}, (3, 3, 32), ["II"]
      ),
      ValueError,
      [r"H\*W\*C = 288", "in_features=100"],
    ),
  ],
  ids=["not-dense", "kernel-rank", "in-shape"],
)
def test_conversion_errors(build, error, fragments):
  with pytest.raises(error) as info:
    build()
  for fragment in fragments:
    assert re.search(fragment, str(info.value)), (fragment, str(info.value))


def test_bad_arguments_raise_at_first_call_naming_the_argument():
  layer = kfc_jax.linen.KFC((3, 3, 32), 256, terms=[("II", (64, 8))])  # no error yet
  with pytest.raises(ValueError, match=r"terms\[0\] .*out_features=256.*\(64, 8\)"):
    layer.init(jax.random.key(0), jnp.ones((1, 288)))
  wrong_x = kfc_jax.linen.KroneckerLinear(12, 10, **FAST_INIT)
  with pytest.raises(ValueError, match=r"\[\*batch, 12\].*got shape \(1, 13\)"):
    wrong_x.init(jax.random.key(0), jnp.ones((1, 13)))


def test_sharding_metadata_boxes_every_factor():
  names = (None, None, "model")
  layer = kfc_jax.linen.KroneckerLinear(
    12,
    10,
    terms=[((3, 4), (5, 2)), ((2, 2, 3), (1, 2, 5))],
    factor_metadata={"out_sharding": names},
    bias_metadata={"out_sharding": ("model",)},
    **FAST_INIT,
  )
  params = layer.init(jax.random.key(0), jnp.ones((1, 12)))["params"]
  for name, value in params.items():
    assert isinstance(value, nn.Partitioned), name
    assert value.names == (("model",) if name == "bias" else names), name
  # Unboxed, they are the plain arrays apply() needs.
  y = layer.apply({"params": params}, jnp.ones((2, 12)))
  assert y.shape == (2, 10)
  with pytest.raises(ValueError, match=r"accept only a sharding.*'tag'"):
    kfc_jax.linen.KroneckerLinear(12, 10, factor_metadata={"tag": 1}).init(
      jax.random.key(0), jnp.ones((1, 12))
    )
