"""``lmo-optax``: train the example GPT from the command line.

lmo-optax train   --config configs/tiny.py [--optimizer scion,adamw] [--steps N] [--out DIR]
                  [--data PATH] [--resume | --overwrite] [--mesh data=4,model=2] [field=value ...]
lmo-optax compare --config configs/tiny.py --optimizer scion,adamw,muon ...
lmo-optax rules   --config configs/tiny.py      # print the parameter → norm table
lmo-optax digits  [--optimizer scion,adamw] [--steps N]   # CNN on sklearn's 8×8 digits

A setting that cannot be honoured (a field out of range, a mesh that does not divide the batch,
a missing data file, an output folder that holds an earlier run, …) is reported before training
as one line, ``lmo-optax: error: …``, with exit status 2 (argparse's convention for a bad flag);
a run whose loss diverges ends the same way with status 1. Anything else is a bug and shows its
traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import pathlib
import sys
from collections.abc import Callable

from lmo_optax.example.config import (
    OPTIMIZER_NAMES,
    SCION_NAMES,
    ConfigError,
    TrainConfig,
    apply_overrides,
    load_config,
    mesh_axes,
)

# More simulated CPU devices than this only slow a CPU down; XLA_FLAGS can still ask for more.
MAX_SIMULATED_DEVICES = 64
# What the train and compare commands write in --out besides the runs.
REPORT_FILES = ("summary.json", "summary.md", "loss.png")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lmo-optax", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("train", "compare"):
        p = sub.add_parser(name)
        _add_config_arguments(p)
        p.add_argument("--steps", type=int, default=None)
        p.add_argument("--out", default=None, help="output folder (default runs/<config>)")
        p.add_argument(
            "--data",
            default=None,
            help="a local UTF-8 text file (default: "
            "the CPython docs in pydoc_data, shipped with Python)",
        )
        earlier = p.add_mutually_exclusive_group()
        earlier.add_argument(
            "--resume", action="store_true", help="continue from the last intact checkpoint"
        )
        earlier.add_argument(
            "--overwrite",
            action="store_true",
            help="delete the metrics and checkpoints of an earlier run in --out first",
        )
        p.add_argument(
            "--mesh",
            default=None,
            help="train sharded over a device mesh, e.g. data=8 or data=4,model=2 (on CPU the "
            f"devices are simulated, up to {MAX_SIMULATED_DEVICES})",
        )
    _add_config_arguments(sub.add_parser("rules"))
    d = sub.add_parser("digits", help="a small CNN on scikit-learn's 8x8 digits")
    d.add_argument("--optimizer", "--optimizers", dest="optimizer", default="scion,adamw")
    d.add_argument("--steps", type=int, default=None)
    d.add_argument("--seed", type=int, default=0)
    return parser


def _add_config_arguments(p: argparse.ArgumentParser) -> None:
    """--config, --optimizer and the field=value overrides."""
    p.add_argument("--config", default="configs/tiny.py", help="a config file (Python)")
    p.add_argument(
        "--optimizer",
        "--optimizers",
        dest="optimizer",
        default=None,
        help=f"comma-separated, from {', '.join(OPTIMIZER_NAMES)}",
    )
    p.add_argument("overrides", nargs="*", help="config overrides, e.g. model.width=64")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The arguments, with overrides allowed between and after flags (``--steps 3 steps=4``).

    argparse takes one run of positional arguments; the overrides after a flag come back as
    unrecognized and are added here, in order.
    """
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    if extra and (not hasattr(args, "overrides") or any(a.startswith("-") for a in extra)):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if extra:
        args.overrides += extra
    return args


def parse_names(text: str, allowed: tuple[str, ...], source: str) -> list[str]:
    """The comma-separated optimizer names of ``text``: at least one, each from ``allowed``
    and once; ``source`` names where the text came from in the errors."""
    names = [n.strip() for n in text.split(",")]
    if not all(names):
        raise ConfigError(
            f"{source}: expected one or more optimizer names separated by commas, from "
            f"{', '.join(allowed)}"
        )
    for n in names:
        if n not in allowed:
            raise ConfigError(
                f"{source}: unknown optimizer {n!r}; choose from {', '.join(allowed)}"
            )
        if names.count(n) > 1:
            raise ConfigError(f"{source}: optimizer {n!r} appears twice")
    return names


def configured_names(args: argparse.Namespace, cfg: TrainConfig, default: str) -> list[str]:
    """The optimizers to run, from --optimizer or else ``default``: each with settings in the
    config."""
    text = default if args.optimizer is None else args.optimizer
    source = f"--optimizer {text!r}" if args.optimizer is not None else f"run={text!r}"
    names = parse_names(text, OPTIMIZER_NAMES, source)
    for n in names:
        if n not in cfg.optimizers:
            raise ConfigError(
                f"{source}: optimizer {n!r} has no settings in {args.config} (it has "
                f"{', '.join(cfg.optimizers) or 'none'})"
            )
    return names


