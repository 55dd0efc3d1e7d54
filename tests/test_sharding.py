"""Scion on sharded parameters (8 simulated CPU devices, see conftest.py).

Every Newton–Schulz strategy (replicate, distribute, sharded) × Explicit-axis meshes
(``jax.make_mesh``) and Auto-axis meshes × 1-D, 2-D and 3-D meshes × FSDP, TP and FSDP+TP layouts:
the sharded update must equal the single-device one, keep the params' sharding on updates and
optimizer state, and not recompile on the second step. The collectives of the compiled programs
are checked against what each strategy promises (which arrays move, how many bytes), and
``pmap`` with the work split over its axis is checked too.
"""

import collections
import math
import re
import typing

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import lmo_optax
from lmo_optax import layouts, strategies
from lmo_optax.layouts import Placement
from lmo_optax.strategies import Group, choose_strategy

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
    axes (the type's spelling), no trailing Nones under Auto (the compiler's), so that inputs
    and fed-back outputs are the same arguments to jit."""
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


def like_fresh(state, fresh):
    """The reference's state after one step, laid out as init lays it out."""

    def put(x, f):
        return jax.device_put(x, f.sharding) if isinstance(f.sharding, NamedSharding) else x

    return jax.tree.map(put, state, fresh)


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
def test_sharded_update_equals_single_device(
    reference, compiles, strategy, axis_type, mesh_kind, layout
):
    params, grads, state, ref_updates, ref_state = reference
    tx = lmo_optax.scion(0.1, "gpt", ns_sharding=strategy)
    mesh = make_mesh(mesh_kind, axis_type)
    specs = layout_specs(layout, mesh.axis_names)
    with jax.set_mesh(mesh):
        sp, sg = shard(params, specs, mesh), shard(grads, specs, mesh)
        fresh = tx.init(sp)  # outside jit: reads the params' layouts (Auto axes: recorded)
        assert_same_layout(fresh[0].average, sp)
        s_state = like_fresh(state, fresh)
        step = jax.jit(tx.update)
        updates, new_state = step(sg, s_state, sp)
        with compiles() as counter:
            step(sg, new_state, sp)  # the state the step returns goes straight back in
        assert counter.count == 0, "recompiled on the second step"

    for u, r in zip(jax.tree.leaves(updates), jax.tree.leaves(ref_updates), strict=True):
        np.testing.assert_allclose(np.asarray(u), np.asarray(r), rtol=1e-4, atol=2e-6)
    avg = new_state[0].average
    assert_same_layout(updates, sp)
    assert_same_layout(avg, sp)
    for x, r in zip(jax.tree.leaves(avg), jax.tree.leaves(ref_state[0].average), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(r), rtol=1e-6, atol=1e-7)


# The collectives of a compiled program: each op with the arrays it produces on one device.
COLLECTIVES = ("all-gather", "all-to-all", "all-reduce", "reduce-scatter", "collective-permute")
_OP = re.compile(
    r"^\s*(?:ROOT\s+)?%[\w.\-]+\s*=\s*(.*?)\s(" + "|".join(COLLECTIVES) + r")(-start|-done)?\("
)
_ARRAY = re.compile(r"\b(pred|[a-z]+\d+)\[([\d,]*)\]")


def collectives(hlo: str) -> list[tuple[str, list[tuple[int, ...]]]]:
    """(op, shapes of its results) per collective in HLO text; an async op counts at its
    ``-done``, a combined op lists each array it moves."""
    found = []
    for line in hlo.splitlines():
        m = _OP.match(line)
        if m and m.group(3) != "-start":
            shapes = [
                tuple(int(d) for d in dims.split(",") if d)
                for _, dims in _ARRAY.findall(m.group(1))
            ]
            found.append((m.group(2), shapes))
    return found


def count_collectives(hlo: str) -> dict[str, int]:
    return dict(collections.Counter(op for op, _ in collectives(hlo)))


def elements_moved(hlo: str, op: str) -> int:
    """Elements of the results of every ``op`` on one device."""
    return sum(math.prod(s) for o, shapes in collectives(hlo) if o == op for s in shapes)


