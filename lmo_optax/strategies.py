"""Sharing the spectral LMO's Newton–Schulz work across devices (``docs/algorithm.md`` §5.8).

Newton–Schulz multiplies whole matrices, so on sharded parameters someone must decide where
each product runs. ``optax.contrib.muon`` leaves it to the compiler: under an Explicit-axis mesh
it fails (``ShardingTypeError``), and elsewhere every device repeats the whole work. Here the
Spectral LMOs of one update are orthogonalized together, grouped by (wide) matrix shape and
Newton–Schulz settings, each group by one of the strategies of :data:`STRATEGIES`:

``"replicate"``
    Gather each matrix, orthogonalize it on every device, keep each device's part. The
    baseline: simple, and every device does all the work.
``"distribute"``
    Stack the group's matrices (the layer axis of scanned parameters included) and deal the
    stack to the devices, so that each orthogonalizes its share; then bring every result back
    to its parameter's layout. The moves are all-to-alls; no device gathers matrices it does
    not work on. This is the JAX counterpart of distributed Muon. Where the count does not
    divide the devices, dealing whole matrices would leave devices idle (12 matrices on 16
    devices: a quarter of them), so the devices are taken in groups that share a matrix
    (:func:`distribute_plan`: 12 on 16 go to 4 groups of 4, three matrices per group, each
    matrix's products split 4 ways), on a mesh of the same devices regrouped as (groups,
    split). A large group is dealt in chunks, one after the other, each chunk's matrices
    taking about :data:`DISTRIBUTE_CHUNK_BYTES` per device. In ``pmap``/``shard_map``
    (``ns_axis_name``) the matrices are dealt whole, the stack padded with zero matrices to a
    multiple of the devices.
``"sharded"``
    For single matrices too large to gather: Newton–Schulz on the matrix sharded along its long
    axis, every product given its output sharding. Products with X stay sharded; the small m×m
    Gram-side matrices are all-reduced and replicated (they are the smaller side, so this is
    the cheap direction).

``"auto"`` (the default) picks, for each group, the strategy with the fewest floating-point
operations per device (ties: the first in the table): ``distribute`` wherever its device
groups divide the matrices' sides (a lone large matrix, e.g. an embedding, then goes to one
group of all the devices, which splits its m×m products too, where ``sharded`` repeats them),
``sharded`` for a lone matrix whose short side does not divide, ``replicate`` when nothing
divides. On one device, or without a mesh, every strategy is the plain computation.

Where the mesh comes from (:func:`lmo_optax.layouts.placement`): the Explicit mesh axes in the
parameters' types, else a mesh passed in (``scion(..., ns_mesh=mesh)``), else the mesh set with
``jax.set_mesh``. Inside ``jax.pmap`` (or a ``shard_map`` over replicated parameters), pass the
axis name (``ns_axis_name="batch"``): ``distribute`` then gives each device its share by
``axis_index`` and ``all_gather``\\ s the results. Under Auto axes the results are brought back
to the parameters' layouts recorded at ``init`` (:class:`lmo_optax.layouts.ParamLayouts`).

All the other LMOs (ColNorm, RowNorm, Sign, RMS) are elementwise maps and reductions; they run
on sharded parameters as they are, the reductions becoming the needed collectives.

>>> import jax, jax.numpy as jnp, lmo_optax
>>> from jax.sharding import PartitionSpec as P
>>> mesh = jax.make_mesh((jax.device_count(),), ("data",))  # Explicit axes
>>> params = {"w": jax.random.normal(jax.random.key(0), (8 * 16, 64))}
>>> with jax.set_mesh(mesh):
...     params = jax.device_put(params, P("data", None))  # FSDP: rows over "data"
...     tx = lmo_optax.scion(0.1, "auto", ns_sharding="distribute")
...     state = tx.init(params)
...     updates, state = jax.jit(tx.update)(params, state, params)
>>> updates["w"].sharding.spec == params["w"].sharding.spec
True
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any, Literal

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

from lmo_optax import newton_schulz
from lmo_optax.layouts import Placement, placement
from lmo_optax.norms import Spectral

# --------------------------------------------------------------------------------------------
# A Spectral parameter as a stack of wide matrices (B, m, n), m ≤ n, and back.
# --------------------------------------------------------------------------------------------


def _is_plain_layout(norm: Spectral, shape: tuple[int, ...]) -> bool:
    """True when the matrices are the last two axes as they are (no transpose, no merge)."""
    red, out, _ = norm.axes(shape)
    return red == (len(shape) - 2,) and out == (len(shape) - 1,) and not norm.split


def wide_matrices(norm: Spectral, g: jax.Array) -> jax.Array:
    """g as a (B, m, n) stack of matrices with m ≤ n (transposed when d_in > d_out)."""
    d_in, d_out = norm.dims(g.shape)
    m = norm.as_matrices(g.astype(jnp.promote_types(g.dtype, jnp.float32)))
    m = m.reshape(math.prod(m.shape[:-2]), d_in, d_out)  # not -1: d_in or d_out may be 0
    return jnp.swapaxes(m, -1, -2) if d_in > d_out else m


def lmo_from_wide_polar(norm: Spectral, o: jax.Array, g: jax.Array) -> jax.Array:
    """The LMO of g (paper Table 2: −√(d_out/d_in)·U Vᵀ) from the polar factors of
    :func:`wide_matrices` (g)."""
    d_in, d_out = norm.dims(g.shape)
    if d_in > d_out:
        o = jnp.swapaxes(o, -1, -2)
    o = o.reshape(norm.matrix_batch(g.shape) + (d_in, d_out))
    return (norm.from_matrices(o, g.shape) * (-norm.scale(g.shape))).astype(g.dtype)


@dataclasses.dataclass
class _Item:
    norm: Spectral
    grad: jax.Array  # the (averaged) gradient, as given
    prepared: jax.Array  # the gradient as its matrices are taken from (maybe gathered)
    wide: jax.Array  # (B, m, n) matrices, m ≤ n, compute dtype
    polar: jax.Array | None = None


# --------------------------------------------------------------------------------------------
# The strategies: each has a cost (Newton–Schulz FLOPs per device; None where it does not
# apply) and a way to run a group of same-shaped matrices.
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Group:
    """What a strategy's cost depends on: ``count`` wide (rows, cols) matrices."""

    count: int
    rows: int
    cols: int
    steps: int
    dtype: Any

    def flops(self, split: int = 1, gram_split: int = 1) -> float:
        """Newton–Schulz FLOPs of one matrix, its products with X split ``split`` ways and its
        m×m products ``gram_split`` ways (:func:`lmo_optax.newton_schulz.newton_schulz_flops`)."""
        method = newton_schulz.choose_method(self.rows, self.cols, self.steps, self.dtype)
        return newton_schulz.newton_schulz_flops(
            self.rows, self.cols, self.steps, method, split=split, gram_split=gram_split
        )


