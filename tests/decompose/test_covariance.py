"""input_covariance and patch_covariance: streaming sums and the patch order."""

from __future__ import annotations

import jax
import numpy as np
import pytest

import kfc_jax
from kfc_jax.decompose import input_covariance, patch_covariance


def test_input_covariance_streams(rng):
  x = rng.standard_normal((3, 5, 7))  # leading batch axes are flattened
  stats = None
  for batch in x:
    stats = input_covariance(batch, running=stats)
  flat = x.reshape(-1, 7)
  assert stats.count == 15
  np.testing.assert_allclose(stats.covariance, flat.T @ flat / 15, rtol=1e-12)
  np.testing.assert_allclose(input_covariance(x).sum, stats.sum, rtol=1e-12)


def _conv_patches(x, kernel_size, strides, padding, dilation):
  """Patches by a conv with the identity kernel: HWIO -> one channel per tap."""
  kh, kw = kernel_size
  c = x.shape[-1]
  eye = np.eye(kh * kw * c).reshape(kh, kw, c, kh * kw * c)
  with jax.enable_x64(True):
    out = jax.lax.conv_general_dilated(
      x, eye, strides, padding, rhs_dilation=dilation, dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
  return np.asarray(out).reshape(-1, kh * kw * c)


@pytest.mark.parametrize(
  "kernel_size,strides,padding,dilation",
  [
    ((3, 3), (1, 1), "SAME", (1, 1)),
    ((3, 2), (2, 1), "VALID", (1, 1)),
    ((2, 3), (2, 2), "SAME", (1, 1)),
    ((3, 3), (1, 2), ((2, 0), (1, 3)), (2, 1)),
  ],
  ids=str,
)
def test_patch_covariance_matches_the_conv(rng, kernel_size, strides, padding, dilation):
  x = rng.standard_normal((2, 7, 6, 3))
  stats = patch_covariance(
    x, kernel_size, strides=strides, padding=padding, kernel_dilation=dilation
  )
  ref = _conv_patches(x, kernel_size, strides, padding, dilation)
  assert stats.count == ref.shape[0]
  np.testing.assert_allclose(stats.sum, ref.T @ ref, rtol=1e-12, atol=1e-12)


def test_patch_covariance_gives_the_conv_output_energy(rng):
  # tr(K^T C K) * count = ||conv(x, K)||^2 for the HWIO kernel reshaped.
  x = rng.standard_normal((3, 8, 8, 4))
  kernel = rng.standard_normal((3, 3, 4, 5))
  stats = None
  for image in x:
    stats = patch_covariance(image[None], 3, padding="SAME", running=stats)
  k = kernel.reshape(-1, 5)
  with jax.enable_x64(True):
    y = np.asarray(
      jax.lax.conv_general_dilated(
        x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
      )
    )
  np.testing.assert_allclose(np.trace(k.T @ stats.sum @ k), np.sum(y**2), rtol=1e-10)


class TestErrors:
  def test_running_of_another_size(self, rng):
    stats = input_covariance(rng.standard_normal((4, 3)))
    with pytest.raises(ValueError, match="x has 5 features per row but running"):
      input_covariance(rng.standard_normal((4, 5)), running=stats)
    with pytest.raises(TypeError, match="running must be a RunningCovariance"):
      input_covariance(rng.standard_normal((4, 3)), running=np.eye(3))

  def test_input_must_be_batched(self):
    with pytest.raises(ValueError, match=r"x must have shape \[\*batch, in_features\]"):
      input_covariance(np.ones(3))

  def test_patch_input_must_be_nhwc(self):
    with pytest.raises(ValueError, match="x must be a 4-D array"):
      patch_covariance(np.ones((8, 8, 3)), 3)

  @pytest.mark.parametrize("padding", ["FULL", ((1, 1),), ((1, -1), (0, 0))])
  def test_bad_padding(self, padding):
    with pytest.raises(ValueError, match="padding must be"):
      patch_covariance(np.ones((1, 4, 4, 1)), 3, padding=padding)

  def test_kernel_larger_than_input(self):
    with pytest.raises(ValueError, match="no patch fits"):
      patch_covariance(np.ones((1, 2, 2, 1)), 3, padding="VALID")

  def test_bad_kernel_size(self):
    with pytest.raises(ValueError, match="kernel_size must be a positive int or a pair"):
      patch_covariance(np.ones((1, 4, 4, 1)), (3, 3, 3))

  def test_empty_running_covariance_as_input_cov(self):
    empty = kfc_jax.decompose.RunningCovariance(np.zeros((4, 4)), 0)
    with pytest.raises(ValueError, match="input_cov is a RunningCovariance over 0 rows"):
      kfc_jax.low_rank(np.ones((4, 4)), 1, input_cov=empty)
