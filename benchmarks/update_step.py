"""Optimizer update step on GPT-2 shapes, 124M (small) and 350M (medium): time and state bytes.

Times one jitted ``opt.update(grads, state, params)`` for Scion and uSCG (float32 state,
bfloat16 state; ``--only scion_jordan`` adds Muon's "jordan" coefficients), AdamW and optax's
Muon, all with 5 Newton–Schulz steps, and reports the optimizer-state bytes per parameter and
the ratios to AdamW and Muon. Gradients are fixed random float32 arrays: only the update is
measured. Targets: Scion no slower than Muon; its state 4 bytes per parameter (2 with bfloat16
state); AdamW's 8 and Muon's 5.25 (GPT-2 small) as references.

    .venv/bin/python benchmarks/update_step.py            # 124M and 350M, ~25 min on 2 CPU cores
    .venv/bin/python benchmarks/update_step.py --quick    # 2 small layers, vocab 4096

CPU ratios compare only with other CPU ratios of the same run (Newton–Schulz dominates the
update on a CPU; on accelerators it is a small fraction of a training step).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from typing import Any

import _common
import _gpt2
import jax
import jax.numpy as jnp
import optax

import lmo_optax

QUICK_SHAPES = {  # the same code paths in about a minute
    "quick-2x256": {"vocab": 4096, "width": 256, "layers": 2, "context": 256},
    "quick-2x384": {"vocab": 4096, "width": 384, "layers": 2, "context": 256},
}
# Above this many parameters the states of all optimizers together do not fit in 24 GiB (the
# 350M run was killed for memory): each optimizer is then prepared, timed and freed in turn.
SEQUENTIAL_ABOVE = 200_000_000

NS, LR = _gpt2.NS_STEPS, _gpt2.SCION_LR
OPTIMIZERS: dict[str, tuple[str, Callable[[], optax.GradientTransformation]]] = {
    "scion": (
        "lmo_optax.scion, gpt_rules(tied, hidden 50, head 3000), Polar Express NS x5",
        lambda: lmo_optax.scion(LR, _gpt2.scion_rules(), ns_steps=NS),
    ),
    "unconstrained_scion": (
        "lmo_optax.unconstrained_scion (uSCG), same rules and NS",
        lambda: lmo_optax.unconstrained_scion(LR, _gpt2.scion_rules(), ns_steps=NS),
    ),
    "scion_bf16": (
        "scion with state_dtype=bfloat16",
        lambda: lmo_optax.scion(LR, _gpt2.scion_rules(), ns_steps=NS, state_dtype=jnp.bfloat16),
    ),
    "scion_jordan": (
        "scion with ns_coeffs='jordan' (muon's quintic) NS x5",
        lambda: lmo_optax.scion(LR, _gpt2.scion_rules(), ns_steps=NS, ns_coeffs="jordan"),
    ),
    "adamw": (f"optax.adamw({_gpt2.BASELINE_LR:g})", lambda: optax.adamw(_gpt2.BASELINE_LR)),
    "muon": (
        f"optax.contrib.muon({_gpt2.BASELINE_LR:g}, ns_steps={NS}): NS on hidden kernels, "
        "AdamW on wte/wpe/vectors",
        _gpt2.muon,
    ),
}
DEFAULT_OPTIMIZERS = [n for n in OPTIMIZERS if n != "scion_jordan"]

# Targets. State bytes are compared after rounding to 3 decimals, so that the optimizers'
# scalar step counters (4 bytes in all) do not count.
TIME_TO_MUON = 1.0
STATE_AT_MOST = {"scion": 4.0, "unconstrained_scion": 4.0, "scion_jordan": 4.0, "scion_bf16": 2.0}
STATE_ABOUT = {"adamw": (8.0, 0.01), "muon": (5.25, 0.1)}  # (bytes/param, tolerance)


class Bench:
    """One optimizer on one set of shapes: its state, its compiled update and its timings."""

    def __init__(self, name: str, params: Any, grads: Any) -> None:
        self.name, self.params, self.grads = name, params, grads
        tx = OPTIMIZERS[name][1]()
        self.state = tx.init(params)
        self.update = jax.jit(tx.update)
        self.times: list[float] = []
        self.first_call_s = _common.time_calls(self.call, 1)[0]  # compile and run
        print(f"  {name}: compile and first call {self.first_call_s:.2f} s", flush=True)
        updates, _ = self.call()  # warm-up
        if not all(bool(jnp.all(jnp.isfinite(u))) for u in jax.tree.leaves(updates)):
            raise AssertionError(f"{name}: non-finite updates")

    def call(self) -> Any:
        updates, self.state = self.update(self.grads, self.state, self.params)
        return updates, self.state

    def time_once(self) -> float:
        self.times += _common.time_calls(self.call, 1)
        return self.times[-1]

    def result(self) -> dict[str, Any]:
        arrays = {id(x): x for x in jax.tree.leaves(self.state) if hasattr(x, "dtype")}
        state_bytes = sum(x.size * x.dtype.itemsize for x in arrays.values())
        return {
            "name": self.name,
            "description": OPTIMIZERS[self.name][0],
            "median_s": statistics.median(self.times),
            "min_s": min(self.times),
            "times_s": self.times,
            "first_call_s": self.first_call_s,
            "state_bytes": state_bytes,
            "state_leaves": len(arrays),
            "state_bytes_per_param": state_bytes / _gpt2.param_count(self.params),
        }


def time_round_robin(benches: list[Bench], repeats: int) -> None:
    """One call of each optimizer per round, so that load from other processes on a shared
    machine affects all of them alike."""
    for r in range(repeats):
        line = ", ".join(f"{b.name} {b.time_once():.3f}" for b in benches)
        print(f"  round {r + 1}/{repeats}: {line} (s)", flush=True)


def measure(names: list[str], params: Any, grads: Any, repeats: int) -> list[dict[str, Any]]:
    """Results of every optimizer: compiled first and timed round-robin, or, above
    SEQUENTIAL_ABOVE parameters, prepared, timed and freed one at a time."""
    if _gpt2.param_count(params) <= SEQUENTIAL_ABOVE:
        benches = [Bench(name, params, grads) for name in names]
        time_round_robin(benches, repeats)
        return [b.result() for b in benches]
    results = []
    for name in names:
        bench = Bench(name, params, grads)
        time_round_robin([bench], repeats)
        results.append(bench.result())
        del bench
    return results


def targets(results: list[dict[str, Any]], reference_shapes: bool) -> list[dict[str, Any]]:
    """Each target: what, measured value, goal and whether it is met. Muon's state reference
    is for GPT-2 small (``reference_shapes``)."""
    by = {r["name"]: r for r in results}
    out = []

    def add(what: str, value: float, goal: str, met: bool) -> None:
        out.append({"target": what, "value": value, "goal": goal, "pass": met})

    for name in (n for n in STATE_AT_MOST if n in by and "muon" in by):
        ratio = by[name]["median_s"] / by["muon"]["median_s"]
        add(
            f"{name}/muon time ({NS} NS steps each)",
            ratio,
            f"<= {TIME_TO_MUON}",
            ratio <= TIME_TO_MUON,
        )
    for name, most in ((n, b) for n, b in STATE_AT_MOST.items() if n in by):
        v = by[name]["state_bytes_per_param"]
        add(f"{name} state bytes/param", v, f"<= {most}", round(v, 3) <= most)
    for name, (about, tolerance) in ((n, a) for n, a in STATE_ABOUT.items() if n in by):
        if name != "muon" or reference_shapes:
            v = by[name]["state_bytes_per_param"]
            add(f"{name} state bytes/param", v, f"~ {about}", abs(v - about) < tolerance)
    return out


def markdown_table(results: list[dict[str, Any]]) -> str:
    """Median and minimum time, time ratios to AdamW and Muon, state bytes per parameter."""
    by = {r["name"]: r for r in results}

    def ratio(r: dict[str, Any], to: str, key: str, spec: str) -> str:
        return format(r[key] / by[to][key], spec) if to in by else "—"

    rows = [
        [
            r["name"],
            f"{r['median_s']:.3f}",
            f"{r['min_s']:.3f}",
            ratio(r, "adamw", "median_s", ".1f"),
            ratio(r, "muon", "median_s", ".2f"),
            f"{r['state_bytes_per_param']:.4f}",
            ratio(r, "adamw", "state_bytes", ".2f"),
        ]
        for r in results
    ]
    header = ["optimizer", "median update (s)", "min (s)", "time / AdamW", "time / Muon"]
    header += ["state bytes/param", "state / AdamW"]
    return _common.markdown_table(header, rows, align="lrrrrrr")


def run_config(label: str, dims: dict[str, int], names: list[str], repeats: int) -> dict:
    """Every optimizer on one set of GPT-2 shapes: results, targets and their table."""
    print(f"\n## {label}: {dims}; Newton–Schulz steps {NS}; repeats {repeats}", flush=True)
    params = _gpt2.make_params(_gpt2.shapes(**dims), jax.random.key(0))
    grads = _gpt2.random_like(params, jax.random.key(1))
    n_params = _gpt2.param_count(params)
    results = measure(names, params, grads, repeats)
    by = {r["name"]: r for r in results}
    for r in results:
        for to in ("muon", "adamw"):
            r[f"ratio_to_{to}"] = r["median_s"] / by[to]["median_s"] if to in by else None
    checks = targets(results, reference_shapes=label == "124m")
    table = markdown_table(results)
    print(f"\n{table}\n", flush=True)
    for t in checks:
        verdict = "PASS" if t["pass"] else "FAIL"
        print(f"  [{verdict}] {t['target']}: {t['value']:.4f} (target {t['goal']})", flush=True)
    return {
        "config": dims,
        "timing": "sequential" if n_params > SEQUENTIAL_ABOVE else "round-robin",
        "param_count": n_params,
        "param_tensors": len(jax.tree.leaves(params)),
        "results": results,
        "targets": checks,
        "markdown_table": table,
    }


def main(argv: list[str] | None = None) -> int:
    parser = _common.parser(__doc__, quick_help="2 layers, vocab 4096, 2 repeats")
    parser.add_argument("--repeats", type=int, default=None, help="timed calls (5; 2 if quick)")
    parser.add_argument("--only", default=None, help=f"subset of {','.join(OPTIMIZERS)}")
    args = parser.parse_args(argv)
    repeats = args.repeats or (2 if args.quick else 5)
    names = [n.strip() for n in args.only.split(",")] if args.only else DEFAULT_OPTIMIZERS
    if unknown := [n for n in names if n not in OPTIMIZERS]:
        parser.error(f"--only: unknown {unknown}; choose from {','.join(OPTIMIZERS)}")
    shapes = QUICK_SHAPES if args.quick else _gpt2.SHAPES
    load_before = _common.load_average()
    configs = {label: run_config(label, dims, names, repeats) for label, dims in shapes.items()}
    load_after = _common.load_average()
    report = {
        "ns_steps": NS,
        "repeats": repeats,
        "sequential_above": SEQUENTIAL_ABOVE,
        "configs": configs,
        "table_md": "\n\n".join(
            f"**{label}** ({c['param_count'] / 1e6:.1f}M parameters)\n\n{c['markdown_table']}"
            for label, c in configs.items()
        ),
        "machine": {"loadavg_before": load_before, "loadavg_after": load_after},
    }
    _common.write_report(args, "update_step", report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
