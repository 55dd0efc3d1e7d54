"""Sharding of the spectral LMO's Newton–Schulz work across devices.

Newton–Schulz multiplies whole matrices, so on sharded parameters someone must decide where
each product runs. ``optax.contrib.muon`` leaves it to the compiler: under an Explicit-axis mesh
it fails (``ShardingTypeError``), and elsewhere every device repeats the whole work. Here the
Spectral LMOs of one update are orthogonalized together, by one of three strategies:

``"replicate"``
    Gather each matrix, orthogonalize it on every device, keep each device's part. The
    baseline: simple, and every device does all the work.
``"distribute"``
    Group the matrices of the same (wide) shape and Newton–Schulz settings, the layer axis of
    scanned parameters included; stack each group, shard the stack over all the devices of the
    mesh (padding it with zero matrices to a multiple of their number), so that each device
    orthogonalizes its share of whole matrices; then bring every result back to its parameter's
    sharding. The moves are all-to-alls; no device gathers matrices it does not work on. This is
    the JAX counterpart of distributed Muon.
``"sharded"``
    For single matrices too large to gather: Newton–Schulz on the matrix sharded along its long
    axis, every product given its output sharding. Products with X stay sharded; the small m×m
    Gram-side matrices are all-reduced and replicated (they are the smaller side, so this is
    the cheap direction).

``"auto"`` (the default) picks, for each group, the strategy with the fewest floating-point
operations per device: ``distribute`` for groups of many matrices, ``sharded`` for a few large
rectangular ones (e.g. an embedding), ``replicate`` when neither divides. On one device, or
without a mesh, all strategies are the plain computation.

Where the mesh comes from: the Explicit mesh axes in the parameters' types, else a mesh passed
in (``scion(..., ns_mesh=mesh)``), else the mesh set with ``jax.set_mesh``. Under Explicit axes
results are ``jax.reshard``-ed back to the parameter's spec; under Auto axes they are tied to
the gradient's sharding with ``shard_alike``. Inside ``jax.pmap`` (or a ``shard_map`` over
replicated parameters), pass the axis name (``ns_axis_name="batch"``): ``distribute`` then gives
each device its share by ``axis_index`` and ``all_gather``\\ s the results.

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
from jax.experimental.shard_alike import shard_alike
from jax.sharding import AxisType, NamedSharding, PartitionSpec

from lmo_optax import newton_schulz

Strategy = Literal["auto", "replicate", "distribute", "sharded"]
STRATEGIES: tuple[str, ...] = ("auto", "replicate", "distribute", "sharded")


def check_strategy(strategy: str) -> None:
    """Raises ValueError for an unknown strategy name."""
    if strategy not in STRATEGIES:
        raise ValueError(
            f"unknown Newton–Schulz sharding strategy {strategy!r}; choose one of {STRATEGIES}"
        )


# --------------------------------------------------------------------------------------------
# One parameter at a time (Spectral.lmo, Spectral.norm): replicate under Explicit axes.
# --------------------------------------------------------------------------------------------


def explicit_spec(x: jax.Array) -> PartitionSpec | None:
    """x's PartitionSpec when some of its axes are sharded over Explicit mesh axes, else None."""
    sharding = getattr(jax.typeof(x), "sharding", None)
    mesh = getattr(sharding, "mesh", None)
    explicit = set(getattr(mesh, "explicit_axes", ()) or ())
    if not explicit:
        return None
    spec = sharding.spec
    for entry in spec:
        names = entry if isinstance(entry, tuple) else (entry,)
        if any(n in explicit for n in names if n is not None):
            return spec
    return None


def gather(x: jax.Array) -> jax.Array:
    """x resharded to replicated when it is sharded over Explicit mesh axes, else x."""
    return x if explicit_spec(x) is None else jax.reshard(x, PartitionSpec())


def replicated(fn: Callable[[jax.Array], jax.Array], x: jax.Array) -> jax.Array:
    """fn(x) computed on a replicated copy of x, resharded back to x's spec (Explicit axes)."""
    spec = explicit_spec(x)
    if spec is None:
        return fn(x)
    out = fn(jax.reshard(x, PartitionSpec()))
    return jax.reshard(out, spec)


def _lower_each_shard_alike_separately() -> None:
    """Works around a JAX bug: shard_alike's lowering is cached by operand types.

    With the cache, every ``shard_alike`` of same-shaped arrays in one jit lowers to the same
    sharding group, so XLA forces all of them (e.g. an embedding and an MLP kernel of equal
    shape but different layouts) to a single layout. Marking the primitive uncacheable gives
    each call its own group. ``tests/test_sharding.py`` checks the effect: same-shaped
    matrices with different layouts keep their own layouts under Auto axes.
    """
    try:
        from jax._src import shard_alike as shard_alike_module
        from jax._src.interpreters import mlir

        mlir._uncacheable_primitives.add(shard_alike_module.shard_alike_p)
    except (ImportError, AttributeError):  # internals moved: the test will tell
        pass


_lower_each_shard_alike_separately()


