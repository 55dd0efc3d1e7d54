"""Learning-rate sweep for configs/tiny.py: each optimizer over powers of 2, same data and seed.

Prints a markdown table of final validation loss per (optimizer, learning rate) and writes
JSON. The best learning rate of each optimizer is what configs/tiny.py documents.

    python benchmarks/tune_tiny.py --optimizers scion,adamw --exponents -3,-4,-5,-6,-7
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import tempfile
import time

from lmo_optax.example.config import load_config
from lmo_optax.example.train import train


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default="configs/tiny.py")
    parser.add_argument("--optimizers", default="scion,adamw")
    parser.add_argument(
        "--exponents", default=None, help="comma-separated powers of 2 (default per optimizer)"
    )
    parser.add_argument("--out", default="benchmarks/results/tune_tiny.json")
    args = parser.parse_args()
    cfg = load_config(args.config)
    defaults = {
        "scion": "-2,-3,-4,-5,-6",
        "unconstrained_scion": "-3,-4,-5,-6,-7",
        "adamw": "-6,-7,-8,-9,-10",
        "muon": "-4,-5,-6,-7,-8",
    }
    rows = []
    for name in args.optimizers.split(","):
        exps = [int(e) for e in (args.exponents or defaults[name]).split(",")]
        for e in exps:
            oc = dataclasses.replace(cfg.optimizers[name], learning_rate=2.0**e)
            run_cfg = dataclasses.replace(
                cfg, optimizers={**cfg.optimizers, name: oc}, sample_bytes=0
            )
            t0 = time.perf_counter()
            with tempfile.TemporaryDirectory() as tmp:
                try:
                    r = train(run_cfg, name, tmp, verbose=False)
                    val = r.final_val_loss
                except FloatingPointError:
                    val = float("nan")
            rows.append(
                {
                    "optimizer": name,
                    "log2_lr": e,
                    "learning_rate": 2.0**e,
                    "val_loss": val,
                    "wall_s": time.perf_counter() - t0,
                }
            )
            print(f"{name:>20} lr 2^{e:<4} val {val:.4f}  ({rows[-1]['wall_s']:.0f} s)", flush=True)
    print("\n| optimizer | lr | val loss |\n|---|---|---|")
    for r in rows:
        print(f"| {r['optimizer']} | 2^{r['log2_lr']} | {r['val_loss']:.4f} |")
    pathlib.Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    pathlib.Path(args.out).write_text(
        json.dumps({"config": args.config, "steps": cfg.steps, "rows": rows}, indent=2)
    )


if __name__ == "__main__":
    main()
