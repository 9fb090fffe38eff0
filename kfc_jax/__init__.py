"""kfc_jax: Kronecker-product-structured layers for JAX and Flax."""

from kfc_jax.ops import CostModel as CostModel
from kfc_jax.ops import KronMatmulPlan as KronMatmulPlan
from kfc_jax.ops import PlanCost as PlanCost
from kfc_jax.ops import default_cost_model as default_cost_model
from kfc_jax.ops import kron as kron
from kfc_jax.ops import kron_matmul as kron_matmul
from kfc_jax.ops import kron_matmul_plan as kron_matmul_plan

__version__ = "0.1.0"