def like(out: jax.Array, reference: jax.Array) -> jax.Array:
    """``out`` laid out like ``reference`` (same shape), when traced under Auto mesh axes.

    Under Auto axes the layout is not in the types: XLA propagates it, in both directions, and
    the layouts the Newton–Schulz strategies impose (or a finer sharding over more axes) could
    otherwise leak into the optimizer state and the updates. The transformations tie what they
    return to what they were given. Outside ``jit``, under Explicit axes (the layout is in the
    types) and in manual contexts (``pmap``, ``shard_map``) this is the identity.
    """
    if not isinstance(reference, jax.core.Tracer) or explicit_spec(reference) is not None:
        return out
    if AxisType.Manual in (getattr(jax.sharding.get_abstract_mesh(), "axis_types", ()) or ()):
        return out
    return shard_alike(out, reference)[0]


# --------------------------------------------------------------------------------------------
# Where the work runs: a mesh (Explicit or Auto axes) or a collective axis (pmap / shard_map).
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Placement:
    """The devices that share the Newton–Schulz work of one update.

    Attributes:
      mesh: the (abstract or concrete) mesh; None in collective mode.
      axes: the mesh axes the work is split over (all non-manual axes), or the collective
        axis names.
      size: the number of devices sharing the work.
      explicit: the mesh axes are Explicit (``jax.reshard``), else Auto (sharding constraints).
      collective: inside ``pmap``/``shard_map``: every device holds whole matrices, and the
        work is split with ``axis_index`` and ``all_gather`` over ``axes``.
    """

    mesh: Any
    axes: tuple[str, ...]
    size: int
    explicit: bool = False
    collective: bool = False

    def spec(self, *entries: Any) -> PartitionSpec:
        """A PartitionSpec where the string ``"all"`` stands for all the work-sharing axes."""
        return PartitionSpec(*(self.axes if e == "all" else e for e in entries))

    def constrain(self, x: jax.Array, spec: PartitionSpec) -> jax.Array:
        """x laid out as ``spec``: a reshard (Explicit axes) or a sharding constraint (Auto)."""
        sharding = NamedSharding(self.mesh, spec)
        if self.explicit:
            return jax.reshard(x, sharding)
        return jax.lax.with_sharding_constraint(x, sharding)

    def restore(self, out: jax.Array, like: jax.Array) -> jax.Array:
        """out laid out as ``like`` (the gradient it was computed from)."""
        if self.collective:
            return out
        if self.explicit:
            spec = getattr(jax.typeof(like).sharding, "spec", None)
            return jax.reshard(out, NamedSharding(self.mesh, spec or PartitionSpec()))
        return shard_alike(out, like)[0]

    def isolate(self, g: jax.Array) -> jax.Array:
        """g, cut off from the layouts chosen inside the strategies (Auto axes).

        Under Auto axes XLA propagates shardings both ways: the strategies' constraints would
        otherwise flow back into the averaged gradient (and the optimizer state). An
        optimization barrier on the way in stops that; on the way out ``restore`` ties the
        result to the gradient's layout.
        """
        if self.collective or self.explicit:
            return g
        return jax.lax.optimization_barrier(g)

    def matmul(self, x_spec: PartitionSpec) -> newton_schulz.Matmul:
        """Newton–Schulz products for X sharded as ``x_spec``; Gram-side results replicated."""

        def matmul(a: jax.Array, b: jax.Array, kind: str) -> jax.Array:
            sharding = NamedSharding(self.mesh, x_spec if kind == "x" else PartitionSpec())
            if not self.explicit:
                return jax.lax.with_sharding_constraint(a @ b, sharding)
            # lax.dot_general, not jnp.matmul: with a batch of one, jnp.matmul squeezes the
            # batch axis and then rejects the rank of out_sharding (JAX 0.10).
            batch = tuple(range(a.ndim - 2))
            contract = ((a.ndim - 1,), (b.ndim - 2,))
            return jax.lax.dot_general(a, b, (contract, (batch, batch)), out_sharding=sharding)

        return matmul


def _work_axes(mesh: Any) -> tuple[tuple[str, ...], bool]:
    """The mesh's non-manual axes and whether they are all Explicit."""
    names = tuple(getattr(mesh, "axis_names", ()) or ())
    types = tuple(getattr(mesh, "axis_types", ()) or (AxisType.Auto,) * len(names))
    axes = tuple(n for n, t in zip(names, types, strict=True) if t != AxisType.Manual)
    kinds = {t for n, t in zip(names, types, strict=True) if n in axes}
    return axes, bool(axes) and kinds == {AxisType.Explicit}