@dataclasses.dataclass(frozen=True)
class Strategy:
    """One way to share the Newton–Schulz work of a group across the devices of a placement.

    Attributes:
      name: the ``ns_sharding`` value that selects it.
      cost: FLOPs per device of a group, or None where the strategy does not apply.
      run: orthogonalizes the group, setting each item's ``polar``.
    """

    name: str
    cost: Callable[[Group, Placement], float | None]
    run: Callable[[list[_Item], Group, Placement], None]


def _replicate(group: list[_Item], shape: Group, where: Placement) -> None:
    """Every device orthogonalizes every matrix of the group, whole."""
    for item in group:
        if where.collective:
            item.polar = item.norm.polar(item.wide)
        else:  # pin input and output, or XLA may run it sharded (Auto axes)
            x = where.constrain(item.wide, PartitionSpec())
            item.polar = where.constrain(item.norm.polar(x), PartitionSpec())


def _sharded(group: list[_Item], shape: Group, where: Placement) -> None:
    """Newton–Schulz on each matrix sharded along its long (column) axis."""
    x_spec = where.spec(None, None, "all")
    for item in group:
        x = where.constrain(item.wide, x_spec)
        item.polar = item.norm.polar(x, matmul=where.matmul(x_spec))


def _staging_spec(group: list[_Item], where: Placement) -> PartitionSpec:
    """The layout the group's matrices are stacked in: rows or columns over all devices.

    Under Explicit axes, the one most matrices already have (their reshard is then free);
    otherwise rows (FSDP's d_in for wide matrices). Replicated if neither axis divides.
    """
    rows, cols = group[0].wide.shape[1:]
    candidates = []
    if rows % where.size == 0:
        candidates.append(where.spec(None, "all", None))
    if cols % where.size == 0:
        candidates.append(where.spec(None, None, "all"))
    if not candidates:
        return PartitionSpec()

    def current(item: _Item) -> tuple[Any, ...]:
        spec = getattr(jax.typeof(item.wide).sharding, "spec", PartitionSpec())
        entries = tuple(spec) + (None,) * (3 - len(spec))
        return tuple(e if isinstance(e, tuple) or e is None else (e,) for e in entries[1:])

    def matches(spec: PartitionSpec) -> int:
        want = tuple(e if e is None else tuple(e) for e in tuple(spec)[1:])
        return sum(current(item) == want for item in group) if where.explicit else 0

    return max(candidates, key=matches)  # ties: the first (rows)


