"""Sharding the GPT example over a device mesh: ``--mesh data=4,model=2``.

The mesh has Auto axes (``jax.sharding.Mesh`` semantics): the model code stays unannotated
and XLA partitions the forward and backward passes from the layouts given here. Parameters are
sharded FSDP-style over ``data`` and tensor-parallel over ``model`` (Megatron layout):

=====================================  ==========================  ========================
parameter                              (d_in, d_out) layout        why
=====================================  ==========================  ========================
attn query/key/value, mlp fc           P(data, model)              column-parallel
attn out, mlp proj                     P(model, data)              row-parallel
token/position embedding (vocab, d)    P(data, model)
lm_head (d, vocab)                     P(data, model)
norm gains, biases                     replicated
=====================================  ==========================  ========================

A dimension that the axis size does not divide stays unsharded on that axis. Batches are split
over ``data``. lmo-optax then shares the Newton–Schulz work over all the devices
(``ns_sharding="auto"``, see ``lmo_optax.strategies``).

>>> mesh = parse_mesh("data=1")
>>> dict(mesh.shape)
{'data': 1}
"""

from __future__ import annotations

import math
import re
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec

from lmo_optax.paths import path_to_str

_ROW_PARALLEL = re.compile(r"(^|/)(out|proj)/kernel$")


def parse_mesh(text: str, devices: list[jax.Device] | None = None) -> jax.sharding.Mesh:
    """A mesh from ``"data=4,model=2"`` (axis=size pairs, in order), over the first devices."""
    devices = jax.devices() if devices is None else devices
    axes: dict[str, int] = {}
    for part in text.split(","):
        name, sep, size = part.strip().partition("=")
        if not sep or not name.isidentifier() or not size.strip().isdigit():
            raise ValueError(
                f"--mesh {text!r}: expected axis=size pairs such as 'data=4,model=2', "
                f"got {part.strip()!r}"
            )
        if name in axes:
            raise ValueError(f"--mesh {text!r}: axis {name!r} appears twice")
        if int(size) < 1:
            raise ValueError(f"--mesh {text!r}: axis {name!r} needs a positive size")
        axes[name] = int(size)
    unknown = set(axes) - {"data", "model"}
    if unknown:
        raise ValueError(
            f"--mesh {text!r}: the example shards over axes 'data' and 'model', "
            f"got {sorted(unknown)}"
        )
    needed = math.prod(axes.values())
    if needed > len(devices):
        raise ValueError(
            f"--mesh {text!r} needs {needed} devices, but JAX sees {len(devices)}; on CPU, "
            "simulate more with XLA_FLAGS=--xla_force_host_platform_device_count=N"
        )
    grid = np.asarray(devices[:needed]).reshape(tuple(axes.values()))
    return jax.sharding.Mesh(grid, tuple(axes), axis_types=(AxisType.Auto,) * len(axes))


def _axis(mesh: jax.sharding.Mesh, name: str, size: int) -> str | None:
    """``name`` if the mesh has it with more than one device and it divides ``size``."""
    n = dict(mesh.shape).get(name, 1)
    return name if n > 1 and size % n == 0 else None


def _spelled(entries: list[Any]) -> PartitionSpec:
    # Trailing Nones dropped: the spelling jit gives its outputs under Auto axes, so feeding
    # the step's outputs back in does not recompile it (jit caches on the spelling).
    while entries and entries[-1] is None:
        entries.pop()
    return PartitionSpec(*entries)


def param_spec(path: str, shape: tuple[int, ...], mesh: jax.sharding.Mesh) -> PartitionSpec:
    """The layout of one parameter (see the module table)."""
    if len(shape) < 2:
        return PartitionSpec()
    d_in, d_out = shape[-2:]
    if _ROW_PARALLEL.search(path):
        pair = [_axis(mesh, "model", d_in), _axis(mesh, "data", d_out)]
    else:
        pair = [_axis(mesh, "data", d_in), _axis(mesh, "model", d_out)]
    return _spelled([None] * (len(shape) - 2) + pair)


def param_shardings(params: Any, mesh: jax.sharding.Mesh) -> Any:
    """A NamedSharding for every leaf of ``params`` (a pytree of arrays)."""

    def sharding(path: Any, x: Any) -> NamedSharding:
        return NamedSharding(mesh, param_spec(path_to_str(path), tuple(np.shape(x)), mesh))

    return jax.tree_util.tree_map_with_path(sharding, params)


def state_shardings(state: Any, mesh: jax.sharding.Mesh) -> Any:
    """The shardings of an optimizer state made by ``tx.init(sharded_params)`` outside jit.

    Per-parameter buffers (``zeros_like`` of a sharded parameter) already carry the
    parameter's sharding; everything else (step counts, scalars) is replicated on the mesh.
    """

    def sharding(x: Any) -> NamedSharding:
        s = getattr(x, "sharding", None)
        if isinstance(s, NamedSharding) and s.mesh == mesh:
            return s
        return NamedSharding(mesh, PartitionSpec())

    return jax.tree.map(sharding, state)


def batch_sharding(mesh: jax.sharding.Mesh, batch_size: int) -> NamedSharding:
    """Inputs and targets (batch, context): batch over ``data`` when it divides."""
    return NamedSharding(mesh, _spelled([_axis(mesh, "data", batch_size)]))
