"""The training example in several JAX processes: the same run as in one.

``lmo-optax launch -n 2 --devices-per-process 4 -- train ... --mesh data=4,model=2`` against
one process with the same mesh of 8 simulated devices; then a checkpoint written by two
processes resumed by one. Every command runs in its own processes, bounded by a timeout.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

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
