"""``lmo-optax launch``: N local processes, their output, and how the group ends.

The processes here are small Python programs (``launch(..., program=...)``) that read the
cluster variables the launcher sets, so that each behaviour (a failure, a kill, Ctrl-C) is
exact and fast; training in launched processes is tested in test_multiprocess_training.py.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from lmo_optax.example.errors import ConfigError
from lmo_optax.example.launch import launch

TIMEOUT_S = 60


def program(source: str) -> list[str]:
    """A process that runs ``source``, with ``rank`` its JAX_PROCESS_ID."""
    prelude = "import os, signal, sys, time\nrank = int(os.environ['JAX_PROCESS_ID'])\n"
    return [sys.executable, "-c", prelude + textwrap.dedent(source)]


def test_every_process_gets_the_cluster_and_its_lines_are_prefixed():
    out = io.StringIO()
    show = "print(os.environ['JAX_COORDINATOR_ADDRESS'], os.environ['JAX_NUM_PROCESSES'], rank,"
    show += " os.environ['LMO_OPTAX_CPU_DEVICES'])\nprint('partial line', end='')"
    status = launch(3, ["x"], devices_per_process=2, program=program(show), stream=out)
    assert status == 0
    lines = out.getvalue().splitlines()
    partial = sorted(line for line in lines if line.endswith("partial line"))
    shown = sorted(line for line in lines if not line.endswith("partial line"))
    address = shown[0].split()[1]
    assert address.startswith("127.0.0.1:") and int(address.split(":")[1]) > 0
    assert shown == [f"[{i}] {address} 3 {i} 2" for i in range(3)]
    assert partial == [f"[{i}] partial line" for i in range(3)]


def test_a_failing_process_stops_the_others_and_gives_its_status():
    out = io.StringIO()
    fail = "if rank == 1:\n    sys.exit(3)\ntime.sleep(120)\n"
    t0 = time.monotonic()
    assert launch(2, ["x"], program=program(fail), stream=out) == 3
    assert time.monotonic() - t0 < 15  # the sleeping process was stopped, not waited for
    assert "process 1 exited with status 3; stopping the others" in out.getvalue()


def test_a_killed_process_is_named_with_its_signal():
    out = io.StringIO()
    die = "if rank == 0:\n    os.kill(os.getpid(), signal.SIGKILL)\ntime.sleep(120)\n"
    assert launch(2, ["x"], program=program(die), stream=out) == 128 + signal.SIGKILL
    assert "process 0 was killed by SIGKILL; stopping the others" in out.getvalue()


def test_a_process_that_ignores_sigterm_is_killed_after_the_grace_period(monkeypatch):
    monkeypatch.setattr("lmo_optax.example.launch.GRACE_S", 1.0)
    stubborn = "signal.signal(signal.SIGTERM, signal.SIG_IGN)\nprint('ready', flush=True)\n"
    stubborn += "if rank == 1:\n    time.sleep(1)\n    sys.exit(4)\ntime.sleep(120)\n"
    t0 = time.monotonic()
    assert launch(2, ["x"], program=program(stubborn), stream=io.StringIO()) == 4
    assert time.monotonic() - t0 < 15


@pytest.mark.parametrize(
    "signum, said",
    [
        (signal.SIGINT, "interrupted"),
        (signal.SIGTERM, "got SIGTERM"),
        (signal.SIGHUP, "got SIGHUP"),
    ],
)
def test_ctrl_c_or_a_scheduler_s_sigterm_stops_every_process(signum, said):
    """A signal to the launcher alone (Ctrl-C, or a scheduler's SIGTERM): 128 + N, no
    survivors."""
    children = "print(os.getpid(), flush=True)\ntime.sleep(120)\n"
    driver = textwrap.dedent(
        f"""
        import sys
        from lmo_optax.example.launch import launch
        sys.exit(launch(2, ["x"], program={program(children)!r}))
        """
    )
    # Started with the signal ignored, as a shell starts a background job (SIGINT) or nohup
    # (SIGHUP): the launcher installs its own handlers, so the signal still stops it.
    launcher = subprocess.Popen(
        [sys.executable, "-c", driver],
        stdout=subprocess.PIPE,
        text=True,
        env=dict(os.environ),
        preexec_fn=lambda: signal.signal(signum, signal.SIG_IGN),
    )
    pids = [int(launcher.stdout.readline().split()[1]) for _ in range(2)]
    launcher.send_signal(signum)
    try:
        rest, _ = launcher.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        launcher.kill()
        pytest.fail(f"the launcher did not end within {TIMEOUT_S} s of Ctrl-C")
    assert launcher.returncode == 128 + signum
    assert f"{said}; stopping every process" in rest
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)  # gone (reaped by the launcher)


@pytest.mark.parametrize(
    "count, devices, command, message",
    [
        (0, None, ["train"], "-n must be at least 1, got 0"),
        (2, 0, ["train"], "--devices-per-process must be at least 1, got 0"),
        (2, None, [], "no command after --"),
    ],
)
def test_bad_launch_settings_are_errors(count, devices, command, message):
    with pytest.raises(ConfigError, match=message):
        launch(count, command, devices_per_process=devices)


def test_the_cli_launches_and_reports_bad_settings():
    run = [sys.executable, "-m", "lmo_optax.example.cli", "launch"]
    done = subprocess.run(
        [*run, "-n", "0", "--", "configs"], capture_output=True, text=True, timeout=TIMEOUT_S
    )
    assert done.returncode == 2
    assert done.stderr.strip() == "lmo-optax: error: launch: -n must be at least 1, got 0"
    done = subprocess.run(
        [*run, "-n", "2", "--", "configs"], capture_output=True, text=True, timeout=TIMEOUT_S
    )
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert any(line.startswith("[0] tiny") for line in lines)
    assert any(line.startswith("[1] tiny") for line in lines)
