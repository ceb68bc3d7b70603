"""What the whole machine is doing, for the benchmarks' "other processes' CPU" columns."""

from __future__ import annotations

import os

__all__ = ["machine_busy_s"]


def machine_busy_s() -> float | None:
    """CPU-seconds all processes have spent so far (``/proc/stat``), or None where unavailable."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields) - idle) / os.sysconf("SC_CLK_TCK")
