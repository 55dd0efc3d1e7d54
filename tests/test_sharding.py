"""Scion on sharded parameters (8 simulated CPU devices, see conftest.py).

Explicit-axis meshes (``jax.make_mesh``) and Auto-axis meshes (``jax.sharding.Mesh``); 1-D,
2-D and 3-D meshes; FSDP, TP and FSDP+TP layouts. The sharded update must equal the
single-device one and keep the params' sharding on updates and optimizer state.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import lmo_optax

pytestmark = pytest.mark.skipif(
    jax.device_count() < 8, reason="needs 8 devices (XLA_FLAGS set in conftest.py)"
)

MESHES = {
    "1d": ((8,), ("data",)),
    "2d": ((2, 4), ("data", "model")),
    "3d": ((2, 2, 2), ("data", "fsdp", "model")),
}


def make_mesh(kind: str, axis_type: AxisType) -> jax.sharding.Mesh:
    shape, names = MESHES[kind]
    return jax.make_mesh(shape, names, axis_types=(axis_type,) * len(shape))


def layout_specs(layout: str, names: tuple[str, ...]):
    data = names[0] if len(names) < 3 else names[:2]  # FSDP over every non-model axis
    model = names[-1]
    kernel = {"fsdp": P(data, None), "tp": P(None, model), "fsdp_tp": P(data, model)}[layout]
    if len(names) == 1 and layout == "fsdp_tp":
        kernel = P(None, names[0])  # one axis: shard the other dimension
    return {
        "embed": {"embedding": P(None, model) if layout != "fsdp" else P(data, None)},
        "mlp": {
            "fc": {"kernel": kernel, "bias": P(model)},
            "proj": {"kernel": P(*reversed(tuple(kernel)))},
        },
        "scanned": {"kernel": P(None, *kernel)},
        "lm_head": {"kernel": kernel},
        "norm": {"scale": P()},
    }


def make_params():
    k = iter(jax.random.split(jax.random.key(0), 16))
    shapes = {
        "embed": {"embedding": (64, 32)},
        "mlp": {"fc": {"kernel": (32, 64), "bias": (64,)}, "proj": {"kernel": (64, 32)}},
        "scanned": {"kernel": (2, 32, 64)},
        "lm_head": {"kernel": (32, 64)},
        "norm": {"scale": (32,)},
    }
    return jax.tree.map(
        lambda s: jax.random.normal(next(k), s), shapes, is_leaf=lambda x: isinstance(x, tuple)
    )


def shard(tree, specs, mesh):
    return jax.tree.map(lambda x, s: jax.device_put(x, NamedSharding(mesh, s)), tree, specs)


@pytest.mark.parametrize("axis_type", [AxisType.Explicit, AxisType.Auto], ids=["explicit", "auto"])
@pytest.mark.parametrize("mesh_kind", sorted(MESHES))
@pytest.mark.parametrize("layout", ["fsdp", "tp", "fsdp_tp"])
def test_sharded_update_equals_single_device(axis_type, mesh_kind, layout):
    params = make_params()
    grads = jax.tree.map(lambda x: jnp.cos(3 * x), params)
    tx = lmo_optax.scion(0.1, "gpt")
    state = tx.init(params)
    state = tx.update(grads, state, params)[1]  # one step so the average is non-trivial
    ref_updates, ref_state = jax.jit(tx.update)(grads, state, params)

    mesh = make_mesh(mesh_kind, axis_type)
    specs = layout_specs(layout, mesh.axis_names)
    with jax.set_mesh(mesh):
        sp, sg = shard(params, specs, mesh), shard(grads, specs, mesh)
        s_state = tx.init(sp)
        s_state = tx.update(sg, s_state, sp)[1]
        step = jax.jit(tx.update)
        updates, new_state = step(sg, s_state, sp)
        compiled = step._cache_size()  # the cache is shared with the reference's jit above
        step(sg, new_state, sp)
        recompiled = step._cache_size() != compiled

    for u, r in zip(jax.tree.leaves(updates), jax.tree.leaves(ref_updates), strict=True):
        np.testing.assert_allclose(np.asarray(u), np.asarray(r), rtol=1e-4, atol=2e-6)
    avg = new_state[0].average
    for tree in (updates, avg):
        for x, p in zip(jax.tree.leaves(tree), jax.tree.leaves(sp), strict=True):
            assert x.sharding.is_equivalent_to(p.sharding, x.ndim), (x.sharding, p.sharding)
    ref_avg = ref_state[0].average
    for x, r in zip(jax.tree.leaves(avg), jax.tree.leaves(ref_avg), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(r), rtol=1e-6, atol=1e-7)
    if axis_type == AxisType.Explicit:
        assert not recompiled  # no recompilation on the second call
    # Under Auto axes the FSDP layout recompiles once on the second step: jit's output specs
    # are equivalent to, but spelled differently from, the inputs' (e.g. the scanned kernel's
    # state goes P(None, 'data', None) -> P(None, 'data')), and jit keys on the spelling. A
    # jitted init is worse under Auto axes: zeros_like does not propagate sharding there, so
    # the state comes out replicated unless out_shardings is given. Open in issue 4.


def test_training_step_on_explicit_mesh_matches_single_device():
    params = make_params()
    tx = lmo_optax.unconstrained_scion(optax.linear_schedule(0.1, 0.0, 4), "gpt")

    def loss(p):
        return sum(jnp.sum(jnp.tanh(x) ** 2) for x in jax.tree.leaves(p))

    @jax.jit
    def train_step(p, s):
        g = jax.grad(loss)(p)
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s

    p_ref, s_ref = params, tx.init(params)
    for _ in range(3):
        p_ref, s_ref = train_step(p_ref, s_ref)
    mesh = make_mesh("2d", AxisType.Explicit)
    with jax.set_mesh(mesh):
        p = shard(params, layout_specs("fsdp_tp", mesh.axis_names), mesh)
        s = tx.init(p)
        for _ in range(3):
            p, s = train_step(p, s)
    for a, b in zip(jax.tree.leaves(p), jax.tree.leaves(p_ref), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)
