"""``lmo-optax launch -n N [--devices-per-process K] -- COMMAND ARGS...``: N local JAX processes.

Starts N processes of ``lmo-optax COMMAND ARGS...`` on this machine that join one JAX cluster:
each gets ``JAX_COORDINATOR_ADDRESS`` (127.0.0.1 and a port the OS just handed out),
``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID`` and, on a CPU, ``LMO_OPTAX_CPU_DEVICES`` (K simulated
devices). Each line a process prints comes out prefixed with its index, ``[0] ...``. When one
process exits non-zero the others are stopped (SIGTERM, then SIGKILL after ``GRACE_S``) and the
launcher exits with that process's status; Ctrl-C, SIGTERM or SIGHUP to the launcher stops
them all (status 128 + the signal's number: 130 for Ctrl-C).

This is how a TPU pod slice or a multi-node GPU job runs the same program on every host, on one
machine: the processes talk through JAX's distributed runtime and, on CPUs, gloo collectives.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from typing import TextIO

from lmo_optax.example.cluster import CPU_DEVICES_VARIABLE, VARIABLES
from lmo_optax.example.errors import ConfigError

GRACE_S = 10.0  # how long a stopped process may take to exit before it is killed


def free_port() -> int:
    """A TCP port on 127.0.0.1 that the OS just handed out (free when this returns)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def process_environment(index: int, count: int, port: int, devices: int | None) -> dict[str, str]:
    """The environment of process ``index`` of ``count``: this one's, plus the cluster's."""
    env = dict(os.environ)
    env.update(zip(VARIABLES, (f"127.0.0.1:{port}", str(count), str(index)), strict=True))
    env["PYTHONUNBUFFERED"] = "1"  # lines arrive as they are printed
    if devices is not None:
        env[CPU_DEVICES_VARIABLE] = str(devices)
    return env


def describe(returncode: int) -> str:
    """How a process ended, from its ``Popen.returncode`` (negative: killed by that signal).

    >>> describe(2), describe(-9)
    ('exited with status 2', 'was killed by SIGKILL')
    """
    if returncode < 0:
        try:
            return f"was killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"was killed by signal {-returncode}"
    return f"exited with status {returncode}"


def exit_status(returncode: int) -> int:
    """The launcher's status for a process that ended so: a shell's 128 + N for signal N.

    >>> exit_status(2), exit_status(-9)
    (2, 137)
    """
    return 128 - returncode if returncode < 0 else returncode


def _forward(index: int, source: TextIO, sink: TextIO, lock: threading.Lock) -> None:
    """Copies a process's lines to ``sink``, prefixed; keeps reading (so that the process never
    blocks on a full pipe) even once ``sink`` fails, e.g. a closed pipe."""
    for line in source:
        try:
            with lock:
                sink.write(f"[{index}] {line}" if line.endswith("\n") else f"[{index}] {line}\n")
                sink.flush()
        except (OSError, ValueError):
            pass


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
"""Signals that stop the launcher and its processes: Ctrl-C, a scheduler's SIGTERM (or
``timeout``), a closed terminal's SIGHUP."""


def _stop(procs: Sequence[subprocess.Popen]) -> None:
    """SIGTERM to every process still running, SIGKILL to those alive ``GRACE_S`` later (a
    second Ctrl-C meanwhile does not interrupt this)."""
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if main else None
    try:
        _terminate(procs)
    finally:
        if main:
            signal.signal(signal.SIGINT, previous)


def _terminate(procs: Sequence[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + GRACE_S
    for p in procs:
        try:
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def launch(
    count: int,
    command: Sequence[str],
    *,
    devices_per_process: int | None = None,
    program: Sequence[str] | None = None,
    stream: TextIO | None = None,
    poll_s: float = 0.2,
) -> int:
    """Runs ``lmo-optax command...`` in ``count`` local processes of one cluster.

    ``program`` is what each process runs before ``command`` (``python -m
    lmo_optax.example.cli``, that is ``lmo-optax``, unless given).

    Returns 0 when every process exits 0; otherwise the status of the first that did not (128 +
    N for one killed by signal N; the others are stopped), or 128 + N after signal N to the
    launcher (Ctrl-C: 130; SIGTERM: 143).

    Raises:
      ConfigError: ``count`` < 1, ``devices_per_process`` < 1, or no command.
    """
    if count < 1:
        raise ConfigError(f"launch: -n must be at least 1, got {count}")
    if devices_per_process is not None and devices_per_process < 1:
        raise ConfigError(
            f"launch: --devices-per-process must be at least 1, got {devices_per_process}"
        )
    if not command:
        raise ConfigError("launch: no command after --, e.g. lmo-optax launch -n 2 -- train")
    stream = sys.stdout if stream is None else stream
    port, lock = free_port(), threading.Lock()
    program = [sys.executable, "-m", "lmo_optax.example.cli"] if program is None else program
    argv = [*program, *command]
    procs: list[subprocess.Popen] = []
    threads = []
    main = threading.current_thread() is threading.main_thread()
    # A handler that only notes the signal; the loop below acts on it. Raising from the handler
    # (KeyboardInterrupt) could land between a lock's acquire and its try inside Popen.poll,
    # leaving the lock held and the p.wait() that follows stuck.
    received: list[int] = []

    def note(signum: int, frame: object) -> None:
        received.append(signum)

    previous = {sig: signal.signal(sig, note) for sig in STOP_SIGNALS} if main else {}
    status = 0
    try:
        for i in range(count):
            if received:
                break
            p = subprocess.Popen(
                argv,
                env=process_environment(i, count, port, devices_per_process),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                encoding="utf-8",
                errors="replace",  # a forwarding thread must never die on odd bytes
            )
            procs.append(p)
            t = threading.Thread(target=_forward, args=(i, p.stdout, stream, lock), daemon=True)
            t.start()
            threads.append(t)
        while True:
            if received:
                signum = received[0]
                how = (
                    "interrupted"
                    if signum == signal.SIGINT
                    else f"got {signal.Signals(signum).name}"
                )
                with lock:
                    stream.write(f"lmo-optax launch: {how}; stopping every process\n")
                    stream.flush()
                _stop(procs)
                status = 128 + signum
                break
            ended = [(i, p.poll()) for i, p in enumerate(procs)]  # polls every process
            failed = [(i, code) for i, code in ended if code]
            if failed:
                index, returncode = failed[0]
                if any(code is None for _, code in ended):
                    with lock:
                        stream.write(
                            f"lmo-optax launch: process {index} {describe(returncode)}; "
                            "stopping the others\n"
                        )
                        stream.flush()
                    _stop(procs)
                status = exit_status(returncode)
                break
            if all(code == 0 for _, code in ended):
                break
            time.sleep(poll_s)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    for t in threads:
        t.join(timeout=GRACE_S)
    return status
