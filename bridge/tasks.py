"""Every task has an owner: a small named set of tasks, cancelled and awaited on ``aclose``.

A task that dies of an unexpected exception is logged and reported (:func:`report_failure`) to
the running loop's exception handler as a :class:`~bridge.stats.TaskFailed`. Whoever runs the
loop decides where that goes (:func:`record_failures`): the service and the demo record it into
their metrics (``affect_task_failures_total``, ``/readyz``), a worker process sends it to its
supervisor. When it was spawned with ``on_failure`` it is also handed to its owner, which decides
what the death means (a call's supervision task ends the call with reason ``error``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter, deque
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

from bridge import stats

__all__ = ["TaskFailures", "TaskSet", "record_failures", "report_failure"]

log = logging.getLogger(__name__)

_CONTEXT_KEY = "affect_task_failed"


def report_failure(task: str, exc: BaseException, *, name: str | None = None) -> None:
    """A task of kind ``task`` (e.g. ``janus/supervise``; ``name``: the task's own name, with
    its ids, for the log) died unexpectedly: hand it to the loop's exception handler, which logs
    it (see :func:`record_failures`). Call it on the loop."""
    first = (str(exc).strip().splitlines() or [""])[0][:200]
    failed = stats.TaskFailed(task, f"{type(exc).__name__}: {first}".rstrip(": "), time.time())
    asyncio.get_running_loop().call_exception_handler(
        {"message": f"task {name or task} failed", "exception": exc, _CONTEXT_KEY: failed})


@contextlib.contextmanager
def record_failures(record: stats.Record) -> Iterator[None]:
    """While inside, the running loop logs task failures once and passes each to ``record``;
    anything else reaches the handler that was there before."""
    loop = asyncio.get_running_loop()
    before = loop.get_exception_handler()

    def handle(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        failed = context.get(_CONTEXT_KEY)
        if isinstance(failed, stats.TaskFailed):
            log.error("%s", context["message"], exc_info=context.get("exception"))
            record(failed)
        elif before is not None:
            before(loop, context)
        else:
            loop.default_exception_handler(context)

    loop.set_exception_handler(handle)
    try:
        yield
    finally:
        loop.set_exception_handler(before)


class TaskFailures:
    """Task failures by kind, and the latest few, as a process's metrics and ``/readyz`` show
    them (fed :class:`~bridge.stats.TaskFailed` stats)."""

    def __init__(self, recent: int = 20) -> None:
        self.counts: Counter[str] = Counter()
        self._recent: deque[stats.TaskFailed] = deque(maxlen=recent)

    def add(self, failed: stats.TaskFailed) -> None:
        self.counts[failed.task] += 1
        self._recent.append(failed)

    def recent(self, within_s: float) -> list[stats.TaskFailed]:
        cutoff = time.time() - within_s
        return [f for f in self._recent if f.at >= cutoff]


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
        report_failure(_kind(self.owner, task.get_name().split("/", 1)[-1]), exc,
                       name=task.get_name())
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
