"""Tests for kfc_jax.compress: surgery, report, policies, fine-tuning, checkpoints."""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from flax import nnx
from references import np_kron

import kfc_jax
from kfc_jax import CompressionPolicy, LayerRule, compress, compress_linen_params

F64 = jnp.float64


def _init(key, shape, dtype=jnp.float32):
  # Drawn flat: XLA on CPU compiles Flax's default N-D initialisers slowly.
  return (
    jax.random.normal(key, (math.prod(shape),), dtype) / math.sqrt(math.prod(shape[:-1]))
  ).reshape(shape)


def _linear(n_in, n_out, rngs, dtype=jnp.float32):
  return nnx.Linear(n_in, n_out, param_dtype=dtype, kernel_init=_init, rngs=rngs)


class MLP(nnx.Module):
  def __init__(self, rngs, dtype=jnp.float32):
    self.fc1 = _linear(64, 32, rngs, dtype)
    self.fc2 = _linear(32, 10, rngs, dtype)

  def __call__(self, x):
    return self.fc2(nnx.relu(self.fc1(x)))


class CNN(nnx.Module):
  def __init__(self, rngs, dtype=jnp.float32):
    self.conv = nnx.Conv(4, 8, (3, 3), param_dtype=dtype, kernel_init=_init, rngs=rngs)
    self.norm = nnx.LayerNorm(8, param_dtype=dtype, rngs=rngs)
    self.fc = _linear(4 * 4 * 8, 16, rngs, dtype)
    self.out = _linear(16, 10, rngs, dtype)

  def __call__(self, x):
    h = self.norm(nnx.relu(self.conv(x)))
    return self.out(nnx.relu(self.fc(h.reshape(h.shape[0], -1))))


class LinenMLP(nn.Module):
  dtype: object = jnp.float32

  @nn.compact
  def __call__(self, x):
    h = nn.relu(nn.Dense(32, param_dtype=self.dtype, kernel_init=_init)(x))
    h = nn.LayerNorm(param_dtype=self.dtype)(h)
    return nn.Dense(10, param_dtype=self.dtype, kernel_init=_init)(h)


class LinenCNN(nn.Module):
  @nn.compact
  def __call__(self, x):
    h = nn.relu(nn.Conv(8, (3, 3), strides=2, param_dtype=F64, kernel_init=_init)(x))
    return nn.Dense(10, param_dtype=F64, kernel_init=_init)(h.reshape(h.shape[0], -1))


def _inputs(rng, *shape, dtype=np.float64):
  return jnp.asarray(rng.standard_normal(shape).astype(dtype))


# ---------------------------------------------------------------------------
# Surgery: full rank reproduces the model
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
  "rule",
  [
    LayerRule("fc1", in_factors=(8, 8), out_factors=(4, 8), rank=32),
    LayerRule("fc1", method="low_rank", rank=32),
    LayerRule("fc1", method="kfc", in_shape=(2, 4, 8), terms=[("II", (4, 8), 32)]),
  ],
  ids=["kronecker", "low_rank", "kfc"],
)
def test_full_rank_mlp_is_exact(x64, rng, rule):
  model = MLP(nnx.Rngs(0), F64)
  x = _inputs(rng, 5, 64)
  new, report = compress(model, rule)
  assert type(model.fc1) is nnx.Linear  # a copy by default
  assert new.fc2 is not model.fc2 and type(new.fc2) is nnx.Linear
  assert report.rows[0].relative_error < 1e-12
  np.testing.assert_allclose(new(x), model(x), rtol=1e-10, atol=1e-12)


def test_full_rank_cnn_is_exact(x64, rng):
  model = CNN(nnx.Rngs(0), F64)
  x = _inputs(rng, 2, 4, 4, 4)
  policy = CompressionPolicy(
    [
      LayerRule("conv", a_shape=(3, 3, 2, 4), b_shape=(1, 1, 2, 2), rank=4),
      # II over (4, 4, 8): A is C -> O1 (8 x 4), B is H*W -> O2 (16 x 4): full rank 32.
      LayerRule("fc", method="kfc", in_shape=(4, 4, 8), terms=[("II", (4, 4), 32)]),
    ]
  )
  new, report = compress(model, policy)
  assert [type(new.conv).__name__, type(new.fc).__name__] == ["KroneckerConv", "KFC"]
  assert [r.path for r in report.rows] == ["conv", "fc"]
  assert max(r.relative_error for r in report.rows) < 1e-12
  np.testing.assert_allclose(new(x), model(x), rtol=1e-10, atol=1e-12)


