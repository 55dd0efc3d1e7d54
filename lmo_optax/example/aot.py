"""``lmo-optax compile``: the example's train step compiled for a TPU slice that is not there.

JAX can describe a TPU slice without one attached (``jax.experimental.topologies``: the
devices of, say, ``v5e:4x4``) and compile a program for it ahead of time with the real TPU
compiler (libtpu, ``pip install "lmo-optax[tpu-aot]"``). Here the whole train step — forward,
backward and optimizer update, parameters and optimizer state donated — is compiled for the
named slice from abstract inputs (``jax.ShapeDtypeStruct`` with shardings: nothing is
allocated), laid out as a ``--mesh`` run of the example lays it out (FSDP over ``data``,
Megatron-style over ``model``; ``lmo_optax.example.parallel``). From the compiled program, per
device (a chip; on v2-v4, one of its two TensorCores): the FLOPs of the step and of the
optimizer update alone, the bytes it needs against the chip's HBM, and its collectives. So
whether a run fits, and how its work splits, is known before a pod is rented.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import time
from typing import Any

import numpy as np

from lmo_optax.example.config import TrainConfig, mesh_axes
from lmo_optax.example.errors import ConfigError

INSTALL = 'pip install "lmo-optax[tpu-aot]"'

# HBM per chip, by TPU generation, in bytes, from Google Cloud's TPU system architecture pages
# (https://cloud.google.com/tpu/docs/system-architecture-tpu-vm and the per-version pages):
# v2 16 GiB and v3 32 GiB per chip (two TensorCores of 8 and 16 GiB), v4 32 GiB,
# v5e 16 GiB, v5p 95 GiB, v6e (Trillium) 32 GiB.
GIB = 2**30
HBM_BYTES = {
    "v2": 16 * GIB,
    "v3": 32 * GIB,
    "v4": 32 * GIB,
    "v5e": 16 * GIB,
    "v5p": 95 * GIB,
    "v6e": 32 * GIB,
}
EXAMPLE_TOPOLOGIES = ("v5e:2x4", "v5e:4x4", "v5e:16x16", "v4:2x2x2", "v5p:2x2x4", "v6e:8x8")


@dataclasses.dataclass(frozen=True)
class Compiled:
    """One optimizer's train step compiled for a slice: what a chip does and holds."""

    optimizer: str
    per_device_flops: float  # the whole step
    optimizer_flops: float  # the update alone (compiled separately)
    per_device_bytes: dict[str, int]  # arguments, outputs, aliased, temporaries, code, total
    fits: bool
    collectives: dict[str, dict[str, int]]  # kind -> count, result bytes (lmo_optax.example.hlo)
    optimal_seconds: float | None  # the compiler's estimate of the step's time, where given
    compile_s: float


def generation(topology: str) -> str:
    """The TPU generation of a topology name: ``"v5e:4x4"`` → ``"v5e"``.

    >>> generation("v5p:2x2x4")
    'v5p'
    """
    return topology.split(":", 1)[0].lower()


def chips(devices: list[Any]) -> int:
    """How many chips ``devices`` are on: v2, v3 and (described without a TPU) v4 show each of
    a chip's two TensorCores as a device; later generations one device per chip."""
    return len({tuple(getattr(d, "coords", (i,))) for i, d in enumerate(devices)})


def hbm_per_device(topology: str, devices: list[Any]) -> int:
    """The HBM of one device of the slice: its chip's, shared by the chip's devices."""
    return HBM_BYTES[generation(topology)] * chips(devices) // len(devices)


def topology_devices(name: str) -> list[Any]:
    """The devices of TPU slice ``name`` (e.g. ``"v5e:4x4"``), described without a TPU.

    Raises:
      ConfigError: libtpu is not installed, or ``name`` is not a topology it knows.
    """
    if importlib.util.find_spec("libtpu") is None:
        raise ConfigError(
            f"compile needs the TPU compiler (libtpu), which is not installed: {INSTALL}"
        )
    if generation(name) not in HBM_BYTES or ":" not in name:
        raise ConfigError(
            f"--topology {name!r}: not a TPU topology; use GENERATION:SHAPE with a generation "
            f"of {', '.join(HBM_BYTES)}, e.g. {', '.join(EXAMPLE_TOPOLOGIES)}"
        )
    # Compiling touches no TPU: run on CPUs (a TPU host's chips stay free for its jobs), and
    # let several compiling processes load libtpu at once (it otherwise takes a lock file).
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    import jax
    from jax.experimental import topologies

    jax.config.update("jax_platforms", "cpu")
    try:
        return list(topologies.get_topology_desc(platform="tpu", topology_name=name).devices)
    except Exception as e:  # libtpu's own message says what it could not make of the name
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(
            f"--topology {name!r}: the TPU compiler does not know it ({first}); e.g. "
            f"{', '.join(EXAMPLE_TOPOLOGIES)}"
        ) from None


