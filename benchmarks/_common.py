"""What every benchmark script shares: its command line, its JSON report, plots, markdown
tables and timing (the collectives of a compiled program: ``lmo_optax.example.hlo``).

A script is its measurement plus a few lines of this module::

    args = _common.parser(__doc__, quick_help="...").parse_args(argv)
    report = {...}                                    # the measurement
    _common.write_report(args, "name", report, plot)  # results/name[_quick].json, machine, plot
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
IMG = ROOT / "docs" / "img"
_STARTED = time.perf_counter()  # a script imports this module first: its run time starts here

# --------------------------------------------------------------------------------------------
# Command line and file names
# --------------------------------------------------------------------------------------------


def parser(doc: str, *, quick_help: str, img: bool = False) -> argparse.ArgumentParser:
    """A parser with ``--quick`` and ``--results DIR`` (and ``--img DIR`` for scripts that plot).

    Its description is the first paragraph of ``doc`` (the script's docstring).
    """
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help=f"smoke-test sizes: {quick_help}")
    p.add_argument(
        "--results",
        type=Path,
        default=RESULTS,
        help="folder for the JSON report, NAME.json or NAME_quick.json (default "
        "benchmarks/results)",
    )
    if img:
        p.add_argument(
            "--img", type=Path, default=IMG, help="folder for the plot (default docs/img)"
        )
    return p


def result_path(results: Path, name: str, quick: bool, suffix: str = ".json") -> Path:
    """Where benchmark ``name`` writes its report (or, with ``suffix=".png"``, its plot)."""
    return Path(results) / f"{name}{'_quick' if quick else ''}{suffix}"


def portable(arg: str) -> str:
    """A command-line argument with this repository's absolute path made relative to it."""
    return arg.replace(str(ROOT) + os.sep, "")


# --------------------------------------------------------------------------------------------
# Reports
# --------------------------------------------------------------------------------------------


def libtpu_missing(args: argparse.Namespace, name: str) -> bool:
    """For the TPU compiler's benchmarks: without libtpu, writes a "not measured" report and
    says so; the compiles run on CPUs (``JAX_PLATFORMS=cpu``) either way."""
    import importlib.util
    import os

    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    if importlib.util.find_spec("libtpu") is not None:
        return False
    write_report(args, name, {"measured": False, "reason": "libtpu is not installed"})
    print('not measured: libtpu is not installed (pip install "lmo-optax[tpu-aot]")')
    return True


def write_report(
    args: argparse.Namespace,
    name: str,
    report: dict[str, Any],
    plot: Callable[[dict[str, Any], Path], None] | None = None,
) -> Path:
    """Writes ``report`` as JSON with the benchmark's name, mode, date, command, run time and
    machine (``report["machine"]``, if given, adds to the machine's details), then
    ``plot(report, path)`` to ``args.img`` if given."""
    full = {
        "benchmark": name,
        "quick": args.quick,
        **report,
        "timestamp": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": " ".join(portable(a) for a in [Path(sys.executable).name, *sys.argv]),
        "wall_s": time.perf_counter() - _STARTED,
        "machine": {**machine_info(), **report.get("machine", {})},
    }
    path = result_path(args.results, name, args.quick)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(full, indent=2) + "\n")
    print(f"wrote {portable(str(path))}", flush=True)
    if plot is not None:
        plot(full, result_path(args.img, name, args.quick, ".png"))
    return path


def machine_info() -> dict[str, Any]:
    """Versions, devices, CPUs and the commit this report was measured with."""
    import jax
    import numpy as np
    import optax

    import lmo_optax

    return {
        "jax": jax.__version__,
        "jaxlib": _jaxlib_version(),
        "optax": optax.__version__,
        "lmo_optax": lmo_optax.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "device_kind": jax.devices()[0].device_kind,
        "cpu_count": os.cpu_count(),
        "affinity_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "xla_flags": os.environ.get("XLA_FLAGS"),
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": bool(_git("status", "--porcelain", "--", "lmo_optax")),
    }


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages (None where the system has none)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _git(*args: str) -> str | None:
    try:
        return subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def _jaxlib_version() -> str | None:
    try:
        import jaxlib

        return jaxlib.__version__
    except (ImportError, AttributeError):
        return None


# --------------------------------------------------------------------------------------------
# Tables and plots
# --------------------------------------------------------------------------------------------


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[object]], align: str = "") -> str:
    """A GitHub markdown table; ``align`` has one letter per column, "l" or "r" (default "l").

    Written by hand: the tables go into ``docs/benchmarks.md`` as markdown, which table
    libraries such as rich (terminal boxes) do not write.
    """
    rule = "|" + "|".join("---:" if a == "r" else "---" for a in align.ljust(len(header), "l"))
    row = lambda cells: "| " + " | ".join(str(c) for c in cells) + " |"
    return "\n".join([row(header), rule + "|", *(row(r) for r in rows)])


@contextlib.contextmanager
def figure(path: Path, ncols: int, *, figsize: tuple[float, float]) -> Iterator[tuple[Any, Any]]:
    """A matplotlib figure with ``ncols`` axes, saved to ``path`` (tight, 120 dpi) on exit."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, ncols, figsize=figsize)
    try:
        yield fig, axes
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120)
        print(f"wrote {portable(str(path))}", flush=True)
    finally:
        plt.close(fig)


# --------------------------------------------------------------------------------------------
# Measurements
# --------------------------------------------------------------------------------------------


def time_calls(fn: Callable[[], Any], repeats: int) -> list[float]:
    """Seconds of each of ``repeats`` calls of ``fn``, each waited for until its arrays are
    ready (warm up, i.e. compile, before)."""
    import jax

    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return times
