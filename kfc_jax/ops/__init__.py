"""Pure-functional Kronecker primitives (framework-free)."""

from kfc_jax.ops._kron import CostModel as CostModel
from kfc_jax.ops._kron import KronMatmulPlan as KronMatmulPlan
from kfc_jax.ops._kron import PlanCost as PlanCost
from kfc_jax.ops._kron import default_cost_model as default_cost_model
from kfc_jax.ops._kron import kron as kron
from kfc_jax.ops._kron import kron_matmul as kron_matmul
from kfc_jax.ops._kron import kron_matmul_plan as kron_matmul_plan
