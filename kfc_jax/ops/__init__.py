"""Pure-functional Kronecker primitives (framework-free) and their plans.

Shapes and factorisation helpers (``KroneckerShape``, ``factorize``, ...) live
in :mod:`kfc_jax.shapes`.
"""

import warnings

from kfc_jax.ops._conv import kron_conv as kron_conv
from kfc_jax.ops._conv import kron_conv_sum as kron_conv_sum
from kfc_jax.ops._conv import kron_kernel as kron_kernel
from kfc_jax.ops._conv_plan import KronConvPlan as KronConvPlan
from kfc_jax.ops._conv_plan import KronConvSumPlan as KronConvSumPlan
from kfc_jax.ops._conv_plan import kron_conv_plan as kron_conv_plan
from kfc_jax.ops._conv_plan import kron_conv_sum_plan as kron_conv_sum_plan
from kfc_jax.ops._cost import CostModel as CostModel
from kfc_jax.ops._cost import KronMatmulPlan as KronMatmulPlan
from kfc_jax.ops._cost import PlanCost as PlanCost
from kfc_jax.ops._cost import default_cost_model as default_cost_model
from kfc_jax.ops._cost import kron_matmul_plan as kron_matmul_plan
from kfc_jax.ops._kron import kron as kron
from kfc_jax.ops._kron import kron_matmul as kron_matmul
from kfc_jax.ops._padded import padded_kron_matmul as padded_kron_matmul

__all__ = [
  "CostModel",
  "KronConvPlan",
  "KronConvSumPlan",
  "KronMatmulPlan",
  "PlanCost",
  "default_cost_model",
  "kron",
  "kron_conv",
  "kron_conv_plan",
  "kron_conv_sum",
  "kron_conv_sum_plan",
  "kron_kernel",
  "kron_matmul",
  "kron_matmul_plan",
  "padded_kron_matmul",
]

# Deprecated aliases (removed next release): the shapes moved to kfc_jax.shapes.
# Looked up lazily, because kfc_jax.shapes imports this package.
_MOVED_TO_SHAPES = ("KroneckerShape", "factorize", "padded_size", "suggest_factors")


def __getattr__(name):
  if name in _MOVED_TO_SHAPES:
    from kfc_jax import shapes

    warnings.warn(
      f"kfc_jax.ops.{name} moved to kfc_jax.shapes (also kfc_jax.{name}); the"
      " alias goes in the next release.",
      DeprecationWarning,
      stacklevel=2,
    )
    return getattr(shapes, name)
  raise AttributeError(f"module 'kfc_jax.ops' has no attribute {name!r}")