SUBGROUP_TOLERANCE = 1.05
"""``distribute`` takes the smallest device group whose FLOPs per device are within this
factor of the fewest (a larger group moves more data for the same work)."""


def distribute_plan(group: Group, where: Placement) -> tuple[int, float]:
    """(devices per matrix, FLOPs per device) of ``distribute`` for ``group``.

    The ``count`` matrices are dealt to ``where.size / split`` groups of ``split`` devices, each
    group orthogonalizing its matrices sharded along their long axis, the m×m products sharded
    along rows, so a matrix's Newton–Schulz FLOPs divide by ``split``. The stack is padded with
    zero matrices to a multiple of the number of groups, so the cost per device is
    ⌈count / groups⌉ · flops / split. ``split = 1`` (whole matrices per device) leaves
    ⌈count / size⌉ − count / size of a matrix idle on each device: 48 matrices on 16 devices
    fit, 12 leave a quarter of the devices idle, and on 256 devices both do. Larger groups
    remove that waste (12 matrices on 16 devices: groups of 4, three matrices each).
    """
    whole = math.ceil(group.count / where.size) * group.flops()
    if not where.can_regroup():
        return 1, whole
    costs = {1: whole}
    for split in range(2, where.size + 1):
        if where.size % split or group.rows % split or group.cols % split:
            continue
        groups = where.size // split
        costs[split] = math.ceil(group.count / groups) * group.flops(split, gram_split=split)
    fewest = min(costs.values())
    split = min(s for s, c in costs.items() if c <= SUBGROUP_TOLERANCE * fewest)
    return split, costs[split]


DISTRIBUTE_CHUNK_BYTES = 1 << 28
"""``distribute`` deals a large group's matrices in chunks whose matrices take about this many
bytes per device (a device's blocks of X and the full m×m Gram-side matrices its products
need; the Newton–Schulz iterates are a few times that), one chunk after the other; a group
that fits is dealt at once. Without chunks a device holds the iterates of all its matrices at
the same time: on a TPU v5e-256 slice, 272 matrices of 8704×8704 in device groups of 16 need
17 full 8704×8704 Gram-side matrices per device."""


