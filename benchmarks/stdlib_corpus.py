"""Scion against AdamW on the standard library's sources: each tuned, then ~10 minutes each.

The ``stdlib`` config (a 3.3M-parameter byte-level GPT, ``--data stdlib``) on a 2-core CPU.
Tuning runs are short (``TUNE_STEPS`` steps, the same schedule shape): AdamW over powers of 2 of
its learning rate; Scion over powers of 2 of γ at the config's radii, then over a common scale
of its three radii (×0.5, ×1, ×2) at its best γ. A grid whose best value sits on an edge is
extended past it, one point at a time, up to twice. Each optimizer then trains for the
config's full length at its best setting, and also at the runner-up learning rate when the
short runs do not separate the two (final losses within ``UNDECIDED``); the better full run
counts. The report gives both validation curves, their final losses, the steps Scion needs to
reach AdamW's final loss, and each run's wall time.

Runs are cached (``benchmarks/results/runs/stdlib_corpus/``) and can be shared by two
processes; ``--tune-only`` stops after the tuning runs, so that the full runs can be timed
one at a time on an otherwise idle machine.

    .venv/bin/python benchmarks/stdlib_corpus.py --optimizers scion --tune-only &
    .venv/bin/python benchmarks/stdlib_corpus.py --optimizers adamw --tune-only; wait
    .venv/bin/python benchmarks/stdlib_corpus.py          # the full runs and the report
    .venv/bin/python benchmarks/stdlib_corpus.py --quick  # 10 steps of a 1-layer model
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import _common
import _runs
from flax import nnx

from lmo_optax.example.config import TrainConfig, load_config
from lmo_optax.example.model import GPT, GPTConfig

OPTIMIZERS = ("scion", "adamw")
LR_GRIDS = {"scion": [-6, -7, -8], "adamw": [-8, -9, -10]}  # log2 of the learning rate
RADIUS_SCALES = [-1, 0, 1]  # log2 of the factor on Scion's radii
TUNE_STEPS = 100
# Short runs whose losses differ by less than this (relative) do not decide between their
# learning rates: both then train for the full length, and the better full run counts.
UNDECIDED = 0.01


def base_config(quick: bool) -> TrainConfig:
    """The ``stdlib`` config; with ``quick``, a 1-layer model for 10 steps."""
    cfg = load_config("stdlib")
    if quick:
        cfg = dataclasses.replace(
            cfg,
            model=GPTConfig(context=32, width=32, depth=1, heads=2),
            batch_size=4,
            steps=10,
            eval_every=5,
            eval_batches=2,
        )
    return cfg


def count_params(model: GPTConfig) -> int:
    """The model's parameter count, from shapes only (nothing is allocated)."""
    return nnx.eval_shape(lambda: GPT(model, rngs=nnx.Rngs(0))).num_params()


