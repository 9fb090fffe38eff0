"""Fine-tuning after surgery: distillation and layer-wise output matching (NNX).

Both train a copy of the compressed model (the student) with optax against
the original (the teacher): :func:`distill` end to end on the teacher's
logits or features, :func:`match_layers` layer by layer, fitting each
replaced layer to the old layer's outputs on the inputs the old layer saw.
Which parameters train is a filter: ``"factors"`` (the Kronecker / low-rank
factors, :class:`kfc_jax.nnx.KroneckerFactor`), ``"all"`` (every
``nnx.Param``) or any ``nnx.filterlib`` filter.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, cast

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from kfc_jax.recovery import _taps


def _wrt(train: Any) -> Any:
  if isinstance(train, str):
    if train == "factors":
      from kfc_jax.nnx import KroneckerFactor  # the layers import recovery's users

      return KroneckerFactor
    if train == "all":
      return nnx.Param
    raise ValueError(f"train must be 'factors', 'all' or an nnx filter, got {train!r}.")
  return train


def _distillation_loss(student, teacher, temperature):
  from kfc_jax.compress import distillation_loss  # one definition, in compress

  return distillation_loss(student, teacher, temperature)


@dataclasses.dataclass(frozen=True)
class DistillResult:
  """The trained student and its loss per step.

  Attributes:
    model: the trained student (a copy unless ``inplace``).
    losses: the training loss at every step, in order.
  """

  model: Any
  losses: tuple[float, ...]


def distill(
  student: nnx.Module,
  teacher: nnx.Module | Callable[[Any], Any],
  batches: Any,
  *,
  optimizer: optax.GradientTransformation | None = None,
  epochs: int = 1,
  temperature: float = 1.0,
  target: str = "logits",
  label_weight: float = 0.0,
  train: Any = "all",
  student_call: Callable[[Any, Any], Any] | None = None,
  teacher_call: Callable[[Any, Any], Any] | None = None,
  inplace: bool = False,
) -> DistillResult:
  """Fine-tunes ``student`` to reproduce ``teacher`` on ``batches`` with optax.

  The loss per batch is ``(1 - label_weight) * D + label_weight * CE`` where
  ``D`` is :func:`kfc_jax.distillation_loss` of the logits at
  ``temperature`` (``target="logits"``) or the mean squared error of the
  outputs (``target="features"``), and ``CE`` the cross-entropy with the
  batch's integer labels (batches ``(x, y)``; only when ``label_weight > 0``).

  Args:
    student: the compressed NNX model.
    teacher: the original model (NNX) or any ``x -> outputs`` function; it
      is never trained.
    batches: a list (re-iterated every epoch) of inputs or ``(x, y)`` pairs.
    optimizer: an optax transformation (default ``optax.adam(1e-4)``).
    epochs: passes over ``batches``.
    temperature: softening of both logits (``target="logits"``).
    target: ``"logits"`` or ``"features"``.
    label_weight: weight of the hard-label cross-entropy in ``[0, 1]``.
    train: which params train: ``"factors"``, ``"all"`` or an nnx filter
      (e.g. ``nnx.All(nnx.Param, nnx.PathContains("head"))``).
    student_call: ``f(model, x)`` running the student in training (default
      ``model(x)``; e.g. ``lambda m, x: m(x, train=True)``).
    teacher_call: ``f(teacher, x)`` (default ``teacher(x)``).
    inplace: train ``student`` itself instead of a copy.

  Returns:
    A :class:`DistillResult` with the trained student and the losses.

  Example usage::

    >>> import jax, kfc_jax
    >>> from flax import nnx
    >>> from kfc_jax import recovery
    >>> teacher = nnx.Linear(8, 4, rngs=nnx.Rngs(0))
    >>> student, _ = kfc_jax.compress(teacher, kfc_jax.LayerRule("", "low_rank", rank=2))
    >>> xs = [jax.random.normal(jax.random.key(i), (16, 8)) for i in range(4)]
    >>> result = recovery.distill(student, teacher, xs, epochs=5,
    ...                                   target="features", train="factors")
    >>> result.losses[-1] < result.losses[0]
    True
  """
  if not isinstance(student, nnx.Module):
    raise TypeError(f"student must be an nnx.Module, got {type(student).__name__}.")
  if target not in ("logits", "features"):
    raise ValueError(f"target must be 'logits' or 'features', got {target!r}.")
  if not 0.0 <= label_weight <= 1.0:
    raise ValueError(f"label_weight must be in [0, 1], got {label_weight!r}.")
  if not temperature > 0:
    raise ValueError(f"temperature must be > 0, got {temperature!r}.")
  if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
    raise ValueError(f"epochs must be a positive int, got {epochs!r}.")
  data = _taps.as_batches(batches)
  wrt = _wrt(train)
  model = student if inplace else nnx.clone(student)
  opt = nnx.Optimizer(model, optimizer or optax.adam(1e-4), wrt=wrt)
  student_call = student_call or (lambda m, x: m(x))
  teacher_call = teacher_call or (lambda t, x: t(x))
  # A function teacher runs as given (jit it yourself if it is pure).
  teacher_fn = cast(
    Callable[..., Any],
    nnx.jit(teacher_call)
    if isinstance(teacher, nnx.Module)
    else (lambda x: teacher_call(teacher, x)),
  )

  def loss_fn(m, x, t_out, labels):
    out = student_call(m, x)
    if out.shape != t_out.shape:
      raise ValueError(
        f"the student's outputs have shape {out.shape} but the"
        f" teacher's {t_out.shape}; they must match."
      )
    if target == "logits":
      loss = _distillation_loss(out, t_out, temperature)
    else:
      loss = jnp.mean((out - t_out) ** 2)
    if labels is not None and label_weight > 0:
      ce = optax.softmax_cross_entropy_with_integer_labels(out, labels).mean()
      loss = (1 - label_weight) * loss + label_weight * ce
    return loss

  @nnx.jit
  def step(m, opt, x, t_out, labels):
    loss, grads = nnx.value_and_grad(loss_fn, argnums=nnx.DiffState(0, wrt))(m, x, t_out, labels)
    opt.update(m, grads)
    return loss

  losses = []
  for _ in range(epochs):
    for i, batch in enumerate(data):
      x, labels = _taps.split_batch(batch)
      if label_weight > 0 and labels is None:
        raise ValueError(
          f"label_weight={label_weight} needs (x, y) batches; batch {i} has no labels."
        )
      t_out = teacher_fn(teacher, x) if isinstance(teacher, nnx.Module) else teacher_fn(x)
      losses.append(float(step(model, opt, x, t_out, labels if label_weight > 0 else None)))
  return DistillResult(model, tuple(losses))


# ---------------------------------------------------------------------------
# Layer-wise output matching
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LayerMatch:
  """One layer's relative output error on the calibration inputs.

  ``||new(x) - old(x)|| / ||old(x)||`` over every calibration input of the
  old layer, before and after fitting.
  """

  path: str
  error_before: float
  error_after: float


@dataclasses.dataclass(frozen=True)
class MatchResult:
  """The student with its layers fitted, and per layer the errors."""

  model: Any
  layers: tuple[LayerMatch, ...]


def _replaced_paths(student: nnx.Module, teacher: nnx.Module) -> list[str]:
  new = _taps.nnx_layers(student)
  old = _taps.nnx_layers(teacher)
  return sorted(p for p in new if p in old and type(new[p][1]) is not type(old[p][1]))


def match_layers(
  student: nnx.Module,
  teacher: nnx.Module,
  batches: Any,
  paths: Any = None,
  *,
  steps: int = 200,
  optimizer: optax.GradientTransformation | None = None,
  train: Any = "all",
  teacher_call: Callable[[Any, Any], Any] | None = None,
  inplace: bool = False,
) -> MatchResult:
  """Fits each replaced layer to the old layer's outputs on calibration inputs.

  The teacher runs on ``batches`` once; each selected layer's inputs are
  recorded, and the student's layer at the same path is trained with optax
  for ``steps`` full-batch steps on ``||new(X) - old(X)||² / ||old(X)||²``
  (least squares on the old layer's inputs). Layers are independent, so
  this is cheap and runs before end-to-end fine-tuning (:func:`distill`).

  Args:
    student: the compressed model.
    teacher: the original model.
    batches: an iterable of inputs, or of ``(x, y)`` pairs.
    paths: layer paths to fit; default every path whose layer type differs
      between student and teacher (the replaced ones).
    steps: optimisation steps per layer.
    optimizer: default ``optax.adam(1e-3)``.
    train: ``"factors"``, ``"all"`` (the layer's params, bias included) or
      an nnx filter.
    teacher_call: ``f(teacher, x)`` (default ``teacher(x)``).
    inplace: fit ``student`` itself instead of a copy.

  Returns:
    A :class:`MatchResult`.
  """
  if not isinstance(student, nnx.Module) or not isinstance(teacher, nnx.Module):
    raise TypeError(
      "student and teacher must be nnx.Modules, got"
      f" {type(student).__name__} and {type(teacher).__name__}."
    )
  if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
    raise ValueError(f"steps must be a non-negative int, got {steps!r}.")
  replaced = _replaced_paths(student, teacher)
  selected = _taps.select_paths(replaced, paths, "layers the student replaced")
  wrt = _wrt(train)
  old_layers = _taps.nnx_layers(teacher)
  stats = {p: (lambda layer, x: x) for p in selected}
  # Record every call's input (not summed): concatenate along the batch axis.
  fn, state = _taps.nnx_tapped_fn(teacher, stats, call=teacher_call)
  inputs: dict[str, list] = {p: [] for p in selected}
  for i, batch in enumerate(_taps.as_batches(batches)):
    x, _ = _taps.split_batch(batch)
    for path, per_call in _taps.run_batch(fn, i, x, state).items():
      inputs[path].extend(per_call)
  model = student if inplace else nnx.clone(student)
  new_layers = _taps.nnx_layers(model)
  results = []
  for path in selected:
    xs = jnp.concatenate(inputs[path], axis=0)
    old = old_layers[path][1]
    target = jax.jit(lambda x, old=old: old(x))(xs)
    layer = new_layers[path][1]
    before = _output_error(layer, xs, target)
    after = before
    if steps:
      start = nnx.clone(nnx.state(layer))
      _fit_layer(layer, xs, target, steps, optimizer or optax.adam(1e-3), wrt)
      after = _output_error(layer, xs, target)
      if after > before:  # a step size too large for this layer: keep the start
        nnx.update(layer, start)
        after = before
    results.append(LayerMatch(path, before, after))
  return MatchResult(model, tuple(results))


def _output_error(layer: Any, x: jax.Array, target: jax.Array) -> float:
  out = np.asarray(nnx.jit(lambda m, x: m(x))(layer, x), np.float64)
  t = np.asarray(target, np.float64)
  norm = np.linalg.norm(t)
  return float(np.linalg.norm(out - t) / norm) if norm > 0 else 0.0


def _fit_layer(layer, xs, target, steps, tx, wrt) -> None:
  opt = nnx.Optimizer(layer, tx, wrt=wrt)
  scale = jnp.maximum(jnp.mean(target.astype(jnp.float32) ** 2), 1e-30)

  def loss_fn(m, xs, target):
    return jnp.mean((m(xs) - target) ** 2) / scale

  @nnx.jit
  def step(m, opt, xs, target):
    loss, grads = nnx.value_and_grad(loss_fn, argnums=nnx.DiffState(0, wrt))(m, xs, target)
    opt.update(m, grads)
    return loss

  for _ in range(steps):
    step(layer, opt, xs, target)
