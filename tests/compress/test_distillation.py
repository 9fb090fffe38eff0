"""kfc_jax.distillation_loss against a float64 NumPy reference (values and gradients)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import kfc_jax


def _np_log_softmax(z):
  z = z - z.max(axis=-1, keepdims=True)
  return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def _np_loss(s, t, temp):
  """``T^2 * mean KL(softmax(t / T) || softmax(s / T))`` in float64."""
  log_p, log_q = _np_log_softmax(t / temp), _np_log_softmax(s / temp)
  return temp**2 * np.mean(np.sum(np.exp(log_p) * (log_p - log_q), axis=-1))


@pytest.mark.parametrize("batch_shape", [(5,), (2, 3), ()], ids=str)
@pytest.mark.parametrize("temp", [0.5, 1.0, 4.0])
def test_matches_float64_reference(x64, rng, batch_shape, temp):
  s = rng.standard_normal((*batch_shape, 7)) * 3
  t = rng.standard_normal((*batch_shape, 7)) * 3
  np.testing.assert_allclose(
    kfc_jax.distillation_loss(s, t, temp), _np_loss(s, t, temp), rtol=1e-12
  )


def test_gradient_is_the_tempered_probability_gap(x64, rng):
  # d/ds [T^2 * mean KL] = T * (softmax(s / T) - softmax(t / T)) / N.
  s, t, temp = rng.standard_normal((4, 6)), rng.standard_normal((4, 6)), 2.5
  grad = jax.grad(kfc_jax.distillation_loss)(jnp.asarray(s), jnp.asarray(t), temp)
  p, q = np.exp(_np_log_softmax(t / temp)), np.exp(_np_log_softmax(s / temp))
  np.testing.assert_allclose(grad, temp * (q - p) / 4, rtol=1e-10, atol=1e-14)
  teacher_grad = jax.grad(kfc_jax.distillation_loss, argnums=1)(
    jnp.asarray(s), jnp.asarray(t), temp
  )
  assert not np.any(np.asarray(teacher_grad))  # the teacher is a constant


def test_float32_within_float32_tolerance(rng):
  s = rng.standard_normal((16, 10)).astype(np.float32) * 4
  t = rng.standard_normal((16, 10)).astype(np.float32) * 4
  loss = kfc_jax.distillation_loss(s, t, 2.0)
  assert loss.dtype == jnp.float32
  np.testing.assert_allclose(
    loss, _np_loss(s.astype(np.float64), t.astype(np.float64), 2.0), rtol=1e-5
  )


def test_errors():
  s = jnp.ones((2, 3))
  with pytest.raises(ValueError, match=r"temperature must be > 0, got 0.0"):
    kfc_jax.distillation_loss(s, s, 0.0)
  with pytest.raises(
    ValueError,
    match=r"same shape \[\*batch, num_classes\], got"
    r" \(2, 3\) and \(1, 3\)",
  ):
    kfc_jax.distillation_loss(s, s[:1], 1.0)
