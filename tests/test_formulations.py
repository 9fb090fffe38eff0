"""KFC formulations against docs/DESIGN.md's einsum forms and np.kron references.

The einsums are those of the section "KFC formulations".
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from layer_cases import kfc_term_kernel

import kfc_jax
from kfc_jax import formulations

H, W, C = 3, 4, 5

# docs/DESIGN.md, "KFC formulations", written as einsums over the factors with their axes
# unflattened.
EINSUMS = {
  "I": ("nhwc,rco,rhwp->nop", (6, 1), [(C,), (H, W)]),
  "II": ("nhwc,rco,rhwp->nop", (3, 2), [(C,), (H, W)]),
  "III": ("nhwc,rcho,rwp->nop", (2, 3), [(C, H), (W,)]),
  "IV": ("nhwc,rcwo,rhp->nop", (3, 2), [(C, W), (H,)]),
  "CHW": ("nhwc,rco,rhp,rwq->nopq", (1, 2, 3), [(C,), (H,), (W,)]),
}


def _factors(rng, name, rank):
  spec = kfc_jax.get_formulation(name)
  _, out, _ = EINSUMS[name]
  return [rng.standard_normal(s) for s in spec.factor_shapes((H, W, C), out, rank)]


@pytest.mark.parametrize("name", list(EINSUMS))
@pytest.mark.parametrize("batch_shape", [(2,), (2, 3)], ids=str)
def test_apply_matches_the_einsum_form(x64, rng, name, batch_shape):
  eq, _, group_shapes = EINSUMS[name]
  fs = _factors(rng, name, rank=2)
  x = rng.standard_normal((*batch_shape, H, W, C))
  unflat = [f.reshape(2, *g, f.shape[-1]) for f, g in zip(fs, group_shapes, strict=True)]
  expected = np.einsum(eq, x.reshape(-1, H, W, C), *unflat).reshape(*batch_shape, -1)
  y = kfc_jax.get_formulation(name).apply(jnp.asarray(x), [jnp.asarray(f) for f in fs])
  np.testing.assert_allclose(y, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", list(EINSUMS))
def test_materialize_matches_np_kron(x64, rng, name):
  spec = kfc_jax.get_formulation(name)
  fs = _factors(rng, name, rank=3)
  w = spec.materialize([jnp.asarray(f) for f in fs], (H, W, C))
  np.testing.assert_allclose(w, kfc_term_kernel(fs, (H, W, C), spec.groups), rtol=1e-12, atol=1e-12)


def test_parameter_formulas_of_the_table():
  o1, o2 = 8, 4
  assert kfc_jax.KFCTerm("I", (32, 1)).params((H, W, C)) == C * 32 + H * W
  assert kfc_jax.KFCTerm("II", (o1, o2)).params((H, W, C)) == C * o1 + H * W * o2
  assert kfc_jax.KFCTerm("III", (o1, o2)).params((H, W, C)) == C * H * o1 + W * o2
  assert kfc_jax.KFCTerm("IV", (o1, o2)).params((H, W, C)) == C * W * o1 + H * o2
  assert kfc_jax.KFCTerm("CHW", (2, 4, 4), 3).params((H, W, C)) == 3 * (C * 2 + H * 4 + W * 4)


def test_identity_grouping_skips_the_transpose(x64, rng):
  natural = kfc_jax.Formulation("HW|C", (("H", "W"), ("C",)))
  assert natural.permutation == (0, 1, 2)
  fs = [rng.standard_normal((1, H * W, 2)), rng.standard_normal((1, C, 3))]
  x = rng.standard_normal((2, H, W, C))
  expected = x.reshape(2, -1) @ np.kron(fs[0][0], fs[1][0])
  np.testing.assert_allclose(natural.apply(jnp.asarray(x), fs), expected, rtol=1e-12)
  layer_terms = kfc_jax.resolve_terms([kfc_jax.KFCTerm(natural, (2, 3))], 6)
  assert layer_terms[0].spec is natural


@pytest.mark.parametrize("name", ["II", "III", "IV"])
def test_decompose_is_optimal_over_the_axis_groups(x64, rng, name):
  spec = kfc_jax.get_formulation(name)
  _, out, _ = EINSUMS[name]
  w = rng.standard_normal((H * W * C, int(np.prod(out))))
  dec = spec.decompose(w, (H, W, C), out, rank=2)
  # Rearrange independently: rows (group 0 axes, o1), columns (group 1 axes, o2).
  axes = {"H": 0, "W": 1, "C": 2}
  g0 = [axes[a] for a in spec.groups[0]] + [3]
  g1 = [axes[a] for a in spec.groups[1]] + [4]
  t = w.reshape(H, W, C, *out).transpose(g0 + g1)
  r = t.reshape(int(np.prod(t.shape[: len(g0)])), -1)
  s = np.linalg.svd(r, compute_uv=False)
  np.testing.assert_allclose(
    dec.relative_error, np.sqrt(np.sum(s[2:] ** 2)) / np.linalg.norm(w), rtol=1e-9
  )
  approx = np.asarray(spec.materialize([jnp.asarray(f) for f in dec.factors], (H, W, C)))
  np.testing.assert_allclose(
    np.linalg.norm(w - approx) / np.linalg.norm(w), dec.relative_error, rtol=1e-9
  )


def test_default_out_factors_and_labels():
  terms = kfc_jax.resolve_terms(["I", "II", ("CHW", None, 2)], 64)
  assert [t.out_factors for t in terms] == [(64, 1), (8, 8), (4, 4, 4)]
  assert [t.label for t in terms] == ["I(64, 1)", "II(8, 8)", "CHW(4, 4, 4), rank 2"]
  assert kfc_jax.resolve_terms(kfc_jax.KFCTerm("iv", [8, 8]), 64)[0].out_factors == (8, 8)


def test_formulation_i_documents_our_reading():
  doc = formulations.FORMULATION_I.description
  assert "garbled" in doc and "parameter counts" in doc
  assert set(kfc_jax.FORMULATIONS) == {"I", "II", "III", "IV", "CHW"}


@pytest.mark.parametrize(
  "groups,fixed,match",
  [
    ((("H",), ("C",)), None, "each axis once"),
    ((("H", "W"), ("C", "C")), None, "each axis once"),
    ((("H", "W", "C"), ()), None, "non-empty"),
    ((("H", "W"), ("C",)), (1,), "one entry per group"),
  ],
)
def test_invalid_formulations(groups, fixed, match):
  with pytest.raises(ValueError, match=match):
    kfc_jax.Formulation("bad", groups, fixed)


def test_decompose_checks_the_weight_shape():
  with pytest.raises(ValueError, match=r"w must have shape \[H\*W\*C, O\] = \[60, 6\]"):
    kfc_jax.get_formulation("II").decompose(np.ones((59, 6)), (H, W, C), (3, 2))
  with pytest.raises(TypeError, match="terms must be a non-empty list"):
    kfc_jax.resolve_terms(42, 6)
