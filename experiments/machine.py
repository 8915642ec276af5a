"""What the benchmarks record of the machine they run on: its device, and the peak resident
memory of the process (measured in a fresh child process per figure)."""

import os
import resource

import jax


def device_description():
    """The first JAX device; for CPUs with the processor model and core count."""
    device = jax.devices()[0]
    if device.platform != "cpu":
        return f"{device.platform}: {device.device_kind} x{jax.device_count()}"
    model = "unknown processor"
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f
                     if line.startswith("model name")]
        model = names[0] if names else model
    return f"cpu: {model}, {os.cpu_count()} cores"


def own_peak_rss_bytes():
    """This process's peak RSS. On Linux VmHWM, which starts afresh at exec; ru_maxrss
    would also count the parent's RSS at fork, as getrusage keeps it across exec."""
    if os.path.exists("/proc/self/status"):
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