# scale_by_lmo("gpt") on 8 devices (1-D mesh), FSDP layout. Spectral parameters: query and out
# (32, 32), sharded by rows and by columns; fc (32, 64), proj (64, 32) and the scanned (2, 32, 64)
# kernel, all wide 32×64 matrices once proj is transposed. The bounds below state what each
# strategy promises, whatever the compiler version makes of the moves.
SPECTRAL = {
    "query": (32, 32),
    "out": (32, 32),
    "fc": (32, 64),
    "proj": (64, 32),
    "scan": (2, 32, 64),
}
SPECTRAL_ELEMENTS = sum(math.prod(s) for s in SPECTRAL.values())  # 10240
SMALLEST_MATRIX = 32 * 32


@pytest.mark.parametrize("axis_type", [AxisType.Explicit, AxisType.Auto], ids=["explicit", "auto"])
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_collectives_are_those_the_strategy_promises(strategy, axis_type):
    grads = jax.tree.map(lambda x: jnp.cos(3 * x), make_params())
    tx = lmo_optax.scale_by_lmo("gpt", ns_sharding=strategy)
    mesh = make_mesh("1d", axis_type)
    with jax.set_mesh(mesh):
        sg = shard(grads, layout_specs("fsdp", mesh.axis_names), mesh)
        tx.init(sg)
        hlo = jax.jit(lambda g: tx.update(g, optax.EmptyState())[0]).lower(sg).compile().as_text()
    found = collectives(hlo)
    gathered = [s for op, shapes in found if op == "all-gather" for s in shapes]
    whole = [s for s in gathered if math.prod(s) >= SMALLEST_MATRIX]
    # The non-spectral LMOs reduce only scalars and vectors (RMS of the sharded bias).
    if strategy == "replicate":
        # Exactly one gather of each Spectral matrix, and nothing else moved.
        assert len(whole) == len(SPECTRAL) and sum(map(math.prod, gathered)) == SPECTRAL_ELEMENTS
        assert elements_moved(hlo, "all-to-all") == 0
    elif strategy == "distribute":
        # The groups are dealt to groups of devices (distribute_plan): the 4 wide 32×64
        # matrices to 4 pairs, the 2 square ones to 2 quartets; within a group a matrix is
        # sharded, so no iterate is gathered, only the Gram-side 32×32 matrices. Each device
        # receives its share of the stacks and sends it back, through rows within groups
        # (two all-to-alls each way); moving a parameter whose layout differs from its group's
        # staging layout costs at most its own share once more each way.
        where = layouts.placement(jax.tree.leaves(sg), mesh=mesh)
        for count, cols, split in ((4, 64, 2), (2, 32, 4)):
            group = strategies.Group(count, 32, cols, 5, jnp.dtype("float32"))
            assert strategies.distribute_plan(group, where)[0] == split
        assert all(s[-2:] == (32, 32) for s in whole), gathered
        stacks = 4 * 32 * 64 + 2 * 32 * 32
        bound = 4 * stacks // 8 + 2 * SPECTRAL_ELEMENTS // 8
        assert 0 < elements_moved(hlo, "all-to-all") <= bound
    else:  # sharded
        # No whole matrix gathered; the matrices move to their long-axis sharding and back
        # (at most each device's share twice), and only Gram-side m×m matrices (m = 32, the
        # short side) are all-reduced, never an m×n iterate.
        assert not whole, gathered
        assert elements_moved(hlo, "all-to-all") <= 2 * SPECTRAL_ELEMENTS // 8
        reduced = [s for op, shapes in found if op == "all-reduce" for s in shapes]
        assert any(math.prod(s) >= SMALLEST_MATRIX for s in reduced)
        assert all(s[-2:] == (32, 32) for s in reduced if math.prod(s) >= SMALLEST_MATRIX)


def test_auto_strategy_distributes_groups_and_shards_lone_large_matrices():
    where = Placement(None, ("data",), 8)
    f32 = jnp.dtype(jnp.float32)
    # 48 square hidden matrices of GPT-2 small: each device takes 6.
    assert choose_strategy(Group(48, 768, 768, 5, f32), where) == "distribute"
    # One (768, 50304) embedding: 8-way products on the long axis beat one device doing all.
    assert choose_strategy(Group(1, 768, 50304, 5, f32), where) == "sharded"
    # Nothing divides: replicate.
    assert choose_strategy(Group(1, 7, 9, 5, f32), where) == "replicate"