def build_config(args: argparse.Namespace) -> TrainConfig:
    """The config file's config with the overrides, then --steps, --data and --mesh, applied
    together and checked once."""
    flags = [
        f"{name}={getattr(args, name)}"
        for name in ("steps", "data", "mesh")
        if getattr(args, name, None) is not None
    ]
    return apply_overrides(load_config(args.config), args.overrides + flags)


def _simulate_cpu_devices(mesh: str) -> None:
    """Lets a --mesh run on a CPU-only machine: as many CPU devices as the mesh needs, up to
    ``MAX_SIMULATED_DEVICES``.

    Only the CPU backend is affected, and only when XLA_FLAGS does not already say; it must
    happen before JAX starts its backends.
    """
    if "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", ""):
        return
    import jax

    needed = math.prod(mesh_axes(mesh).values())
    jax.config.update("jax_num_cpu_devices", min(needed, MAX_SIMULATED_DEVICES))


def train_main(args: argparse.Namespace) -> int:
    """``train`` and ``compare``: checks everything, then trains each optimizer and reports."""
    cfg = build_config(args)
    names = configured_names(args, cfg, cfg.run)
    out = pathlib.Path(args.out or f"runs/{pathlib.Path(args.config).stem}")
    separate = len(names) > 1 or args.command == "compare"
    run_dirs = [out / name if separate else out for name in names]
    if cfg.mesh:
        _simulate_cpu_devices(cfg.mesh)
    # Imported late so that config errors are reported without loading orbax.
    from lmo_optax.example import checkpoints, parallel
    from lmo_optax.example import train as train_lib

    # Everything that can be checked is checked before the first run starts.
    if cfg.mesh:
        parallel.parse_mesh(cfg.mesh)
    earlier = {"resume": args.resume, "overwrite": args.overwrite}
    checkpoints.check_out_dir(out, files=REPORT_FILES, **earlier)
    for run_dir in run_dirs:
        checkpoints.check_out_dir(run_dir, **earlier)
        if args.resume:
            checkpoints.find_resume_point(run_dir / "checkpoints")
    train_lib.load_data(cfg)
    results = [
        train_lib.train(cfg, name, run_dir, **earlier)
        for name, run_dir in zip(names, run_dirs, strict=True)
    ]
    report(args, cfg, out, results)
    return 0


def report(args: argparse.Namespace, cfg: TrainConfig, out: pathlib.Path, results: list) -> None:
    """Prints the samples and the table; writes ``loss.png``, ``summary.json`` and ``.md``."""
    from lmo_optax.example import train as train_lib

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


def rules_main(args: argparse.Namespace) -> int:
    """``rules``: the parameter → norm table of each Scion optimizer named (default: the
    config's first)."""
    cfg = build_config(args)
    default = next((n for n in SCION_NAMES if n in cfg.optimizers), None)
    if args.optimizer is None and default is None:
        raise ConfigError(
            f"rules: {args.config} has settings for neither {' nor '.join(SCION_NAMES)}"
        )
    names = configured_names(args, cfg, default or "")
    for n in names:
        if n not in SCION_NAMES:
            raise ConfigError(f"--optimizer {n}: rules are for {' and '.join(SCION_NAMES)} only")
    import flax.nnx as nnx

    import lmo_optax
    from lmo_optax.example import optimizers
    from lmo_optax.example.model import GPT

    params = nnx.to_pure_dict(nnx.state(GPT(cfg.model, nnx.Rngs(0))))
    for n in names:
        rules = optimizers.scion_rules(cfg.optimizers[n], cfg.model.tied)
        print(("" if len(names) == 1 else f"{n}:\n") + lmo_optax.rules_table(params, rules))
    return 0


def digits_main(args: argparse.Namespace) -> int:
    """``digits``: the CNN with each optimizer named, and a table of their results."""
    from lmo_optax.example.digits import DIGITS_OPTIMIZERS, DigitsConfig, train_digits

    names = parse_names(args.optimizer, DIGITS_OPTIMIZERS, f"--optimizer {args.optimizer!r}")
    cfg = DigitsConfig(seed=args.seed)
    if args.steps is not None:
        cfg = dataclasses.replace(cfg, steps=args.steps)
    rows = [train_digits(cfg, name) for name in names]
    print("\n| optimizer | test accuracy | train loss | wall (s) |\n|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['optimizer']} | {r['test_accuracy']:.4f} | {r['train_loss']:.4f} | "
            f"{r['wall_time_s']:.1f} |"
        )
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "train": train_main,
    "compare": train_main,
    "rules": rules_main,
    "digits": digits_main,
}


def main(argv: list[str] | None = None) -> int:
    """Runs one command; a user error is one line on stderr and exit status 2."""
    args = parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except ConfigError as e:
        return _fail(f"error: {e}", 2)
    except FloatingPointError as e:  # the run diverged: a result, reported the same way
        return _fail(f"error: {e}", 1)
    except KeyboardInterrupt:
        return _fail("interrupted; --resume continues from the last checkpoint", 130)


def _fail(message: str, status: int) -> int:
    """Prints ``lmo-optax: <message>`` on stderr and returns ``status``."""
    print(f"lmo-optax: {message}", file=sys.stderr)
    return status


if __name__ == "__main__":
    raise SystemExit(main())
