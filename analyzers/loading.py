"""What every model-backed analyzer shares: the unavailable error, devices, CPU threads."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["ModelUnavailable", "RemoteUnavailable", "first_sentence", "resolve_device",
           "set_cpu_threads", "usable_cpus"]


class ModelUnavailable(RuntimeError):
    """The model could not be loaded; the message is one line saying why."""


class RemoteUnavailable(ModelUnavailable):
    """The inference server did not answer as it should (down, too slow, an error status, an
    answer that is not the tensor asked for): this chunk goes without emotion. Here, not beside
    the client (bridge/pipeline/remote.py), so that the pipeline can catch it without importing
    the HTTP client where no model is remote (aiohttp's import: about 0.2 CPU-s per analyze)."""


def resolve_device(name: str) -> str:
    """``auto`` -> ``cuda`` when torch sees a GPU, else ``cpu``; other names unchanged.
    A GPU that torch cannot see is :class:`ModelUnavailable` (the analyzer degrades; start-up
    goes on)."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = int(name.partition(":")[2] or 0)
        if index >= count:
            raise ModelUnavailable(f"device {name!r} was asked for, but torch sees "
                                   f"{count or 'no'} GPU{'s' if count != 1 else ''}")
    return name


def set_cpu_threads(device: str, threads: int) -> None:
    """Set torch's CPU threads for the calling thread (the count is per thread in torch).

    ``threads`` 0 means half the usable cores (:func:`usable_cpus`): one inference thread per
    two cores wastes less CPU in thread hand-offs (0.099 vs 0.109 CPU-s per audio-second for
    wav2vec2-base here) and leaves the other cores to decoding, VAD and prosody.
    """
    if device == "cpu":
        import torch

        torch.set_num_threads(threads or max(1, usable_cpus() // 2))


def first_sentence(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    if not text:
        return type(exc).__name__
    end = text.find(". ")
    return text[: end + 1] if 0 < end < 300 else text[:300]


def usable_cpus() -> int:
    """The CPUs this process may use: its affinity, capped by a cgroup v2 CPU limit
    (``cpu.max``, what a Kubernetes CPU limit sets), rounded up."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cpus = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cpus = min(cpus, -(-int(quota) // int(period)))
    except (OSError, ValueError):
        pass
    return max(1, cpus)
