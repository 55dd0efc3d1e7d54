"""The training example in several JAX processes: the same run as in one.

``lmo-optax launch -n 2 --devices-per-process 4 -- train ... --mesh data=4,model=2`` against
one process with the same mesh of 8 simulated devices; checkpoints resumed across process
counts; and a process killed mid-run: the other ends within a minute, naming it, and the run
resumes to the same losses. Every command runs in its own processes, bounded by a timeout.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import subprocess
import sys
import time

import numpy as np
import pytest

from lmo_optax.example import launch

TIMEOUT_S = 300
TRAIN = ["train", "--config", "tiny", "--optimizer", "scion", "--mesh", "data=4,model=2"]
TRAIN += ["model.width=32", "model.depth=1", "batch_size=8", "eval_every=3", "eval_batches=1"]
TRAIN += ["sample_bytes=0", "checkpoint_every=3", "--steps", "6"]


def lmo_optax(*args: str, cwd: pathlib.Path) -> str:
    """Runs ``lmo-optax args...`` in a fresh interpreter; its output, or the test fails."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # the CLI sizes the mesh
    try:
        done = subprocess.run(
            [sys.executable, "-m", "lmo_optax.example.cli", *args],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"lmo-optax {' '.join(args)} did not end within {TIMEOUT_S} s")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout + done.stderr


def losses(run: pathlib.Path) -> list[tuple[int, float, float]]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["train_loss"], r.get("val_loss", np.nan)) for r in rows]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("multiprocess_training")
    lmo_optax(*TRAIN, "--out", "one", cwd=folder)
    two = lmo_optax(
        "launch", "-n", "2", "--devices-per-process", "4", "--", *TRAIN, "--out", "two", cwd=folder
    )
    return folder, two


def test_two_processes_train_like_one(runs):
    folder, output = runs
    one, two = losses(folder / "one"), losses(folder / "two")
    assert [s for s, *_ in two] == [1, 2, 3, 4, 5, 6]  # written once, by process 0
    np.testing.assert_allclose(np.array(two)[:, 1:], np.array(one)[:, 1:], rtol=1e-5)
    assert "[0] " in output and "[1] " in output  # each line names its process
    assert sorted(p.name for p in (folder / "two" / "checkpoints").iterdir()) == [
        "step_3",
        "step_6",
    ]


def test_a_two_process_checkpoint_resumes_in_one_process(runs):
    folder, _ = runs
    resumed = folder / "resumed"
    subprocess.run(["cp", "-r", str(folder / "two"), str(resumed)], check=True)
    subprocess.run(["rm", "-r", str(resumed / "checkpoints" / "step_6")], check=True)
    output = lmo_optax(*TRAIN, "--out", "resumed", "--resume", cwd=folder)
    assert "resumed from" in output and "step_3" in output
    np.testing.assert_allclose(
        np.array(losses(resumed))[:, 1:], np.array(losses(folder / "one"))[:, 1:], rtol=1e-5
    )


def test_a_one_process_checkpoint_resumes_in_two_processes(runs):
    folder, _ = runs
    resumed = folder / "resumed_in_two"
    subprocess.run(["cp", "-r", str(folder / "one"), str(resumed)], check=True)
    subprocess.run(["rm", "-r", str(resumed / "checkpoints" / "step_6")], check=True)
    output = lmo_optax(
        "launch", "-n", "2", "--devices-per-process", "4", "--",
        *TRAIN, "--out", "resumed_in_two", "--resume", cwd=folder,
    )  # fmt: skip
    assert "[0] resumed from" in output and "[1] resumed from" in output
    np.testing.assert_allclose(
        np.array(losses(resumed))[:, 1:], np.array(losses(folder / "one"))[:, 1:], rtol=1e-5
    )


# A process killed mid-run, as a host of a pod slice might be: no launcher stops the others.
KILLED = [*TRAIN[: TRAIN.index("checkpoint_every=3")], "checkpoint_every=1", "--steps", "40"]
UNHEALTHY = re.compile(r"unhealthy[^\n]*:\s*\n?\s*1\b")  # JAX's distributed service names it