def mesh_on(devices: list[Any], text: str) -> Any:
    """A ``jax.sharding.Mesh`` (Auto axes) of ``text`` (``"data=8,model=2"``) over ``devices``.

    Raises:
      ConfigError: the mesh's size is not the number of devices.
    """
    from lmo_optax.example import parallel

    size = int(np.prod(list(mesh_axes(text).values()) or [0]))
    if size != len(devices):
        raise ConfigError(
            f"--mesh {text!r} has {size} devices but the slice has {len(devices)}; the mesh's "
            "sizes must multiply to the slice's devices"
        )
    return parallel.parse_mesh(text, devices)


def state_shardings_like(state: Any, param_shardings: Any, params: Any, mesh: Any) -> Any:
    """Shardings for an optimizer state traced from abstract parameters.

    ``jax.eval_shape`` does not say where a traced state would live (optax's ``zeros_like``
    leaves it to the compiler), so each per-parameter buffer gets its parameter's sharding: the
    parameter whose path ends the buffer's path (``mu/blocks/fc/kernel`` ↔ ``blocks/fc/kernel``)
    with the same shape. Everything else (step counts, scalars) is replicated, as a run's state
    made by ``tx.init`` on sharded parameters is.
    """
    import jax
    from jax.sharding import NamedSharding, PartitionSpec

    from lmo_optax.rules import path_to_str

    by_path = {
        path_to_str(path): (tuple(np.shape(x)), sharding)
        for (path, x), sharding in zip(
            jax.tree_util.tree_flatten_with_path(params)[0],
            jax.tree.leaves(param_shardings),
            strict=True,
        )
    }
    replicated = NamedSharding(mesh, PartitionSpec())

    def sharding(path: Any, x: Any) -> Any:
        name, shape = path_to_str(path), tuple(np.shape(x))
        for start in range(len(name)):
            if start and name[start - 1] != "/":
                continue
            match = by_path.get(name[start:])
            if match is not None and match[0] == shape:
                return match[1]
        return replicated

    return jax.tree_util.tree_map_with_path(sharding, state)


def _abstract(tree: Any, shardings: Any) -> Any:
    import jax

    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings
    )


def _cost(compiled: Any) -> dict[str, float]:
    cost = compiled.cost_analysis()
    return (cost[0] if isinstance(cost, list) else cost) or {}


def compile_step(
    cfg: TrainConfig,
    optimizer: str,
    mesh: Any,
    hbm_bytes: int | None = None,
    *,
    update_alone: bool = True,
) -> Compiled:
    """The donated train step of ``cfg`` with ``optimizer``, compiled for ``mesh``'s devices.

    Nothing is allocated: parameters, optimizer state and batch are ``jax.ShapeDtypeStruct``s
    laid out on ``mesh``. ``fits`` compares the step's bytes per chip with ``hbm_bytes``.
    ``update_alone=False`` skips the second compile, of the update alone (its FLOPs are then
    NaN).
    """
    import flax.nnx as nnx
    import jax
    import jax.numpy as jnp
    from jax.sharding import NamedSharding, PartitionSpec

    from lmo_optax.example import hlo, optimizers, parallel, train
    from lmo_optax.example.model import GPT, loss_fn

    if optimizer not in cfg.optimizers:
        raise ConfigError(
            f"optimizer {optimizer!r} has no entry in the config's optimizers "
            f"(have: {', '.join(cfg.optimizers)})"
        )
    graphdef, state = nnx.split(nnx.eval_shape(lambda: GPT(cfg.model, nnx.Rngs(0))))
    shapes = nnx.to_pure_dict(state)
    param_shardings = parallel.param_shardings(shapes, mesh)
    params = _abstract(shapes, param_shardings)
    oc = cfg.optimizers[optimizer]
    tx = optimizers.build(optimizer, oc, cfg.steps, cfg.model.tied, cfg.grad_accum_steps, mesh=mesh)
    # init sees the abstract parameters themselves (closed over, not traced), so that each
    # stage records their layouts, as it does from sharded arrays.
    state_shapes = jax.eval_shape(lambda: tx.init(params))
    state_shardings = state_shardings_like(state_shapes, param_shardings, shapes, mesh)
    opt_state = _abstract(state_shapes, state_shardings)
    batch_sharding = parallel.batch_sharding(mesh)
    tokens = jax.ShapeDtypeStruct(
        (cfg.batch_size, cfg.model.context), jnp.int32, sharding=batch_sharding
    )

    def loss_of(p: Any, inputs: jax.Array, targets: jax.Array) -> jax.Array:
        return loss_fn(nnx.merge(graphdef, p), inputs, targets, batch_sharding)

    step = jax.jit(
        train._step_function(loss_of, tx, cfg.grad_accum_steps),
        in_shardings=(param_shardings, state_shardings, batch_sharding, batch_sharding),
        out_shardings=(param_shardings, state_shardings, NamedSharding(mesh, PartitionSpec())),
        donate_argnums=(0, 1),
    )
    t0 = time.perf_counter()
    compiled = step.lower(params, opt_state, tokens, tokens).compile()
    compile_s = time.perf_counter() - t0
    update_cost: dict[str, float] = {}
    if update_alone:
        update = jax.jit(
            tx.update,
            in_shardings=(param_shardings, state_shardings, param_shardings),
            out_shardings=(param_shardings, state_shardings),
        )
        update_cost = _cost(update.lower(params, opt_state, params).compile())
    cost, memory = _cost(compiled), compiled.memory_analysis()
    held = {
        "arguments": int(memory.argument_size_in_bytes),
        "outputs": int(memory.output_size_in_bytes),
        "aliased": int(memory.alias_size_in_bytes),
        "temporaries": int(memory.temp_size_in_bytes),
        "code": int(memory.generated_code_size_in_bytes),
    }
    # Donated outputs reuse their arguments' buffers: count them once.
    held["total"] = sum(held[k] for k in ("arguments", "outputs", "temporaries", "code"))
    held["total"] -= held["aliased"]
    return Compiled(
        optimizer=optimizer,
        per_device_flops=float(cost.get("flops", float("nan"))),
        optimizer_flops=float(update_cost.get("flops", float("nan"))),
        per_device_bytes=held,
        fits=hbm_bytes is None or held["total"] <= hbm_bytes,
        collectives=hlo.collective_stats(compiled.as_text()),
        optimal_seconds=cost.get("optimal_seconds"),
        compile_s=compile_s,
    )


