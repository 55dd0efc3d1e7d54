"""Convergence on the embedded corpus: each optimizer tuned, then 3 seeds; steps to AdamW's loss.

The byte-level GPT of the ``tiny`` config (validation every 10 steps). Each optimizer — scion,
unconstrained_scion, muon, adamw — is tuned on a grid of 5 powers of 2 (seed 0; extended by one
step when the best is at an edge), then run with seeds 1 and 2 at its best learning rate. The
target is AdamW's final validation loss (mean of its 3 seeds); for each optimizer we report
the steps its validation curve needs to reach it (linear interpolation between evaluations,
mean over seeds) and the ratio to AdamW's. The paper's claim: Scion needs ≤ 0.8× AdamW's steps.

Also the memory-light variant: Scion with its averaged gradient in bfloat16,
at Scion's best learning rate, 3 seeds: its curve against the float32 one.

Runs are cached (``benchmarks/results/runs/convergence/``): an interrupted sweep resumes, and
two processes can share it (``--optimizers scion,unconstrained_scion`` in one, the rest in
another); a final call with every optimizer writes the report.

    .venv/bin/python benchmarks/convergence.py          # 28+ runs of the tiny config, ~40 min
    .venv/bin/python benchmarks/convergence.py --quick  # 30 steps of a smaller model
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from pathlib import Path
from typing import Any

import _common
import _runs

from lmo_optax.example.config import TrainConfig, load_config
from lmo_optax.example.model import GPTConfig

GRIDS = {  # log2 learning rates, centered on the tiny config's tuned or starting values
    "scion": [-5, -6, -7, -8, -9],
    "unconstrained_scion": [-6, -7, -8, -9, -10],
    "muon": [-4, -5, -6, -7, -8],
    "adamw": [-7, -8, -9, -10, -11],
}
SEEDS = (0, 1, 2)
TARGET_RATIO = 0.8


def base_config(quick: bool) -> TrainConfig:
    """The ``tiny`` config, evaluated every 10 steps; with ``quick``, a smaller model, 30 steps."""
    cfg = load_config("tiny")
    cfg = dataclasses.replace(cfg, eval_every=10, eval_batches=4)
    if quick:
        cfg = dataclasses.replace(
            cfg,
            model=GPTConfig(context=32, width=32, depth=1, heads=2),
            batch_size=8,
            steps=30,
            eval_every=5,
            eval_batches=2,
        )
    return cfg


def tune(
    cfg: TrainConfig, optimizer: str, grid: list[int], cache: Path, quick: bool
) -> dict[int, Any]:
    """Seed-0 runs over the grid, extended by one power of 2 past an edge that wins."""
    runs: dict[int, Any] = {}

    def run(e: int) -> None:
        c = _runs.with_learning_rate(dataclasses.replace(cfg, seed=0), optimizer, 2.0**e)
        runs[e] = _runs.run_cached(c, optimizer, f"{optimizer}_lr{e}_seed0", cache)

    for e in grid:
        run(e)
    if not quick:
        best = min(runs, key=lambda e: _runs.final_loss(runs[e]))
        if best == max(runs):
            run(best + 1)
        elif best == min(runs):
            run(best - 1)
    return runs


def seeded_runs(
    cfg: TrainConfig, optimizer: str, log2_lr: int, seeds: tuple[int, ...], cache: Path
) -> list[dict[str, Any]]:
    """One run per seed at learning rate 2^log2_lr."""
    return _seeded(cfg, optimizer, optimizer, log2_lr, seeds, cache)


def bf16_state_runs(
    cfg: TrainConfig, log2_lr: int, seeds: tuple[int, ...], cache: Path
) -> list[dict[str, Any]]:
    """The memory-light variant: Scion with its averaged gradient stored in bfloat16."""
    return _seeded(cfg, "scion", "scion_bf16", log2_lr, seeds, cache, state_dtype="bfloat16")


def _seeded(
    cfg: TrainConfig,
    optimizer: str,
    prefix: str,
    log2_lr: int,
    seeds: tuple[int, ...],
    cache: Path,
    **fields: Any,
) -> list[dict[str, Any]]:
    runs = []
    for seed in seeds:
        c = _runs.with_learning_rate(
            dataclasses.replace(cfg, seed=seed), optimizer, 2.0**log2_lr, **fields
        )
        runs.append(_runs.run_cached(c, optimizer, f"{prefix}_lr{log2_lr}_seed{seed}", cache))
    return runs


def _mean_curve(runs: list[dict[str, Any]]) -> list[list[float]]:
    """The seed-averaged validation curve."""
    steps = [s for s, _ in runs[0]["val_curve"]]
    return [[s, statistics.mean(r["val_curve"][i][1] for r in runs)] for i, s in enumerate(steps)]


def summarize(
    cfg: TrainConfig, sweeps: dict, best: dict, seeded: dict, quick: bool
) -> dict[str, Any]:
    """Per optimizer: best lr, final loss over seeds, steps to AdamW's final loss; the tables."""
    target = statistics.mean(r["final_val_loss"] for r in seeded["adamw"])
    rows = {}
    for label, runs in seeded.items():
        finals = [r["final_val_loss"] for r in runs]
        curve = _mean_curve(runs)
        rows[label] = {
            "log2_lr": best["scion" if label.startswith("scion (") else label],
            "final_val_mean": statistics.mean(finals),
            "final_val_std": statistics.stdev(finals) if len(finals) > 1 else 0.0,
            # Per seed (a seed may never reach a mean target: inf) and, the reported number,
            # on the seed-averaged curve, so that AdamW's own count is well defined.
            "steps_to_target_per_seed": [
                _runs.steps_to_reach(r["val_curve"], target) for r in runs
            ],
            "steps_to_target_mean": _runs.steps_to_reach(curve, target),
            "mean_curve": curve,
        }
    adamw_steps = rows["adamw"]["steps_to_target_mean"]
    for row in rows.values():
        row["ratio_to_adamw"] = row["steps_to_target_mean"] / adamw_steps
    intro = (
        f"Target: AdamW's final validation loss {target:.4f} (mean of {len(seeded['adamw'])} "
        f"seeds, {cfg.steps} steps). Steps to reach it are read off the seed-averaged validation "
        f"curve (evaluated every {cfg.eval_every} steps, linearly interpolated)."
    )
    table_md = "\n\n".join(
        [intro, results_table(rows), "Learning-rate sweep (seed 0, final validation loss):"]
        + [sweep_table(sweeps, best)]
    )
    scion_ratio = rows["scion"]["ratio_to_adamw"]
    return {
        "config": "tiny" if not quick else "quick",
        "data": cfg.data,
        "steps": cfg.steps,
        "seeds": len(seeded["adamw"]),
        "model": {
            "width": cfg.model.width,
            "depth": cfg.model.depth,
            "context": cfg.model.context,
            "batch_size": cfg.batch_size,
        },
        "target_val_loss": target,
        "rows": rows,
        "sweeps": {
            o: {str(e): _runs.final_loss(r) for e, r in s.items()} for o, s in sweeps.items()
        },
        "scion_ratio": scion_ratio,
        "target_ratio": TARGET_RATIO,
        "target_met": scion_ratio <= TARGET_RATIO,
        "table_md": table_md,
    }


