"""Convergence on the embedded corpus: each optimizer tuned, then 3 seeds; steps to AdamW's loss.

The byte-level GPT of ``configs/tiny.py`` (validation every 10 steps). Each optimizer — scion,
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

    .venv/bin/python benchmarks/convergence.py          # 28+ runs of configs/tiny.py, ~40 min
    .venv/bin/python benchmarks/convergence.py --quick  # 30 steps of a smaller model
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import _runs  # noqa: E402

from lmo_optax.example.config import load_config  # noqa: E402
from lmo_optax.example.model import GPTConfig  # noqa: E402

ROOT = HERE.parent
GRIDS = {  # log2 learning rates, centered on configs/tiny.py's tuned or starting values
    "scion": [-5, -6, -7, -8, -9],
    "unconstrained_scion": [-6, -7, -8, -9, -10],
    "muon": [-4, -5, -6, -7, -8],
    "adamw": [-7, -8, -9, -10, -11],
}
SEEDS = (0, 1, 2)
TARGET_RATIO = 0.8


def base_config(quick: bool) -> Any:
    cfg = load_config(str(ROOT / "configs" / "tiny.py"))
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


def tune(cfg: Any, optimizer: str, grid: list[int], cache: Path, quick: bool) -> dict[int, Any]:
    """Seed-0 runs over the grid, extended by one power of 2 past an edge that wins."""
    runs: dict[int, Any] = {}

    def run(e: int) -> None:
        c = _runs.with_learning_rate(dataclasses.replace(cfg, seed=0), optimizer, 2.0**e)
        runs[e] = _runs.run_cached(c, optimizer, f"{optimizer}_lr{e}_seed0", cache)

    for e in grid:
        run(e)
    if not quick:
        best = min(runs, key=lambda e: _loss(runs[e]))
        if best == max(runs):
            run(best + 1)
        elif best == min(runs):
            run(best - 1)
    return runs


def _loss(record: dict[str, Any]) -> float:
    value = record["final_val_loss"]
    return math.inf if record["diverged"] or not math.isfinite(value) else value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--optimizers", default=",".join(GRIDS))
    parser.add_argument("--results", default=None, help="folder for the JSON (and run cache)")
    parser.add_argument("--img", default=None, help="folder for the plots")
    args = parser.parse_args(argv)
    results = Path(args.results or HERE / "results")
    cache = results / "runs" / ("convergence_quick" if args.quick else "convergence")
    cfg = base_config(args.quick)
    grids = {k: (v[:2] if args.quick else v) for k, v in GRIDS.items()}
    seeds = SEEDS[:1] if args.quick else SEEDS
    chosen = [o.strip() for o in args.optimizers.split(",") if o.strip()]

    sweeps, best, seeded = {}, {}, {}
    for optimizer in chosen:
        sweeps[optimizer] = tune(cfg, optimizer, grids[optimizer], cache, args.quick)
        best[optimizer] = min(sweeps[optimizer], key=lambda e: _loss(sweeps[optimizer][e]))
        runs = []
        for seed in seeds:
            c = _runs.with_learning_rate(
                dataclasses.replace(cfg, seed=seed), optimizer, 2.0 ** best[optimizer]
            )
            runs.append(
                _runs.run_cached(c, optimizer, f"{optimizer}_lr{best[optimizer]}_seed{seed}", cache)
            )
        seeded[optimizer] = runs
        print(f"{optimizer}: best 2^{best[optimizer]}", flush=True)
    if "scion" in chosen:  # the memory-light variant at Scion's learning rate
        runs = []
        for seed in seeds:
            c = _runs.with_learning_rate(
                dataclasses.replace(cfg, seed=seed),
                "scion",
                2.0 ** best["scion"],
                state_dtype="bfloat16",
            )
            runs.append(
                _runs.run_cached(c, "scion", f"scion_bf16_lr{best['scion']}_seed{seed}", cache)
            )
        seeded["scion (bf16 state)"] = runs
    if set(chosen) != set(GRIDS):
        print("partial sweep done; run again with every optimizer for the report")
        return 0

    report = summarize(cfg, sweeps, best, seeded, args.quick)
    name = "convergence_quick.json" if args.quick else "convergence.json"
    results.mkdir(parents=True, exist_ok=True)
    (results / name).write_text(json.dumps(report, indent=2) + "\n")
    print(report["table_md"])
    img = Path(args.img or ROOT / "docs" / "img")
    plot(report, img / ("convergence_quick.png" if args.quick else "convergence.png"))
    print(f"wrote {results / name}")
    return 0


def _mean_curve(runs: list[dict[str, Any]]) -> list[list[float]]:
    steps = [s for s, _ in runs[0]["val_curve"]]
    return [[s, statistics.mean(r["val_curve"][i][1] for r in runs)] for i, s in enumerate(steps)]


def summarize(cfg: Any, sweeps: dict, best: dict, seeded: dict, quick: bool) -> dict[str, Any]:
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
    lines = [
        f"Target: AdamW's final validation loss {target:.4f} (mean of {len(seeded['adamw'])} "
        f"seeds, {cfg.steps} steps). Steps to reach it are read off the seed-averaged validation "
        f"curve (evaluated every {cfg.eval_every} steps, linearly interpolated).\n",
        "| optimizer | best lr | final val (mean ± std) | steps to target | ratio to AdamW |",
        "|---|---|---|---|---|",
    ]
    for label, row in rows.items():
        steps = row["steps_to_target_mean"]
        lines.append(
            f"| {label} | 2^{row['log2_lr']} | {row['final_val_mean']:.4f} ± "
            f"{row['final_val_std']:.4f} | {'never' if math.isinf(steps) else f'{steps:.0f}'} "
            f"| {row['ratio_to_adamw']:.2f} |"
        )
    exps = sorted({e for s in sweeps.values() for e in s}, reverse=True)
    lines += [
        "\nLearning-rate sweep (seed 0, final validation loss):\n",
        "| optimizer | " + " | ".join(f"2^{e}" for e in exps) + " |",
        "|---|" + "---|" * len(exps),
    ]
    for optimizer, sweep in sweeps.items():
        cells = []
        for e in exps:
            if e not in sweep:
                cells.append("")
            else:
                loss = _loss(sweep[e])
                text = "diverged" if math.isinf(loss) else f"{loss:.4f}"
                cells.append(f"**{text}**" if e == best[optimizer] else text)
        lines.append(f"| {optimizer} | " + " | ".join(cells) + " |")
    scion_ratio = rows["scion"]["ratio_to_adamw"]
    return {
        "benchmark": "convergence",
        "quick": quick,
        "config": "configs/tiny.py" if not quick else "quick",
        "steps": cfg.steps,
        "model": {
            "width": cfg.model.width,
            "depth": cfg.model.depth,
            "context": cfg.model.context,
            "batch_size": cfg.batch_size,
        },
        "target_val_loss": target,
        "rows": rows,
        "sweeps": {o: {str(e): _loss(r) for e, r in s.items()} for o, s in sweeps.items()},
        "scion_ratio": scion_ratio,
        "target_met": scion_ratio <= TARGET_RATIO,
        "table_md": "\n".join(lines),
    }


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, row in report["rows"].items():
        steps, values = zip(*row["mean_curve"], strict=True)
        ax.plot(steps, values, label=f"{label} (2^{row['log2_lr']})")
    ax.axhline(report["target_val_loss"], color="gray", ls="--", lw=1, label="AdamW final")
    ax.set_xlabel("step")
    ax.set_ylabel("validation loss (nats/byte), mean of seeds")
    ax.set_ylim(top=min(ax.get_ylim()[1], report["target_val_loss"] + 1.0))
    ax.legend()
    ax.set_title("Byte GPT on pydoc_data: validation loss, each optimizer at its best lr")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
