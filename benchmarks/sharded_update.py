"""Sharded Scion update on GPT-2-small shapes over 8 devices: replicate vs distribute vs sharded.

For each parameter layout (FSDP over ``data=8``; FSDP+TP over ``data=4, model=2``) and each
Newton–Schulz strategy of ``lmo_optax.strategies``, compiles one jitted
``scion.update(grads, state, params)`` on sharded arrays and reports, per device:

* floating-point operations of the whole update, from XLA's cost analysis of the partitioned
  program (``compiled.cost_analysis()["flops"]``);
* collectives in the compiled HLO: how many of each kind, and the bytes of their results
  (the data each device ends up holding from a collective: a proxy for bytes moved);
* temporary memory of the compiled program (``memory_analysis().temp_size_in_bytes``);
* wall time (median of jitted updates). On simulated CPU devices all 8 "devices" share this
  machine's cores, so wall time shows total work, not the speed-up a real mesh would give.

It also checks that every strategy gives the replicate strategy's update (max abs difference),
and, for reference, compiles ``optax.contrib.muon`` on the same sharded arrays.

    .venv/bin/python benchmarks/sharded_update.py          # GPT-2 small, ~15 min on 2 CPU cores
    .venv/bin/python benchmarks/sharded_update.py --quick  # 2 layers, vocab 8192: a smoke test

The devices are simulated (``--xla_force_host_platform_device_count=8``) unless XLA_FLAGS
already sets a device count.
"""

from __future__ import annotations

import os

if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    ).strip()

import argparse  # noqa: E402
import collections  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import re  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402
from jax.sharding import AxisType, NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import lmo_optax  # noqa: E402
from lmo_optax import rules as rules_lib  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import update_step  # noqa: E402  (GPT-2 shapes, params, the Scion rules, muon's labels)

FULL = {"vocab": 50304, "width": 768, "layers": 12, "context": 1024}
QUICK = {"vocab": 8192, "width": 768, "layers": 2, "context": 1024}
LAYOUTS = {
    "fsdp (data=8)": ((8,), ("data",)),
    "fsdp+tp (data=4, model=2)": ((4, 2), ("data", "model")),
}
STRATEGIES = ("replicate", "distribute", "sharded", "auto")
TARGET_FLOPS_RATIO = 1 / 6  # distribute / replicate, per device (ideal 1/8)
COLLECTIVES = ("all-gather", "all-to-all", "all-reduce", "reduce-scatter", "collective-permute")
ITEMSIZE = {"f32": 4, "bf16": 2, "f16": 2, "f64": 8, "s32": 4, "u32": 4, "pred": 1, "s8": 1}


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
    sizes = dict(mesh.shape)

    def put(path: Any, x: jax.Array) -> jax.Array:
        spec = spec_for(rules_lib.path_to_str(path), x.shape, mesh.axis_names, sizes)
        return jax.device_put(x, NamedSharding(mesh, spec))

    return jax.tree_util.tree_map_with_path(put, tree)


def collective_stats(hlo: str) -> dict[str, dict[str, int]]:
    """Count and result bytes of each kind of collective in a compiled HLO module's text."""
    stats: dict[str, dict[str, int]] = collections.defaultdict(lambda: {"count": 0, "bytes": 0})
    for line in hlo.splitlines():
        for op in COLLECTIVES:
            match = re.search(rf"=\s*(.*?)\s{op}(-start)?\(", line)
            if match:
                shapes = re.findall(r"\b([a-z]+\d*)\[([\d,]*)\]", match.group(1))
                size = sum(
                    ITEMSIZE.get(dtype, 4) * math.prod(int(d) for d in dims.split(",") if d)
                    for dtype, dims in shapes
                )
                stats[op]["count"] += 1
                stats[op]["bytes"] += size
    return dict(stats)


def measure(
    name: str, tx: optax.GradientTransformation, params: Any, grads: Any, repeats: int
) -> tuple[dict[str, Any], Any]:
    state = tx.init(params)
    step = jax.jit(tx.update)
    t0 = time.perf_counter()
    compiled = step.lower(grads, state, params).compile()
    compile_s = time.perf_counter() - t0
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    memory = compiled.memory_analysis()
    stats = collective_stats(compiled.as_text())
    updates = jax.block_until_ready(compiled(grads, state, params)[0])
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(compiled(grads, state, params)[0])
        times.append(time.perf_counter() - t0)
    row = {
        "strategy": name,
        "flops_per_device": float(cost.get("flops", float("nan"))),
        "collectives": stats,
        "collective_bytes_per_device": sum(s["bytes"] for s in stats.values()),
        "temp_bytes_per_device": int(getattr(memory, "temp_size_in_bytes", 0)),
        "compile_s": compile_s,
        "median_s": statistics.median(times),
        "min_s": min(times),
    }
    return row, updates


def max_abs_difference(a: Any, b: Any) -> float:
    diffs = [
        float(jnp.max(jnp.abs(jnp.asarray(x) - jnp.asarray(y))))
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    ]
    return max(diffs)


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1024 or unit == "GB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return str(n)


