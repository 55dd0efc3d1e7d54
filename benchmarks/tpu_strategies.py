"""The Newton–Schulz strategies on TPU slices, compiled by the real TPU compiler without a TPU.

Scion's update of GPT-2 small and medium (``_gpt2``; FSDP: every matrix sharded along d_in over
all chips, Auto axes) is compiled deviceless (``jax.experimental.topologies``, libtpu from
``pip install "lmo-optax[tpu-aot]"``) for TPU v5e slices of 16 and 256 chips, once per
``ns_sharding``. Per chip: the update's FLOPs (XLA's cost analysis of the compiled program), their
ratio to the ideal (replicate's FLOPs over the number of chips: every matrix's Newton–Schulz
work split evenly), the collectives, and the strategy ``"auto"`` picks for each group of
same-shaped matrices with the matrices' count over the chips. ``distribute`` deals a group's
matrices to groups of chips (``lmo_optax.strategies.distribute_plan``); the row
``whole matrices`` deals them one whole matrix per chip, padding the group with zero matrices
to a multiple of the chips, as ``distribute`` did before it had device groups (measured by
turning device groups off), to show the waste the groups remove.

    .venv/bin/python benchmarks/tpu_strategies.py           # GPT-2 small and medium, 16, 256 chips
    .venv/bin/python benchmarks/tpu_strategies.py --quick   # two layers of GPT-2 small, v5e:2x4
    .venv/bin/python benchmarks/tpu_strategies.py --resume  # compile only the missing rows

The report is written after every compile (on v5e:16x16 one takes from one to thirty minutes
on two CPU cores).
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
import time
from collections.abc import Iterator
from typing import Any

import _common
import _gpt2

from lmo_optax.example.hlo import collective_stats

FULL = {
    "models": {"124m": _gpt2.SHAPES["124m"], "350m": _gpt2.SHAPES["350m"]},
    "topologies": ("v5e:4x4", "v5e:16x16"),
}
QUICK = {"models": {"124m-2l": {**_gpt2.SHAPES["124m"], "layers": 2}}, "topologies": ("v5e:2x4",)}
STRATEGIES = ("replicate", "whole matrices", "distribute", "sharded", "auto")
TARGET = 1.15  # distribute's per-chip FLOPs over the ideal


def abstract_params(shape: dict[str, int], mesh: Any) -> Any:
    """GPT-2's parameters as ShapeDtypeStructs, matrices FSDP-sharded along d_in."""
    import jax
    import numpy as np
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    size = math.prod(mesh.shape.values())

    def sds(shape: tuple[int, ...]) -> Any:
        spec = P("data", None) if len(shape) == 2 and shape[0] % size == 0 else P()
        return jax.ShapeDtypeStruct(shape, np.float32, sharding=NamedSharding(mesh, spec))

    tree = _gpt2.shapes(**shape)
    return jax.tree.map(sds, tree, is_leaf=lambda x: isinstance(x, tuple))


def state_like(state: Any, params: Any, mesh: Any) -> Any:
    """``eval_shape``'s state with shardings: a parameter's where the shapes agree."""
    import jax
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    by_shape = {x.shape: x.sharding for x in jax.tree.leaves(params)}

    def sds(x: Any) -> Any:
        sharding = by_shape.get(x.shape, NamedSharding(mesh, P()))
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)

    return jax.tree.map(sds, state)


def auto_choices(params: Any, mesh: Any) -> list[dict[str, Any]]:
    """Per group of same-shaped Spectral matrices: count, shape and ``"auto"``'s strategy."""
    import jax
    import jax.numpy as jnp

    import lmo_optax
    from lmo_optax import layouts, strategies

    where = layouts.placement([], mesh=mesh)
    groups: dict[tuple[int, int], int] = {}
    f32 = jnp.dtype("float32")
    for assignment, x in zip(
        jax.tree.leaves(
            lmo_optax.rules.assign(params, _gpt2.scion_rules()), is_leaf=_is_assignment
        ),
        jax.tree.leaves(params),
        strict=True,
    ):
        if isinstance(assignment.norm, lmo_optax.Spectral):
            rows, cols = sorted(x.shape[-2:])
            groups[(rows, cols)] = groups.get((rows, cols), 0) + math.prod(x.shape[:-2])
    out = []
    for (rows, cols), count in sorted(groups.items()):
        group = strategies.Group(count, rows, cols, _gpt2.NS_STEPS, f32)
        split, _ = strategies.distribute_plan(group, where)
        out.append(
            {
                "shape": [rows, cols],
                "count": count,
                "per_chip": count / where.size,
                "whole_matrix_waste": math.ceil(count / where.size) * where.size / count - 1,
                "distribute_split": split,
                "auto": strategies.choose_strategy(group, where),
            }
        )
    return out


def _is_assignment(x: Any) -> bool:
    return hasattr(x, "norm") and hasattr(x, "radius")


