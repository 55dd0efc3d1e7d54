"""Sharded Scion update on GPT-2-small shapes over 8 devices: replicate vs distribute vs sharded.

For each parameter layout (FSDP over ``data=8``; FSDP+TP over ``data=4, model=2``) and each
Newton–Schulz strategy of ``lmo_optax.strategies``, compiles one jitted
``scion.update(grads, state, params)`` on sharded arrays and reports, per device:

* floating-point operations of the whole update, from XLA's cost analysis of the partitioned
  program (``compiled.cost_analysis()["flops"]``);
* collectives in the compiled HLO: how many of each kind, and the bytes of their results;
* temporary memory of the compiled program (``memory_analysis().temp_size_in_bytes``);
* wall time (median of jitted updates). On simulated CPU devices all 8 "devices" share this
  machine's cores, so wall time shows total work, not the speed-up a real mesh would give.

It also checks that every strategy gives the replicate strategy's update (max abs difference),
and, for reference, compiles ``optax.contrib.muon`` on the same sharded arrays. Target:
distribute ≤ 1/6 of replicate's FLOPs per device (ideal 1/8).

    .venv/bin/python benchmarks/sharded_update.py          # GPT-2 small, ~15 min on 2 CPU cores
    .venv/bin/python benchmarks/sharded_update.py --quick  # 2 layers, vocab 8192

The devices are simulated (``--xla_force_host_platform_device_count=8``) unless XLA_FLAGS
already sets a device count.
"""
# ruff: noqa: E402  (XLA_FLAGS must be set before jax is imported)

from __future__ import annotations

import os

if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    ).strip()

import math
import re
import statistics
import time
from typing import Any

import _common
import _gpt2
import jax
import jax.numpy as jnp
import optax
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import lmo_optax
from lmo_optax.example.hlo import collective_stats
from lmo_optax.rules import path_to_str

QUICK = {"vocab": 8192, "width": 768, "layers": 2, "context": 1024}
LAYOUTS = {
    "fsdp (data=8)": ((8,), ("data",)),
    "fsdp+tp (data=4, model=2)": ((4, 2), ("data", "model")),
}
STRATEGIES = ("replicate", "distribute", "sharded", "auto")
TARGET_FLOPS_RATIO = 1 / 6  # distribute / replicate, per device (ideal 1/8)


def spec_for(path: str, shape: tuple[int, ...], names: tuple[str, ...], sizes: dict) -> P:
    """FSDP over "data" on d_in, and on a 2-D mesh Megatron TP over "model" on the other side.

    Row-parallel kernels (attention and MLP output projections) put "model" on d_in and "data"
    on d_out. Vectors are replicated. An axis that does not divide its dimension is dropped.
    Specs have one entry per dimension: the spelling of Explicit-axis types.
    """
    if len(shape) < 2:
        return P(*([None] * len(shape)))
    d_in, d_out = shape
    row_parallel = re.search(r"(attn|mlp)/proj/kernel$", path) is not None
    first, second = ("model", "data") if row_parallel and "model" in names else ("data", "model")

    def axis(name: str, size: int) -> str | None:
        return name if name in names and size % sizes[name] == 0 else None

    return P(axis(first, d_in), axis(second, d_out))


def shard_tree(tree: Any, mesh: jax.sharding.Mesh) -> Any:
    """``tree``'s arrays placed on ``mesh`` by :func:`spec_for`."""
    sizes = dict(mesh.shape)

    def put(path: Any, x: jax.Array) -> jax.Array:
        spec = spec_for(path_to_str(path), x.shape, mesh.axis_names, sizes)
        return jax.device_put(x, NamedSharding(mesh, spec))

    return jax.tree_util.tree_map_with_path(put, tree)


def measure(
    name: str, tx: optax.GradientTransformation, params: Any, grads: Any, repeats: int
) -> tuple[dict[str, Any], Any]:
    """One row of the table (FLOPs, collectives, memory, time per device) and the updates."""
    state = tx.init(params)
    t0 = time.perf_counter()
    compiled = jax.jit(tx.update).lower(grads, state, params).compile()
    compile_s = time.perf_counter() - t0
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    stats = collective_stats(compiled.as_text())
    updates = jax.block_until_ready(compiled(grads, state, params)[0])
    times = _common.time_calls(lambda: compiled(grads, state, params)[0], repeats)
    row = {
        "strategy": name,
        "flops_per_device": float(cost.get("flops", math.nan)),
        "collectives": stats,
        "collective_bytes_per_device": sum(s["bytes"] for s in stats.values()),
        "temp_bytes_per_device": int(compiled.memory_analysis().temp_size_in_bytes),
        "compile_s": compile_s,
        "median_s": statistics.median(times),
        "min_s": min(times),
    }
    return row, updates


def max_abs_difference(a: Any, b: Any) -> float:
    """Largest absolute difference between the leaves of two trees."""
    pairs = zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    return max(float(jnp.max(jnp.abs(x - y))) for x, y in pairs)


