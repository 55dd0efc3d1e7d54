"""Optimizer update-step benchmark on GPT-2 shapes: 124M (small) and 350M (medium), Flax layout.

Times one jitted ``opt.update(grads, state, params)`` for Scion and uSCG (lmo_optax; float32
state, bfloat16 state, and Muon's "jordan" coefficients), AdamW and optax's Muon, and reports
optimizer-state bytes per parameter, as ratios to AdamW (and to Muon). Nothing is trained:
gradients are fixed random float32 arrays; only the cost of the update and the size of the
state are measured. Both shape sets run in one invocation.

    .venv/bin/python benchmarks/update_step.py            # 124M and 350M, ~25 min on 2 CPU cores
    .venv/bin/python benchmarks/update_step.py --quick    # 2 small layers, vocab 4096: a smoke test

CPU ratios are only comparable with other CPU ratios from the same run (Newton–Schulz dominates
the update on CPU; on accelerators it is a small fraction of a training step).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import lmo_optax
from lmo_optax import rules as rules_lib

HERE = Path(__file__).resolve().parent

SHAPES = {  # GPT-2 family, tied embedding; "350m" is GPT-2 medium (24 × 1024)
    "124m": {"vocab": 50304, "width": 768, "layers": 12, "context": 1024},
    "350m": {"vocab": 50304, "width": 1024, "layers": 24, "context": 1024},
}
QUICK_SHAPES = {  # a smoke test of the same code paths, in about a minute
    "quick-2x256": {"vocab": 4096, "width": 256, "layers": 2, "context": 256},
    "quick-2x384": {"vocab": 4096, "width": 384, "layers": 2, "context": 256},
}

NS_STEPS = 5
SEQUENTIAL_ABOVE = 200_000_000  # parameters; see run_config
SCION_LR = 3.6e-4
BASELINE_LR = 3e-4

# Targets: Scion no slower than Muon, one state buffer (4 B/param, 2 in bfloat16); AdamW's two
# buffers and Muon's mix (5.25 B/param measured on GPT-2 small) as references. Bytes are
# compared after rounding to 3 decimals so that the optimizers' scalar step counters (4 bytes
# in all) do not count.
TARGET_TIME_RATIO_TO_MUON = 1.0
TARGET_STATE_F32 = 4.0
TARGET_STATE_BF16 = 2.0
EXPECTED_ADAMW_STATE = 8.0
EXPECTED_MUON_STATE = 5.25

OPTIMIZER_NAMES = (
    "scion",
    "unconstrained_scion",
    "scion_bf16",
    "scion_jordan",
    "adamw",
    "muon",
)


# --------------------------------------------------------------------------------------------
# Model shapes and data
# --------------------------------------------------------------------------------------------


def gpt2_shapes(vocab: int, width: int, layers: int, context: int) -> dict[str, Any]:
    """Nested dict of parameter shapes, GPT-2 in Flax layout (d_in, d_out), tied head."""

    def dense(d_in: int, d_out: int) -> dict[str, tuple[int, ...]]:
        return {"kernel": (d_in, d_out), "bias": (d_out,)}

    def layer_norm() -> dict[str, tuple[int, ...]]:
        return {"scale": (width,), "bias": (width,)}

    block = lambda: {
        "ln_1": layer_norm(),
        "attn": {"qkv": dense(width, 3 * width), "proj": dense(width, width)},
        "ln_2": layer_norm(),
        "mlp": {"fc": dense(width, 4 * width), "proj": dense(4 * width, width)},
    }
    return {
        "wte": {"embedding": (vocab, width)},  # tied: also the output head (logits = x @ Eᵀ)
        "wpe": {"embedding": (context, width)},
        "h": {str(i): block() for i in range(layers)},
        "ln_f": layer_norm(),
    }


def _is_shape(x: Any) -> bool:
    return isinstance(x, tuple) and all(isinstance(d, int) for d in x)


def make_params(shapes: Any, key: jax.Array) -> Any:
    """float32 params: N(0, 0.02²) matrices, zero biases, unit layer-norm scales."""
    leaves, treedef = jax.tree.flatten(shapes, is_leaf=_is_shape)
    paths = [
        rules_lib.path_to_str(p)
        for p, _ in jax.tree_util.tree_flatten_with_path(shapes, is_leaf=_is_shape)[0]
    ]
    keys = jax.random.split(key, len(leaves))
    out = []
    for path, shape, k in zip(paths, leaves, keys):
        if len(shape) >= 2:
            out.append(0.02 * jax.random.normal(k, shape, jnp.float32))
        elif path.endswith("scale"):
            out.append(jnp.ones(shape, jnp.float32))
        else:
            out.append(jnp.zeros(shape, jnp.float32))
    return jax.tree.unflatten(treedef, out)


def random_like(tree: Any, key: jax.Array) -> Any:
    """Standard-normal float32 arrays shaped like the leaves of ``tree``."""
    leaves, treedef = jax.tree.flatten(tree)
    keys = jax.random.split(key, len(leaves))
    return jax.tree.unflatten(
        treedef, [jax.random.normal(k, x.shape, jnp.float32) for x, k in zip(leaves, keys)]
    )


def param_count(tree: Any) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


# --------------------------------------------------------------------------------------------
# Optimizers
# --------------------------------------------------------------------------------------------


def scion_rules() -> list[lmo_optax.Rule]:
    return lmo_optax.gpt_rules(tied=True, hidden_radius=50.0, head_radius=3000.0)


def _is_hidden_matrix(path: str, x: Any) -> bool:
    """Hidden 2-D kernels (attention and MLP); not the embeddings, not vectors."""
    return len(x.shape) == 2 and path.split("/")[-1] == "kernel"


def muon_dimension_numbers(params: Any) -> Any:
    """MuonDimensionNumbers() (reduction axis 0 = d_in, output axis 1 = d_out) for hidden
    kernels; None (→ AdamW inside optax.contrib.muon) for wte, wpe and all vectors.

    optax calls this with params and with (masked) updates; MaskedNode subtrees have no leaves
    and are passed through unchanged.
    """
    return jax.tree_util.tree_map_with_path(
        lambda p, x: (
            optax.contrib.MuonDimensionNumbers()
            if _is_hidden_matrix(rules_lib.path_to_str(p), x)
            else None
        ),
        params,
    )


def make_optimizer(name: str) -> optax.GradientTransformation:
    if name == "scion":
        return lmo_optax.scion(learning_rate=SCION_LR, rules=scion_rules(), ns_steps=NS_STEPS)
    if name == "unconstrained_scion":
        return lmo_optax.unconstrained_scion(
            learning_rate=SCION_LR, rules=scion_rules(), ns_steps=NS_STEPS
        )
    if name == "scion_bf16":
        return lmo_optax.scion(
            learning_rate=SCION_LR, rules=scion_rules(), ns_steps=NS_STEPS, state_dtype=jnp.bfloat16
        )
    if name == "scion_jordan":
        return lmo_optax.scion(
            learning_rate=SCION_LR, rules=scion_rules(), ns_steps=NS_STEPS, ns_coeffs="jordan"
        )
    if name == "adamw":
        return optax.adamw(BASELINE_LR)
    if name == "muon":
        return optax.contrib.muon(
            learning_rate=BASELINE_LR,
            ns_steps=NS_STEPS,
            muon_weight_dimension_numbers=muon_dimension_numbers,
        )
    raise ValueError(f"unknown optimizer {name!r}; known: {', '.join(OPTIMIZER_NAMES)}")


DESCRIPTIONS = {
    "scion": "lmo_optax.scion, gpt_rules(tied, hidden 50, head 3000), Polar Express NS x5",
    "unconstrained_scion": "lmo_optax.unconstrained_scion (uSCG), same rules and NS",
    "scion_bf16": "scion with state_dtype=bfloat16",
    "scion_jordan": "scion with ns_coeffs='jordan' (muon's quintic) NS x5",
    "adamw": "optax.adamw(3e-4)",
    "muon": "optax.contrib.muon(3e-4, ns_steps=5): NS on hidden kernels, AdamW on wte/wpe/vectors",
}


# --------------------------------------------------------------------------------------------
# Checks of what each optimizer does to which parameter
# --------------------------------------------------------------------------------------------


def expected_scion_norm(path: str, shape: tuple[int, ...]) -> str:
    if path == "wte/embedding":
        return "Sign(1/d_in)"
    if path == "wpe/embedding":
        return "ColNorm"
    if len(shape) == 2:
        return "Spectral"
    return "RMS"


def check_scion_rules(params: Any) -> dict[str, Any]:
    """Asserts the preset gives Sign(wte) / ColNorm(wpe) / Spectral(hidden) / RMS(vectors)."""
    table = lmo_optax.rules_table(params, scion_rules())
    assignments = jax.tree.leaves(
        lmo_optax.assign(params, scion_rules()),
        is_leaf=lambda x: isinstance(x, lmo_optax.Assignment),
    )
    groups: dict[tuple[str, float, str], dict[str, Any]] = {}
    mismatches = []
    for a in assignments:
        described = a.norm.describe()
        if described != expected_scion_norm(a.path, a.shape):
            mismatches.append(f"{a.path} {a.shape}: {described}")
        g = groups.setdefault(
            (described, a.radius, a.rule),
            {"tensors": 0, "params": 0, "example": a.path, "scale": a.scale},
        )
        g["tensors"] += 1
        g["params"] += math.prod(a.shape)
    if mismatches:
        raise AssertionError(
            "gpt_rules(tied=True) assigned unexpected norms:\n" + "\n".join(mismatches)
        )
    # The printed table must agree with the assignments (it is what users read).
    for line in table.splitlines()[2:]:
        path = line.split()[0]
        if path in ("wte/embedding", "wpe/embedding") and expected_scion_norm(path, ()) not in line:
            raise AssertionError(f"rules_table disagrees with assign: {line}")
    return {
        "distinct_norms": sorted({k[0] for k in groups}),
        "groups": [
            {"norm": n, "radius": r, "rule": rule, **v} for (n, r, rule), v in groups.items()
        ],
        "table_lines": len(table.splitlines()) - 2,
    }


def muon_split(params: Any) -> dict[str, int]:
    dims = jax.tree.leaves(
        muon_dimension_numbers(params),
        is_leaf=lambda x: x is None or isinstance(x, optax.contrib.MuonDimensionNumbers),
    )
    leaves = jax.tree.leaves(params)
    ns = [x for x, d in zip(leaves, dims) if d is not None]
    adam = [x for x, d in zip(leaves, dims) if d is None]
    return {
        "ns_tensors": len(ns),
        "ns_params": sum(x.size for x in ns),
        "adamw_tensors": len(adam),
        "adamw_params": sum(x.size for x in adam),
    }


# --------------------------------------------------------------------------------------------
# Measurements
# --------------------------------------------------------------------------------------------


def state_nbytes(state: Any) -> tuple[int, int]:
    """(bytes, leaves) over the distinct array leaves of a state (scalars included)."""
    seen: dict[int, int] = {}
    for x in jax.tree.leaves(state):
        if hasattr(x, "shape") and hasattr(x, "dtype"):
            seen[id(x)] = math.prod(x.shape) * jnp.dtype(x.dtype).itemsize
    return sum(seen.values()), len(seen)


class Bench:
    """One optimizer: its state, its jitted update, and its timings."""

    def __init__(self, name: str, params: Any, grads: Any, n_params: int) -> None:
        self.name, self.params, self.grads, self.n_params = name, params, grads, n_params
        self.opt = make_optimizer(name)
        self.times: list[float] = []

    def prepare(self, log: Callable[[str], None]) -> None:
        """State bytes (eval_shape and init must agree), compile + first call, one warm-up."""
        abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), self.params)
        shape_bytes, shape_leaves = state_nbytes(jax.eval_shape(self.opt.init, abstract))
        self.state = self.opt.init(self.params)
        self.state_bytes, self.state_leaves = state_nbytes(self.state)
        if (self.state_bytes, self.state_leaves) != (shape_bytes, shape_leaves):
            raise AssertionError(
                f"{self.name}: eval_shape state ({shape_bytes} B, {shape_leaves} leaves) "
                f"differs from init state ({self.state_bytes} B, {self.state_leaves} leaves)"
            )
        opt = self.opt
        self.update = jax.jit(lambda g, s, p: opt.update(g, s, p))
        t0 = time.perf_counter()
        out = self.call()  # compile + run
        self.first_call_s = time.perf_counter() - t0
        out = self.call()  # warm-up
        bad = [
            rules_lib.path_to_str(p)
            for p, u in jax.tree_util.tree_flatten_with_path(out)[0]
            if not bool(jnp.all(jnp.isfinite(u)))
        ]
        if bad:
            raise AssertionError(f"{self.name}: non-finite updates for {bad}")
        log(
            f"  {self.name}: compile + first call {self.first_call_s:.2f} s; "
            f"state {self.state_bytes / self.n_params:.4f} B/param"
        )

    def call(self) -> Any:
        out, self.state = jax.block_until_ready(self.update(self.grads, self.state, self.params))
        return out

    def time_once(self) -> float:
        t0 = time.perf_counter()
        self.call()
        self.times.append(time.perf_counter() - t0)
        return self.times[-1]

    def result(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": DESCRIPTIONS[self.name],
            "median_s": statistics.median(self.times),
            "min_s": min(self.times),
            "times_s": self.times,
            "first_call_s": self.first_call_s,
            "state_bytes": self.state_bytes,
            "state_leaves": self.state_leaves,
            "state_bytes_per_param": self.state_bytes / self.n_params,
        }


def machine_info() -> dict[str, Any]:
    def git(*args: str) -> str | None:
        try:
            return subprocess.run(
                ["git", *args], cwd=HERE, capture_output=True, text=True, check=True, timeout=10
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None

    return {
        "jax": jax.__version__,
        "jaxlib": getattr(jax.lib, "__version__", None) or _jaxlib_version(),
        "optax": optax.__version__,
        "lmo_optax": lmo_optax.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "devices": [str(d) for d in jax.devices()],
        "backend": jax.default_backend(),
        "cpu_count": os.cpu_count(),
        "affinity_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "xla_flags": os.environ.get("XLA_FLAGS"),
        "git_commit": git("rev-parse", "HEAD"),
        "git_dirty": bool(git("status", "--porcelain", "--", "lmo_optax")),
    }


def _loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _jaxlib_version() -> str | None:
    try:
        import jaxlib

        return jaxlib.__version__
    except (ImportError, AttributeError):
        return None


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def _ratio(a: dict[str, Any], b: dict[str, Any] | None) -> float | None:
    return None if b is None else a["median_s"] / b["median_s"]


def _fmt(x: float | None, spec: str) -> str:
    return "—" if x is None else format(x, spec)


def markdown_table(results: list[dict[str, Any]]) -> str:
    by = {r["name"]: r for r in results}
    adamw = by.get("adamw")
    rows = [
        "| optimizer | median update (s) | min (s) | time / AdamW | time / Muon "
        "| state bytes/param | state / AdamW |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        state_ratio = None if adamw is None else r["state_bytes"] / adamw["state_bytes"]
        rows.append(
            f"| {r['name']} | {r['median_s']:.3f} | {r['min_s']:.3f} "
            f"| {_fmt(_ratio(r, adamw), '.1f')} "
            f"| {_fmt(_ratio(r, by.get('muon')), '.2f')} "
            f"| {r['state_bytes_per_param']:.4f} | {_fmt(state_ratio, '.2f')} |"
        )
    return "\n".join(rows)


def evaluate_targets(
    results: list[dict[str, Any]], reference_shapes: bool = True
) -> list[dict[str, Any]]:
    by = {r["name"]: r for r in results}
    targets = []

    def add(what: str, value: float | None, goal: str, ok: bool | None) -> None:
        targets.append({"target": what, "value": value, "goal": goal, "pass": ok})

    muon = by.get("muon")
    for name in ("scion", "unconstrained_scion", "scion_jordan", "scion_bf16"):
        if name in by and muon is not None:
            v = _ratio(by[name], muon)
            add(
                f"{name}/muon time (5 NS steps each)",
                v,
                f"<= {TARGET_TIME_RATIO_TO_MUON}",
                v <= TARGET_TIME_RATIO_TO_MUON,
            )
    for name, goal in (
        ("scion", TARGET_STATE_F32),
        ("unconstrained_scion", TARGET_STATE_F32),
        ("scion_jordan", TARGET_STATE_F32),
        ("scion_bf16", TARGET_STATE_BF16),
    ):
        if name in by:
            v = by[name]["state_bytes_per_param"]
            add(f"{name} state bytes/param", v, f"<= {goal}", round(v, 3) <= goal)
    if "adamw" in by:
        v = by["adamw"]["state_bytes_per_param"]
        add(
            "adamw state bytes/param",
            v,
            f"~ {EXPECTED_ADAMW_STATE}",
            abs(v - EXPECTED_ADAMW_STATE) < 0.01,
        )
    if muon is not None and reference_shapes:  # the 5.25 reference is for GPT-2 small
        v = muon["state_bytes_per_param"]
        add(
            "muon state bytes/param",
            v,
            f"~ {EXPECTED_MUON_STATE}",
            abs(v - EXPECTED_MUON_STATE) < 0.1,
        )
    return targets


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--repeats", type=int, default=None, help="timed calls per optimizer (5; 2 with --quick)"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="JSON output (default benchmarks/results/update_step.json, "
        "update_step_quick.json with --quick)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="2 layers, vocab 8192: a smoke test in seconds"
    )
    parser.add_argument(
        "--only", default=None, help=f"comma-separated subset of {','.join(OPTIMIZER_NAMES)}"
    )
    parser.add_argument("--rules-table", action="store_true", help="print Scion's rules table")
    args = parser.parse_args(argv)

    if args.repeats is None:
        args.repeats = 2 if args.quick else 5
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    names = [n for n in OPTIMIZER_NAMES if n != "scion_jordan"]  # jordan: with --only
    if args.only:
        names = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = [n for n in names if n not in OPTIMIZER_NAMES]
        if unknown or not names:
            parser.error(f"--only: unknown {unknown}; choose from {','.join(OPTIMIZER_NAMES)}")
    out_path = args.out or HERE / "results" / (
        "update_step_quick.json" if args.quick else "update_step.json"
    )

    log = lambda s: print(s, flush=True)
    info = machine_info()
    shapes = QUICK_SHAPES if args.quick else SHAPES
    log(f"# Optimizer update step, GPT-2 shapes {list(shapes)}{' (QUICK)' if args.quick else ''}")
    log(
        f"jax {info['jax']}, optax {info['optax']}, lmo_optax {info['lmo_optax']}; "
        f"devices {info['devices']}; {info['cpu_count']} CPUs; {info['platform']}; "
        f"XLA_FLAGS={info['xla_flags']!r}"
    )
    log(
        "targets: scion/muon time ratio <= 1.0 at 5 NS steps; state <= 4.0 B/param (f32), "
        "<= 2.0 (bf16 state); AdamW 8.0 and Muon ~5.25 B/param for reference"
    )
    load_before = _loadavg()
    per_config = {}
    for label, config in shapes.items():
        per_config[label] = run_config(label, config, names, args, log)
    load_after = _loadavg()
    info["loadavg_before"], info["loadavg_after"] = load_before, load_after
    busy = [x[0] for x in (load_before, load_after) if x]
    if busy and max(busy) > (info["affinity_cpus"] or info["cpu_count"] or 1) + 1:  # +1: itself
        log(
            f"WARNING: load average {load_before} -> {load_after} exceeds the CPU count: "
            "other processes competed for the CPUs; prefer the min column and rerun when idle"
        )
    report = {
        "benchmark": "update_step",
        "timestamp": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "quick": args.quick,
        "ns_steps": NS_STEPS,
        "repeats": args.repeats,
        "configs": per_config,
        "table_md": "\n\n".join(
            f"**{label}** ({c['param_count'] / 1e6:.1f}M parameters)\n\n{c['markdown_table']}"
            for label, c in per_config.items()
        ),
        "machine": info,
    }
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(report, indent=2) + "\n")
    log(f"wrote {out_path}")
    return 0


def run_config(
    label: str, config: dict[str, int], names: list[str], args: Any, log: Callable[[str], None]
) -> dict[str, Any]:
    """All optimizers on one set of shapes: compile each, then time them round-robin."""
    log(f"\n## {label}: {config}; Newton–Schulz steps {NS_STEPS}; repeats {args.repeats}")
    params = make_params(gpt2_shapes(**config), jax.random.key(0))
    grads = random_like(params, jax.random.key(1))
    n_params = param_count(params)
    n_tensors = len(jax.tree.leaves(params))
    log(f"parameters: {n_params:,} ({n_params / 1e6:.2f}M) in {n_tensors} tensors")

    rules_check = check_scion_rules(params)
    log("scion rules (gpt_rules(tied=True, hidden_radius=50, head_radius=3000)):")
    for g in rules_check["groups"]:
        log(
            f"  {g['norm']:<13} radius {g['radius']:<6g} {g['tensors']:>3} tensors "
            f"{g['params']:>11,} params  (rule {g['rule']!r}, e.g. {g['example']})"
        )
    if args.rules_table:
        log(lmo_optax.rules_table(params, scion_rules()))
    split = muon_split(params)
    log(
        f"muon split: Newton–Schulz on {split['ns_tensors']} tensors ({split['ns_params']:,} "
        f"params), AdamW on {split['adamw_tensors']} ({split['adamw_params']:,})"
    )

    # Compile everything first, then time round-robin (one call of each optimizer per round)
    # so that load from other processes on a shared machine affects all optimizers alike.
    # Above SEQUENTIAL_ABOVE parameters the states of all optimizers together do not fit in
    # this machine's memory (the 350M run was OOM-killed at 24 GiB): each optimizer is then
    # prepared, timed and freed in turn.
    t_start = time.perf_counter()
    sequential = n_params > SEQUENTIAL_ABOVE
    results = []
    if sequential:
        log(
            f"timing one optimizer at a time: {n_params / 1e6:.0f}M parameters "
            f"> {SEQUENTIAL_ABOVE / 1e6:.0f}M"
        )
        for name in names:
            log(f"{name}: {DESCRIPTIONS[name]}")
            bench = Bench(name, params, grads, n_params)
            bench.prepare(log)
            times = ", ".join(f"{bench.time_once():.3f}" for _ in range(args.repeats))
            log(f"  {name}: {times} (s)")
            results.append(bench.result())
            del bench
    else:
        benches = []
        for name in names:
            log(f"{name}: {DESCRIPTIONS[name]}")
            benches.append(Bench(name, params, grads, n_params))
            benches[-1].prepare(log)
        for r in range(args.repeats):
            line = ", ".join(f"{b.name} {b.time_once():.3f}" for b in benches)
            log(f"  round {r + 1}/{args.repeats}: {line} (s)")
        results = [b.result() for b in benches]
        del benches

    targets = evaluate_targets(results, reference_shapes=label == "124m")
    table = markdown_table(results)
    log("")
    log(table)
    log("")
    for t in targets:
        status = {True: "PASS", False: "FAIL", None: "n/a"}[t["pass"]]
        log(f"  [{status}] {t['target']}: {_fmt(t['value'], '.4f')} (target {t['goal']})")
    log(f"{label}: benchmark time {time.perf_counter() - t_start:.1f} s")

    by = {r["name"]: r for r in results}
    for r in results:
        r["ratio_to_muon"] = _ratio(r, by.get("muon"))
        r["ratio_to_adamw"] = _ratio(r, by.get("adamw"))
    return {
        "config": config,
        "timing": "sequential" if sequential else "round-robin",
        "param_count": n_params,
        "param_tensors": n_tensors,
        "scion_rules": rules_check,
        "muon_split": split,
        "results": results,
        "targets": targets,
        "markdown_table": table,
    }


if __name__ == "__main__":
    sys.exit(main())