def test_distribute_deals_matrices_to_device_groups_that_leave_no_device_idle():
    f32 = jnp.dtype(jnp.float32)

    def plan(count, rows, cols, devices, **kw):
        mesh = jax.sharding.AbstractMesh((devices,), ("data",))
        where = Placement(mesh, ("data",), devices, **kw)
        group = Group(count, rows, cols, 5, f32)
        return strategies.distribute_plan(group, where), group

    # 48 matrices on 16 devices: three whole matrices each, nothing to split.
    (split, cost), group = plan(48, 768, 3072, 16)
    assert (split, cost) == (1, 3 * group.flops())
    # 12 on 16: whole matrices would leave 4 devices idle (cost 1 matrix, ideal 3/4); groups of
    # 4 devices take 3 matrices each, every product split 4 ways: the ideal.
    (split, cost), group = plan(12, 768, 768, 16)
    assert split == 4 and cost == 3 * group.flops(4, gram_split=4)
    assert cost == pytest.approx(12 * group.flops() / 16)
    # 24 on 16: pairs, 3 matrices per pair.
    assert plan(24, 768, 3072, 16)[0][0] == 2
    # 48 on 256 chips (GPT-2 small's MLP matrices on a v5e-256): groups of 16.
    (split, cost), group = plan(48, 768, 3072, 256)
    assert split == 16 and cost == pytest.approx(48 * group.flops() / 256)
    # 47 on 16: whole matrices are within 5% of the fewest FLOPs, and move the least.
    assert plan(47, 768, 768, 16)[0][0] == 1
    # Groups must divide both sides of the matrix: 7×9 matrices are only ever dealt whole.
    assert plan(3, 7, 9, 16)[0][0] == 1
    # In pmap/shard_map (collective mode) matrices are dealt whole, padded as before.
    (split, cost), group = plan(12, 768, 768, 16, collective=True)
    assert (split, cost) == (1, group.flops())


def test_distribute_over_device_groups_equals_one_device_and_keeps_layouts():
    # Odd counts and shapes on 8 devices, on 1-D and 2-D meshes of each axis type: every
    # group goes to device groups (3 wide 64×128 matrices: groups of 8; 5 matrices 32×96,
    # from tall 96×32: groups of 8; one 64×64: all 8 devices).
    shapes = {"a": (3, 64, 128), "b": (5, 96, 32), "c": (64, 64)}
    grads = {
        k: jax.random.normal(jax.random.fold_in(jax.random.key(0), i), s)
        for i, (k, s) in enumerate(shapes.items())
    }
    norms = [lmo_optax.Spectral() for _ in grads]
    reference = [n.lmo(g) for n, g in zip(norms, grads.values(), strict=True)]
    for axis_type in (AxisType.Explicit, AxisType.Auto):
        for kind in ("1d", "2d"):
            mesh = make_mesh(kind, axis_type)
            specs = {"a": P(None, "data", None), "b": P(None, "data", None), "c": P(None, "data")}
            sg = {k: jax.device_put(g, NamedSharding(mesh, specs[k])) for k, g in grads.items()}
            where = layouts.placement(list(sg.values()), mesh=mesh)
            for g in sg.values():
                rows, cols = sorted(g.shape[-2:])
                group = Group(math.prod(g.shape[:-2]), rows, cols, 5, jnp.dtype("float32"))
                assert strategies.distribute_plan(group, where)[0] > 1

            def lmos(sg, mesh=mesh):
                return strategies.spectral_lmos(
                    norms, list(sg.values()), strategy="distribute", mesh=mesh
                )

            with jax.set_mesh(mesh):
                out = jax.jit(lmos)(sg)
            for o, r, g in zip(out, reference, sg.values(), strict=True):
                np.testing.assert_allclose(np.asarray(o), np.asarray(r), rtol=1e-4, atol=2e-6)
                if axis_type == AxisType.Explicit:
                    assert o.sharding.is_equivalent_to(g.sharding, g.ndim)


