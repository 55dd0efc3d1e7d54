"""Scion on sharded parameters (8 simulated CPU devices, see conftest.py).

Every Newton–Schulz strategy (replicate, distribute, sharded) × Explicit-axis meshes
(``jax.make_mesh``) and Auto-axis meshes × 1-D, 2-D and 3-D meshes × FSDP, TP and FSDP+TP layouts:
the sharded update must equal the single-device one, keep the params' sharding on updates and
optimizer state, and not recompile on the second step. The collectives of the compiled programs
are counted and pinned, and ``pmap`` with the work split over its axis is checked too.
"""

import collections
import re

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
STRATEGIES = ("replicate", "distribute", "sharded")


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
        "attn": {
            "query": {"kernel": kernel},  # same shape as "out", transposed layout
            "out": {"kernel": P(*reversed(tuple(kernel)))},
        },
        "mlp": {
            "fc": {"kernel": kernel, "bias": P(model)},
            "proj": {"kernel": P(*reversed(tuple(kernel)))},
        },
        "scanned": {"kernel": P(None, *kernel)},
        "lm_head": {"kernel": kernel},
        "norm": {"scale": P()},
    }


SHAPES = {
    "embed": {"embedding": (64, 32)},
    "attn": {"query": {"kernel": (32, 32)}, "out": {"kernel": (32, 32)}},
    "mlp": {"fc": {"kernel": (32, 64), "bias": (64,)}, "proj": {"kernel": (64, 32)}},
    "scanned": {"kernel": (2, 32, 64)},
    "lm_head": {"kernel": (32, 64)},
    "norm": {"scale": (32,)},
}


def make_params():
    leaves, treedef = jax.tree.flatten(SHAPES, is_leaf=lambda x: isinstance(x, tuple))
    keys = jax.random.split(jax.random.key(0), len(leaves))
    return treedef.unflatten([jax.random.normal(k, s) for k, s in zip(keys, leaves)])


def as_jax_spells_it(spec: P, ndim: int, axis_type: AxisType) -> P:
    """The spelling of ``spec`` that jit gives its outputs: one entry per axis under Explicit
    axes (the type's spelling), no trailing Nones under Auto (the compiler's). jit caches on
    the spelling, so inputs spelled otherwise recompile once when outputs are fed back."""
    entries = list(spec) + [None] * (ndim - len(spec))
    if axis_type == AxisType.Auto:
        while entries and entries[-1] is None:
            entries.pop()
    return P(*entries)


def shard(tree, specs, mesh):
    axis_type = mesh.axis_types[0]

    def put(x, spec):
        return jax.device_put(x, NamedSharding(mesh, as_jax_spells_it(spec, x.ndim, axis_type)))

    return jax.tree.map(put, tree, specs)


def assert_same_layout(tree, params):
    for x, p in zip(jax.tree.leaves(tree), jax.tree.leaves(params), strict=True):
        assert x.sharding.is_equivalent_to(p.sharding, x.ndim), (x.sharding, p.sharding)


@pytest.fixture(scope="module")
def reference():
    """Params, gradients, a non-trivial state after one step, and the next single-device step."""
    params = make_params()
    grads = jax.tree.map(lambda x: jnp.cos(3 * x), params)
    tx = lmo_optax.scion(0.1, "gpt")
    state = jax.jit(tx.update)(grads, tx.init(params), params)[1]
    updates, new_state = jax.jit(tx.update)(grads, state, params)
    return params, grads, state, updates, new_state


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("axis_type", [AxisType.Explicit, AxisType.Auto], ids=["explicit", "auto"])
@pytest.mark.parametrize("mesh_kind", sorted(MESHES))
@pytest.mark.parametrize("layout", ["fsdp", "tp", "fsdp_tp"])
def test_sharded_update_equals_single_device(reference, strategy, axis_type, mesh_kind, layout):
    params, grads, state, ref_updates, ref_state = reference
    tx = lmo_optax.scion(0.1, "gpt", ns_sharding=strategy)
    mesh = make_mesh(mesh_kind, axis_type)
    specs = layout_specs(layout, mesh.axis_names)
    with jax.set_mesh(mesh):
        sp, sg = shard(params, specs, mesh), shard(grads, specs, mesh)
        rest = shard(state[1:], jax.tree.map(lambda _: P(), state[1:]), mesh)
        s_state = (state[0]._replace(average=shard(state[0].average, specs, mesh)), *rest)
        step = jax.jit(tx.update)
        updates, new_state = step(sg, s_state, sp)
        step(sg, new_state, sp)  # the state the step returns goes straight back in
        assert step._cache_size() == 1, "recompiled on the second step"

    for u, r in zip(jax.tree.leaves(updates), jax.tree.leaves(ref_updates), strict=True):
        np.testing.assert_allclose(np.asarray(u), np.asarray(r), rtol=1e-4, atol=2e-6)
    avg = new_state[0].average
    assert_same_layout(updates, sp)
    assert_same_layout(avg, sp)
    for x, r in zip(jax.tree.leaves(avg), jax.tree.leaves(ref_state[0].average), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(r), rtol=1e-6, atol=1e-7)