def test_inplace_compresses_the_model_itself(rng):
  model = MLP(nnx.Rngs(0))
  x = _inputs(rng, 3, 64, dtype=np.float32)
  before = model(x)
  same, _ = compress(model, LayerRule("fc2", method="low_rank", rank=10), inplace=True)
  assert same is model
  assert type(model.fc1) is nnx.Linear and type(model.fc2).__name__ == "LowRankLinear"
  np.testing.assert_allclose(model(x), before, rtol=1e-4, atol=1e-5)  # rank 10 is full


def test_container_paths_and_a_root_layer():
  seq = nnx.Sequential(_linear(8, 8, nnx.Rngs(0)), nnx.relu, _linear(8, 2, nnx.Rngs(1)))
  new, report = compress(seq, LayerRule("layers/2", method="low_rank", rank=1))
  assert type(new.layers[2]).__name__ == "LowRankLinear"
  assert report.rows[0].path == "layers/2"
  layer = _linear(8, 8, nnx.Rngs(0))
  new, _ = compress(layer, LayerRule("", method="low_rank", rank=2))
  assert type(new).__name__ == "LowRankLinear"


# ---------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------


def test_report_numbers():
  model = MLP(nnx.Rngs(0))
  policy = CompressionPolicy(
    [
      LayerRule("fc1", in_factors=(8, 8), out_factors=(4, 8), rank=2),
      LayerRule("fc2", method="low_rank", rank=4),
    ]
  )
  new, report = compress(model, policy, batch=3)
  fc1, fc2 = report.rows
  # fc1: 64*32 + 32 dense; 2 * (8*4 + 8*8) factors + 32 bias.
  assert (fc1.params_before, fc1.params_after) == (2080, 224)
  assert fc1.flops_before == 2 * 3 * 64 * 32
  # Factored, F_1 (8 -> 4) first: 2*3*64*4*2, then F_2 (8 -> 8) on 3*4*8
  # values: 2*96*8*2.
  assert fc1.flops_after == 2 * 3 * 64 * 4 * 2 + 2 * 96 * 8 * 2
  kernel = np.asarray(model.fc1.kernel[...], np.float64)
  approx = np_kron([np.asarray(f[...]) for f in (new.fc1.factor_0_0, new.fc1.factor_0_1)])
  assert fc1.relative_error == pytest.approx(
    np.linalg.norm(kernel - approx) / np.linalg.norm(kernel), rel=1e-5
  )
  assert 0 < fc1.relative_error < 1
  # fc2: 32*10 + 10 dense; 4 * (32 + 10) + 10; FLOPs 2 * batch * 4 * (32 + 10).
  assert (fc2.params_before, fc2.params_after) == (330, 178)
  assert (fc2.flops_before, fc2.flops_after) == (2 * 3 * 320, 2 * 3 * 4 * 42)
  assert (fc1.before, fc1.shape, fc2.after) == ("Linear", "64 -> 32", "LowRankLinear rank 4")
  assert (report.params_before, report.params_after) == (2410, 402)
  assert (report.model_params_before, report.model_params_after) == (2410, 402)
  table = str(report).splitlines()
  assert table[0].split()[:3] == ["path", "before", "after"]
  assert table[2].split()[0] == "fc1" and "224" in table[2] and "9.3x" in table[2]
  assert table[-2].split()[:3] == ["total", "2,410", "402"]
  assert table[-1].split()[:3] == ["model", "2,410", "402"]


# ---------------------------------------------------------------------------
# Policies
# ---------------------------------------------------------------------------