def results_table(rows: dict[str, dict[str, Any]]) -> str:
    """Best lr, final loss (mean ± std over seeds), steps to the target and ratio to AdamW."""
    header = ["optimizer", "best lr", "final val (mean ± std)", "steps to target"]
    cells = [
        [
            label,
            f"2^{row['log2_lr']}",
            f"{row['final_val_mean']:.4f} ± {row['final_val_std']:.4f}",
            "never"
            if math.isinf(row["steps_to_target_mean"])
            else f"{row['steps_to_target_mean']:.0f}",
            f"{row['ratio_to_adamw']:.2f}",
        ]
        for label, row in rows.items()
    ]
    return _common.markdown_table([*header, "ratio to AdamW"], cells)


def sweep_table(sweeps: dict[str, dict[int, Any]], best: dict[str, int]) -> str:
    """Seed-0 final loss per (optimizer, lr); each optimizer's best in bold."""
    exps = sorted({e for s in sweeps.values() for e in s}, reverse=True)

    def cell(optimizer: str, e: int) -> str:
        if e not in sweeps[optimizer]:
            return ""
        loss = _runs.final_loss(sweeps[optimizer][e])
        text = "diverged" if math.isinf(loss) else f"{loss:.4f}"
        return f"**{text}**" if e == best[optimizer] else text

    cells = [[o, *(cell(o, e) for e in exps)] for o in sweeps]
    return _common.markdown_table(["optimizer", *(f"2^{e}" for e in exps)], cells)


def plot(report: dict[str, Any], path: Path) -> None:
    """Seed-averaged validation curves, each optimizer at its best learning rate."""
    with _common.figure(path, 1, figsize=(7, 4.5)) as (_, ax):
        for label, row in report["rows"].items():
            steps, values = zip(*row["mean_curve"], strict=True)
            ax.plot(steps, values, label=f"{label} (2^{row['log2_lr']})")
        ax.axhline(report["target_val_loss"], color="gray", ls="--", lw=1, label="AdamW final")
        ax.set_xlabel("step")
        ax.set_ylabel("validation loss (nats/byte), mean of seeds")
        ax.set_ylim(top=min(ax.get_ylim()[1], report["target_val_loss"] + 1.0))
        ax.legend()
        ax.set_title(
            f"Byte GPT on {report['data']}: validation loss, each optimizer at its best lr"
        )


def main(argv: list[str] | None = None) -> int:
    parser = _common.parser(
        __doc__, quick_help="30 steps of a 1-layer model, 2 lrs, 1 seed", img=True
    )
    _runs.add_optimizers_option(parser, list(GRIDS))
    args = parser.parse_args(argv)
    cache = args.results / "runs" / ("convergence_quick" if args.quick else "convergence")
    cfg = base_config(args.quick)
    seeds = SEEDS[:1] if args.quick else SEEDS
    sweeps, best, seeded = {}, {}, {}
    for optimizer in args.optimizers:
        grid = GRIDS[optimizer][:2] if args.quick else GRIDS[optimizer]
        sweeps[optimizer] = tune(cfg, optimizer, grid, cache, args.quick)
        best[optimizer] = min(
            sweeps[optimizer], key=lambda e: _runs.final_loss(sweeps[optimizer][e])
        )
        seeded[optimizer] = seeded_runs(cfg, optimizer, best[optimizer], seeds, cache)
        print(f"{optimizer}: best 2^{best[optimizer]}", flush=True)
    if "scion" in args.optimizers:  # the memory-light variant at Scion's learning rate
        seeded["scion (bf16 state)"] = bf16_state_runs(cfg, best["scion"], seeds, cache)
    if _runs.is_partial(args.optimizers, list(GRIDS)):
        return 0
    report = summarize(cfg, sweeps, best, seeded, args.quick)
    print(report["table_md"])
    _common.write_report(args, "convergence", report, plot)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