# Collectives in the compiled update of scale_by_lmo("gpt") on 8 devices (1-D mesh), FSDP
# layout. Spectral parameters: fc (32, 64), proj (64, 32), the scanned (2, 32, 64) kernel (all
# wide 32×64 matrices, sharded by rows once proj is transposed), and query/out (32, 32), sharded
# by rows and by columns. Both all-reduces present in every strategy are the non-spectral LMOs'
# reductions (RMS of the sharded bias, ColNorm of the embedding).
#   replicate:  one all-gather per Spectral parameter (5).
#   distribute: no all-gather. Per shape group an all-to-all into the stack sharded by matrix
#               and one back (2 groups: 4), plus one each way for "out", whose columns-sharded
#               layout differs from the group's rows staging (Explicit: 6; under Auto axes XLA
#               splits one of them in two: 7).
#   sharded:    an all-to-all each way for the 4 parameters not already sharded along their
#               long (column) axis (8); Gram all-reduces: 2 per wide parameter (Gram
#               Newton–Schulz with one restart: 6) and 1 per step for the square ones, which
#               take the standard iteration (2 × 5 = 10); with the 2 above, 18.
EXPECTED_COLLECTIVES = {
    ("replicate", "explicit"): {"all-gather": 5, "all-reduce": 2},
    ("replicate", "auto"): {"all-gather": 5, "all-reduce": 2},
    ("distribute", "explicit"): {"all-to-all": 6, "all-reduce": 2},
    ("distribute", "auto"): {"all-to-all": 7, "all-reduce": 2},
    ("sharded", "explicit"): {"all-to-all": 8, "all-reduce": 18},
    ("sharded", "auto"): {"all-to-all": 8, "all-reduce": 18},
}
COLLECTIVES = ("all-gather", "all-to-all", "all-reduce", "reduce-scatter", "collective-permute")


def count_collectives(hlo: str) -> dict[str, int]:
    counts = collections.Counter()
    for line in hlo.splitlines():
        for op in COLLECTIVES:
            if re.search(rf" {op}(-start)?\(", line):
                counts[op] += 1
    return dict(counts)


@pytest.mark.parametrize("axis_type", [AxisType.Explicit, AxisType.Auto], ids=["explicit", "auto"])
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_collective_counts_are_pinned(strategy, axis_type):
    grads = jax.tree.map(lambda x: jnp.cos(3 * x), make_params())
    tx = lmo_optax.scale_by_lmo("gpt", ns_sharding=strategy)
    mesh = make_mesh("1d", axis_type)
    with jax.set_mesh(mesh):
        sg = shard(grads, layout_specs("fsdp", mesh.axis_names), mesh)
        hlo = jax.jit(lambda g: tx.update(g, optax.EmptyState())[0]).lower(sg).compile().as_text()
    kind = "explicit" if axis_type == AxisType.Explicit else "auto"
    assert count_collectives(hlo) == EXPECTED_COLLECTIVES[strategy, kind]


def test_auto_strategy_distributes_groups_and_shards_lone_large_matrices():
    where = lmo_optax.sharding.Placement(None, ("data",), 8)
    # 48 square hidden matrices of GPT-2 small: each device takes 6.
    assert lmo_optax.sharding.choose_strategy(48, 768, 768, 5, jnp.float32, where) == "distribute"
    # One (768, 50304) embedding: 8-way products on the long axis beat one device doing all.
    assert lmo_optax.sharding.choose_strategy(1, 768, 50304, 5, jnp.float32, where) == "sharded"
    # Nothing divides: replicate.
    assert lmo_optax.sharding.choose_strategy(1, 7, 9, 5, jnp.float32, where) == "replicate"


def test_square_matrices_of_one_shape_keep_their_own_layouts_under_auto_axes():
    # Regression test for the shard_alike lowering cache (lmo_optax.sharding): two matrices of
    # the same shape, one sharded by rows and one by columns, must not be forced to one layout.
    params = make_params()
    mesh = make_mesh("1d", AxisType.Auto)
    with jax.set_mesh(mesh):
        sp = shard(params, layout_specs("tp", mesh.axis_names), mesh)
        tx = lmo_optax.unconstrained_scion(0.1, "gpt", ns_sharding="distribute")
        updates, _ = jax.jit(tx.update)(sp, tx.init(sp), sp)
    for name in ("query", "out"):
        update, param = updates["attn"][name]["kernel"], sp["attn"][name]["kernel"]
        assert update.sharding.is_equivalent_to(param.sharding, 2), (name, update.sharding)
    assert not sp["attn"]["query"]["kernel"].sharding.is_equivalent_to(
        sp["attn"]["out"]["kernel"].sharding, 2
    )