def test_first_matching_rule_wins_and_keep():
  model = MLP(nnx.Rngs(0))
  policy = CompressionPolicy(
    [LayerRule("fc2", method="keep"), LayerRule("fc.", method="low_rank", rank=2)]
  )
  new, report = compress(model, policy)
  assert type(new.fc1).__name__ == "LowRankLinear" and type(new.fc2) is nnx.Linear
  assert [r.path for r in report.rows] == ["fc1"]
  assert policy.rule_for("fc2").method == "keep" and policy.rule_for("fc10") is None


@pytest.mark.parametrize(
  "rule,expected",
  [
    (LayerRule("fc1", compression=8), 64 * 32 // 8),
    (LayerRule("fc1", max_params=300), 300),
    (LayerRule("fc1", method="low_rank", compression=8), 64 * 32 // 8),
    (
      LayerRule("fc1", method="kfc", in_shape=(2, 4, 8), terms=[("II", (4, 8))], max_params=500),
      500,
    ),
  ],
  ids=["kronecker-ratio", "kronecker-params", "low_rank", "kfc"],
)
def test_budgets_are_met_by_the_largest_layer(rule, expected):
  new, report = compress(MLP(nnx.Rngs(0)), rule)
  factors = report.rows[0].params_after - 32  # minus the bias
  assert factors <= expected
  if rule.method == "low_rank":
    assert new.fc1.rank == expected // (64 + 32)
  if rule.method == "kfc":  # II(4, 8) over (2, 4, 8): 8*4 + 8*8 = 96 per rank
    assert new.fc1.layout.terms[0].rank == expected // 96


def test_conv_budget_uses_suggest_conv_factors():
  new, report = compress(CNN(nnx.Rngs(0)), LayerRule("conv", compression=4))
  assert type(new.conv).__name__ == "KroneckerConv"
  row = report.rows[0]
  assert row.params_after - 8 <= (3 * 3 * 4 * 8) // 4 and row.shape == "3x3x4x8"


# ---------------------------------------------------------------------------
# Linen
# ---------------------------------------------------------------------------


def test_linen_full_rank_is_exact_and_params_untouched(x64, rng):
  module = LinenMLP(F64)
  x = _inputs(rng, 4, 64)
  variables = module.init(jax.random.key(0), x)
  policy = [
    LayerRule("Dense_0", in_factors=(8, 8), out_factors=(4, 8), rank=32),
    LayerRule("Dense_1", method="low_rank", rank=10),
  ]
  compressed, new_vars, report = compress_linen_params(module, variables, policy, x)
  assert sorted(new_vars["params"]["Dense_0"]) == ["bias", "factor_0_0", "factor_0_1"]
  assert sorted(new_vars["params"]["Dense_1"]) == ["bias", "u", "v"]
  assert "kernel" in variables["params"]["Dense_0"]  # the input is not modified
  assert new_vars["params"]["LayerNorm_0"] is not None
  np.testing.assert_allclose(
    compressed.apply(new_vars, x), module.apply(variables, x), rtol=1e-10, atol=1e-12
  )
  np.testing.assert_allclose(
    jax.jit(compressed.apply)(new_vars, x), module.apply(variables, x), rtol=1e-10, atol=1e-12
  )
  assert [r.path for r in report.rows] == ["Dense_0", "Dense_1"]
  assert report.rows[1].params_after == 10 * (32 + 10) + 10
  assert report.model_params_before - report.model_params_after == (
    report.params_before - report.params_after
  )


def test_linen_cnn_full_rank_is_exact(x64, rng):
  module = LinenCNN()
  x = _inputs(rng, 2, 8, 8, 4)
  variables = module.init(jax.random.key(0), x)
  policy = CompressionPolicy(
    [
      LayerRule("Conv_0", a_shape=(3, 3, 2, 4), b_shape=(1, 1, 2, 2), rank=4),
      # the Dense reads the 4x4x8 map: II's A is 8 x 2, B is 16 x 5, full rank 16.
      LayerRule("Dense_0", method="kfc", in_shape=(4, 4, 8), terms=[("II", (2, 5), 16)]),
    ]
  )
  compressed, new_vars, report = compress_linen_params(module, variables, policy, x)
  assert compressed.twins["Conv_0"].strides == 2
  assert max(r.relative_error for r in report.rows) < 1e-12
  np.testing.assert_allclose(
    compressed.apply(new_vars, x), module.apply(variables, x), rtol=1e-10, atol=1e-12
  )


def test_linen_errors_leave_nothing_half_done():
  module = LinenMLP()
  x = jnp.ones((1, 64))
  variables = module.init(jax.random.key(0), x)
  with pytest.raises(TypeError, match=r"LayerNorm_0.*LayerNorm"):
    compress_linen_params(module, variables, LayerRule("LayerNorm_0"), x)
  with pytest.warns(UserWarning, match="Dense_0 \\(Dense\\), Dense_1 \\(Dense\\)"):
    compress_linen_params(module, variables, LayerRule("nothing"), x)
  with pytest.raises(ValueError, match=r"Dense_0.*max_params=2"):
    compress_linen_params(module, variables, LayerRule("Dense_.", max_params=2), x)
  with pytest.raises(TypeError, match="'params' collection"):
    compress_linen_params(module, {"kernel": 1}, LayerRule("Dense_0"), x)


# ---------------------------------------------------------------------------
# Fine-tuning
# ---------------------------------------------------------------------------


def test_distillation_step_trains_only_the_factors(rng):
  teacher = MLP(nnx.Rngs(0))
  student, _ = compress(teacher, LayerRule("fc1", method="low_rank", rank=4))
  x = _inputs(rng, 16, 64, dtype=np.float32)
  teacher_logits = teacher(x)
  factor = kfc_jax.nnx.KroneckerFactor
  optimizer = nnx.Optimizer(student, optax.sgd(0.5), wrt=factor)
  frozen = jax.tree.map(np.asarray, nnx.state(student, nnx.Not(factor)))
  u_before = np.asarray(student.fc1.u[...])

  def loss_fn(model):
    return kfc_jax.distillation_loss(model(x), teacher_logits, temperature=2.0)

  @nnx.jit
  def step(model, optimizer):
    loss, grads = nnx.value_and_grad(loss_fn, argnums=nnx.DiffState(0, factor))(model)
    optimizer.update(model, grads)
    return loss

  first = step(student, optimizer)
  second = step(student, optimizer)
  assert 0 < second < first
  assert not np.allclose(student.fc1.u[...], u_before)
  jax.tree.map(
    np.testing.assert_array_equal,
    frozen,
    jax.tree.map(np.asarray, nnx.state(student, nnx.Not(factor))),
  )


# ---------------------------------------------------------------------------
# Checkpoints and merging back
# ---------------------------------------------------------------------------


def test_orbax_round_trip_is_bit_identical(tmp_path, rng):
  policy = [
    LayerRule("conv", a_shape=(3, 3, 2, 4), b_shape=(1, 1, 2, 2), rank=2),
    LayerRule("fc", method="kfc", in_shape=(4, 4, 8), terms=[("II", (4, 4), 3)]),
  ]
  model, _ = compress(CNN(nnx.Rngs(0)), policy)
  x = _inputs(rng, 2, 4, 4, 4, dtype=np.float32)
  expected = model(x)
  graphdef, state = nnx.split(model)
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(tmp_path / "ckpt", state)
  checkpointer.wait_until_finished()
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
  restored = checkpointer.restore(tmp_path / "ckpt", abstract)
  checkpointer.close()
  again = nnx.merge(graphdef, restored)
  assert jax.tree.structure(restored) == jax.tree.structure(state)
  np.testing.assert_array_equal(again(x), expected)


def test_merge_back_to_dense(x64, rng):
  model = MLP(nnx.Rngs(0), F64)
  new, _ = compress(model, LayerRule("fc1", in_factors=(8, 8), out_factors=(4, 8), rank=3))
  layer = new.fc1
  kernel = layer.materialize()
  np.testing.assert_allclose(
    kernel, np_kron([np.asarray(f[...]) for f in (layer.factor_0_0, layer.factor_0_1)]), rtol=1e-12
  )
  dense = _linear(64, 32, nnx.Rngs(5), F64)
  dense.kernel.set_value(kernel)
  dense.bias.set_value(layer.bias[...])
  x = _inputs(rng, 4, 64)
  np.testing.assert_allclose(dense(x), layer(x), rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------------------
# Errors: clear, and the model untouched
# ---------------------------------------------------------------------------


def _kinds(model):
  return {path: type(m).__name__ for path, m in nnx.iter_modules(model)}


def test_unmatched_pattern_warns_with_the_layer_paths():
  model = CNN(nnx.Rngs(0))
  kinds = _kinds(model)
  with pytest.warns(
    UserWarning,
    match=r"'dense'.*conv \(Conv\), fc \(Linear\), norm"
    r" \(LayerNorm\), out \(Linear\)",
  ):
    same, report = compress(model, LayerRule("dense"), inplace=True)
  assert same is model and report.rows == () and _kinds(model) == kinds
  with pytest.warns(UserWarning, match="rule 1 .*earlier rule"):
    compress(model, [LayerRule("fc", method="keep"), LayerRule("fc", method="low_rank", rank=2)])


@pytest.mark.parametrize(
  "policy,error,match",
  [
    (
      [LayerRule("fc", method="low_rank", rank=2), LayerRule("out", max_params=3)],
      ValueError,
      "'out'.*rule 1.*max_params=3",
    ),
    (
      [LayerRule("fc", method="low_rank", rank=2), LayerRule("norm")],
      TypeError,
      "'norm'.*LayerNorm.*nnx.Linear and 2-D nnx.Conv",
    ),
    (
      [LayerRule("fc", method="low_rank", rank=2), LayerRule("conv", method="low_rank", rank=2)],
      TypeError,
      "'conv'.*convolution",
    ),
    ([LayerRule("out", in_factors=(3, 3), out_factors=(2, 5))], ValueError, "'out'.*in_factors"),
    (
      [LayerRule("fc", method="kfc", in_shape=(2, 2, 8), terms=["II"])],
      ValueError,
      "'fc'.*in_shape",
    ),
  ],
  ids=["budget", "layer-type", "conv-method", "bad-shapes", "kfc-in-shape"],
)
def test_errors_leave_the_model_untouched(policy, error, match):
  model = CNN(nnx.Rngs(0))
  kinds = _kinds(model)
  with pytest.raises(error, match=match):
    compress(model, policy, inplace=True)
  assert _kinds(model) == kinds


def test_already_compressed_layer_is_a_type_error():
  model, _ = compress(MLP(nnx.Rngs(0)), LayerRule("fc1", method="low_rank", rank=2))
  with pytest.raises(TypeError, match="LowRankLinear"):
    compress(model, LayerRule("fc1", method="low_rank", rank=1))
  with pytest.raises(ValueError, match="in place"):
    compress(_linear(4, 4, nnx.Rngs(0)), LayerRule(""), inplace=True)
  with pytest.raises(TypeError, match=r"nnx\.Module"):
    compress({"w": 1}, LayerRule("w"))
  with pytest.raises(TypeError, match="policy"):
    compress(model, "fc1")


@pytest.mark.parametrize(
  "kwargs,match",
  [
    (
      dict(
        pattern="fc(",
      ),
      "regular expression",
    ),
    (dict(pattern="fc", method="svd"), "method"),
    (dict(pattern="fc", compression=0.5), "compression"),
    (dict(pattern="fc", compression=2, max_params=10), "at most one"),
    (dict(pattern="fc", compression=2, in_factors=(2, 2)), "either a budget"),
    (dict(pattern="fc", method="kfc", terms=["II"]), "in_shape"),
    (dict(pattern="fc", method="low_rank"), "rank, compression or max_params"),
    (dict(pattern="fc", rank=0), "rank"),
  ],
)
def test_bad_rules(kwargs, match):
  with pytest.raises(ValueError, match=match):
    LayerRule(**kwargs)