@contextlib.contextmanager
def whole_matrices_only(active: bool) -> Iterator[None]:
    """``distribute`` without device groups: one whole matrix per chip, stacks padded."""
    from lmo_optax import layouts

    if not active:
        yield
        return
    original = layouts.Placement.can_regroup
    layouts.Placement.can_regroup = lambda self: False  # type: ignore[method-assign]
    try:
        yield
    finally:
        layouts.Placement.can_regroup = original  # type: ignore[method-assign]


def measure(
    model: dict[str, int],
    topology: str,
    strategies: tuple[str, ...],
    rows: dict[str, Any],
    save: Any,
) -> dict[str, Any]:
    """Per strategy: per-chip FLOPs and collectives of the compiled update. ``rows`` holds
    strategies already measured (they are not compiled again); ``save(entry)`` is called after
    each compile (a v5e:16x16 compile takes up to half an hour)."""
    import jax

    import lmo_optax
    from lmo_optax.example import aot

    devices = aot.topology_devices(topology)
    mesh = aot.mesh_on(devices, f"data={len(devices)}")
    params = abstract_params(model, mesh)
    entry: dict[str, Any] = {"chips": len(devices), "rows": rows}
    entry["groups"] = auto_choices(params, mesh)
    for strategy in strategies:
        if strategy in rows:
            continue
        tx = lmo_optax.scion(
            _gpt2.SCION_LR,
            _gpt2.scion_rules(),
            ns_steps=_gpt2.NS_STEPS,
            ns_sharding="distribute" if strategy == "whole matrices" else strategy,
            ns_mesh=mesh,
        )
        state = state_like(jax.eval_shape(lambda tx=tx: tx.init(params)), params, mesh)
        t0 = time.perf_counter()
        with whole_matrices_only(strategy == "whole matrices"):
            compiled = jax.jit(tx.update).lower(params, state, params).compile()
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, list) else cost
        rows[strategy] = {
            "flops_per_chip": float(cost["flops"]),
            "collectives": collective_stats(compiled.as_text()),
            "compile_s": time.perf_counter() - t0,
        }
        print(
            f"  {topology} {strategy:14s} {rows[strategy]['flops_per_chip'] / 1e9:9.2f} GFLOP/chip "
            f"(compiled in {rows[strategy]['compile_s']:.0f} s)",
            flush=True,
        )
        save(summarize(entry))
    return summarize(entry)


def summarize(entry: dict[str, Any]) -> dict[str, Any]:
    """Each row's ratio to the ideal (once replicate is measured) and the target's verdict."""
    rows = entry["rows"]
    if "replicate" in rows:
        ideal = rows["replicate"]["flops_per_chip"] / entry["chips"]
        entry["ideal_flops_per_chip"] = ideal
        for row in rows.values():
            row["over_ideal"] = row["flops_per_chip"] / ideal
        if "distribute" in rows:
            entry["distribute_target_met"] = rows["distribute"]["over_ideal"] <= TARGET
    return entry


def main(argv: list[str] | None = None) -> int:
    parser = _common.parser(__doc__, quick_help="two layers of GPT-2 small on v5e:2x4")
    parser.add_argument(
        "--strategies", default="", help=f"comma-separated subset of {', '.join(STRATEGIES)}"
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="keep the previous report's rows (same code) and compile only what is missing",
    )
    args = parser.parse_args(argv)
    if _common.libtpu_missing(args, "tpu_strategies"):
        return 0
    sizes = QUICK if args.quick else FULL
    path = _common.result_path(args.results, "tpu_strategies", args.quick)
    results: dict[str, Any] = {}
    if args.resume and path.exists():
        results = json.loads(path.read_text()).get("results", {})
    report = {"measured": True, "target_over_ideal": TARGET, "results": results}
    wanted = tuple(args.strategies.split(",")) if args.strategies else STRATEGIES
    if unknown := set(wanted) - set(STRATEGIES):
        parser.error(f"--strategies: unknown {sorted(unknown)}; choose from {STRATEGIES}")
    for name, model in sizes["models"].items():
        for topology in sizes["topologies"]:
            label = f"{name} on {topology}"
            print(label, flush=True)
            done = results.get(label, {}).get("rows", {})

            def save(entry: dict[str, Any], label: str = label, name: str = name) -> None:
                topology = label.rsplit(" on ", 1)[1]
                results[label] = {"model": name, "topology": topology, **entry}
                report["complete"] = False
                _common.write_report(args, "tpu_strategies", report)

            entry = measure(model, topology, wanted, done, save)
            results[label] = {"model": name, "topology": topology, **entry}
    report["complete"] = all(
        set(STRATEGIES) <= set(r.get("rows", {})) for r in results.values()
    ) and len(results) == len(sizes["models"]) * len(sizes["topologies"])
    _common.write_report(args, "tpu_strategies", report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
