"""Every task has an owner: a small named set of tasks, cancelled and awaited on ``aclose``.

A task that dies of an unexpected exception is logged, counted (:func:`failures`: the
``affect_task_failures_total`` metric and ``/readyz``) and, when it was spawned with
``on_failure``, handed to its owner, which decides what the death means (a call's supervision
task ends the call with reason ``error``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter, deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

__all__ = ["TaskFailure", "TaskSet", "failures", "recent_failures", "record_failure",
           "report_failure"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class TaskFailure:
    task: str  # the kind of task (owner/name without ids): bounded, a metric label
    error: str  # one line: exception type and message
    at: float  # time.time()


_COUNTS: Counter[str] = Counter()
_RECENT: deque[TaskFailure] = deque(maxlen=20)


def report_failure(task: str, exc: BaseException) -> None:
    """Count a task that died unexpectedly (``task``: its kind, e.g. ``janus/supervise``)."""
    first = (str(exc).strip().splitlines() or [""])[0][:200]
    _COUNTS[task] += 1
    _RECENT.append(TaskFailure(task, f"{type(exc).__name__}: {first}".rstrip(": "), time.time()))


def record_failure(task: str, error: str, *, at: float | None = None) -> None:
    """Count a failure that happened elsewhere (a worker process's task, a worker's exit)."""
    _COUNTS[task] += 1
    _RECENT.append(TaskFailure(task, error[:300], time.time() if at is None else at))


def failures() -> dict[str, int]:
    """Tasks that died unexpectedly in this process, by kind."""
    return dict(_COUNTS)


def recent_failures(within_s: float) -> list[TaskFailure]:
    cutoff = time.time() - within_s
    return [f for f in _RECENT if f.at >= cutoff]


def _kind(owner: str, name: str) -> str:
    return f"{owner.split(':')[0]}/{name.split(':')[0]}"


class TaskSet:
    def __init__(self, owner: str) -> None:
        self.owner = owner
        self._tasks: set[asyncio.Task[Any]] = set()
        self._on_failure: dict[asyncio.Task[Any], Callable[[BaseException], None]] = {}

    def spawn(self, coro: Coroutine[Any, Any, Any], *, name: str,
              on_failure: Callable[[BaseException], None] | None = None) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro, name=f"{self.owner}/{name}")
        self._tasks.add(task)
        if on_failure is not None:
            self._on_failure[task] = on_failure
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        on_failure = self._on_failure.pop(task, None)
        if task.cancelled() or task.exception() is None:
            return
        exc = task.exception()
        assert exc is not None
        log.error("task %s failed", task.get_name(), exc_info=exc)
        report_failure(_kind(self.owner, task.get_name().split("/", 1)[-1]), exc)
        if on_failure is not None:
            on_failure(exc)

    def __len__(self) -> int:
        return len(self._tasks)

    async def aclose(self) -> None:
        tasks = [t for t in self._tasks if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
