"""kfc_jax: Kronecker-product-structured layers for JAX and Flax.

The functional core (``kron_matmul``, ``kron``, the decompositions) is
re-exported here; Flax layers live in ``kfc_jax.nnx`` (primary) and
``kfc_jax.linen``.
"""

from kfc_jax import formulations as formulations
from kfc_jax import layers as layers
from kfc_jax import linen as linen
from kfc_jax import nnx as nnx
from kfc_jax import recovery as recovery
from kfc_jax._search import SearchCandidate as SearchCandidate
from kfc_jax._search import SearchResult as SearchResult
from kfc_jax._search import search_conv as search_conv
from kfc_jax._search import search_dense as search_dense
from kfc_jax.compress import CompressedLinen as CompressedLinen
from kfc_jax.compress import CompressionPolicy as CompressionPolicy
from kfc_jax.compress import CompressionReport as CompressionReport
from kfc_jax.compress import LayerReport as LayerReport
from kfc_jax.compress import LayerRule as LayerRule
from kfc_jax.compress import compress as compress
from kfc_jax.compress import compress_linen_params as compress_linen_params
from kfc_jax.compress import distillation_loss as distillation_loss
from kfc_jax.decompose import KroneckerDecomposition as KroneckerDecomposition
from kfc_jax.decompose import KroneckerSumDecomposition as KroneckerSumDecomposition
from kfc_jax.decompose import KroneckerSumTerm as KroneckerSumTerm
from kfc_jax.decompose import gkpd as gkpd
from kfc_jax.decompose import low_rank as low_rank
from kfc_jax.decompose import nearest_kronecker as nearest_kronecker
from kfc_jax.decompose import nearest_kronecker_sum as nearest_kronecker_sum
from kfc_jax.decompose import nearest_kronecker_tensor as nearest_kronecker_tensor
from kfc_jax.decompose import suggest_conv_factors as suggest_conv_factors
from kfc_jax.formulations import FORMULATIONS as FORMULATIONS
from kfc_jax.formulations import Formulation as Formulation
from kfc_jax.formulations import KFCTerm as KFCTerm
from kfc_jax.formulations import get_formulation as get_formulation
from kfc_jax.formulations import resolve_terms as resolve_terms
from kfc_jax.layers import KroneckerLayer as KroneckerLayer
from kfc_jax.layers import LayerCost as LayerCost
from kfc_jax.ops import CostModel as CostModel
from kfc_jax.ops import KronConvPlan as KronConvPlan
from kfc_jax.ops import KronConvSumPlan as KronConvSumPlan
from kfc_jax.ops import KronMatmulPlan as KronMatmulPlan
from kfc_jax.ops import PlanCost as PlanCost
from kfc_jax.ops import default_cost_model as default_cost_model
from kfc_jax.ops import kron as kron
from kfc_jax.ops import kron_conv as kron_conv
from kfc_jax.ops import kron_conv_plan as kron_conv_plan
from kfc_jax.ops import kron_conv_sum as kron_conv_sum
from kfc_jax.ops import kron_conv_sum_plan as kron_conv_sum_plan
from kfc_jax.ops import kron_kernel as kron_kernel
from kfc_jax.ops import kron_matmul as kron_matmul
from kfc_jax.ops import kron_matmul_plan as kron_matmul_plan
from kfc_jax.ops import padded_kron_matmul as padded_kron_matmul
from kfc_jax.shapes import KronConvShape as KronConvShape
from kfc_jax.shapes import KroneckerShape as KroneckerShape
from kfc_jax.shapes import KroneckerTerm as KroneckerTerm
from kfc_jax.shapes import factorize as factorize
from kfc_jax.shapes import padded_size as padded_size
from kfc_jax.shapes import suggest_factors as suggest_factors
from kfc_jax.summary import LayerSummary as LayerSummary
from kfc_jax.summary import ModelSummary as ModelSummary
from kfc_jax.summary import summarize as summarize
from kfc_jax.summary import summarize_linen as summarize_linen

__version__ = "0.1.0"

__all__ = [
  "FORMULATIONS",
  "CompressedLinen",
  "CompressionPolicy",
  "CompressionReport",
  "CostModel",
  "Formulation",
  "KFCTerm",
  "KronConvPlan",
  "KronConvShape",
  "KronConvSumPlan",
  "KronMatmulPlan",
  "KroneckerDecomposition",
  "KroneckerLayer",
  "KroneckerShape",
  "KroneckerSumDecomposition",
  "KroneckerSumTerm",
  "KroneckerTerm",
  "LayerCost",
  "LayerReport",
  "LayerRule",
  "LayerSummary",
  "ModelSummary",
  "PlanCost",
  "SearchCandidate",
  "SearchResult",
  "compress",
  "compress_linen_params",
  "default_cost_model",
  "distillation_loss",
  "factorize",
  "formulations",
  "get_formulation",
  "gkpd",
  "kron",
  "kron_conv",
  "kron_conv_plan",
  "kron_conv_sum",
  "kron_conv_sum_plan",
  "kron_kernel",
  "kron_matmul",
  "kron_matmul_plan",
  "layers",
  "linen",
  "low_rank",
  "nearest_kronecker",
  "nearest_kronecker_sum",
  "nearest_kronecker_tensor",
  "nnx",
  "padded_kron_matmul",
  "padded_size",
  "recovery",
  "resolve_terms",
  "search_conv",
  "search_dense",
  "suggest_conv_factors",
  "suggest_factors",
  "summarize",
  "summarize_linen",
]