def tuning_config(cfg: TrainConfig, quick: bool) -> TrainConfig:
    """The short runs the settings are chosen on (the same warmup and warmdown fraction)."""
    steps = 6 if quick else TUNE_STEPS
    return dataclasses.replace(cfg, steps=steps, eval_every=max(1, steps // 4))


def setting(cfg: TrainConfig, optimizer: str, log2_lr: int, log2_scale: int = 0) -> TrainConfig:
    """cfg with ``optimizer`` at γ = 2^log2_lr and (Scion) its radii scaled by 2^log2_scale."""
    oc = cfg.optimizers[optimizer]
    radii = {}
    if optimizer == "scion":
        f = 2.0**log2_scale
        radii = {
            "embedding_radius": oc.embedding_radius * f,
            "hidden_radius": oc.hidden_radius * f,
            "head_radius": oc.head_radius * f,
        }
    return _runs.with_learning_rate(cfg, optimizer, 2.0**log2_lr, **radii)


def name(optimizer: str, log2_lr: int, log2_scale: int, steps: int) -> str:
    return f"{optimizer}_lr{log2_lr}_radius{log2_scale}_steps{steps}"


def sweep(
    run: Any, grid: list[int], extend: bool, limit: int = 2
) -> tuple[int, dict[int, dict[str, Any]]]:
    """Runs ``run(x)`` over ``grid``; extends past an edge that wins (up to ``limit`` times)."""
    records = {x: run(x) for x in grid}
    for _ in range(limit if extend else 0):
        best = min(records, key=lambda x: _runs.final_loss(records[x]))
        if best == max(records):
            records[best + 1] = run(best + 1)
        elif best == min(records):
            records[best - 1] = run(best - 1)
        else:
            break
    return min(records, key=lambda x: _runs.final_loss(records[x])), records


def tune(cfg: TrainConfig, optimizer: str, cache: Path, quick: bool) -> dict[str, Any]:
    """Best (log2 lr, log2 radius scale) on the tuning runs, with every run's final loss."""
    short = tuning_config(cfg, quick)
    grid = LR_GRIDS[optimizer][:2] if quick else LR_GRIDS[optimizer]

    def at(log2_lr: int, log2_scale: int) -> dict[str, Any]:
        c = setting(short, optimizer, log2_lr, log2_scale)
        return _runs.run_cached(
            c, optimizer, name(optimizer, log2_lr, log2_scale, short.steps), cache
        )

    best_lr, lr_runs = sweep(lambda e: at(e, 0), grid, extend=not quick)
    best_scale, scale_runs = 0, {0: lr_runs[best_lr]}
    if optimizer == "scion":
        scales = RADIUS_SCALES[1:] if quick else RADIUS_SCALES
        best_scale, scale_runs = sweep(lambda s: at(best_lr, s), scales, extend=not quick)
    return {
        "steps": short.steps,
        "log2_lr": best_lr,
        "log2_radius_scale": best_scale,
        "lr_sweep": {str(e): _runs.final_loss(r) for e, r in sorted(lr_runs.items())},
        "radius_sweep": {str(s): _runs.final_loss(r) for s, r in sorted(scale_runs.items())},
    }


def candidates(tuned: dict[str, Any]) -> list[int]:
    """The best learning rate of the short runs, and the runner-up when they are undecided."""
    losses = sorted((v, int(e)) for e, v in tuned["lr_sweep"].items())
    chosen = [tuned["log2_lr"]]
    if len(losses) > 1 and losses[1][0] <= losses[0][0] * (1 + UNDECIDED):
        chosen.append(losses[1][1])
    return chosen


def full_runs(cfg: TrainConfig, optimizer: str, tuned: dict[str, Any], cache: Path) -> list:
    """The config's full length at each candidate learning rate (best first: final loss)."""
    runs = [
        full_run(cfg, optimizer, e, tuned["log2_radius_scale"], cache) for e in candidates(tuned)
    ]
    return sorted(runs, key=lambda r: r["final_val_loss"])


def full_run(cfg: TrainConfig, optimizer: str, log2_lr: int, log2_scale: int, cache: Path) -> dict:
    """One run of the config's full length."""
    c = setting(cfg, optimizer, log2_lr, log2_scale)
    record = _runs.run_cached(c, optimizer, name(optimizer, log2_lr, log2_scale, c.steps), cache)
    tokens = c.steps * c.batch_size * c.model.context
    return {
        "learning_rate": 2.0**log2_lr,
        "log2_lr": log2_lr,
        "radii": [
            c.optimizers[optimizer].embedding_radius,
            c.optimizers[optimizer].hidden_radius,
            c.optimizers[optimizer].head_radius,
        ]
        if optimizer == "scion"
        else None,
        "final_val_loss": record["final_val_loss"],
        "final_train_loss": record["final_train_loss"],
        "val_curve": record["val_curve"],
        "wall_s": record["wall_s"],
        "tokens": tokens,
        "tokens_per_s": tokens / record["wall_s"],
    }


def summarize(cfg: TrainConfig, tuned: dict, runs: dict, quick: bool) -> dict[str, Any]:
    full = {o: r[0] for o, r in runs.items()}
    target = full["adamw"]["final_val_loss"]
    scion_steps = _runs.steps_to_reach(full["scion"]["val_curve"], target)
    m = cfg.model
    return {
        "config": "quick" if quick else "stdlib",
        "data": cfg.data,
        "steps": cfg.steps,
        "tune_steps": tuned["scion"]["steps"],
        "params": count_params(m),
        "model": {
            "width": m.width,
            "depth": m.depth,
            "context": m.context,
            "batch_size": cfg.batch_size,
        },
        "tuned": tuned,
        "full": full,
        "full_candidates": {
            o: {str(r["log2_lr"]): r["final_val_loss"] for r in rs} for o, rs in runs.items()
        },
        "adamw_final_val_loss": target,
        "scion_steps_to_adamw_final": scion_steps,
        "scion_step_ratio": scion_steps / cfg.steps,
        "table_md": "\n\n".join([results_table(full), sweep_tables(tuned, runs)]),
    }


def results_table(full: dict[str, Any]) -> str:
    header = ["optimizer", "lr", "radii (emb, hidden, head)", "final val", "final train"]
    rows = [
        [
            o,
            f"{r['learning_rate']:g}",
            "—" if r["radii"] is None else ", ".join(f"{x:g}" for x in r["radii"]),
            f"{r['final_val_loss']:.4f}",
            f"{r['final_train_loss']:.4f}",
            f"{r['wall_s']:.0f}",
            f"{r['tokens_per_s']:,.0f}",
        ]
        for o, r in full.items()
    ]
    return _common.markdown_table([*header, "wall (s)", "bytes/s"], rows)


def sweep_tables(tuned: dict[str, Any], runs: dict[str, list[dict[str, Any]]]) -> str:
    """Every run's final validation loss: the short runs, then the full-length candidates."""

    def fmt(loss: float) -> str:
        return "diverged" if math.isinf(loss) else f"{loss:.4f}"

    steps = next(iter(tuned.values()))["steps"]
    rows = [
        [
            f"{o}, {steps} steps: γ = 2^e",
            ", ".join(f"{e}: {fmt(v)}" for e, v in t["lr_sweep"].items()),
        ]
        for o, t in tuned.items()
    ]
    s = tuned["scion"]
    rows.append(
        [
            f"scion, {steps} steps: radii × 2^k at γ = 2^{s['log2_lr']}",
            ", ".join(f"{k}: {fmt(v)}" for k, v in s["radius_sweep"].items()),
        ]
    )
    rows += [
        [
            f"{o}, full length: γ = 2^e",
            ", ".join(f"{r['log2_lr']}: {fmt(r['final_val_loss'])}" for r in rs),
        ]
        for o, rs in runs.items()
    ]
    return _common.markdown_table(["runs (final validation loss)", "e or k: loss"], rows)


def plot(report: dict[str, Any], path: Path) -> None:
    with _common.figure(path, 1, figsize=(7, 4.5)) as (_, ax):
        for o, r in report["full"].items():
            steps, values = zip(*r["val_curve"], strict=True)
            ax.plot(steps, values, marker=".", label=f"{o} (lr {r['learning_rate']:g})")
        ax.axhline(report["adamw_final_val_loss"], color="gray", ls="--", lw=1, label="AdamW final")
        ax.set_xlabel("step")
        ax.set_ylabel("validation loss (nats/byte)")
        ax.set_ylim(top=min(ax.get_ylim()[1], report["adamw_final_val_loss"] + 1.5))
        ax.legend()
        ax.set_title(f"{report['params'] / 1e6:.1f}M-parameter byte GPT on the stdlib corpus")


def main(argv: list[str] | None = None) -> int:
    parser = _common.parser(__doc__, quick_help="10 steps of a 1-layer model", img=True)
    _runs.add_optimizers_option(parser, list(OPTIMIZERS))
    parser.add_argument("--tune-only", action="store_true", help="stop after the tuning runs")
    args = parser.parse_args(argv)
    cache = args.results / "runs" / ("stdlib_corpus_quick" if args.quick else "stdlib_corpus")
    cfg = base_config(args.quick)
    tuned = {o: tune(cfg, o, cache, args.quick) for o in args.optimizers}
    for o, t in tuned.items():
        print(f"{o}: best γ = 2^{t['log2_lr']}, radius scale 2^{t['log2_radius_scale']}")
    if args.tune_only or _runs.is_partial(args.optimizers, list(OPTIMIZERS)):
        return 0
    runs = {o: full_runs(cfg, o, tuned[o], cache) for o in OPTIMIZERS}
    report = summarize(cfg, tuned, runs, args.quick)
    print(report["table_md"])
    _common.write_report(args, "stdlib_corpus", report, plot)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
