"""``lmo-optax``: train the example GPT from the command line.

lmo-optax train   --config tiny [--optimizer scion,adamw] [--steps N] [--out DIR]
                  [--data PATH|GLOB|stdlib] [--val-data PATH|GLOB] [--resume | --overwrite]
                  [--mesh data=4,model=2] [field=value ...]
lmo-optax compare --config tiny --optimizer scion,adamw,muon ...
lmo-optax rules   --config gpt2_small       # print the parameter → norm table
lmo-optax configs                           # the packaged configs (--config NAME)
lmo-optax prepare INPUT... --out DIR [--tokenizer bytes|gpt2]   # text files → token shards
lmo-optax digits  [--optimizer scion,adamw] [--steps N]   # CNN on sklearn's 8×8 digits

--config takes a packaged config's name or the path of a config file (``.py``).

A setting that cannot be honoured (a field out of range, a mesh that does not divide the batch,
a missing data file, an output folder that holds an earlier run, …) is reported before training
as one line, ``lmo-optax: error: …``, with exit status 2 (argparse's convention for a bad flag),
and so is a token id outside the vocabulary met in a shard's batch during training; a run whose
loss diverges ends the same way with status 1. Anything else is a bug and shows its traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
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
from lmo_optax.example.data import TokenDataset
from lmo_optax.example.errors import PeerLost, warn

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
            help="a local UTF-8 text file, a glob of .bin token shards, or stdlib (the "
            "standard library's sources); default: the CPython docs in pydoc_data",
        )
        p.add_argument(
            "--val-data",
            default=None,
            help="validation data, in the same forms (default: the end of --data)",
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
        p.add_argument("--coordinator", default=None, help="HOST:PORT of process 0's coordinator")
        p.add_argument("--num-processes", type=int, default=None, help="processes in the run")
        p.add_argument("--process-id", type=int, default=None, help="this process's index")
        p.add_argument(
            "--cluster",
            choices=["auto"],
            default=None,
            help="auto: let JAX find the cluster (TPU pods, SLURM, ...)",
        )
    _add_config_arguments(sub.add_parser("rules"))
    co = sub.add_parser(
        "compile",
        help="compile the train step for a TPU slice without a TPU: FLOPs, memory, collectives",
    )
    _add_config_arguments(co)
    co.add_argument("--topology", required=True, help="a TPU slice, e.g. v5e:4x4 or v5p:2x2x4")
    co.add_argument("--mesh", required=True, help="over every chip, e.g. data=8,model=2")
    co.add_argument("--json", default=None, metavar="PATH", help="also write the figures here")
    sub.add_parser("configs", help="list the packaged configs")
    pr = sub.add_parser("prepare", help="turn local text files into token shards")
    pr.add_argument("inputs", nargs="+", metavar="INPUT", help="text files")
    pr.add_argument("--out", required=True, help="the folder for the shards")
    pr.add_argument("--tokenizer", choices=("bytes", "gpt2"), default="bytes")
    pr.add_argument("--shard-tokens", type=int, default=100_000_000, help="tokens per shard")
    pr.add_argument("--val-fraction", type=float, default=0.1, help="the end held out as val_*.bin")
    la = sub.add_parser(
        "launch",
        help="run a command in N local processes of one JAX cluster",
        usage="lmo-optax launch -n N [--devices-per-process K] -- COMMAND ARGS...",
    )
    la.add_argument("-n", "--num-processes", type=int, required=True, dest="count")
    la.add_argument(
        "--devices-per-process",
        type=int,
        default=None,
        help="simulated CPU devices per process (CPU only)",
    )
    la.add_argument("launched", nargs=argparse.REMAINDER, help="-- then the lmo-optax command")
    d = sub.add_parser("digits", help="a small CNN on scikit-learn's 8x8 digits")
    d.add_argument("--optimizer", "--optimizers", dest="optimizer", default="scion,adamw")
    d.add_argument("--steps", type=int, default=None)
    d.add_argument("--seed", type=int, default=0)
    return parser


def _add_config_arguments(p: argparse.ArgumentParser) -> None:
    """--config, --optimizer and the field=value overrides."""
    p.add_argument(
        "--config",
        default="tiny",
        help="a packaged config's name (lmo-optax configs lists them) or a config file (.py)",
    )
    p.add_argument(
        "--optimizer",
        "--optimizers",
        dest="optimizer",
        default=None,
        help=f"comma-separated, from {', '.join(OPTIMIZER_NAMES)}",
    )
    p.add_argument("overrides", nargs="*", help="config overrides, e.g. model.width=64")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The arguments, with overrides allowed between and after flags (``--steps 3 steps=4``),
    and ``prepare``'s inputs too (``prepare a.txt --out DIR b.txt``).

    argparse takes one run of positional arguments; the ones after a flag come back as
    unrecognized and are added here, in order.
    """
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    positional = "overrides" if hasattr(args, "overrides") else "inputs"
    if extra and (not hasattr(args, positional) or any(a.startswith("-") for a in extra)):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if extra:
        setattr(args, positional, getattr(args, positional) + extra)
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
        for name in ("steps", "data", "val_data", "mesh")
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
    if os.environ.get("LMO_OPTAX_CPU_DEVICES"):  # set by launch, applied by cluster.join
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
    from lmo_optax.example import cluster

    joined = cluster.settings(args.coordinator, args.num_processes, args.process_id)
    cluster.join(joined, auto=args.cluster == "auto")
    if cfg.mesh and joined is None and args.cluster is None:
        _simulate_cpu_devices(cfg.mesh)
    if not cfg.mesh and (devices := cluster.global_device_count()) is not None:
        cfg = apply_overrides(cfg, [f"mesh=data={devices}"])  # one run over every process
        print(f"{devices} devices in {cluster.process_count()} processes: --mesh {cfg.mesh}")
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
    data = train_lib.load_data(cfg)
    with cluster.peers_watched():
        results = [
            train_lib.train(cfg, name, run_dir, data=data, **earlier)
            for name, run_dir in zip(names, run_dirs, strict=True)
        ]
    if cluster.is_primary():  # the other processes of a multi-process run report nothing
        report(args, cfg, out, results, data)
    return 0


