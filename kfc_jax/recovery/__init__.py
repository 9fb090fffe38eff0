"""Recovery after surgery: calibration statistics, BatchNorm refits, fine-tuning.

After :func:`kfc_jax.compress` replaces layers, a network usually needs help
to get its accuracy back. This package gives the standard steps, each on a
copy of the model:

* :func:`collect_input_covariances` (NNX) and
  :func:`collect_linen_input_covariances`: each layer's input second moment on
  calibration data, for the data-aware decompositions (``input_cov=``).
* :func:`recalibrate_batchnorm` (NNX) and :func:`recalibrate_linen_batchnorm`:
  BatchNorm statistics refit exactly on calibration batches.
* :func:`match_layers`: each new layer fitted to the old layer's outputs on
  the inputs it saw (cheap, layer by layer).
* :func:`distill`: end-to-end fine-tuning on the teacher's logits or
  features with optax, training the factors, everything, or a filter.
"""

from kfc_jax.recovery._calibrate import collect_input_covariances as collect_input_covariances
from kfc_jax.recovery._calibrate import (
  collect_linen_input_covariances as collect_linen_input_covariances,
)
from kfc_jax.recovery._calibrate import recalibrate_batchnorm as recalibrate_batchnorm
from kfc_jax.recovery._calibrate import recalibrate_linen_batchnorm as recalibrate_linen_batchnorm
from kfc_jax.recovery._distill import DistillResult as DistillResult
from kfc_jax.recovery._distill import LayerMatch as LayerMatch
from kfc_jax.recovery._distill import MatchResult as MatchResult
from kfc_jax.recovery._distill import distill as distill
from kfc_jax.recovery._distill import match_layers as match_layers
from kfc_jax.recovery._taps import CalibrationError as CalibrationError

__all__ = [
  "CalibrationError",
  "DistillResult",
  "LayerMatch",
  "MatchResult",
  "collect_input_covariances",
  "collect_linen_input_covariances",
  "distill",
  "match_layers",
  "recalibrate_batchnorm",
  "recalibrate_linen_batchnorm",
]
