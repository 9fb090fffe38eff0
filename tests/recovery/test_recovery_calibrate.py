"""Calibration statistics: layer input covariances and BatchNorm recalibration.

References are float64 NumPy: each layer's inputs recomputed by hand (im2col
patches built with explicit loops), and BatchNorm statistics as the plain mean
and variance of every value the layer received.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from kfc_jax import recovery


def _np_patches(x, kh, kw, stride, pad):
  """im2col with explicit loops: rows (n, i, j), columns (h, w, c)."""
  x = np.pad(x, ((0, 0), pad[0], pad[1], (0, 0)))
  n, hp, wp, _ = x.shape
  oh, ow = (hp - kh) // stride + 1, (wp - kw) // stride + 1
  rows = []
  for b in range(n):
    for i in range(oh):
      for j in range(ow):
        rows.append(x[b, i * stride : i * stride + kh, j * stride : j * stride + kw, :].ravel())
  return np.asarray(rows, np.float64)


def _np_conv(x, kernel, stride, pad):
  p = _np_patches(x, *kernel.shape[:2], stride, pad)
  n = x.shape[0]
  oh = (x.shape[1] + sum(pad[0]) - kernel.shape[0]) // stride + 1
  ow = (x.shape[2] + sum(pad[1]) - kernel.shape[1]) // stride + 1
  return (p @ kernel.reshape(-1, kernel.shape[-1])).reshape(n, oh, ow, -1)


class ConvNet(nnx.Module):
  def __init__(self, rngs):
    self.conv = nnx.Conv(3, 6, (3, 3), strides=2, padding=((1, 1), (1, 1)), rngs=rngs)
    self.bn = nnx.BatchNorm(6, use_running_average=True, rngs=rngs)
    self.fc = nnx.Linear(6, 4, rngs=rngs)

  def __call__(self, x):
    h = nnx.relu(self.bn(self.conv(x)))
    return self.fc(h.mean((1, 2)))


def _batches(rng, n=3, shape=(5, 9, 9, 3), shift=1.0):
  return [jnp.asarray(rng.normal(size=shape) * [0.5, 1, 2] + shift, jnp.float32) for _ in range(n)]


def test_nnx_input_covariances_match_numpy(rng):
  model = ConvNet(nnx.Rngs(0))
  batches = _batches(rng)
  covs = recovery.collect_input_covariances(model, batches)
  assert sorted(covs) == ["conv", "fc"]
  x = np.concatenate([np.asarray(b, np.float64) for b in batches])
  patches = _np_patches(x, 3, 3, 2, ((1, 1), (1, 1)))
  np.testing.assert_allclose(covs["conv"], patches.T @ patches / len(patches), rtol=1e-5, atol=1e-5)
  # The FC layer's input, recomputed from the model's own layers.
  kernel = np.asarray(model.conv.kernel[...], np.float64)
  h = _np_conv(x, kernel, 2, ((1, 1), (1, 1))) + np.asarray(model.conv.bias[...])
  bn = model.bn
  h = (h - np.asarray(bn.mean[...])) / np.sqrt(np.asarray(bn.var[...]) + bn.epsilon)
  h = np.maximum(h * np.asarray(bn.scale[...]) + np.asarray(bn.bias[...]), 0).mean((1, 2))
  np.testing.assert_allclose(covs["fc"], h.T @ h / len(h), rtol=1e-4, atol=1e-5)


def test_nnx_patch_order_is_the_kernels(rng):
  # patches @ kernel.reshape(-1, out) is the convolution itself.
  from kfc_jax.recovery._taps import conv_patches

  x = rng.normal(size=(2, 7, 8, 4)).astype(np.float32)
  k = rng.normal(size=(3, 2, 4, 5)).astype(np.float32)
  for strides, padding in [(1, "SAME"), (2, "VALID"), ((2, 1), ((1, 2), (0, 1)))]:
    ref = jax.lax.conv_general_dilated(
      x,
      k,
      strides if isinstance(strides, tuple) else (strides,) * 2,
      padding,
      dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )
    p = conv_patches(jnp.asarray(x), (3, 2), strides=strides, padding=padding)
    np.testing.assert_allclose(
      np.asarray(p @ k.reshape(-1, 5)), np.asarray(ref).reshape(-1, 5), rtol=1e-5, atol=1e-5
    )


def test_linen_input_covariances_match_numpy(rng):
  class Net(nn.Module):
    @nn.compact
    def __call__(self, x):
      h = nn.Conv(4, (3, 3), strides=2, padding="VALID", name="conv")(x)
      return nn.Dense(3, name="head")(nn.relu(h).reshape(h.shape[0], -1))

  batches = _batches(rng)
  variables = Net().init(jax.random.key(0), batches[0])
  covs = recovery.collect_linen_input_covariances(Net(), variables, batches)
  x = np.concatenate([np.asarray(b, np.float64) for b in batches])
  patches = _np_patches(x, 3, 3, 2, ((0, 0), (0, 0)))
  np.testing.assert_allclose(covs["conv"], patches.T @ patches / len(patches), rtol=1e-5, atol=1e-5)
  params = variables["params"]
  h = _np_conv(x, np.asarray(params["conv"]["kernel"], np.float64), 2, ((0, 0), (0, 0)))
  h = np.maximum(h + np.asarray(params["conv"]["bias"]), 0).reshape(len(x), -1)
  np.testing.assert_allclose(covs["head"], h.T @ h / len(h), rtol=1e-4, atol=1e-5)
  only = recovery.collect_linen_input_covariances(Net(), variables, batches, "head")
  assert list(only) == ["head"]


def test_recalibration_restores_batch_statistics_after_conv_weights_change(rng):
  model = ConvNet(nnx.Rngs(1))
  batches = _batches(rng, n=4)
  # The surgery: the conv's weights change (scaled, and a shifted bias), so the
  # stored statistics no longer describe what the BatchNorm sees.
  changed = nnx.clone(model)
  changed.conv.kernel[...] = changed.conv.kernel[...] * 3.0 + 0.05
  changed.conv.bias[...] = changed.conv.bias[...] + 2.0
  before = jax.tree.map(np.asarray, nnx.state(changed))
  new = recovery.recalibrate_batchnorm(changed, batches)
  x = np.concatenate([np.asarray(b, np.float64) for b in batches])
  h = _np_conv(x, np.asarray(changed.conv.kernel[...], np.float64), 2, ((1, 1), (1, 1)))
  h = (h + np.asarray(changed.conv.bias[...], np.float64)).reshape(-1, 6)
  np.testing.assert_allclose(np.asarray(new.bn.mean[...]), h.mean(0), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(new.bn.var[...]), h.var(0), rtol=1e-4, atol=1e-5)
  assert np.abs(np.asarray(changed.bn.mean[...]) - h.mean(0)).max() > 1.0
  # Nothing else moved, and the input model is as it was.
  jax.tree.map(np.testing.assert_array_equal, before, jax.tree.map(np.asarray, nnx.state(changed)))
  for name in ("conv", "fc"):
    jax.tree.map(
      np.testing.assert_array_equal,
      jax.tree.map(np.asarray, nnx.state(getattr(changed, name))),
      jax.tree.map(np.asarray, nnx.state(getattr(new, name))),
    )
  np.testing.assert_array_equal(np.asarray(new.bn.scale[...]), np.asarray(changed.bn.scale[...]))
  assert new.bn.use_running_average is True


def test_recalibration_is_an_exact_pooled_average_not_an_ema(rng):
  model = nnx.Sequential(
    nnx.Linear(3, 2, rngs=nnx.Rngs(0)), nnx.BatchNorm(2, momentum=0.9, rngs=nnx.Rngs(0))
  )
  sizes = [4, 16, 7]
  batches = [jnp.asarray(rng.normal(size=(s, 3)) + i, jnp.float32) for i, s in enumerate(sizes)]
  new = recovery.recalibrate_batchnorm(model, batches)
  x = np.concatenate([np.asarray(b, np.float64) for b in batches])
  h = x @ np.asarray(model.layers[0].kernel[...], np.float64) + np.asarray(
    model.layers[0].bias[...]
  )
  np.testing.assert_allclose(np.asarray(new.layers[1].mean[...]), h.mean(0), rtol=1e-5)
  np.testing.assert_allclose(np.asarray(new.layers[1].var[...]), h.var(0), rtol=1e-4)


def test_linen_recalibration_restores_batch_statistics(rng):
  class Net(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
      h = nn.Conv(5, (3, 3), name="conv")(x)
      h = nn.BatchNorm(use_running_average=not train, name="bn")(h)
      return nn.Dense(2)(h.mean((1, 2)))

  batches = _batches(rng)
  variables = Net().init(jax.random.key(0), batches[0])
  params = jax.tree.map(lambda p: p, variables["params"])
  params = {**params, "conv": {**params["conv"], "kernel": params["conv"]["kernel"] * 2 - 0.1}}
  changed = {**variables, "params": params}
  new = recovery.recalibrate_linen_batchnorm(Net(), changed, batches)
  x = np.concatenate([np.asarray(b, np.float64) for b in batches])
  h = _np_conv(x, np.asarray(params["conv"]["kernel"], np.float64), 1, ((1, 1), (1, 1)))
  h = (h + np.asarray(params["conv"]["bias"])).reshape(-1, 5)
  np.testing.assert_allclose(
    np.asarray(new["batch_stats"]["bn"]["mean"]), h.mean(0), rtol=1e-5, atol=1e-5
  )
  np.testing.assert_allclose(
    np.asarray(new["batch_stats"]["bn"]["var"]), h.var(0), rtol=1e-4, atol=1e-5
  )
  assert new["params"] is changed["params"]
  np.testing.assert_array_equal(np.asarray(changed["batch_stats"]["bn"]["mean"]), 0.0)


def test_bad_batches_name_the_layer(rng):
  model = ConvNet(nnx.Rngs(0))
  with pytest.raises(ValueError, match=r"batch 0: layer 'conv' rejected .* \(2, 9, 9, 5\)"):
    recovery.collect_input_covariances(model, [jnp.ones((2, 9, 9, 5))])
  with pytest.raises(ValueError, match="layer 'conv'"):
    recovery.recalibrate_batchnorm(model, [jnp.ones((2, 9, 9, 5))])

  class Net(nn.Module):
    @nn.compact
    def __call__(self, x):
      return nn.Dense(2, name="head")(nn.Dense(4, name="body")(x))

  variables = Net().init(jax.random.key(0), jnp.ones((1, 3)))
  with pytest.raises(ValueError, match="layer 'body'"):
    recovery.collect_linen_input_covariances(Net(), variables, [jnp.ones((2, 7))])


def test_bad_arguments():
  model = ConvNet(nnx.Rngs(0))
  with pytest.raises(ValueError, match="empty"):
    recovery.collect_input_covariances(model, [])
  with pytest.raises(TypeError, match="iterable of batches"):
    recovery.collect_input_covariances(model, jnp.ones((2, 9, 9, 3)))
  with pytest.raises(ValueError, match=r"paths \['nope'\]"):
    recovery.collect_input_covariances(model, [jnp.ones((2, 9, 9, 3))], ["nope"])
  with pytest.raises(ValueError, match=r"no nnx\.BatchNorm"):
    recovery.recalibrate_batchnorm(nnx.Linear(2, 2, rngs=nnx.Rngs(0)), [jnp.ones((1, 2))])
  with pytest.raises(TypeError, match=r"nnx\.Module"):
    recovery.recalibrate_batchnorm(object(), [jnp.ones((1, 2))])
