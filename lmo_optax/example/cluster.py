"""Joining a JAX cluster: the settings of ``lmo-optax train`` and the environment.

A multi-process run (several hosts of a TPU pod slice or a GPU cluster, or ``lmo-optax launch``
on one machine) calls ``jax.distributed.initialize`` in every process before JAX starts its
backends. The settings come from, in order:

1. ``--coordinator HOST:PORT --num-processes N --process-id I``;
2. the variables ``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID`` (what
   ``lmo-optax launch`` sets);
3. ``--cluster auto``: JAX's own detection (Cloud TPU pods, SLURM, Open MPI, …).

With none of these the run is one process. On CPUs, processes exchange data through gloo, and
``LMO_OPTAX_CPU_DEVICES`` (set by ``launch --devices-per-process``) simulates that many devices.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import sys
import time
from collections.abc import Iterator
from typing import Any

from lmo_optax.example.errors import ConfigError, PeerLost

CPU_DEVICES_VARIABLE = "LMO_OPTAX_CPU_DEVICES"
VARIABLES = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")
# Seconds a process waits for the others to join, and after which a silent peer counts as lost.
INITIALIZATION_TIMEOUT_S = 120
HEARTBEAT_TIMEOUT_S = 30
# How a collective reports that a peer went away (gloo on CPUs, NCCL on GPUs, the coordination
# service everywhere), as opposed to a failure of this process's own.
PEER_FAILURE = re.compile(r"gloo|nccl|peer|connection|socket|heartbeat|coordination", re.I)


@dataclasses.dataclass(frozen=True)
class Cluster:
    """Where the coordinator is, how many processes there are and which one this is."""

    coordinator: str
    num_processes: int
    process_id: int


def settings(
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    environ: dict[str, str] | None = None,
) -> Cluster | None:
    """The cluster from the flags, else from the environment; None for a one-process run.

    Raises:
      ConfigError: some settings given and others missing, or values out of range.

    >>> settings("127.0.0.1:1234", 2, 1)
    Cluster(coordinator='127.0.0.1:1234', num_processes=2, process_id=1)
    >>> settings(environ={}) is None
    True
    """
    environ = dict(os.environ) if environ is None else environ
    given = (coordinator, num_processes, process_id)
    source = "--coordinator, --num-processes and --process-id"
    if all(v is None for v in given):
        source = ", ".join(VARIABLES)
        if not any(environ.get(v) for v in VARIABLES):
            return None
        coordinator = environ.get(VARIABLES[0]) or None
        num_processes = _integer(environ.get(VARIABLES[1]), VARIABLES[1])
        process_id = _integer(environ.get(VARIABLES[2]), VARIABLES[2])
    values = (coordinator, num_processes, process_id)
    if any(v is None for v in values):
        raise ConfigError(f"a multi-process run needs all of {source}; got {values}")
    if ":" not in coordinator:
        raise ConfigError(f"the coordinator must be HOST:PORT, got {coordinator!r}")
    if num_processes < 1 or not 0 <= process_id < num_processes:
        raise ConfigError(
            f"process id {process_id} of {num_processes} processes: need "
            "num_processes >= 1 and 0 <= process_id < num_processes"
        )
    return Cluster(coordinator, num_processes, process_id)


def _integer(value: str | None, name: str) -> int | None:
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {value!r}") from None


def join(cluster: Cluster | None, auto: bool = False) -> None:
    """Starts JAX's distributed runtime for ``cluster`` (or by detection with ``auto``).

    Must run before anything starts JAX's backends; also applies ``LMO_OPTAX_CPU_DEVICES``.
    """
    import jax

    if devices := os.environ.get(CPU_DEVICES_VARIABLE):
        count = _integer(devices, CPU_DEVICES_VARIABLE)
        if count is None or count < 1:
            raise ConfigError(f"{CPU_DEVICES_VARIABLE} must be at least 1, got {devices!r}")
        jax.config.update("jax_num_cpu_devices", count)
    if cluster is None and not auto:
        return
    if _cpu_only():
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    timeouts = {
        "initialization_timeout": INITIALIZATION_TIMEOUT_S,
        "heartbeat_timeout_seconds": HEARTBEAT_TIMEOUT_S,
    }
    if cluster is None:
        jax.distributed.initialize(**timeouts)
    else:
        jax.distributed.initialize(
            cluster.coordinator, cluster.num_processes, cluster.process_id, **timeouts
        )


def _cpu_only() -> bool:
    """Whether JAX will run on CPUs only (read from the settings, without starting backends)."""
    import jax

    platforms = jax.config.jax_platforms or os.environ.get("JAX_PLATFORMS", "")
    if platforms:
        return platforms.split(",")[0] == "cpu"
    import importlib.util

    return not any(
        importlib.util.find_spec(p) for p in ("jax_cuda12_plugin", "jax_cuda13_plugin", "libtpu")
    )


def is_primary() -> bool:
    """Whether this process writes the run's files (process 0; the only one of a plain run)."""
    import jax

    return jax.process_index() == 0


def barrier(name: str) -> None:
    """Waits until every process of the run gets here (nothing in a one-process run)."""
    import jax

    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(f"lmo-optax: {name}")


def compiled_together(jitted: Any, *args: Any, name: str) -> Any:
    """``jitted`` compiled for ``args`` before its first call, then a barrier: in a
    multi-process run every process starts its collectives within moments of the others.

    Processes that compile at different speeds would otherwise meet in the first collectives of
    a program more than 30 s apart, longer than gloo waits to set up a group of devices. In a
    one-process run ``jitted`` is returned as it is (its first call compiles it).
    """
    import jax

    if jax.process_count() == 1:
        return jitted
    program = jitted.lower(*args).compile()
    barrier(f"{name} compiled")
    return program


def process_count() -> int:
    """How many processes the run has (1 unless it joined a cluster)."""
    import jax

    return jax.process_count()


def global_device_count() -> int | None:
    """The devices of every process of a multi-process run; None in a one-process run."""
    import jax

    return jax.device_count() if jax.process_count() > 1 else None


@contextlib.contextmanager
def peers_watched(wait_s: float = HEARTBEAT_TIMEOUT_S + 15) -> Iterator[None]:
    """Turns a collective that failed because another process stopped into ``PeerLost``.

    When a process of the run dies, the others learn it first from a collective that fails
    (its peer closed the connection), without knowing which process it was. JAX's distributed
    service finds out within ``HEARTBEAT_TIMEOUT_S`` (a process that stops sending heartbeats),
    prints the lost process's index and ends this one (status 134) — or, when process 0 (the
    coordinator) was lost, says that the leader task died. So this says what happened, waits
    up to ``wait_s`` for that verdict, and raises ``PeerLost`` if none came. A failure that
    does not look like a lost peer, or one in a one-process run, is re-raised unchanged.
    """
    import jax

    try:
        yield
    except jax.errors.JaxRuntimeError as e:
        if jax.process_count() == 1 or not PEER_FAILURE.search(str(e)):
            raise
        first = str(e).strip().splitlines()[0][:300]
        me, count = jax.process_index(), jax.process_count()
        print(
            f"lmo-optax: error: process {me} of {count} lost contact with the others "
            f"({first}); waiting up to {wait_s:.0f} s for JAX's distributed service to name "
            "the process that stopped",
            file=sys.stderr,
            flush=True,
        )
        time.sleep(wait_s)  # JAX's distributed service normally ends this process meanwhile
        raise PeerLost(
            f"process {me} of {count}: a collective failed ({first}) and no process was "
            f"reported lost within {wait_s:.0f} s"
        ) from e