def report(
    topology: str, devices: list[Any], mesh_text: str, cfg_name: str, runs: list[Compiled]
) -> list[dict[str, Any]]:
    """One JSON-ready record per optimizer: the slice, then what a chip does and holds."""
    return [
        {
            "topology": topology,
            "devices": len(devices),
            "chips": chips(devices),
            "device_kind": getattr(devices[0], "device_kind", "TPU"),
            "hbm_bytes_per_device": hbm_per_device(topology, devices),
            "mesh": mesh_axes(mesh_text),
            "config": cfg_name,
            **dataclasses.asdict(run),
        }
        for run in runs
    ]


def summary(records: list[dict[str, Any]]) -> str:
    """The records as the lines ``lmo-optax compile`` prints (per device: a chip, or one of
    its two TensorCores on v2-v4)."""

    def mib(n: float) -> str:
        return f"{n / 2**20:,.1f} MiB"

    first = records[0]
    lines = [
        f"{first['topology']}: {first['devices']} devices on {first['chips']} chips "
        f"({first['device_kind']}, {first['hbm_bytes_per_device'] / GIB:.0f} GiB HBM per "
        "device), mesh "
        + ",".join(f"{k}={v}" for k, v in first["mesh"].items())
        + f", config {first['config']}; per device:"
    ]
    for r in records:
        b = r["per_device_bytes"]
        share = r["optimizer_flops"] / r["per_device_flops"] if r["per_device_flops"] else 0.0
        lines += [
            f"  {r['optimizer']} (compiled in {r['compile_s']:.1f} s)",
            f"    step      {r['per_device_flops'] / 1e9:,.2f} GFLOP; the optimizer update "
            f"alone {r['optimizer_flops'] / 1e9:,.3f} GFLOP ({100 * share:.1f}%)"
            + (
                f"; the compiler's time estimate {r['optimal_seconds'] * 1e3:.2f} ms"
                if r["optimal_seconds"]
                else ""
            ),
            f"    memory    {mib(b['total'])} of {mib(r['hbm_bytes_per_device'])}: "
            + ("fits" if r["fits"] else "DOES NOT FIT")
            + f" (parameters and state {mib(b['arguments'])}, temporaries "
            f"{mib(b['temporaries'])}, outputs not donated {mib(b['outputs'] - b['aliased'])}, "
            f"code {mib(b['code'])})",
            "    collectives "
            + (
                ", ".join(
                    f"{kind} ×{c['count']} ({mib(c['bytes'])})"
                    for kind, c in sorted(r["collectives"].items())
                )
                or "none"
            ),
        ]
    return "\n".join(lines)