def test_pmap_splits_newton_schulz_over_its_axis():
    params = make_params()
    grads = jax.tree.map(lambda x: jnp.cos(3 * x), params)
    tx_ref = lmo_optax.scion(0.1, "gpt")
    ref, _ = jax.jit(tx_ref.update)(grads, tx_ref.init(params), params)
    replicated = jax.tree.map(lambda x: jnp.broadcast_to(x, (8, *x.shape)), (params, grads))

    for axis_name in ("batch", None):  # split over the pmap axis / every device does all
        tx = lmo_optax.scion(0.1, "gpt", ns_axis_name=axis_name)

        def step(p, g, tx=tx):
            g = jax.lax.pmean(g, "batch")  # the user's data-parallel gradient average
            return tx.update(g, tx.init(p), p)[0]

        stepped = jax.pmap(step, axis_name="batch")
        updates = stepped(*replicated)
        for u, r in zip(jax.tree.leaves(updates), jax.tree.leaves(ref), strict=True):
            for device in range(8):
                np.testing.assert_allclose(np.asarray(u[device]), r, rtol=1e-4, atol=2e-6)
        jaxpr = str(jax.make_jaxpr(stepped)(*replicated))
        assert ("all_gather" in jaxpr) == (axis_name is not None)


def test_sharded_strategy_rejects_pmap_axis():
    tx = lmo_optax.scale_by_lmo("auto", ns_sharding="sharded", ns_axis_name="batch")
    x = jnp.ones((8, 16, 16))
    with pytest.raises(ValueError, match="sharded"):
        jax.pmap(lambda g: tx.update(g, optax.EmptyState())[0], axis_name="batch")(x)


def test_unknown_strategy_is_rejected_at_construction():
    with pytest.raises(ValueError, match="unknown Newton–Schulz sharding strategy 'spread'"):
        lmo_optax.scion(0.1, ns_sharding="spread")


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


@pytest.mark.parametrize("axis_type", [AxisType.Explicit, AxisType.Auto], ids=["explicit", "auto"])
@pytest.mark.parametrize(
    "norm",
    [lmo_optax.ColNorm(), lmo_optax.RowNorm(), lmo_optax.Sign(), lmo_optax.RMS()],
    ids=lambda n: type(n).__name__,
)
def test_elementwise_lmos_never_gather_the_matrix(norm, axis_type):
    g = jnp.cos(jnp.arange(64 * 32, dtype=jnp.float32).reshape(64, 32))
    tx = lmo_optax.scale_by_lmo([lmo_optax.Rule("*", norm)])
    expected = tx.update({"w": g}, optax.EmptyState())[0]["w"]
    mesh = make_mesh("2d", axis_type)
    with jax.set_mesh(mesh):
        sg = {"w": jax.device_put(g, NamedSharding(mesh, P("data", "model")))}
        step = jax.jit(lambda g: tx.update(g, optax.EmptyState())[0])
        counts = count_collectives(step.lower(sg).compile().as_text())
        out = step(sg)["w"]
    assert "all-gather" not in counts and "all-to-all" not in counts, counts
    assert set(counts) <= {"all-reduce"}  # only the norms' reductions
    assert out.sharding.is_equivalent_to(sg["w"].sharding, 2)
    np.testing.assert_allclose(np.asarray(out), np.asarray(expected), rtol=1e-5, atol=1e-7)


def test_mesh_passed_in_without_set_mesh(reference):
    # A jax.sharding.Mesh user who shards with device_put and never calls jax.set_mesh.
    params, grads, state, ref_updates, _ = reference
    mesh = make_mesh("2d", AxisType.Auto)
    specs = layout_specs("fsdp_tp", mesh.axis_names)
    sp, sg = shard(params, specs, mesh), shard(grads, specs, mesh)
    tx = lmo_optax.scion(0.1, "gpt", ns_sharding="distribute", ns_mesh=mesh)
    s_state = (state[0]._replace(average=shard(state[0].average, specs, mesh)), *state[1:])
    step = jax.jit(tx.update)
    updates, _ = step(sg, s_state, sp)
    assert "all-to-all" in count_collectives(step.lower(sg, s_state, sp).compile().as_text())
    for u, r in zip(jax.tree.leaves(updates), jax.tree.leaves(ref_updates), strict=True):
        np.testing.assert_allclose(np.asarray(u), np.asarray(r), rtol=1e-4, atol=2e-6)
    assert_same_layout(updates, sp)