def report(
    args: argparse.Namespace,
    cfg: TrainConfig,
    out: pathlib.Path,
    results: list,
    data: TokenDataset,
) -> None:
    """Prints the samples and the table; writes ``loss.png``, ``summary.json`` (with the
    data's manifest) and ``summary.md``."""
    from lmo_optax.example import train as train_lib

    for r in results:
        print(f"\n--- {r.optimizer}: generated text ---\n{r.sample}\n")
    table = train_lib.summary_table(results)
    print(table)
    plotted = importlib.util.find_spec("matplotlib") is not None  # an optional dependency
    if not plotted:
        warn("no loss.png: the plot needs matplotlib (pip install 'lmo-optax[examples]')")
    else:
        train_lib.plot(
            results,
            out / "loss.png",
            title=f"{pathlib.Path(args.config).stem}: "
            f"{cfg.model.width}×{cfg.model.depth} GPT, {cfg.steps} steps",
        )
    summary = {
        "config": args.config,
        "steps": cfg.steps,
        "data": {"description": data.description, "manifest": data.manifest},
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
    plot = "loss.png, " if plotted else ""
    print(f"metrics, plot and summary in {out}/ ({plot}summary.md, */metrics.jsonl)")


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


def configs_main(args: argparse.Namespace) -> int:
    """``configs``: the packaged configs, each with the first line of its docstring."""
    from lmo_optax.example import configs

    known = configs.names()
    width = max(map(len, known))
    for name in known:
        print(f"{name:<{width}}  {configs.description(name)}")
    return 0


def prepare_main(args: argparse.Namespace) -> int:
    """``prepare``: writes the shards and says how to train on them."""
    from lmo_optax.example.prepare import prepare

    out = pathlib.Path(args.out)
    m = prepare(
        args.inputs,
        out,
        tokenizer=args.tokenizer,
        shard_tokens=args.shard_tokens,
        val_fraction=args.val_fraction,
    )
    print(
        f"{m['tokens']:,} tokens ({m['val_tokens']:,} for validation) in {len(m['shards'])} "
        f"shards in {out}/ (prepare.json lists them); train on them with\n"
        f"  lmo-optax train --data '{out}/train_*.bin'"
        + (f" --val-data '{out}/val_*.bin'" if m["val_tokens"] else "")
        + f" model.vocab_size={m['vocab_size']}"
    )
    return 0


def compile_main(args: argparse.Namespace) -> int:
    """``compile``: the train step of each optimizer named, compiled for a TPU slice."""
    cfg = build_config(args)
    names = configured_names(args, cfg, "scion")
    from lmo_optax.example import aot

    devices = aot.topology_devices(args.topology)
    mesh = aot.mesh_on(devices, args.mesh)
    hbm = aot.hbm_per_device(args.topology, devices)
    runs = [aot.compile_step(cfg, name, mesh, hbm) for name in names]
    records = aot.report(args.topology, devices, args.mesh, args.config, runs)
    print(aot.summary(records))
    if args.json:
        path = pathlib.Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(records[0] if len(records) == 1 else records, indent=2) + "\n")
        print(f"wrote {path}")
    return 0


def launch_main(args: argparse.Namespace) -> int:
    """``launch``: the command in ``-n`` local processes (``lmo_optax.example.launch``)."""
    from lmo_optax.example import launch

    command = args.launched[1:] if args.launched[:1] == ["--"] else args.launched
    return launch.launch(args.count, command, devices_per_process=args.devices_per_process)


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
    "configs": configs_main,
    "prepare": prepare_main,
    "digits": digits_main,
    "launch": launch_main,
    "compile": compile_main,
}


def main(argv: list[str] | None = None) -> int:
    """Runs one command; a user error is one line on stderr and exit status 2."""
    args = parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except ConfigError as e:
        return _fail(f"error: {e}", 2)
    except (FloatingPointError, PeerLost) as e:  # not a user error, but no bug here either
        return _fail(f"error: {e}", 1)
    except KeyboardInterrupt:
        return _fail("interrupted; --resume continues from the last checkpoint", 130)


def _fail(message: str, status: int) -> int:
    """Prints ``lmo-optax: <message>`` on stderr and returns ``status``."""
    print(f"lmo-optax: {message}", file=sys.stderr)
    return status


if __name__ == "__main__":
    raise SystemExit(main())
