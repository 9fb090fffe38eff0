"""Whole-model compression: replace trained dense layers by Kronecker layers.

:func:`compress` walks an NNX model, replaces each ``nnx.Linear`` (and 2-D
``nnx.Conv``) that a :class:`CompressionPolicy` selects by its Kronecker
counterpart initialised by decomposition (``from_linear`` / ``from_conv``),
and returns the model with a :class:`CompressionReport` (parameters, FLOPs and
relative weight error per layer). :func:`compress_linen_params` does the same
for a Linen model's params. Every layer is planned and decomposed before the
model is touched, so a bad rule leaves the model as it was.

Fine-tuning afterwards is plain optax. The factors are their own param type,
so training only them (freezing biases and the layers left dense) is a filter::

  optimizer = nnx.Optimizer(model, optax.adam(1e-3), wrt=kfc_jax.nnx.KroneckerFactor)
  grads = nnx.grad(loss_fn, argnums=nnx.DiffState(0, kfc_jax.nnx.KroneckerFactor))(model)
  optimizer.update(model, grads)

and :func:`distillation_loss` distils from the original model's logits.

Example usage::

  >>> import jax.numpy as jnp, kfc_jax
  >>> from flax import nnx
  >>> class MLP(nnx.Module):
  ...   def __init__(self, rngs):
  ...     self.fc1 = nnx.Linear(64, 64, rngs=rngs)
  ...     self.fc2 = nnx.Linear(64, 10, rngs=rngs)
  ...   def __call__(self, x):
  ...     return self.fc2(nnx.relu(self.fc1(x)))
  >>> model = MLP(nnx.Rngs(0))
  >>> policy = kfc_jax.CompressionPolicy([kfc_jax.LayerRule("fc1", compression=8)])
  >>> small, report = kfc_jax.compress(model, policy)
  >>> type(small.fc1).__name__, type(model.fc1).__name__   # a copy by default
  ('KroneckerLinear', 'Linear')
  >>> report.rows[0].params_before, report.rows[0].params_after
  (4160, 576)
  >>> small(jnp.ones((2, 64))).shape
  (2, 10)
"""

from kfc_jax.compress._distill import distillation_loss as distillation_loss
from kfc_jax.compress._linen import CompressedLinen as CompressedLinen
from kfc_jax.compress._linen import compress_linen_params as compress_linen_params
from kfc_jax.compress._nnx import compress as compress
from kfc_jax.compress._plan import Family as Family
from kfc_jax.compress._plan import LayerPlan as LayerPlan
from kfc_jax.compress._plan import TrainedLayer as TrainedLayer
from kfc_jax.compress._plan import plan_layer as plan_layer
from kfc_jax.compress._policy import METHODS as METHODS
from kfc_jax.compress._policy import CompressionPolicy as CompressionPolicy
from kfc_jax.compress._policy import LayerRule as LayerRule
from kfc_jax.compress._report import CompressionReport as CompressionReport
from kfc_jax.compress._report import LayerReport as LayerReport

__all__ = [
  "METHODS",
  "CompressedLinen",
  "CompressionPolicy",
  "CompressionReport",
  "Family",
  "LayerPlan",
  "LayerReport",
  "LayerRule",
  "TrainedLayer",
  "compress",
  "compress_linen_params",
  "distillation_loss",
  "plan_layer",
]
