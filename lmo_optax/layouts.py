"""Where an array lives on a device mesh, and moving it: public JAX APIs only.

JAX has two kinds of mesh axes (``jax.sharding.AxisType``):

* **Explicit** axes (``jax.make_mesh``'s default): the layout is part of an array's type,
  ``jax.typeof(x).sharding.spec``, also under ``jit``. Moves are ``jax.reshard``.
* **Auto** axes (``jax.sharding.Mesh``'s default): the compiler chooses layouts, propagating
  them through the program in both directions. Inside ``jit`` a traced array's type says
  nothing about its layout, so a layout the library wants to keep must be known beforehand.
  Moves are ``jax.lax.with_sharding_constraint``.

:class:`Placement` says which devices share the Newton–Schulz work of one update and moves
matrices for the strategies (:mod:`lmo_optax.strategies`). :class:`ParamLayouts` remembers the
parameters' Auto-axes layouts, read from the parameters given to ``init`` (concrete arrays or
``jax.ShapeDtypeStruct`` with a sharding), so that updates and optimizer state keep them.
Nothing here changes JAX's own state.

>>> import jax, jax.numpy as jnp
>>> from jax.sharding import NamedSharding, PartitionSpec as P
>>> mesh = jax.sharding.Mesh(jax.devices(), ("data",))  # Auto axes
>>> w = jax.device_put(jnp.ones((8 * jax.device_count(), 2)), NamedSharding(mesh, P("data")))
>>> layouts = ParamLayouts()
>>> layouts.record({"w": w})  # one device: nothing to record
>>> layouts.sharding("w", w.shape) == (w.sharding if jax.device_count() > 1 else None)
True
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable, Hashable, Iterator, Sequence
from typing import Any

import jax
from jax.sharding import AbstractMesh, AxisType, Mesh, NamedSharding, PartitionSpec

from lmo_optax import newton_schulz
from lmo_optax.paths import flatten_with_paths

# --------------------------------------------------------------------------------------------
# Explicit axes: the layout is in the type.
# --------------------------------------------------------------------------------------------


def explicit_spec(x: Any) -> PartitionSpec | None:
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


def on_whole(fn: Callable[[jax.Array], jax.Array], x: jax.Array) -> jax.Array:
    """fn(x) computed on a replicated copy of x, resharded back to x's spec (Explicit axes).

    For math that needs the whole matrix (``x @ x.T`` of a matrix sharded along its
    contracting axis is a type error under Explicit axes). Elsewhere this is ``fn(x)``.
    """
    spec = explicit_spec(x)
    if spec is None:
        return fn(x)
    return jax.reshard(fn(jax.reshard(x, PartitionSpec())), spec)


def in_manual_context() -> bool:
    """True inside ``shard_map`` or ``pmap`` (Manual mesh axes), where arrays are per-device."""
    axis_types = getattr(jax.sharding.get_abstract_mesh(), "axis_types", ()) or ()
    return AxisType.Manual in axis_types


# --------------------------------------------------------------------------------------------
# Auto axes: the layouts of the parameters, remembered from init.
# --------------------------------------------------------------------------------------------


def _auto_sharding(x: Any) -> NamedSharding | None:
    """x's sharding when it is a NamedSharding over a multi-device mesh of Auto axes only."""
    sharding = getattr(x, "sharding", None)
    if not isinstance(sharding, NamedSharding):
        return None
    mesh = sharding.mesh
    types = tuple(getattr(mesh, "axis_types", ()) or ())
    if math.prod(mesh.shape.values()) <= 1 or any(t != AxisType.Auto for t in types):
        return None
    return sharding


class ParamLayouts:
    """The parameters' layouts under Auto mesh axes, kept statically from ``init``.

    Under Auto axes a traced array does not know its layout, and XLA propagates the layouts
    chosen inside the optimizer (a stack sharded over all devices, a gathered matrix) into
    what it returns. Each stateful transformation therefore records, at ``init``, the
    sharding of every parameter that is laid out over Auto axes, keyed by its path and shape,
    and constrains what it returns for that parameter to that sharding: updates and state keep
    the parameters' layouts, and a jitted step whose outputs are fed back does not recompile.

    ``init`` must see the layouts: call it outside ``jit`` (as ``flax.nnx.Optimizer`` does),
    or on ``jax.ShapeDtypeStruct``\\ s that carry shardings. Under Explicit axes, on one device,
    and for parameters ``init`` did not see laid out, nothing is recorded or constrained; nor
    when a wrapper builds the transformation anew for each update (``optax.inject_hyperparams``):
    there, give the jitted step ``out_shardings``.
    """

    def __init__(self) -> None:
        self._by_key: dict[Hashable, NamedSharding] = {}

    def record(self, params: Any) -> None:
        """Remembers the Auto-axes sharding of each leaf of ``params`` (others are skipped)."""
        for path, x in flatten_with_paths(params)[0]:
            sharding = _auto_sharding(x)
            if sharding is not None:
                self._by_key[(path, tuple(x.shape))] = sharding

    def sharding(self, path: str, shape: Sequence[int]) -> NamedSharding | None:
        """The recorded sharding of the parameter at ``path`` with ``shape``, if any."""
        return self._by_key.get((path, tuple(shape)))

    def replicated(self) -> NamedSharding | None:
        """Replicated over the mesh of the recorded layouts (for scalars such as a step
        count), when they all share one mesh; else None."""
        meshes = {s.mesh for s in self._by_key.values()}
        return NamedSharding(meshes.pop(), PartitionSpec()) if len(meshes) == 1 else None

    def keep(self, tree: Any) -> Any:
        """``tree`` with every leaf constrained to its parameter's recorded layout."""
        if not self._by_key or in_manual_context():
            return tree
        leaves, treedef = flatten_with_paths(tree)
        out = []
        for path, x in leaves:
            sharding = self._by_key.get((path, tuple(getattr(x, "shape", ()))))
            if sharding is not None and explicit_spec(x) is None:
                x = jax.lax.with_sharding_constraint(x, sharding)
            out.append(x)
        return treedef.unflatten(out)


