"""What the whole machine, or one process tree, is doing: the benchmarks' CPU and memory
columns."""

from __future__ import annotations

import os
from typing import Any

__all__ = ["machine_busy_s", "process_tree", "tree_cpu"]


def machine_busy_s() -> float | None:
    """CPU-seconds all processes have spent so far (``/proc/stat``), or None where unavailable."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields) - idle) / os.sysconf("SC_CLK_TCK")


def process_tree(root: Any) -> list[Any]:
    """``root`` (a psutil.Process) and every process under it."""
    import psutil

    try:
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return [root]


def tree_cpu(root: Any) -> float:
    """User + system CPU-seconds of ``root``'s process tree (processes gone meanwhile: 0)."""
    return processes_cpu(process_tree(root))


def processes_cpu(processes: list[Any]) -> float:
    """User + system CPU-seconds of ``processes`` (psutil; those gone meanwhile: 0)."""
    total = 0.0
    for p in processes:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except Exception:
            pass
    return total
