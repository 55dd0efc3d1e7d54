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

import dataclasses
import math
from pathlib import Path
from typing import Any

import _common
import _runs

from lmo_optax.example.config import TrainConfig, load_config
from lmo_optax.example.model import GPTConfig

WIDTHS = (32, 64, 128, 256)
GRIDS = {"scion": list(range(-3, -10, -1)), "adamw": list(range(-5, -12, -1))}
TARGET_MAX_SHIFT = 1  # grid steps Scion's best learning rate may move across widths


def config(width: int, quick: bool) -> TrainConfig:
    """The ``tiny`` config's data and optimizers; a 2-layer model of ``width``, 150 steps."""
    cfg = load_config("tiny")
    return dataclasses.replace(
        cfg,
        model=GPTConfig(context=64, width=width, depth=2, heads=4),
        batch_size=16,
        steps=20 if quick else 150,
        eval_every=20 if quick else 150,
        eval_batches=8,
    )


def sweep(
    optimizer: str, widths: tuple[int, ...], grid: list[int], cache: Path, quick: bool
) -> dict[int, dict[int, float]]:
    """Final validation loss (inf if diverged) per width and log2 learning rate."""
    losses: dict[int, dict[int, float]] = {}
    for width in widths:
        losses[width] = {}
        for e in grid:
            cfg = _runs.with_learning_rate(config(width, quick), optimizer, 2.0**e)
            record = _runs.run_cached(cfg, optimizer, f"{optimizer}_w{width}_lr{e}", cache)
            losses[width][e] = _runs.final_loss(record)
        print(f"{optimizer} width {width}: {losses[width]}", flush=True)
    return losses


def summarize(losses: dict, quick: bool) -> dict[str, Any]:
    """Best learning rate per width, how far it moves, and the tables."""
    best = {
        o: {w: min(by_lr, key=by_lr.get) for w, by_lr in per_width.items()}
        for o, per_width in losses.items()
    }
    shift = {o: max(b.values()) - min(b.values()) for o, b in best.items()}
    blocks = [
        f"**{o}** — final validation loss (best per width in bold)\n\n"
        f"{loss_table(per_width, best[o])}\n\n"
        f"best lr by width: {', '.join(f'{w}: 2^{e}' for w, e in best[o].items())}; moves by "
        f"{shift[o]} grid step(s) over widths {min(per_width)}–{max(per_width)}"
        for o, per_width in losses.items()
    ]
    cfg = config(WIDTHS[0], quick)
    return {
        "model": {
            "depth": cfg.model.depth,
            "context": cfg.model.context,
            "batch_size": cfg.batch_size,
            "steps": cfg.steps,
            "seed": cfg.seed,
        },
        "losses": {
            o: {str(w): {str(e): v for e, v in d.items()} for w, d in pw.items()}
            for o, pw in losses.items()
        },
        "best_log2_lr": {o: {str(w): e for w, e in b.items()} for o, b in best.items()},
        "best_lr_shift_steps": shift,
        "target_max_shift_steps": TARGET_MAX_SHIFT,
        "target_met": shift["scion"] <= TARGET_MAX_SHIFT,
        "table_md": "\n\n".join(blocks),
    }


def loss_table(per_width: dict[int, dict[int, float]], best: dict[int, int]) -> str:
    """Final loss per (width, lr) of one optimizer, the best of each width in bold."""
    exps = sorted(next(iter(per_width.values())), reverse=True)

    def cell(width: int, e: int) -> str:
        v = per_width[width][e]
        text = "diverged" if math.isinf(v) else f"{v:.3f}"
        return f"**{text}**" if e == best[width] else text

    cells = [[w, *(cell(w, e) for e in exps)] for w in per_width]
    return _common.markdown_table(["width", *(f"2^{e}" for e in exps)], cells)


def plot(report: dict[str, Any], path: Path) -> None:
    """Final loss against learning rate, one curve per width, one panel per optimizer."""
    optimizers = list(report["losses"])
    with _common.figure(path, len(optimizers), figsize=(5.5 * len(optimizers), 4.2)) as (fig, axes):
        for ax, optimizer in zip(axes, optimizers, strict=True):
            finite = []
            for width, by_lr in report["losses"][optimizer].items():
                points = sorted((int(e), v) for e, v in by_lr.items() if math.isfinite(v))
                finite += [v for _, v in points]
                ax.plot(
                    [e for e, _ in points], [v for _, v in points], "o-", label=f"width {width}"
                )
            ax.set_xlabel("log2 learning rate")
            ax.set_ylabel("final validation loss")
            ax.set_title(optimizer)
            if finite:
                ax.set_ylim(min(finite) - 0.05, min(max(finite), min(finite) + 1.5) + 0.05)
            ax.legend()
        m = report["model"]
        fig.suptitle(f"Learning rate vs width ({m['depth']}-layer byte GPT, {m['steps']} steps)")


def main(argv: list[str] | None = None) -> int:
    parser = _common.parser(__doc__, quick_help="2 widths, 2 lrs, 20 steps", img=True)
    _runs.add_optimizers_option(parser, list(GRIDS))
    args = parser.parse_args(argv)
    cache = args.results / "runs" / ("width_quick" if args.quick else "width")
    widths = WIDTHS[:2] if args.quick else WIDTHS
    losses = {
        o: sweep(o, widths, GRIDS[o][2:4] if args.quick else GRIDS[o], cache, args.quick)
        for o in args.optimizers
    }
    if _runs.is_partial(args.optimizers, list(GRIDS)):
        return 0
    report = summarize(losses, args.quick)
    print(report["table_md"])
    _common.write_report(args, "width_transfer", report, plot)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