def test_square_matrices_of_one_shape_keep_their_own_layouts_under_auto_axes():
    # Two matrices of the same shape, one sharded by rows and one by columns, are stacked
    # together by "distribute"; each update must come back in its own parameter's layout.
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


def test_strategy_names_have_one_source():
    # The Literal type for hints lists what the table of strategies holds, "auto" first.
    assert typing.get_args(lmo_optax.strategies.StrategyName) == lmo_optax.strategies.STRATEGY_NAMES
    assert lmo_optax.strategies.STRATEGY_NAMES == ("auto", *lmo_optax.strategies.STRATEGIES)


def test_unknown_strategy_is_rejected_at_construction():
    with pytest.raises(ValueError, match="unknown Newton–Schulz sharding strategy 'spread'"):
        lmo_optax.scion(0.1, ns_sharding="spread")


@pytest.mark.parametrize("clip", [False, True], ids=["plain", "clipped"])
def test_training_step_on_explicit_mesh_matches_single_device(clip):
    params = make_params()
    tx = lmo_optax.unconstrained_scion(optax.linear_schedule(0.1, 0.0, 4), "gpt", clip=clip)

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
    fresh = tx.init(sp)  # records the params' layouts (Auto axes)
    s_state = like_fresh(state, fresh)
    step = jax.jit(tx.update)
    updates, _ = step(sg, s_state, sp)
    assert "all-to-all" in count_collectives(step.lower(sg, s_state, sp).compile().as_text())
    for u, r in zip(jax.tree.leaves(updates), jax.tree.leaves(ref_updates), strict=True):
        np.testing.assert_allclose(np.asarray(u), np.asarray(r), rtol=1e-4, atol=2e-6)
    assert_same_layout(updates, sp)


@pytest.mark.parametrize("constrained", [True, False], ids=["scion", "unconstrained_scion"])
def test_training_loop_on_auto_mesh_keeps_layouts_and_compiles_once(compiles, constrained):
    # jax.sharding.Mesh (Auto axes), no jax.set_mesh: init outside jit, then a jitted step
    # whose outputs go straight back in. Same-shaped query/out have transposed layouts.
    mesh = make_mesh("2d", AxisType.Auto)
    params = shard(make_params(), layout_specs("fsdp_tp", mesh.axis_names), mesh)
    make = lmo_optax.scion if constrained else lmo_optax.unconstrained_scion
    tx = make(0.05, "gpt", ns_sharding="distribute", ns_mesh=mesh)

    @jax.jit
    def train_step(p, s):
        g = jax.grad(lambda p: sum(jnp.sum(jnp.sin(x) ** 2) for x in jax.tree.leaves(p)))(p)
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s

    state = tx.init(params)
    p, s = train_step(params, state)
    with compiles() as counter:
        for _ in range(2):
            p, s = train_step(p, s)
    assert counter.count == 0
    assert_same_layout(p, params)
    assert_same_layout(s[0].average, params)


def test_flax_nnx_optimizer_on_auto_mesh_keeps_layouts_and_compiles_once(compiles):
    # nnx.Optimizer initializes with nnx.Variable leaves (paths ending in .value) and updates
    # with plain arrays: the layouts recorded at init must still be found.
    import flax.nnx as nnx

    mesh = make_mesh("2d", AxisType.Auto)
    model = nnx.Sequential(
        nnx.Linear(32, 64, rngs=nnx.Rngs(0)), jax.nn.relu, nnx.Linear(64, 32, rngs=nnx.Rngs(1))
    )
    specs = {
        "layers/0/kernel": P("data", "model"),
        "layers/2/kernel": P("model", "data"),
        "layers/0/bias": P(),
        "layers/2/bias": P(),
    }
    for path, variable in nnx.iter_graph(model):
        key = "/".join(map(str, path))
        if key in specs:
            variable[...] = jax.device_put(variable[...], NamedSharding(mesh, specs[key]))
    with jax.set_mesh(mesh):  # nnx.Optimizer's own step counter is made on the mesh
        opt = nnx.Optimizer(model, lmo_optax.scion(0.05, "mlp"), wrt=nnx.Param)
    x = jnp.cos(jnp.arange(8 * 32, dtype=jnp.float32)).reshape(8, 32)

    @nnx.jit
    def train_step(model, opt):
        grads = nnx.grad(lambda m: jnp.mean(m(x) ** 2))(model)
        opt.update(model, grads)

    train_step(model, opt)
    with compiles() as counter:
        train_step(model, opt)
    assert counter.count == 0
    state = {"model": nnx.state(model, nnx.Param), "opt": nnx.state(opt, nnx.OptState)}
    checked = 0
    for path, leaf in lmo_optax.paths.flatten_with_paths(state)[0]:
        key = path.removeprefix("model/").removeprefix("opt/opt_state/0/average/")
        if key in specs:
            assert leaf.sharding.is_equivalent_to(NamedSharding(mesh, specs[key]), leaf.ndim)
            checked += 1
    assert checked == 2 * len(specs)  # each parameter and its averaged gradient


