"""Learning-rate transfer across width (the paper's Figure 1, scaled to a CPU).

A 2-layer byte GPT (context 64, batch 16, 150 steps on the embedded corpus, seed 0) at widths
32, 64, 128 and 256 (a factor of 8), trained with Scion and with AdamW over a grid of powers of
2. Final validation loss per (width, learning rate); one curve per width. The claim: Scion's
best learning rate moves by at most one grid step across widths; AdamW's moves (the paper:
"the optimal learning rate is invariant to width" for Scion, not for Adam).

The paper's shallow-GPT sweeps used widths 256–2048; here the widths are 8× smaller so that
the whole sweep runs on a 2-core CPU. Runs are cached in ``benchmarks/results/runs/width/``.

    .venv/bin/python benchmarks/width_transfer.py           # 2 × 4 widths × 7 lrs, ~30 min
    .venv/bin/python benchmarks/width_transfer.py --quick   # 2 widths, 2 lrs, 20 steps
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import _runs  # noqa: E402

from lmo_optax.example.config import load_config  # noqa: E402
from lmo_optax.example.model import GPTConfig  # noqa: E402

ROOT = HERE.parent
WIDTHS = (32, 64, 128, 256)
GRIDS = {"scion": list(range(-3, -10, -1)), "adamw": list(range(-5, -12, -1))}


def config(width: int, quick: bool) -> Any:
    cfg = load_config(str(ROOT / "configs" / "tiny.py"))
    return dataclasses.replace(
        cfg,
        model=GPTConfig(context=64, width=width, depth=2, heads=4),
        batch_size=16,
        steps=20 if quick else 150,
        eval_every=20 if quick else 150,
        eval_batches=8,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--optimizers", default=",".join(GRIDS))
    parser.add_argument("--results", default=None)
    parser.add_argument("--img", default=None)
    args = parser.parse_args(argv)
    results = Path(args.results or HERE / "results")
    cache = results / "runs" / ("width_quick" if args.quick else "width")
    widths = WIDTHS[:2] if args.quick else WIDTHS
    chosen = [o.strip() for o in args.optimizers.split(",") if o.strip()]
    losses: dict[str, dict[int, dict[int, float]]] = {}
    for optimizer in chosen:
        grid = GRIDS[optimizer][2:4] if args.quick else GRIDS[optimizer]
        losses[optimizer] = {}
        for width in widths:
            losses[optimizer][width] = {}
            for e in grid:
                cfg = _runs.with_learning_rate(config(width, args.quick), optimizer, 2.0**e)
                record = _runs.run_cached(cfg, optimizer, f"{optimizer}_w{width}_lr{e}", cache)
                value = record["final_val_loss"]
                losses[optimizer][width][e] = (
                    math.inf if record["diverged"] or not math.isfinite(value) else value
                )
            print(f"{optimizer} width {width}: {losses[optimizer][width]}", flush=True)
    if set(chosen) != set(GRIDS):
        print("partial sweep done; run again with every optimizer for the report")
        return 0

    report = summarize(losses, args.quick)
    name = "width_transfer_quick.json" if args.quick else "width_transfer.json"
    results.mkdir(parents=True, exist_ok=True)
    (results / name).write_text(json.dumps(report, indent=2) + "\n")
    print(report["table_md"])
    img = Path(args.img or ROOT / "docs" / "img")
    plot(report, img / ("width_transfer_quick.png" if args.quick else "width_transfer.png"))
    print(f"wrote {results / name}")
    return 0


def summarize(losses: dict, quick: bool) -> dict[str, Any]:
    best = {
        o: {w: min(by_lr, key=by_lr.get) for w, by_lr in per_width.items()}
        for o, per_width in losses.items()
    }
    shift = {o: max(b.values()) - min(b.values()) for o, b in best.items()}
    lines = []
    for optimizer, per_width in losses.items():
        exps = sorted(next(iter(per_width.values())), reverse=True)
        lines += [
            f"\n**{optimizer}** — final validation loss (best per width in bold)\n",
            "| width | " + " | ".join(f"2^{e}" for e in exps) + " |",
            "|---|" + "---|" * len(exps),
        ]
        for width, by_lr in per_width.items():
            cells = []
            for e in exps:
                v = by_lr[e]
                text = "diverged" if math.isinf(v) else f"{v:.3f}"
                cells.append(f"**{text}**" if e == best[optimizer][width] else text)
            lines.append(f"| {width} | " + " | ".join(cells) + " |")
        moves = ", ".join(f"{w}: 2^{e}" for w, e in best[optimizer].items())
        lines.append(
            f"\nbest lr by width: {moves}; moves by {shift[optimizer]} grid step(s) "
            f"over widths {min(per_width)}–{max(per_width)}"
        )
    return {
        "benchmark": "width_transfer",
        "quick": quick,
        "losses": {
            o: {str(w): {str(e): v for e, v in d.items()} for w, d in pw.items()}
            for o, pw in losses.items()
        },
        "best_log2_lr": {o: {str(w): e for w, e in b.items()} for o, b in best.items()},
        "best_lr_shift_steps": shift,
        "target_met": shift.get("scion", 99) <= 1,
        "table_md": "\n".join(lines).strip(),
    }


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    optimizers = list(report["losses"])
    fig, axes = plt.subplots(1, len(optimizers), figsize=(5.5 * len(optimizers), 4.2))
    for ax, optimizer in zip(axes, optimizers, strict=True):
        finite = []
        for width, by_lr in report["losses"][optimizer].items():
            points = sorted((int(e), v) for e, v in by_lr.items() if math.isfinite(v))
            finite += [v for _, v in points]
            ax.plot([e for e, _ in points], [v for _, v in points], "o-", label=f"width {width}")
        ax.set_xlabel("log2 learning rate")
        ax.set_ylabel("final validation loss")
        ax.set_title(f"{optimizer}")
        if finite:
            ax.set_ylim(min(finite) - 0.05, min(max(finite), min(finite) + 1.5) + 0.05)
        ax.legend()
    fig.suptitle("Learning rate vs width (2-layer byte GPT, 150 steps)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