def test_a_killed_process_ends_the_others_and_the_run_resumes(tmp_path):
    port = launch.free_port()
    procs, logs = [], [tmp_path / f"process_{i}.log" for i in range(2)]
    for i in range(2):
        env = launch.process_environment(i, 2, port, devices=4)
        env.pop("XLA_FLAGS", None)
        with logs[i].open("w") as log:
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "lmo_optax.example.cli", *KILLED, "--out", "run"],
                    cwd=tmp_path,
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
    try:
        deadline = time.monotonic() + TIMEOUT_S
        while not (tmp_path / "run" / "checkpoints" / "step_3").exists():
            assert time.monotonic() < deadline, logs[0].read_text()[-3000:]
            assert procs[0].poll() is None, logs[0].read_text()[-3000:]
            time.sleep(0.1)
        procs[1].kill()  # SIGKILL
        killed_at = time.monotonic()
        procs[0].wait(timeout=TIMEOUT_S)
        ended_after = time.monotonic() - killed_at
    finally:
        for p in procs:
            p.kill()
            p.wait()
    survivor = logs[0].read_text()
    print(f"the survivor ended {ended_after:.1f} s after the kill, status {procs[0].returncode}")
    assert procs[0].returncode != 0 and ended_after <= 60, survivor[-3000:]
    assert UNHEALTHY.search(survivor), survivor[-3000:]
    assert not (tmp_path / "run" / "result.json").exists()  # it was killed before the end
    print(sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()))

    # Resumed on the default mesh of a multi-process run, data=8: the checkpoint is laid out anew.
    unmeshed = [a for a in KILLED if a not in ("--mesh", "data=4,model=2")]
    output = lmo_optax(
        "launch", "-n", "2", "--devices-per-process", "4", "--",
        *unmeshed, "--out", "run", "--resume", cwd=tmp_path,
    )  # fmt: skip
    assert "[0] 8 devices in 2 processes: --mesh data=8" in output
    assert "[0] resumed from" in output
    lmo_optax(*KILLED, "--out", "reference", cwd=tmp_path)
    # The resumed steps ran on another mesh, which sums in another order: float32 rounding
    # differences grow over the steps (2e-5 after 30 steps with jax 0.12), hence 1e-4.
    np.testing.assert_allclose(
        np.array(losses(tmp_path / "run"))[:, 1:],
        np.array(losses(tmp_path / "reference"))[:, 1:],
        rtol=1e-4,
    )


def test_a_mesh_over_some_of_the_processes_devices_is_an_error(tmp_path):
    command = [sys.executable, "-m", "lmo_optax.example.cli", "launch", "-n", "2"]
    command += ["--devices-per-process", "4", "--", *TRAIN[:3], "--mesh", "data=4"]
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    done = subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=TIMEOUT_S
    )
    assert done.returncode == 2, done.stdout[-3000:]
    message = "--mesh data=4 uses 4 of the 8 devices of 2 processes; a multi-process run needs"
    assert f"[0] lmo-optax: error: {message}" in done.stdout


def test_a_checkpoint_of_other_shapes_stops_every_process_with_the_error(runs):
    """Every process checks the checkpoint before the first barrier: all stop, none waits."""
    folder, _ = runs
    other = [a if a != "model.width=32" else "model.width=64" for a in TRAIN]
    command = [sys.executable, "-m", "lmo_optax.example.cli", "launch", "-n", "2"]
    command += ["--devices-per-process", "4", "--", *other, "--out", "two", "--resume"]
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    t0 = time.monotonic()
    done = subprocess.run(
        command, cwd=folder, env=env, capture_output=True, text=True, timeout=TIMEOUT_S
    )
    assert done.returncode == 2, done.stdout[-3000:]
    for i in range(2):
        assert f"[{i}] lmo-optax: error: --resume: two/checkpoints/step_6 was saved with" in (
            done.stdout
        )
    assert time.monotonic() - t0 < 120  # nobody waited on a barrier for the others
