"""Sharding the GPT example over a device mesh: ``--mesh data=4,model=2``.

The mesh has Auto axes (``jax.sharding.Mesh`` semantics): XLA partitions the forward and
backward passes from the layouts given here and one constraint in the model, on the residual
stream after the embedding lookup (batch over ``data``, ``GPT.__call__(activations=...)``).
Without that constraint the lookup's output takes the table's layout and every device computes
the activations of the whole batch. Parameters are
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

Scanned blocks (``GPTConfig.scan_layers``, paths ``blocks/<name>`` without a layer index) keep
their leading layer axis whole (every device runs every layer) and lay out each layer as above:
(layer, d_in, d_out) kernels like their matrices, the per-head attention kernels with ``heads``
over ``model`` and ``d`` over ``data`` (query/key/value (layer, d, heads, head_dim) as
P(None, data, model), out (layer, heads, head_dim, d) as P(None, model, None, data)), and
(layer, d) gains replicated.

Batches are split over ``data``. The mesh must divide what it splits, or the run would not be
the one asked for: ``data`` divides the batch and ``model`` the attention heads (checked by
``TrainConfig``), and the mesh needs no more devices than JAX sees (``parse_mesh``). Within
those, a parameter dimension that an axis does not divide (the 256-byte vocabulary over a mesh
of 3, a width of 32 over 3) stays whole along that axis: a layout choice, which costs memory on
each device but not results, and ``train.build`` logs the parameters it applies to
(``kept_whole``). lmo-optax then shares the Newton–Schulz work over all the devices
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

from lmo_optax.example.config import mesh_axes
from lmo_optax.example.errors import ConfigError
from lmo_optax.paths import path_to_str

_ROW_PARALLEL = re.compile(r"(^|/)(out|proj)/kernel$")
_SCANNED = re.compile(r"^blocks/(?!\d+/)")  # stacked blocks: no layer index in the path


def parse_mesh(text: str, devices: list[jax.Device] | None = None) -> jax.sharding.Mesh:
    """A mesh from ``"data=4,model=2"`` (axis=size pairs, in order), over the first devices.

    Raises:
      ConfigError: the text is not a mesh (``config.mesh_axes``), or it needs more devices than
        ``devices`` (default: all that JAX sees).
    """
    devices = jax.devices() if devices is None else devices
    axes = mesh_axes(text)
    needed = math.prod(axes.values())
    if needed > len(devices):
        raise ConfigError(
            f"--mesh {text} needs {needed} devices, but JAX sees {len(devices)}; on CPU, "
            "simulate more with XLA_FLAGS=--xla_force_host_platform_device_count=N"
        )
    if jax.process_count() > 1 and needed != len(devices):
        raise ConfigError(
            f"--mesh {text} uses {needed} of the {len(devices)} devices of "
            f"{jax.process_count()} processes; a multi-process run needs a mesh over all of them"
        )
    grid = np.asarray(devices[:needed]).reshape(tuple(axes.values()))
    return jax.sharding.Mesh(grid, tuple(axes), axis_types=(AxisType.Auto,) * len(axes))


def _axis(mesh: jax.sharding.Mesh, name: str | None, size: int) -> str | None:
    """``name`` if the mesh has it with more than one device and it divides ``size``."""
    n = dict(mesh.shape).get(name, 1)
    return name if n > 1 and size % n == 0 else None


def _wanted_axes(path: str, shape: tuple[int, ...]) -> list[str | None]:
    """The mesh axis each dimension of a parameter is split over when it divides (the table)."""
    row_parallel = bool(_ROW_PARALLEL.search(path))
    scanned = bool(_SCANNED.search(path))
    if scanned and len(shape) == 4:  # per-head attention kernels: heads over model
        return [None, "model", None, "data"] if row_parallel else [None, "data", "model", None]
    if len(shape) < 2 or (scanned and len(shape) == 2):  # vectors, per layer when scanned
        return [None] * len(shape)
    pair = ["model", "data"] if row_parallel else ["data", "model"]
    return [None] * (len(shape) - 2) + pair  # leading axes (a scanned layer axis) whole


def _spelled(entries: list[Any]) -> PartitionSpec:
    # Trailing Nones dropped: the spelling jit gives its outputs under Auto axes, so feeding
    # the step's outputs back in does not recompile it (jit caches on the spelling).
    while entries and entries[-1] is None:
        entries.pop()
    return PartitionSpec(*entries)


def param_spec(path: str, shape: tuple[int, ...], mesh: jax.sharding.Mesh) -> PartitionSpec:
    """The layout of one parameter (see the module table)."""
    wanted = _wanted_axes(path, shape)
    return _spelled([_axis(mesh, a, d) for a, d in zip(wanted, shape, strict=True)])


def kept_whole(params: Any, mesh: jax.sharding.Mesh) -> list[str]:
    """``"path (axis)"`` for each parameter dimension that its axis does not divide.

    Those dimensions stay whole along the axis (see the module docstring).
    """
    found = []
    for path, x in jax.tree_util.tree_flatten_with_path(params)[0]:
        name, shape = path_to_str(path), tuple(np.shape(x))
        for axis, size in zip(_wanted_axes(name, shape), shape, strict=True):
            if axis and dict(mesh.shape).get(axis, 1) > 1 and not _axis(mesh, axis, size):
                found.append(f"{name} ({axis})")
    return found


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


def batch_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
    """Inputs and targets (batch, context): batch over ``data`` (``TrainConfig`` checks that it
    divides the batch)."""
    return NamedSharding(mesh, _spelled(["data" if "data" in mesh.axis_names else None]))
