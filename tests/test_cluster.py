"""How ``lmo-optax train`` finds its cluster, and the error for each bad setting."""

from __future__ import annotations

import subprocess
import sys

import jax
import pytest

from lmo_optax.example import cluster
from lmo_optax.example.errors import ConfigError

ENV = {
    "JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234",
    "JAX_NUM_PROCESSES": "4",
    "JAX_PROCESS_ID": "3",
}


def test_flags_come_before_the_environment():
    assert cluster.settings("h:1", 2, 0, environ=ENV) == cluster.Cluster("h:1", 2, 0)
    assert cluster.settings(environ=ENV) == cluster.Cluster("10.0.0.1:1234", 4, 3)
    assert cluster.settings(environ={"JAX_PROCESS_ID": ""}) is None  # empty: not given


@pytest.mark.parametrize(
    "flags, environ, message",
    [
        (("h:1", None, 0), {}, r"needs all of --coordinator, --num-processes and --process-id"),
        ((None, None, None), {**ENV, "JAX_NUM_PROCESSES": ""}, r"needs all of JAX_COORDINATOR"),
        ((None, None, None), {**ENV, "JAX_PROCESS_ID": "one"}, r"JAX_PROCESS_ID must be an"),
        (("localhost", 2, 0), {}, r"must be HOST:PORT, got 'localhost'"),
        (("h:1", 2, 2), {}, r"process id 2 of 2 processes"),
        (("h:1", 0, 0), {}, r"process id 0 of 0 processes"),
        (("h:1", 2, -1), {}, r"process id -1 of 2 processes"),
    ],
)
def test_bad_settings_are_errors(flags, environ, message):
    with pytest.raises(ConfigError, match=message):
        cluster.settings(*flags, environ=environ)


def test_one_process_runs_need_no_cluster():
    assert cluster.process_count() == 1 and cluster.global_device_count() is None
    assert cluster.is_primary()
    cluster.barrier("nothing to wait for")  # returns at once
    jitted = jax.jit(lambda x: x + 1)
    assert cluster.compiled_together(jitted, 1.0, name="x") is jitted


def test_a_failure_in_a_one_process_run_is_not_a_lost_peer():
    error = jax.errors.JaxRuntimeError("UNKNOWN: Gloo AllGather failed: Connection closed by peer")
    with pytest.raises(jax.errors.JaxRuntimeError), cluster.peers_watched(wait_s=0):
        raise error


def test_the_cli_reports_an_incomplete_cluster_in_one_line(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "lmo_optax.example.cli", "train", "--coordinator", "h:1"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "lmo-optax: error: a multi-process run needs all of --coordinator, --num-processes and "
        "--process-id; got ('h:1', None, None)"
    )


@pytest.mark.parametrize("value", ["0", "four"])
def test_a_bad_simulated_device_count_is_an_error(monkeypatch, value):
    monkeypatch.setenv(cluster.CPU_DEVICES_VARIABLE, value)
    with pytest.raises(ConfigError, match="LMO_OPTAX_CPU_DEVICES must be"):
        cluster.join(None)