def fmt_collectives(stats: dict[str, dict[str, int]]) -> str:
    return ", ".join(f"{k} {v['count']}" for k, v in sorted(stats.items())) or "none"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 layers, vocab 8192")
    parser.add_argument("--repeats", type=int, default=3, help="timed updates per strategy")
    parser.add_argument("--out", default=None, help="JSON report path")
    args = parser.parse_args(argv)
    if jax.device_count() < 8:
        raise SystemExit(f"needs 8 devices, JAX sees {jax.device_count()}")

    dims = QUICK if args.quick else FULL
    shapes = update_step.gpt2_shapes(**dims)
    params = update_step.make_params(shapes, jax.random.key(0))
    grads = update_step.random_like(params, jax.random.key(1))
    n_params = update_step.param_count(params)
    rules = update_step.scion_rules()
    hidden = sum(
        math.prod(a.shape)
        for a in jax.tree.leaves(
            lmo_optax.assign(params, rules), is_leaf=lambda x: isinstance(x, lmo_optax.Assignment)
        )
        if a.norm.describe() == "Spectral"
    )
    print(
        f"GPT-2 shapes {dims}: {n_params / 1e6:.2f}M parameters, {hidden / 1e6:.2f}M in "
        f"Spectral (Newton–Schulz) matrices; {jax.device_count()} {jax.devices()[0].platform} "
        f"devices; jax {jax.__version__}",
        flush=True,
    )

    report: dict[str, Any] = {
        "benchmark": "sharded_update",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "devices": f"{jax.device_count()} x {jax.devices()[0].device_kind}",
            "jax": jax.__version__,
            "optax": optax.__version__,
            "lmo_optax": lmo_optax.__version__,
        },
        "model": {**dims, "params": n_params, "spectral_params": hidden},
        "ns_steps": update_step.NS_STEPS,
        "layouts": {},
        "gpu": "not measured: this session was not lent a GPU machine",
    }
    lines = []
    for layout, (mesh_shape, names) in LAYOUTS.items():
        mesh = jax.make_mesh(mesh_shape, names, axis_types=(AxisType.Explicit,) * len(names))
        rows = []
        with jax.set_mesh(mesh):
            sp, sg = shard_tree(params, mesh), shard_tree(grads, mesh)
            reference = None
            for strategy in STRATEGIES:
                tx = lmo_optax.scion(
                    update_step.SCION_LR,
                    rules,
                    ns_steps=update_step.NS_STEPS,
                    ns_sharding=strategy,
                )
                row, updates = measure(strategy, tx, sp, sg, args.repeats)
                if reference is None:
                    reference = updates
                row["max_abs_diff_to_replicate"] = max_abs_difference(updates, reference)
                rows.append(row)
                print(
                    f"  {layout:28s} {strategy:10s} {row['flops_per_device'] / 1e9:9.2f} GFLOP "
                    f"{fmt_bytes(row['collective_bytes_per_device']):>10s} "
                    f"{row['median_s']:7.2f} s  [{fmt_collectives(row['collectives'])}]",
                    flush=True,
                )
                del updates
            muon = optax.contrib.muon(
                update_step.BASELINE_LR,
                ns_steps=update_step.NS_STEPS,
                muon_weight_dimension_numbers=update_step.muon_dimension_numbers,
            )
            try:
                row, _ = measure("optax.contrib.muon", muon, sp, sg, args.repeats)
            except Exception as e:  # optax muon cannot run on Explicit-axis sharded matrices
                row = {"strategy": "optax.contrib.muon", "error": f"{type(e).__name__}"}
            rows.append(row)
        replicate = rows[0]["flops_per_device"]
        for row in rows:
            if "flops_per_device" in row:
                row["flops_ratio_to_replicate"] = row["flops_per_device"] / replicate
        distribute = next(r for r in rows if r["strategy"] == "distribute")
        report["layouts"][layout] = {
            "mesh": dict(zip(names, mesh_shape, strict=True)),
            "rows": rows,
            "distribute_flops_ratio": distribute["flops_ratio_to_replicate"],
            "target_met": distribute["flops_ratio_to_replicate"] <= TARGET_FLOPS_RATIO,
        }

        lines.append(f"\n### {layout}\n")
        lines.append(
            "| strategy | GFLOP/device | vs replicate | collectives | collective bytes/device "
            "| temp memory/device | median s | max abs diff |"
        )
        lines.append("|---|---|---|---|---|---|---|---|")
        for row in rows:
            if "error" in row:
                lines.append(f"| {row['strategy']} | fails: {row['error']} | | | | | | |")
                continue
            diff = row.get("max_abs_diff_to_replicate")
            lines.append(
                f"| {row['strategy']} | {row['flops_per_device'] / 1e9:.2f} "
                f"| {row['flops_ratio_to_replicate']:.3f} | {fmt_collectives(row['collectives'])} "
                f"| {fmt_bytes(row['collective_bytes_per_device'])} "
                f"| {fmt_bytes(row['temp_bytes_per_device'])} | {row['median_s']:.2f} "
                f"| {'' if diff is None else f'{diff:.1e}'} |"
            )

    print("\n".join(lines))
    for layout, entry in report["layouts"].items():
        verdict = "met" if entry["target_met"] else "MISSED"
        print(
            f"{layout}: distribute/replicate FLOPs per device = "
            f"{entry['distribute_flops_ratio']:.3f} (target <= {TARGET_FLOPS_RATIO:.3f}, "
            f"ideal 0.125): {verdict}"
        )
    print(report["gpu"])
    name = "sharded_update_quick.json" if args.quick else "sharded_update.json"
    out = Path(args.out or HERE / "results" / name)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
    return 0 if all(e["target_met"] for e in report["layouts"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
