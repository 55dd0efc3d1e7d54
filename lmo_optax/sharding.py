"""Sharding of the spectral LMO's Newton–Schulz work.

Newton–Schulz multiplies whole matrices, so on a parameter sharded over mesh axes of the
``Explicit`` type (``jax.make_mesh``'s default) every product would need an output sharding:
``optax.contrib.muon`` fails there with ``ShardingTypeError``. The strategy implemented here is
**replicate**: gather the matrix (``jax.reshard`` to a replicated spec), orthogonalize it on
every device, and reshard the result back to the parameter's own spec, so updates and optimizer
state keep the params' sharding. Under ``Auto`` mesh axes (``jax.sharding.Mesh``'s default) and
without a mesh, nothing is done: XLA's sharding propagation inserts the collectives.

All the other LMOs (ColNorm, RowNorm, Sign, RMS) are elementwise maps and reductions; they run on
sharded parameters as they are, the reductions becoming the needed collectives.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
from jax.sharding import PartitionSpec


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
