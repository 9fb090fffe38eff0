"""``distillation_loss``: Hinton et al.'s soft-target loss, on optax's KL divergence."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax


def distillation_loss(
  student_logits: Any, teacher_logits: Any, temperature: float = 1.0
) -> jax.Array:
  """``T^2 * KL(softmax(teacher / T) || softmax(student / T))``, batch mean.

  Hinton et al.'s soft-target loss: the ``T^2`` keeps its gradients on the
  scale of the hard-label loss as ``T`` changes. The teacher is not
  differentiated (``stop_gradient``). The divergence is
  :func:`optax.losses.kl_divergence_with_log_targets` of the tempered
  log-softmaxes.

  Args:
    student_logits: ``[*batch, num_classes]``.
    teacher_logits: same shape.
    temperature: softening ``T > 0``.

  Returns:
    The scalar loss.

  Example usage::

    >>> import jax.numpy as jnp, kfc_jax
    >>> logits = jnp.array([[2.0, 0.5, -1.0]])
    >>> float(kfc_jax.distillation_loss(logits, logits, temperature=4.0))
    0.0
    >>> bool(kfc_jax.distillation_loss(-logits, logits, 2.0) > 0)
    True
  """
  if not temperature > 0:
    raise ValueError(f"temperature must be > 0, got {temperature!r}.")
  s, t = jnp.asarray(student_logits), jnp.asarray(teacher_logits)
  if s.shape != t.shape or s.ndim < 1:
    raise ValueError(
      "student_logits and teacher_logits must have the same shape [*batch,"
      f" num_classes], got {tuple(s.shape)} and {tuple(t.shape)}."
    )
  t = jax.lax.stop_gradient(t)
  kl = optax.losses.kl_divergence_with_log_targets(
    jax.nn.log_softmax(s / temperature, axis=-1), jax.nn.log_softmax(t / temperature, axis=-1)
  )
  return temperature**2 * jnp.mean(kl)