def placement(
    grads: Sequence[jax.Array],
    *,
    mesh: Any = None,
    axis_name: str | tuple[str, ...] | None = None,
) -> Placement | None:
    """Where the Newton–Schulz work of ``grads`` runs; None for a single device.

    In order: the collective ``axis_name`` (pmap/shard_map); a mesh from the gradients'
    Explicit-axis types; the ``mesh`` passed in; the mesh set with ``jax.set_mesh``.
    """
    if axis_name is not None:
        names = (axis_name,) if isinstance(axis_name, str) else tuple(axis_name)
        size = math.prod(jax.lax.axis_size(n) for n in names)
        return Placement(None, names, size, collective=True) if size > 1 else None
    candidates = []
    for g in grads:
        typed = getattr(getattr(jax.typeof(g), "sharding", None), "mesh", None)
        if typed is not None and getattr(typed, "explicit_axes", ()):
            candidates.append(typed)
            break
    candidates += [mesh, jax.sharding.get_abstract_mesh()]
    for candidate in candidates:
        if candidate is None or getattr(candidate, "empty", False):
            continue
        axes, explicit = _work_axes(candidate)
        size = math.prod(candidate.shape[a] for a in axes)
        if size > 1:
            return Placement(candidate, axes, size, explicit=explicit)
    return None


# --------------------------------------------------------------------------------------------
# Many Spectral LMOs at once.
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class _Item:
    norm: Any  # a lmo_optax.norms.Spectral
    grad: jax.Array  # the (averaged) gradient, as given
    prepared: jax.Array  # the gradient as its matrices are taken from (maybe gathered)
    wide: jax.Array  # (B, m, n) matrices, m ≤ n, compute dtype
    polar: jax.Array | None = None


def choose_strategy(
    count: int, rows: int, cols: int, steps: int, dtype: Any, where: Placement
) -> str:
    """The strategy with the fewest Newton–Schulz FLOPs per device for ``count`` matrices."""
    method = newton_schulz.choose_method(rows, cols, steps, jnp.dtype(dtype))
    whole = newton_schulz.newton_schulz_flops(rows, cols, steps, method)
    # On ties the first wins: replicate (one matrix: no work to share), then distribute.
    costs = {"replicate": count * whole, "distribute": math.ceil(count / where.size) * whole}
    if not where.collective and max(rows, cols) % where.size == 0:
        split = newton_schulz.newton_schulz_flops(rows, cols, steps, method, split=where.size)
        costs["sharded"] = count * split
    return min(costs, key=lambda k: (costs[k], list(costs).index(k)))


def spectral_lmos(
    norms: Sequence[Any],
    grads: Sequence[jax.Array],
    *,
    strategy: Strategy = "auto",
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
      ``norm.lmo(g)`` for each pair, equal to the one-device result up to float round-off, laid
      out as the gradient.
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
        if where.explicit and not (norm.is_plain_layout(g.shape) and g.ndim <= 3):
            prepared = where.constrain(g, PartitionSpec())
        items.append(_Item(norm, g, prepared, norm.wide_matrices(prepared)))

    groups: dict[Any, list[_Item]] = {}
    for item in items:
        key = (item.wide.shape[1:], item.wide.dtype, item.norm.newton_schulz_settings())
        groups.setdefault(key, []).append(item)

    for ((rows, cols), dtype, (_, steps, ns_dtype)), group in groups.items():
        chosen = strategy
        if chosen == "auto":
            count = sum(item.wide.shape[0] for item in group)
            chosen = choose_strategy(count, rows, cols, steps, ns_dtype or dtype, where)
        if chosen == "sharded" and cols % where.size:
            chosen = "replicate"  # the long axis does not divide over the devices
        if chosen == "distribute":
            _distribute(group, where)
        elif chosen == "sharded":
            x_spec = where.spec(None, None, "all")
            for item in group:
                x = where.constrain(item.wide, x_spec)
                item.polar = item.norm.polar(x, matmul=where.matmul(x_spec))
        else:
            for item in group:
                if where.collective:
                    item.polar = item.norm.polar(item.wide)
                else:  # pin input and output, or XLA may run it sharded (Auto axes)
                    x = where.constrain(item.wide, PartitionSpec())
                    item.polar = where.constrain(item.norm.polar(x), PartitionSpec())

    out = []
    for item in items:
        polar = item.polar
        if item.prepared is not item.grad and where.explicit:
            polar = where.constrain(polar, PartitionSpec())
        out.append(where.restore(item.norm.from_wide_polar(polar, item.prepared), item.grad))
    return out


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


def _distribute(group: list[_Item], where: Placement) -> None:
    """Orthogonalizes the stacked matrices of ``group``, each device its share."""
    norm = group[0].norm
    count = sum(item.wide.shape[0] for item in group)
    rows, cols = group[0].wide.shape[1:]
    dtype = group[0].wide.dtype
    padding = -count % where.size
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
        # the stack is a local concatenation; then one all-to-all puts whole matrices on their
        # devices, and one more brings them back.
        stage = _staging_spec(group, where)
        parts = [where.constrain(item.wide, stage) for item in group]
        if padding:
            zeros = jnp.zeros((padding, rows, cols), dtype)
            parts.append(where.constrain(zeros, stage))
        stack = where.constrain(jnp.concatenate(parts, axis=0), where.spec("all", None, None))
        polar = where.constrain(norm.polar(stack), stage)
    start = 0
    for item in group:
        size = item.wide.shape[0]
        piece = polar[start : start + size]
        # Keep the slice in the stack's layout; moving it to the parameter's is a separate
        # step (slicing straight into another layout makes XLA replicate the stack).
        item.polar = piece if stage is None else where.constrain(piece, stage)
        start += size