def test_param_layouts_record_only_auto_axes_over_several_devices():
    auto, explicit = make_mesh("1d", AxisType.Auto), make_mesh("1d", AxisType.Explicit)
    one = jax.sharding.Mesh(jax.devices()[:1], ("data",))
    f32 = jnp.float32
    params = {
        "auto": jax.ShapeDtypeStruct((8, 4), f32, sharding=NamedSharding(auto, P("data"))),
        "explicit": jax.ShapeDtypeStruct((8, 4), f32, sharding=NamedSharding(explicit, P("data"))),
        "one_device": jax.ShapeDtypeStruct((8, 4), f32, sharding=NamedSharding(one, P("data"))),
        "plain": jnp.ones((8, 4)),
    }
    layouts = lmo_optax.layouts.ParamLayouts()
    layouts.record(params)
    assert layouts.sharding("auto", (8, 4)) == params["auto"].sharding
    assert layouts.sharding("auto", (4, 8)) is None  # keyed by path and shape
    for name in ("explicit", "one_device", "plain"):
        assert layouts.sharding(name, (8, 4)) is None, name
    assert layouts.replicated() == NamedSharding(auto, P())


def test_init_on_abstract_parameters_over_auto_axes_allocates_nothing():
    """``jax.eval_shape`` of ``init`` on ShapeDtypeStructs laid out over Auto axes (how a step
    is compiled ahead of time for devices that are not there) gives the state's shapes, and
    ``init`` records the layouts that the compiled update then keeps."""
    mesh = jax.sharding.Mesh(np.asarray(jax.devices()[:8]), ("data",))  # Auto axes
    sharding = NamedSharding(mesh, P("data", None))
    params = {"w": jax.ShapeDtypeStruct((64, 32), jnp.float32, sharding=sharding)}
    tx = lmo_optax.scion(0.1, "auto", ns_mesh=mesh)
    state = jax.eval_shape(lambda: tx.init(params))  # closed over: init sees the layouts
    assert [x.shape for x in jax.tree.leaves(state)] == [(64, 32), ()]
    state = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(
            x.shape, x.dtype, sharding=sharding if x.shape else NamedSharding(mesh, P())
        ),
        state,
    )
    compiled = jax.jit(tx.update).lower(params, state, params).compile()
    updates, new_state = compiled.output_shardings
    assert updates["w"].is_equivalent_to(sharding, 2)
    assert jax.tree.leaves(new_state)[0].is_equivalent_to(sharding, 2)


