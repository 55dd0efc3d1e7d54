"""Test session setup: eight simulated CPU devices, and a compilation counter.

XLA reads the device-count flag when its backend starts, so it is set here, before any test
touches JAX. Computations that are not sharded still run on one device.
"""

import contextlib
import importlib.util
import os

# With libtpu installed (the tpu-aot extra) the tests still run on CPUs: libtpu is only the
# compiler of tests/test_tpu_compile.py, and several processes may load it at once.
if importlib.util.find_spec("libtpu") is not None:
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

_FLAG = "--xla_force_host_platform_device_count=8"
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _FLAG).strip()

import jax  # noqa: E402  (after XLA_FLAGS)
import pytest  # noqa: E402

# Emitted by JAX once per XLA compilation (jax.monitoring, a public API).
_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


class CompileCounter:
    """A ``jax.monitoring`` listener that counts XLA compilations."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, event: str, duration_secs: float, **kwargs) -> None:
        if event == _COMPILE_EVENT:
            self.count += 1


@pytest.fixture
def compiles():
    """``with compiles() as counter:`` counts the XLA compilations inside the block."""

    @contextlib.contextmanager
    def counting():
        counter = CompileCounter()
        jax.monitoring.register_event_duration_secs_listener(counter)
        try:
            yield counter
        finally:
            jax.monitoring.unregister_event_duration_listener(counter)

    return counting