def run_layout(mesh: jax.sharding.Mesh, params: Any, grads: Any, repeats: int) -> list[dict]:
    """A row per strategy, then optax's Muon (which may fail on Explicit-axis shardings)."""
    rows, reference = [], None
    with jax.set_mesh(mesh):
        sp, sg = shard_tree(params, mesh), shard_tree(grads, mesh)
        for strategy in STRATEGIES:
            tx = lmo_optax.scion(
                _gpt2.SCION_LR, _gpt2.scion_rules(), ns_steps=_gpt2.NS_STEPS, ns_sharding=strategy
            )
            row, updates = measure(strategy, tx, sp, sg, repeats)
            reference = updates if reference is None else reference
            row["max_abs_diff_to_replicate"] = max_abs_difference(updates, reference)
            rows.append(row)
            print(
                f"  {strategy:10s} {row['flops_per_device'] / 1e9:9.2f} GFLOP/device "
                f"{row['median_s']:7.2f} s  [{fmt_collectives(row['collectives'])}]",
                flush=True,
            )
        try:
            row, _ = measure("optax.contrib.muon", _gpt2.muon(), sp, sg, repeats)
        except Exception as e:  # optax's muon cannot run on Explicit-axis sharded matrices
            row = {"strategy": "optax.contrib.muon", "error": type(e).__name__}
        rows.append(row)
    for row in rows:
        if "flops_per_device" in row:
            row["flops_ratio_to_replicate"] = row["flops_per_device"] / rows[0]["flops_per_device"]
    return rows


def fmt_bytes(n: float) -> str:
    """Bytes in B, KB, MB or GB (powers of 1024)."""
    for unit in ("B", "KB", "MB"):
        if abs(n) < 1024:
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} GB"


def fmt_collectives(stats: dict[str, dict[str, int]]) -> str:
    """How many collectives of each kind, e.g. "all-gather 48, all-reduce 2"."""
    return ", ".join(f"{k} {v['count']}" for k, v in sorted(stats.items())) or "none"


def layout_table(layout: str, rows: list[dict[str, Any]]) -> str:
    """The markdown table of one layout."""
    cells = []
    for row in rows:
        if "error" in row:
            cells.append([row["strategy"], f"fails: {row['error']}", *[""] * 6])
            continue
        cells.append(
            [
                row["strategy"],
                f"{row['flops_per_device'] / 1e9:.2f}",
                f"{row['flops_ratio_to_replicate']:.3f}",
                fmt_collectives(row["collectives"]),
                fmt_bytes(row["collective_bytes_per_device"]),
                fmt_bytes(row["temp_bytes_per_device"]),
                f"{row['median_s']:.2f}",
                f"{row['max_abs_diff_to_replicate']:.1e}",
            ]
        )
    header = ["strategy", "GFLOP/device", "vs replicate", "collectives"]
    header += ["collective bytes/device", "temp memory/device", "median s", "max abs diff"]
    return f"### {layout}\n\n" + _common.markdown_table(header, cells)


def gpu_note() -> str | None:
    """None when JAX sees a GPU, else the page's wording for the figure it could not give."""
    try:
        jax.devices("gpu")
        return None
    except RuntimeError:
        return "not measured: no GPU was available"


def main(argv: list[str] | None = None) -> int:
    parser = _common.parser(__doc__, quick_help="2 layers, vocab 8192")
    parser.add_argument("--repeats", type=int, default=None, help="timed updates (3; 1 if quick)")
    args = parser.parse_args(argv)
    repeats = args.repeats or (1 if args.quick else 3)
    if jax.device_count() < 8:
        raise SystemExit(f"needs 8 devices, JAX sees {jax.device_count()}")
    dims = QUICK if args.quick else _gpt2.SHAPES["124m"]
    params = _gpt2.make_params(_gpt2.shapes(**dims), jax.random.key(0))
    grads = _gpt2.random_like(params, jax.random.key(1))
    assignments = jax.tree.leaves(
        lmo_optax.assign(params, _gpt2.scion_rules()),
        is_leaf=lambda x: isinstance(x, lmo_optax.Assignment),
    )
    spectral = sum(math.prod(a.shape) for a in assignments if a.norm.describe() == "Spectral")
    n_params = _gpt2.param_count(params)
    print(
        f"GPT-2 shapes {dims}: {n_params / 1e6:.2f}M parameters, {spectral / 1e6:.2f}M in "
        f"Spectral (Newton–Schulz) matrices; {jax.device_count()} devices",
        flush=True,
    )
    layouts = {}
    for layout, (mesh_shape, names) in LAYOUTS.items():
        print(layout, flush=True)
        mesh = jax.make_mesh(mesh_shape, names, axis_types=(AxisType.Explicit,) * len(names))
        rows = run_layout(mesh, params, grads, repeats)
        ratio = next(r for r in rows if r["strategy"] == "distribute")["flops_ratio_to_replicate"]
        layouts[layout] = {
            "mesh": dict(zip(names, mesh_shape, strict=True)),
            "rows": rows,
            "distribute_flops_ratio": ratio,
            "target_met": ratio <= TARGET_FLOPS_RATIO,
        }
        print(
            f"{layout_table(layout, rows)}\n\ndistribute/replicate FLOPs per device = "
            f"{ratio:.3f} (target <= {TARGET_FLOPS_RATIO:.3f})",
            flush=True,
        )
    report = {
        "model": {**dims, "params": n_params, "spectral_params": spectral},
        "ns_steps": _gpt2.NS_STEPS,
        "target_flops_ratio": TARGET_FLOPS_RATIO,
        "layouts": layouts,
        "gpu": gpu_note(),
    }
    _common.write_report(args, "sharded_update", report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