@pytest.mark.parametrize("axis_type", [AxisType.Explicit, AxisType.Auto], ids=["explicit", "auto"])
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_split_blocks_and_expert_stacks_under_every_strategy(strategy, axis_type):
    # A fused QKV kernel split into 3 blocks, a per-head output projection (4 heads), and a
    # mixture-of-experts stack (layers, experts, d_in, d_out) with the experts sharded: the
    # blocks and experts are batch matrices; every strategy equals one device.
    key = jax.random.key(11)
    params = {
        "qkv": jax.random.normal(key, (32, 3 * 32)),
        "out": jax.random.normal(jax.random.fold_in(key, 1), (4 * 8, 32)),
        "experts": jax.random.normal(jax.random.fold_in(key, 2), (2, 8, 16, 32)),
    }
    rules = [
        lmo_optax.Rule("qkv", lmo_optax.Spectral(split_output=3)),
        lmo_optax.Rule("out", lmo_optax.Spectral(split_input=4)),
        lmo_optax.Rule("experts", lmo_optax.Spectral()),
    ]
    tx = lmo_optax.scale_by_lmo(rules, ns_sharding=strategy)
    reference, _ = tx.update(params, tx.init(params))
    mesh = make_mesh("1d", axis_type)
    specs = {"qkv": P("data", None), "out": P(None, "data"), "experts": P(None, "data")}
    with jax.set_mesh(mesh):
        sp = {k: jax.device_put(v, NamedSharding(mesh, specs[k])) for k, v in params.items()}
        tx.init(sp)
        updates, _ = jax.jit(lambda g: tx.update(g, optax.EmptyState()))(sp)
    for name in params:
        np.testing.assert_allclose(
            np.asarray(updates[name]), np.asarray(reference[name]), rtol=1e-4, atol=2e-6
        )
        if axis_type == AxisType.Explicit:
            assert updates[name].sharding.is_equivalent_to(sp[name].sharding, sp[name].ndim)


@pytest.mark.parametrize("axis_type", [AxisType.Explicit, AxisType.Auto], ids=["explicit", "auto"])
def test_distribute_in_chunks_equals_one_chunk_with_the_same_flops_and_less_memory(
    axis_type, monkeypatch
):
    # 16 wide 64×256 matrices on 8 devices are dealt whole (two per device); 3 of 64×128 go
    # to one group of all 8 devices (three rounds). With a chunk of one round, each device
    # holds one matrix's iterates at a time: the same FLOPs (no loop: the rounds are
    # unrolled, so the compiled cost counts them all), less temporary memory.
    shapes = {"a_whole": (16, 64, 256), "b_groups": (3, 64, 128)}  # jit sorts keys
    grads = {
        k: jax.random.normal(jax.random.fold_in(jax.random.key(1), i), s)
        for i, (k, s) in enumerate(shapes.items())
    }
    norms = [lmo_optax.Spectral() for _ in grads]
    reference = [n.lmo(g) for n, g in zip(norms, grads.values(), strict=True)]
    mesh = make_mesh("1d", axis_type)
    sg = {
        k: jax.device_put(g, NamedSharding(mesh, P(None, "data", None))) for k, g in grads.items()
    }
    where = layouts.placement(list(sg.values()), mesh=mesh)
    f32 = jnp.dtype("float32")
    assert strategies.distribute_plan(Group(16, 64, 256, 5, f32), where)[0] == 1
    assert strategies.distribute_plan(Group(3, 64, 128, 5, f32), where)[0] == 8

    def compiled(chunk_bytes):
        monkeypatch.setattr(strategies, "DISTRIBUTE_CHUNK_BYTES", chunk_bytes)

        def lmos(sg):
            return strategies.spectral_lmos(
                norms, list(sg.values()), strategy="distribute", mesh=mesh
            )

        with jax.set_mesh(mesh):
            lowered = jax.jit(lmos).lower(sg)
            program = lowered.compile()
            return program, program(sg), lowered.as_text().count("optimization_barrier")

    at_once, out_at_once, barriers_at_once = compiled(1 << 30)
    chunked, out_chunked, barriers = compiled(1)  # one round per chunk
    assert strategies.distribute_rounds_per_chunk(Group(16, 64, 256, 5, f32), 1) == 1
    for o, a, r in zip(out_chunked, out_at_once, reference, strict=True):
        np.testing.assert_allclose(np.asarray(o), np.asarray(r), rtol=1e-4, atol=2e-6)
        np.testing.assert_allclose(np.asarray(o), np.asarray(a), rtol=1e-5, atol=1e-6)
    flops = [p.cost_analysis()["flops"] for p in (at_once, chunked)]
    assert flops[1] == pytest.approx(flops[0], rel=0.02)  # + a few elementwise ops per chunk
    # One chunk after the other: 2 + 3 chunks, chained by 1 + 2 more barriers.
    assert barriers - barriers_at_once == 3
    temporaries = [p.memory_analysis().temp_size_in_bytes for p in (at_once, chunked)]
    assert temporaries[1] < temporaries[0], temporaries
