"""Decompositions of trained weights into Kronecker (and low-rank) factors."""

from kfc_jax.decompose._covariance import RunningCovariance as RunningCovariance
from kfc_jax.decompose._covariance import input_covariance as input_covariance
from kfc_jax.decompose._covariance import patch_covariance as patch_covariance
from kfc_jax.decompose._gkpd import gkpd as gkpd
from kfc_jax.decompose._gkpd import suggest_conv_factors as suggest_conv_factors
from kfc_jax.decompose._low_rank import LowRankDecomposition as LowRankDecomposition
from kfc_jax.decompose._low_rank import low_rank as low_rank
from kfc_jax.decompose._nkp import KroneckerDecomposition as KroneckerDecomposition
from kfc_jax.decompose._nkp import nearest_kronecker as nearest_kronecker
from kfc_jax.decompose._nkp import nearest_kronecker_tensor as nearest_kronecker_tensor
from kfc_jax.decompose._sum import KroneckerSumDecomposition as KroneckerSumDecomposition
from kfc_jax.decompose._sum import KroneckerSumTerm as KroneckerSumTerm
from kfc_jax.decompose._sum import nearest_kronecker_sum as nearest_kronecker_sum

# Moved to kfc_jax.shapes; still importable from here.
from kfc_jax.shapes import KronConvShape as KronConvShape
