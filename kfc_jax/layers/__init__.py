"""The framework-free core of the layers: one layout per layer family.

A layout (sizes and terms, validated once) describes its parameters
(:class:`ParamSpec`) and runs the maths over them by name: forward,
materialised kernel, fit to a trained dense layer, cost. ``kfc_jax.nnx`` and
``kfc_jax.linen`` create the parameters and call these, so the twins cannot
drift apart.
"""

from kfc_jax.layers._conv import ConvLayout as ConvLayout
from kfc_jax.layers._conv import compression_terms as compression_terms
from kfc_jax.layers._conv import conv_layout as conv_layout
from kfc_jax.layers._cost import LayerCost as LayerCost
from kfc_jax.layers._cost import dense_conv_cost as dense_conv_cost
from kfc_jax.layers._cost import dense_linear_cost as dense_linear_cost
from kfc_jax.layers._dense import DenseLayout as DenseLayout
from kfc_jax.layers._dense import kfc_layout as kfc_layout
from kfc_jax.layers._dense import linear_layout as linear_layout
from kfc_jax.layers._kdl import KDLLayout as KDLLayout
from kfc_jax.layers._kdl import kdl_layout as kdl_layout
from kfc_jax.layers._low_rank import LowRankLayout as LowRankLayout
from kfc_jax.layers._low_rank import low_rank_layout as low_rank_layout
from kfc_jax.layers._params import EMPTY_METADATA as EMPTY_METADATA
from kfc_jax.layers._params import ParamSpec as ParamSpec
from kfc_jax.layers._params import normal_init as normal_init
from kfc_jax.layers._protocol import KroneckerLayer as KroneckerLayer

__all__ = [
  "EMPTY_METADATA",
  "ConvLayout",
  "DenseLayout",
  "KDLLayout",
  "KroneckerLayer",
  "LayerCost",
  "LowRankLayout",
  "ParamSpec",
  "compression_terms",
  "conv_layout",
  "dense_conv_cost",
  "dense_linear_cost",
  "kdl_layout",
  "kfc_layout",
  "linear_layout",
  "low_rank_layout",
  "normal_init",
]
