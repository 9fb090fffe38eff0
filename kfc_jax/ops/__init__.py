"""Pure-functional Kronecker primitives (framework-free)."""

from kfc_jax.ops._conv import KronConvPlan as KronConvPlan
from kfc_jax.ops._conv import kron_conv as kron_conv
from kfc_jax.ops._conv import kron_conv_plan as kron_conv_plan
from kfc_jax.ops._conv import kron_conv_sum as kron_conv_sum
from kfc_jax.ops._conv import kron_kernel as kron_kernel
from kfc_jax.ops._kron import CostModel as CostModel
from kfc_jax.ops._kron import KronMatmulPlan as KronMatmulPlan
from kfc_jax.ops._kron import PlanCost as PlanCost
from kfc_jax.ops._kron import default_cost_model as default_cost_model
from kfc_jax.ops._kron import kron as kron
from kfc_jax.ops._kron import kron_matmul as kron_matmul
from kfc_jax.ops._kron import kron_matmul_plan as kron_matmul_plan
from kfc_jax.ops._shapes import KroneckerShape as KroneckerShape
from kfc_jax.ops._shapes import factorize as factorize
from kfc_jax.ops._shapes import padded_kron_matmul as padded_kron_matmul
from kfc_jax.ops._shapes import padded_size as padded_size
from kfc_jax.ops._shapes import suggest_factors as suggest_factors
