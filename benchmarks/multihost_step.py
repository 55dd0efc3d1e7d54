"""One mesh, one or several JAX processes: the example's train step on 1 × 8 and 2 × 4 devices.

The same ``data=4,model=2`` mesh of 8 CPU devices is made by one process with 8 simulated
devices and by two processes with 4 each (``lmo_optax.example.launch``: a JAX cluster on
127.0.0.1 whose processes exchange data through gloo). In each, every optimizer's jitted,
donated train step (the ``tiny`` config's GPT, Scion and AdamW) is compiled, its collectives are
read off the compiled program (count and result bytes per device, by kind), and its steps are
timed. The program is the same SPMD program either way; what changes is that in two processes
the collectives between the halves of the mesh cross a process boundary (here: loopback TCP).
Figures are relative: simulated devices share this machine's cores.

    .venv/bin/python benchmarks/multihost_step.py           # the tiny config, 30 timed steps
    .venv/bin/python benchmarks/multihost_step.py --quick   # a smaller GPT, 5 timed steps (CI)
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import _common

from lmo_optax.example.hlo import collective_stats

MESH = "data=4,model=2"
LAYOUTS = {"1 × 8": (1, 8), "2 × 4": (2, 4)}  # processes × devices per process
OPTIMIZERS = ("scion", "adamw")
FULL = {"steps": 30, "overrides": []}
QUICK = {"steps": 5, "overrides": ["model.width=32", "model.depth=1", "batch_size=8"]}
TIMEOUT_S = 900


def worker(steps: int, overrides: list[str]) -> None:
    """Runs in each process of a layout: compiles and times the step; process 0 prints JSON."""
    from lmo_optax.example import cluster
    from lmo_optax.example.config import apply_overrides, load_config

    cluster.join(cluster.settings())
    import jax

    from lmo_optax.example import train

    cfg = apply_overrides(load_config("tiny"), [f"mesh={MESH}", *overrides])
    data = train.load_data(cfg)
    rows = {}
    for name in OPTIMIZERS:
        run = train.build(cfg, name, data, log=lambda *a, **k: None)
        x, y = run.batch("train", 1)
        t0 = time.perf_counter()
        step = run.train_step.lower(run.params, run.opt_state, x, y).compile()
        compile_s = time.perf_counter() - t0
        cluster.barrier(f"{name} compiled")
        times = []
        for i in range(steps + 1):  # the first call is a warm-up
            x, y = run.batch("train", i + 1)
            t0 = time.perf_counter()
            run.params, run.opt_state, loss = step(run.params, run.opt_state, x, y)
            float(loss)  # waits for the step
            times.append(time.perf_counter() - t0)
        collectives = collective_stats(step.as_text())
        rows[name] = {
            "step_s": statistics.median(times[1:]),
            "compile_s": compile_s,
            "final_loss": float(loss),
            "collectives": collectives,
            "collective_bytes": sum(c["bytes"] for c in collectives.values()),
            "tokens_per_s": cfg.batch_size * cfg.model.context / statistics.median(times[1:]),
        }
    if cluster.is_primary():
        print("RESULT " + json.dumps({"devices": jax.device_count(), "rows": rows}), flush=True)


def measure(processes: int, devices: int, steps: int, overrides: list[str]) -> dict[str, Any]:
    """Runs ``worker`` in ``processes`` local processes of ``devices`` CPU devices each: one
    plain process (no cluster), or a cluster started by ``lmo_optax.example.launch``."""
    import io
    import os
    import subprocess

    from lmo_optax.example import launch

    program = [sys.executable, str(Path(__file__).resolve()), "--worker"]
    sizes = json.dumps({"steps": steps, "overrides": overrides})
    if processes == 1:
        env = {k: v for k, v in os.environ.items() if k not in launch.VARIABLES}
        env[launch.CPU_DEVICES_VARIABLE] = str(devices)
        done = subprocess.run(
            [*program, sizes], env=env, capture_output=True, text=True, timeout=TIMEOUT_S
        )
        status, output = done.returncode, done.stdout + done.stderr
        output = "\n".join("[0] " + line for line in output.splitlines())
    else:
        out = io.StringIO()
        status = launch.launch(
            processes, [sizes], devices_per_process=devices, program=program, stream=out
        )
        output = out.getvalue()
    if status != 0:
        raise SystemExit(f"multihost_step: {processes} × {devices} failed:\n{output[-3000:]}")
    line = next(x for x in output.splitlines() if x.startswith("[0] RESULT "))
    return json.loads(line.removeprefix("[0] RESULT "))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        worker(**json.loads(argv[1]))
        return 0
    parser = _common.parser(__doc__, quick_help="a 1-layer width-32 GPT, 5 timed steps")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    layouts = {}
    for label, (processes, devices) in LAYOUTS.items():
        layouts[label] = measure(processes, devices, **sizes)
        layouts[label].update(processes=processes, devices_per_process=devices)
        for name, row in layouts[label]["rows"].items():
            print(
                f"{label}: {name} step {row['step_s'] * 1e3:.1f} ms, collectives "
                f"{row['collective_bytes'] / 2**10:.0f} KiB/device",
                flush=True,
            )
    one, two = layouts["1 × 8"]["rows"], layouts["2 × 4"]["rows"]
    report = {
        "mesh": MESH,
        "steps": sizes["steps"],
        "overrides": sizes["overrides"],
        "layouts": layouts,
        "step_ratio": {n: two[n]["step_s"] / one[n]["step_s"] for n in OPTIMIZERS},
        "same_collectives": all(one[n]["collectives"] == two[n]["collectives"] for n in OPTIMIZERS),
        "same_losses": all(
            abs(one[n]["final_loss"] - two[n]["final_loss"]) <= 1e-5 * abs(one[n]["final_loss"])
            for n in OPTIMIZERS
        ),
    }
    _common.write_report(args, "multihost_step", report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
