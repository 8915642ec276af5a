"""Running a test script in a fresh process with several forced CPU devices."""

import json
import os
import subprocess
import sys


def run_on_cpu_devices(script: str, devices: int = 4) -> dict:
    """Runs the Python ``script`` with ``devices`` CPU devices (XLA's forced host device
    count) and returns the JSON object it prints last."""
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu")
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300,
                          check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])