def distribute_rounds_per_chunk(group: Group, split: int) -> int:
    """Rounds (one matrix per device group each) that ``distribute`` deals at once.

    A round costs each device its 1/``split`` of a matrix and one full m×m matrix (the
    Gram-side products are gathered for the products with X), at the group's Newton–Schulz
    dtype; as many rounds go together as fit :data:`DISTRIBUTE_CHUNK_BYTES` (at least one).
    """
    itemsize = jnp.dtype(group.dtype).itemsize
    per_round = (group.rows * group.cols // split + group.rows * group.rows) * itemsize
    return max(1, DISTRIBUTE_CHUNK_BYTES // per_round)


def _orthogonalize_dealt(
    norm: Spectral, stack: jax.Array, split: int, stage: PartitionSpec, where: Placement
) -> jax.Array:
    """The polar factors of ``stack`` (staged as ``stage``), dealt whole matrices per device
    (``split`` = 1) or to device groups of ``split``, returned in the stage layout."""
    if split == 1:
        stack = where.constrain(stack, where.spec("all", None, None))
        return where.constrain(norm.polar(stack), stage)
    groups = where.regrouped(split)
    along, split_axis = groups.axes
    x_spec = PartitionSpec(along, None, split_axis)
    by_rows = PartitionSpec(along, split_axis, None)
    # From rows over all devices, a direct move to columns within groups is an all-gather;
    # through rows within groups it is two all-to-alls.
    via_rows = stage == where.spec(None, "all", None)
    if via_rows:
        stack = groups.constrain(stack, by_rows)
    stack = groups.constrain(stack, x_spec)
    with groups.computing():
        polar = norm.polar(stack, matmul=groups.matmul(x_spec, by_rows))
    if via_rows:
        polar = groups.constrain(polar, by_rows)
    return where.constrain(polar, stage)


def _distribute(group: list[_Item], shape: Group, where: Placement) -> None:
    """Each device (or group of devices) orthogonalizes its share of the stacked matrices."""
    norm = group[0].norm
    count = sum(item.wide.shape[0] for item in group)
    rows, cols = group[0].wide.shape[1:]
    dtype = group[0].wide.dtype
    split = 1 if where.collective else distribute_plan(shape, where)[0]
    padding = -count % (where.size // split)
    stage = None
    if where.collective:
        stack = jnp.concatenate(
            [item.wide for item in group] + [jnp.zeros((padding, rows, cols), dtype)], axis=0
        )
        share = stack.shape[0] // where.size
        index = jax.lax.axis_index(where.axes if len(where.axes) > 1 else where.axes[0])
        mine = jax.lax.dynamic_slice_in_dim(stack, index * share, share, axis=0)
        polar = jax.lax.all_gather(norm.polar(mine), where.axes, axis=0, tiled=True)
    else:
        # Stage every matrix sharded along an axis that divides (no whole-matrix gathers), so
        # the stack is a local concatenation; then one all-to-all per chunk puts whole
        # matrices (or, with groups, column blocks) on their devices, and one more brings them
        # back.
        stage = _staging_spec(group, where)
        parts = [where.constrain(item.wide, stage) for item in group]
        if padding:
            zeros = jnp.zeros((padding, rows, cols), dtype)
            parts.append(where.constrain(zeros, stage))
        stack = jnp.concatenate(parts, axis=0)
        dealt = where.size // split  # matrices per round: one per device (group)
        per_chunk = dealt * distribute_rounds_per_chunk(shape, split)
        pieces, previous = [], None
        for start in range(0, stack.shape[0], per_chunk):
            # The count axis is not sharded: a local slice, pinned to the stage layout (else
            # XLA may move the whole stack to the chunk's next layout before slicing).
            chunk = where.constrain(stack[start : start + per_chunk], stage)
            if previous is not None:
                # The next chunk starts when the last one is back in the stage layout, so
                # only one chunk's whole matrices and iterates are held at a time.
                chunk, previous = jax.lax.optimization_barrier((chunk, previous))
                pieces[-1] = previous
            previous = _orthogonalize_dealt(norm, chunk, split, stage, where)
            pieces.append(previous)
        polar = pieces[0] if len(pieces) == 1 else jnp.concatenate(pieces, axis=0)
    start = 0
    for item in group:
        size = item.wide.shape[0]
        piece = polar[start : start + size]
        # Keep the slice in the stack's layout; moving it to the parameter's is a separate
        # step (slicing straight into another layout makes XLA replicate the stack).
        item.polar = piece if stage is None else where.constrain(piece, stage)
        start += size


def _sharded_cost(group: Group, where: Placement) -> float | None:
    if where.collective or max(group.rows, group.cols) % where.size:
        return None
    return group.count * group.flops(split=where.size)


# The order breaks ties in "auto": replicate (one matrix: no work to share), then distribute.
STRATEGIES: dict[str, Strategy] = {
    s.name: s
    for s in (
        Strategy("replicate", lambda g, where: g.count * g.flops(), _replicate),
        Strategy("distribute", lambda g, where: distribute_plan(g, where)[1], _distribute),
        Strategy("sharded", _sharded_cost, _sharded),
    )
}
STRATEGY_NAMES: tuple[str, ...] = ("auto", *STRATEGIES)
StrategyName = Literal["auto", "replicate", "distribute", "sharded"]


def check_strategy(strategy: str, argument: str = "strategy") -> None:
    """Raises ValueError for an unknown strategy name (``argument`` names it)."""
    if not (isinstance(strategy, str) and strategy in STRATEGY_NAMES):
        raise ValueError(
            f"{argument}: unknown Newton–Schulz sharding strategy {strategy!r}; "
            f"choose one of {STRATEGY_NAMES}"
        )


def choose_strategy(group: Group, where: Placement) -> str:
    """The applicable strategy with the fewest Newton–Schulz FLOPs per device."""
    costs = {name: s.cost(group, where) for name, s in STRATEGIES.items()}
    applicable = {name: c for name, c in costs.items() if c is not None}
    return min(applicable, key=applicable.__getitem__)  # ties: table order


def spectral_lmos(
    norms: Sequence[Spectral],
    grads: Sequence[jax.Array],
    *,
    strategy: StrategyName = "auto",
    mesh: Any = None,
    axis_name: str | tuple[str, ...] | None = None,
) -> list[jax.Array]:
    """The LMOs of many Spectral-norm parameters, the Newton–Schulz work shared by strategy.

    Args:
      norms: one :class:`~lmo_optax.norms.Spectral` (or ``SpectralConv``) per gradient.
      grads: the (averaged) gradients.
      strategy: ``"auto"``, ``"replicate"``, ``"distribute"`` or ``"sharded"`` (module doc).
      mesh: the mesh to share the work over when the arrays' types (Explicit axes) do not
        carry one; default: the mesh set with ``jax.set_mesh``.
      axis_name: inside ``pmap``/``shard_map`` with whole matrices on each device: the axis
        (or axes) to share the work over.

    Returns:
      ``norm.lmo(g)`` for each pair, equal to the one-device result up to float round-off.
      Under Explicit axes each is laid out as its gradient; under Auto axes the caller
      constrains it (:class:`lmo_optax.layouts.ParamLayouts`).
    """
    check_strategy(strategy)
    where = placement(grads, mesh=mesh, axis_name=axis_name)
    if where is None:
        return [n.lmo(g) for n, g in zip(norms, grads, strict=True)]
    if strategy == "sharded" and where.collective:
        raise ValueError(
            "ns_sharding='sharded' shards matrices over a mesh; inside pmap/shard_map with "
            "ns_axis_name, use 'distribute' or 'replicate'"
        )

    items = []
    for norm, g in zip(norms, grads, strict=True):
        prepared = where.isolate(g)
        # Explicit axes: a transpose or merge of sharded axes (conv kernels, custom axes) is
        # not a sharding-preserving reshape, so those gradients are gathered first.
        if where.explicit and not (_is_plain_layout(norm, g.shape) and g.ndim <= 3):
            prepared = where.constrain(g, PartitionSpec())
        items.append(_Item(norm, g, prepared, wide_matrices(norm, prepared)))

    groups: dict[Any, list[_Item]] = {}
    for item in items:
        key = (item.wide.shape[1:], item.wide.dtype, item.norm.newton_schulz_settings())
        groups.setdefault(key, []).append(item)

    for ((rows, cols), dtype, (_, steps, ns_dtype)), group in groups.items():
        count = sum(item.wide.shape[0] for item in group)
        shape = Group(count, rows, cols, steps, jnp.dtype(ns_dtype or dtype))
        chosen = choose_strategy(shape, where) if strategy == "auto" else strategy
        if chosen == "sharded" and cols % where.size:
            chosen = "replicate"  # the long axis does not divide over the devices
        STRATEGIES[chosen].run(group, shape, where)

    out = []
    for item in items:
        polar = item.polar
        if item.prepared is not item.grad and where.explicit:
            polar = where.constrain(polar, PartitionSpec())
        lmo = lmo_from_wide_polar(item.norm, polar, item.prepared)
        out.append(where.restore(lmo, item.grad))
    return out
