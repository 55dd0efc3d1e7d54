"""The optimizer in several JAX processes on this machine equals the optimizer in one.

Each test starts real processes (``jax.distributed.initialize`` on 127.0.0.1, gloo collectives
between them) and bounds them by a timeout, so that a hang fails instead of blocking the suite.
"""

from __future__ import annotations

import pathlib
import socket
import subprocess
import sys

import numpy as np
import pytest

HERE = pathlib.Path(__file__).parent
TIMEOUT_S = 240


def free_port() -> int:
    """A TCP port on 127.0.0.1 that the OS just handed out (free when it returns)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_processes(script: str, n: int, devices: int, out: pathlib.Path) -> None:
    """Runs ``n`` processes of ``script`` with ``devices`` CPU devices each; fails the test
    with their output if one fails or they do not end within ``TIMEOUT_S``."""
    port = free_port()
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                str(HERE / script),
                "--num-processes",
                str(n),
                "--process-id",
                str(i),
                "--port",
                str(port),
                "--devices",
                str(devices),
                "--out",
                str(out),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(n)
    ]
    outputs = []
    try:
        for p in procs:
            outputs.append(p.communicate(timeout=TIMEOUT_S)[0])
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        pytest.fail(f"{script}: {n} processes did not end within {TIMEOUT_S} s")
    for i, (p, text) in enumerate(zip(procs, outputs, strict=True)):
        assert p.returncode == 0, f"process {i} of {n} exited {p.returncode}:\n{text[-3000:]}"


@pytest.fixture(scope="module")
def updates(tmp_path_factory):
    """(one process × 8 devices, two processes × 4 devices): every update, by name."""
    folder = tmp_path_factory.mktemp("multiprocess")
    run_processes("multiprocess_update.py", 1, 8, folder / "one.npz")
    run_processes("multiprocess_update.py", 2, 4, folder / "two.npz")
    return dict(np.load(folder / "one.npz")), dict(np.load(folder / "two.npz"))


def test_the_runs_span_the_processes_asked_for(updates):
    one, two = updates
    assert (int(one["meta/processes"]), int(one["meta/devices"])) == (1, 8)
    assert (int(two["meta/processes"]), int(two["meta/devices"])) == (2, 8)


@pytest.mark.parametrize("collective", ["reduce_scatter", "all_reduce"])
def test_large_collectives_across_processes_are_exact(updates, collective):
    """4 MiB per device (gloo has been reported to get large reduce-scatters wrong): float32
    sums of 8 normal values against float64."""
    for run in updates:
        assert float(run[f"collective/{collective}/error"]) < 1e-5


def test_two_processes_give_the_one_process_update(updates):
    one, two = (
        {k: v for k, v in run.items() if not k.startswith(("meta/", "collective/"))}
        for run in updates
    )
    assert one.keys() == two.keys() and len(one) == 2 * 3 * 4
    worst = 0.0
    for name in one:
        np.testing.assert_allclose(two[name], one[name], rtol=1e-5, atol=1e-7, err_msg=name)
        assert np.abs(one[name]).max() > 0, name
        worst = max(worst, float(np.max(np.abs(two[name] - one[name]))))
    print(f"largest difference between 2 x 4 and 1 x 8 devices: {worst:.2e}")
