"""Layers on a mesh of 8 CPU devices: sharding metadata reaches every factor.

The device count is fixed when JAX starts, so the check runs in a subprocess
with ``XLA_FLAGS=--xla_force_host_platform_device_count=8``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import jax, jax.numpy as jnp, numpy as np
    import flax.linen as nn
    from flax import nnx
    from jax.sharding import NamedSharding, PartitionSpec as P
    import kfc_jax

    assert jax.device_count() == 8, jax.devices()
    # Auto axes: the compiler places the intermediates. (With explicit axes,
    # sharding two factors' outputs on one mesh axis is contradictory: y's
    # axes o1 and o2 cannot both live on "model".)
    auto = (jax.sharding.AxisType.Auto,) * 2
    mesh = jax.make_mesh((2, 4), ("data", "model"), axis_types=auto)
    out = (None, None, "model")   # every factor's output axis on "model"
    layers = {
        "KroneckerLinear": lambda r: kfc_jax.nnx.KroneckerLinear(
            64, 64, terms=[((8, 8), (8, 8), 4), ((4, 16), (16, 4))],
            factor_metadata={"out_sharding": out},
            bias_metadata={"out_sharding": ("model",)}, rngs=r),
        "KFC": lambda r: kfc_jax.nnx.KFC(
            (2, 2, 16), 64, terms=[("II", (16, 4)), ("III", (8, 8)), ("CHW", (4, 4, 4))],
            factor_metadata={"out_sharding": out},
            bias_metadata={"out_sharding": ("model",)}, rngs=r),
        "LowRankLinear": lambda r: kfc_jax.nnx.LowRankLinear(
            64, 32, rank=8,
            factor_metadata=[{"out_sharding": (None, "model")},
                             {"out_sharding": ("model", None)}],
            bias_metadata={"out_sharding": ("model",)}, rngs=r),
        "KDL": lambda r: kfc_jax.nnx.KDL(   # branches on "model"
            64, 64, in_factors=(8, 8), out_factors=(8, 8), rank=4,
            factor_metadata={"out_sharding": ("model", None, None)},
            bias_metadata={"out_sharding": ("model", None, None)}, rngs=r),
    }
    x = jax.random.normal(jax.random.key(1), (16, 64))
    for name, make in layers.items():
        with nnx.use_eager_sharding(False):   # no mesh: plain arrays
            reference = make(nnx.Rngs(0))
        with jax.set_mesh(mesh):
            layer = make(nnx.Rngs(0))
            params = nnx.state(layer, nnx.Param)
            specs = nnx.get_partition_spec(params)
            for (path, var), (_, spec) in zip(nnx.to_flat_state(params),
                                              nnx.to_flat_state(specs)):
                want = var.get_metadata()["out_sharding"]
                assert tuple(spec.get_value()) == tuple(want), (name, path, spec, want)
                sharding = var[...].sharding
                assert isinstance(sharding, NamedSharding), (name, path, sharding)
                assert tuple(sharding.spec) == tuple(want), (name, path, sharding)
            factors = nnx.state(layer, kfc_jax.nnx.KroneckerFactor)
            assert len(nnx.to_flat_state(factors)) >= 2
            xs = jax.device_put(x, NamedSharding(mesh, P("data", None)))
            y = nnx.jit(lambda m, v: m(v))(layer, xs)
        np.testing.assert_allclose(np.asarray(y), np.asarray(reference(x)),
                                   rtol=1e-5, atol=1e-5, err_msg=name)
        print(name, "ok")

    # Explicit axes work with one sharded factor per term (per-factor metadata).
    explicit = jax.make_mesh((2, 4), ("data", "model"),
                             axis_types=(jax.sharding.AxisType.Explicit,) * 2)
    make = lambda r: kfc_jax.nnx.KroneckerLinear(
        64, 64, in_factors=(8, 8), out_factors=(8, 8), rank=2,
        factor_metadata=[{"out_sharding": (None, None, "model")}, {}], rngs=r)
    with nnx.use_eager_sharding(False):
        reference = make(nnx.Rngs(0))
    with jax.set_mesh(explicit):
        layer = make(nnx.Rngs(0))
        assert tuple(layer.factor_0_0[...].sharding.spec) == (None, None, "model")
        xs = jax.device_put(x, NamedSharding(explicit, P("data", None)))
        y = nnx.jit(lambda m, v: m(v))(layer, xs)
    np.testing.assert_allclose(np.asarray(y), np.asarray(reference(x)), rtol=1e-5,
                               atol=1e-5)
    print("explicit ok")

    # Linen: boxed names become shardings of the initialised params.
    twin = kfc_jax.linen.KFC((2, 2, 16), 64, terms=[("II", (16, 4))],
                             factor_metadata={"out_sharding": out})
    abstract = jax.eval_shape(twin.init, jax.random.key(0), jnp.ones((1, 64)))
    shardings = nn.get_sharding(abstract, mesh)
    variables = jax.jit(twin.init, out_shardings=shardings)(
        jax.random.key(0), jnp.ones((1, 64)))
    for name in ("factor_0_0", "factor_0_1"):
        assert tuple(variables["params"][name].value.sharding.spec) == out, name
    print("linen ok")
""")


def test_layers_shard_over_8_cpu_devices():
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
  result = subprocess.run(
    [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300
  )
  assert result.returncode == 0, result.stdout + result.stderr
  for name in ("KroneckerLinear", "KFC", "LowRankLinear", "KDL", "explicit", "linen"):
    assert f"{name} ok" in result.stdout
