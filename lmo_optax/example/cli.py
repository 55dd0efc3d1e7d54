"""``lmo-optax``: train the example GPT from the command line.

lmo-optax train   --config configs/tiny.py [--optimizer scion,adamw] [--steps N] [--out DIR]
                  [--data PATH] [--resume] [--mesh data=4,model=2] [field=value ...]
lmo-optax compare --config configs/tiny.py --optimizer scion,adamw,muon ...
lmo-optax rules   --config configs/tiny.py      # print the parameter → norm table
lmo-optax digits  [--optimizer scion,adamw] [--steps N]   # CNN on sklearn's 8×8 digits
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import pathlib
import sys

from lmo_optax.example.config import OPTIMIZER_NAMES, TrainConfig, apply_override, load_config


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lmo-optax", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("train", "compare", "rules"):
        p = sub.add_parser(name)
        p.add_argument("--config", default="configs/tiny.py", help="a config file (Python)")
        p.add_argument(
            "--optimizer",
            "--optimizers",
            dest="optimizer",
            default=None,
            help=f"comma-separated, from {', '.join(OPTIMIZER_NAMES)}",
        )
        p.add_argument("--steps", type=int, default=None)
        p.add_argument("--out", default=None, help="output folder (default runs/<config>)")
        p.add_argument(
            "--data",
            default=None,
            help="a local UTF-8 text file (default: "
            "the CPython docs in pydoc_data, shipped with Python)",
        )
        p.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
        p.add_argument(
            "--mesh",
            default=None,
            help="train sharded over a device mesh, e.g. data=8 or data=4,model=2 (on CPU the "
            "devices are simulated)",
        )
        p.add_argument("overrides", nargs="*", help="config overrides, e.g. model.width=64")
    d = sub.add_parser("digits", help="a small CNN on scikit-learn's 8x8 digits")
    d.add_argument("--optimizer", "--optimizers", dest="optimizer", default="scion,adamw")
    d.add_argument("--steps", type=int, default=None)
    d.add_argument("--seed", type=int, default=0)
    return parser


def digits_main(args: argparse.Namespace) -> int:
    from lmo_optax.example.digits import DigitsConfig, train_digits

    cfg = DigitsConfig(seed=args.seed)
    if args.steps is not None:
        cfg = dataclasses.replace(cfg, steps=args.steps)
    rows = []
    for name in [n.strip() for n in args.optimizer.split(",") if n.strip()]:
        try:
            rows.append(train_digits(cfg, name))
        except ValueError as e:
            print(f"lmo-optax: error: {e}", file=sys.stderr)
            return 2
    print("\n| optimizer | test accuracy | train loss | wall (s) |\n|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['optimizer']} | {r['test_accuracy']:.4f} | {r['train_loss']:.4f} | "
            f"{r['wall_time_s']:.1f} |"
        )
    return 0


def build_config(args: argparse.Namespace) -> TrainConfig:
    cfg = load_config(args.config)
    for assignment in args.overrides:
        cfg = apply_override(cfg, assignment)
    if args.steps is not None:
        if args.steps < 1:
            raise ValueError(f"--steps must be positive, got {args.steps}")
        cfg = dataclasses.replace(cfg, steps=args.steps)
    if args.data is not None:
        cfg = dataclasses.replace(cfg, data=args.data)
    if args.mesh is not None:
        cfg = dataclasses.replace(cfg, mesh=args.mesh)
    return cfg


def _simulate_cpu_devices(mesh: str) -> None:
    """Lets a --mesh run on a CPU-only machine: as many CPU devices as the mesh needs.

    Only the CPU backend is affected, and only when XLA_FLAGS does not already say; it must
    happen before JAX starts its backends.
    """
    if "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", ""):
        return
    sizes = [part.partition("=")[2].strip() for part in mesh.split(",")]
    if all(size.isdigit() for size in sizes):
        import jax

        jax.config.update("jax_num_cpu_devices", max(math.prod(int(s) for s in sizes), 1))


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "digits":
        return digits_main(args)
    try:
        cfg = build_config(args)
        names = [n.strip() for n in (args.optimizer or cfg.run).split(",") if n.strip()]
        for n in names:
            if n not in OPTIMIZER_NAMES:
                raise ValueError(
                    f"unknown optimizer {n!r}; choose from {', '.join(OPTIMIZER_NAMES)}"
                )
            if n not in cfg.optimizers:
                raise ValueError(f"optimizer {n!r} has no settings in {args.config}")
    except (ValueError, FileNotFoundError) as e:
        print(f"lmo-optax: error: {e}", file=sys.stderr)
        return 2

    if cfg.mesh:
        _simulate_cpu_devices(cfg.mesh)
    # Imported late so that argument errors are reported without starting JAX.
    from lmo_optax.example import parallel
    from lmo_optax.example import train as train_lib

    if cfg.mesh:
        try:
            parallel.parse_mesh(cfg.mesh)
        except ValueError as e:
            print(f"lmo-optax: error: {e}", file=sys.stderr)
            return 2

    if args.command == "rules":
        import flax.nnx as nnx

        import lmo_optax
        from lmo_optax.example import optimizers
        from lmo_optax.example.model import GPT

        model = GPT(cfg.model, nnx.Rngs(0))
        oc = cfg.optimizers.get("scion") or next(iter(cfg.optimizers.values()))
        print(
            lmo_optax.rules_table(
                nnx.to_pure_dict(nnx.state(model)), optimizers.scion_rules(oc, cfg.model.tied)
            )
        )
        return 0

    out = pathlib.Path(args.out or f"runs/{pathlib.Path(args.config).stem}")
    results = []
    for name in names:
        run_dir = out / name if len(names) > 1 or args.command == "compare" else out
        try:
            results.append(train_lib.train(cfg, name, run_dir, resume=args.resume))
        except (ValueError, FileNotFoundError, FloatingPointError) as e:
            print(f"lmo-optax: error: {e}", file=sys.stderr)
            return 1
    for r in results:
        print(f"\n--- {r.optimizer}: generated text ---\n{r.sample}\n")
    table = train_lib.summary_table(results)
    print(table)
    train_lib.plot(
        results,
        out / "loss.png",
        title=f"{pathlib.Path(args.config).stem}: "
        f"{cfg.model.width}×{cfg.model.depth} byte GPT, {cfg.steps} steps",
    )
    summary = {
        "config": args.config,
        "steps": cfg.steps,
        "results": [dataclasses.asdict(r) for r in results],
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    (out / "summary.md").write_text(table + "\n")
    if len(results) > 1:
        best = min(results, key=lambda r: r.final_val_loss)
        others = ", ".join(
            f"{r.optimizer} {r.final_val_loss:.4f}" for r in results if r is not best
        )
        print(
            f"\nlowest validation loss after {cfg.steps} steps: {best.optimizer} "
            f"{best.final_val_loss:.4f} (vs {others})"
        )
    print(f"metrics, plot and summary in {out}/ (loss.png, summary.md, */metrics.jsonl)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
