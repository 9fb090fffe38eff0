"""Fine-tuning after surgery: distillation and layer-wise output matching."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import kfc_jax
from kfc_jax import recovery


class MLP(nnx.Module):
  def __init__(self, rngs):
    self.fc1 = nnx.Linear(16, 16, rngs=rngs)
    self.fc2 = nnx.Linear(16, 5, rngs=rngs)

  def __call__(self, x):
    return self.fc2(nnx.relu(self.fc1(x)))


def _data(rng, n=4, batch=32):
  scale = np.linspace(0.1, 3.0, 16)  # anisotropic inputs: weight error != output error
  return [jnp.asarray(rng.normal(size=(batch, 16)) * scale, jnp.float32) for _ in range(n)]


def _states(model):
  return jax.tree.map(np.asarray, nnx.state(model))


def _student(teacher, rank=3):
  student, _ = kfc_jax.compress(teacher, kfc_jax.LayerRule("fc1", "low_rank", rank=rank))
  return student


def test_distill_lowers_the_loss_and_leaves_models_alone(rng):
  teacher = MLP(nnx.Rngs(0))
  student = _student(teacher)
  teacher_before, student_before = _states(teacher), _states(student)
  data = _data(rng)
  result = recovery.distill(
    student, teacher, data, epochs=8, temperature=2.0, optimizer=optax.adam(3e-3)
  )
  assert len(result.losses) == 8 * len(data)
  assert np.mean(result.losses[-4:]) < 0.75 * np.mean(result.losses[:4])
  jax.tree.map(np.testing.assert_array_equal, teacher_before, _states(teacher))
  jax.tree.map(np.testing.assert_array_equal, student_before, _states(student))
  assert result.model is not student


def test_distill_trains_only_the_filtered_params(rng):
  teacher = MLP(nnx.Rngs(1))
  student = _student(teacher)
  result = recovery.distill(
    student,
    teacher,
    _data(rng),
    epochs=2,
    target="features",
    train="factors",
    optimizer=optax.adam(1e-2),
  )
  assert not np.allclose(np.asarray(result.model.fc1.u[...]), np.asarray(student.fc1.u[...]))
  # Biases and the dense layer stayed as they were.
  np.testing.assert_array_equal(
    np.asarray(result.model.fc1.bias[...]), np.asarray(student.fc1.bias[...])
  )
  np.testing.assert_array_equal(
    np.asarray(result.model.fc2.kernel[...]), np.asarray(student.fc2.kernel[...])
  )
  head_only = nnx.All(nnx.Param, nnx.PathContains("fc2"))
  result = recovery.distill(
    student, teacher, _data(rng), train=head_only, optimizer=optax.adam(1e-2)
  )
  np.testing.assert_array_equal(np.asarray(result.model.fc1.u[...]), np.asarray(student.fc1.u[...]))
  assert not np.allclose(
    np.asarray(result.model.fc2.kernel[...]), np.asarray(student.fc2.kernel[...])
  )


def test_distill_with_labels_and_a_function_teacher(rng):
  teacher = MLP(nnx.Rngs(2))
  student = _student(teacher)
  data = [(x, jnp.asarray(rng.integers(0, 5, size=len(x)))) for x in _data(rng)]
  logits = nnx.jit(lambda m, x: m(x))
  result = recovery.distill(student, lambda x: logits(teacher, x), data, epochs=2, label_weight=0.5)
  assert all(np.isfinite(result.losses))
  with pytest.raises(ValueError, match="needs \\(x, y\\) batches"):
    recovery.distill(student, teacher, _data(rng), label_weight=0.5)


def test_distill_bad_arguments(rng):
  teacher = MLP(nnx.Rngs(0))
  student = _student(teacher)
  with pytest.raises(ValueError, match="target"):
    recovery.distill(student, teacher, _data(rng), target="hidden")
  with pytest.raises(ValueError, match="train must be"):
    recovery.distill(student, teacher, _data(rng), train="biases")
  with pytest.raises(ValueError, match="temperature"):
    recovery.distill(student, teacher, _data(rng), temperature=0.0)
  with pytest.raises(ValueError, match="empty"):
    recovery.distill(student, teacher, [])


def test_match_layers_lowers_each_layers_output_error(rng):
  teacher = MLP(nnx.Rngs(3))
  student = _student(teacher, rank=4)
  data = _data(rng)
  before = _states(student)
  result = recovery.match_layers(student, teacher, data, steps=300, optimizer=optax.adam(3e-3))
  assert [m.path for m in result.layers] == ["fc1"]
  match = result.layers[0]
  # The weight-optimal SVD is not output-optimal on anisotropic inputs.
  assert match.error_after < 0.9 * match.error_before
  # The reported error is what the fitted layer does on those inputs.
  x = jnp.concatenate(data)
  old = np.asarray(teacher.fc1(x), np.float64)
  new = np.asarray(result.model.fc1(x), np.float64)
  assert np.linalg.norm(new - old) / np.linalg.norm(old) == pytest.approx(
    match.error_after, rel=1e-4
  )
  jax.tree.map(np.testing.assert_array_equal, before, _states(student))


def test_match_layers_bad_paths(rng):
  teacher = MLP(nnx.Rngs(0))
  student = _student(teacher)
  with pytest.raises(ValueError, match=r"paths \['fc2'\] are not layers the student"):
    recovery.match_layers(student, teacher, _data(rng), ["fc2"])
  with pytest.raises(ValueError, match="layer 'fc1'"):
    recovery.match_layers(student, teacher, [jnp.ones((2, 7))])
