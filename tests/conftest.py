"""Test session setup: eight simulated CPU devices for the sharding tests.

XLA reads the flag when its backend starts, so it is set here, before any test touches JAX.
Computations that are not sharded still run on one device.
"""

import os

_FLAG = "--xla_force_host_platform_device_count=8"
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _FLAG).strip()