# --------------------------------------------------------------------------------------------
# Where the Newton–Schulz work runs: a mesh (Explicit or Auto axes) or a collective axis.
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
        """out laid out as ``like`` (the gradient it was computed from), under Explicit axes.

        Under Auto axes the gradient's layout is not in its type; the transformation that
        returns ``out`` constrains it to the parameter's recorded layout (:class:`ParamLayouts`).
        """
        if not self.explicit:
            return out
        spec = getattr(jax.typeof(like).sharding, "spec", None)
        return jax.reshard(out, NamedSharding(self.mesh, spec or PartitionSpec()))

    def isolate(self, g: jax.Array) -> jax.Array:
        """g, cut off from the layouts chosen inside the strategies (Auto axes).

        Under Auto axes XLA propagates shardings both ways: the strategies' constraints would
        otherwise flow back into the averaged gradient (and the optimizer state). An
        optimization barrier on the way in stops that.
        """
        if self.collective or self.explicit:
            return g
        return jax.lax.optimization_barrier(g)

    def matmul(
        self, x_spec: PartitionSpec, gram_spec: PartitionSpec | None = None
    ) -> newton_schulz.Matmul:
        """Newton–Schulz products for X laid out as ``x_spec`` and the m×m Gram-side matrices
        as ``gram_spec`` (default: replicated)."""

        def matmul(a: jax.Array, b: jax.Array, kind: str) -> jax.Array:
            spec = x_spec if kind == "x" else gram_spec or PartitionSpec()
            sharding = NamedSharding(self.mesh, spec)
            if not self.explicit:
                return jax.lax.with_sharding_constraint(a @ b, sharding)
            # lax.dot_general, not jnp.matmul: with a batch of one, jnp.matmul squeezes the
            # batch axis and then rejects the rank of out_sharding.
            batch = tuple(range(a.ndim - 2))
            contract = ((a.ndim - 1,), (b.ndim - 2,))
            return jax.lax.dot_general(a, b, (contract, (batch, batch)), out_sharding=sharding)

        return matmul

    def can_regroup(self) -> bool:
        """Whether :meth:`regrouped` applies: a mesh whose axes all share the work."""
        names = tuple(getattr(self.mesh, "axis_names", ()) or ())
        return not self.collective and self.mesh is not None and names == self.axes

    def regrouped(self, split: int) -> Placement:
        """The same devices as a (size/split, split) mesh with axes :data:`REGROUPED_AXES`.

        Devices are taken in the mesh's order, so each group of ``split`` devices is a run of
        neighbours along its last axes. Inside one ``jit`` the strategies may lay arrays out on
        either mesh (the device assignment is the same).
        """
        if not self.can_regroup() or self.size % split:
            raise ValueError(f"cannot split {self.size} devices into groups of {split}")
        sizes = (self.size // split, split)
        kind = AxisType.Explicit if self.explicit else AxisType.Auto
        if isinstance(self.mesh, Mesh):
            devices = self.mesh.devices.reshape(sizes)
            mesh: Any = Mesh(devices, REGROUPED_AXES, axis_types=(kind, kind))
        else:
            mesh = AbstractMesh(sizes, REGROUPED_AXES, axis_types=(kind, kind))
        return Placement(mesh, REGROUPED_AXES, self.size, explicit=self.explicit)

    @contextlib.contextmanager
    def computing(self) -> Iterator[None]:
        """The context to compute in: under Explicit axes, this placement's mesh (JAX checks
        that the shardings of an operation's results name the mesh in context)."""
        if not self.explicit:
            yield
            return
        abstract = getattr(self.mesh, "abstract_mesh", self.mesh)
        with jax.sharding.use_abstract_mesh(abstract):
            yield


REGROUPED_AXES = ("lmo_groups", "lmo_split")
"""Axis names of :meth:`Placement.regrouped`'s mesh: the groups, and the devices of a group."""


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
