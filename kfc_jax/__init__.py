"""kfc_jax: Kronecker-product-structured layers for JAX and Flax.

The functional core (``kron_matmul``, ``kron``, the decompositions) is
re-exported here; Flax layers live in ``kfc_jax.nnx`` (primary) and
``kfc_jax.linen``.
"""

from kfc_jax.decompose import KroneckerDecomposition as KroneckerDecomposition
from kfc_jax.decompose import low_rank as low_rank
from kfc_jax.decompose import nearest_kronecker as nearest_kronecker
from kfc_jax.decompose import nearest_kronecker_tensor as nearest_kronecker_tensor
from kfc_jax.ops import CostModel as CostModel
from kfc_jax.ops import KronMatmulPlan as KronMatmulPlan
from kfc_jax.ops import KroneckerShape as KroneckerShape
from kfc_jax.ops import PlanCost as PlanCost
from kfc_jax.ops import default_cost_model as default_cost_model
from kfc_jax.ops import factorize as factorize
from kfc_jax.ops import kron as kron
from kfc_jax.ops import kron_matmul as kron_matmul
from kfc_jax.ops import kron_matmul_plan as kron_matmul_plan
from kfc_jax.ops import padded_kron_matmul as padded_kron_matmul
from kfc_jax.ops import padded_size as padded_size
from kfc_jax.ops import suggest_factors as suggest_factors

__version__ = "0.1.0"

__all__ = [
    "CostModel",
    "KronMatmulPlan",
    "KroneckerDecomposition",
    "KroneckerShape",
    "PlanCost",
    "default_cost_model",
    "factorize",
    "kron",
    "kron_matmul",
    "kron_matmul_plan",
    "low_rank",
    "nearest_kronecker",
    "nearest_kronecker_tensor",
    "padded_kron_matmul",
    "padded_size",
    "suggest_factors",
]
