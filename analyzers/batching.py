"""One inference thread shared by every speaker of every call.

Windows from all speakers go into one bounded queue; a single worker thread takes up to
``max_batch`` of them (waiting at most ``max_wait_ms`` for a batch to fill) and runs the model.
Callers get a :class:`concurrent.futures.Future` (``asyncio.wrap_future`` makes it awaitable).
Whoever wants to know how batches go passes an ``observer`` at construction; nothing is global.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import numpy as np
import numpy.typing as npt

from analyzers.types import SAMPLE_RATE, SpeechWindow

__all__ = ["BatchObserver", "InferenceScheduler", "QueueFull", "SchedulerStats",
           "SpeechChunkAnalyzer", "infer"]

In = TypeVar("In")
Out = TypeVar("Out")

# Called as observer(analyzer name, batch size, seconds) after every batch, and with size 0 and
# seconds 0 for every item turned away because the queue was full. It runs on the inference
# thread: thread-safe callables only; one that raises is logged and never breaks inference.
BatchObserver = Callable[[str, int, float], None]


class QueueFull(RuntimeError):
    """The inference queue is full and the caller asked not to wait."""


@dataclass
class SchedulerStats:
    submitted: int = 0
    dropped: int = 0
    batches: int = 0
    items: int = 0
    busy_s: float = 0.0
    batch_sizes: list[int] = field(default_factory=list)  # the last 1000


_STOP = object()


@dataclass(frozen=True)
class _Job:
    """A callable run on the inference thread between batches (:meth:`run_soon`)."""

    fn: Callable[[], None]


class InferenceScheduler(Generic[In, Out]):
    def __init__(
        self,
        predict: Callable[[list[In]], Sequence[Out]],
        *,
        on_start: Callable[[], None] | None = None,
        max_batch: int = 1,
        max_wait_ms: float = 20.0,
        queue_size: int = 64,
        name: str = "inference",
        observer: BatchObserver | None = None,
    ) -> None:
        if max_batch < 1 or queue_size < 1:
            raise ValueError("max_batch and queue_size must be >= 1")
        self._predict = predict
        self._on_start = on_start
        self.max_batch = max_batch
        self.max_wait_s = max_wait_ms / 1000
        self._queue: queue.Queue[object] = queue.Queue(maxsize=queue_size)
        self.stats = SchedulerStats()
        self.name = name
        self._observer = observer
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._closed = False
        self._thread.start()

    def submit(self, item: In, *, block: bool = True, timeout: float | None = None) -> Future[Out]:
        """Queue one input. With ``block=False`` a full queue raises :class:`QueueFull` (counted)."""
        if self._closed:
            raise RuntimeError("inference scheduler is closed")
        fut: Future[Out] = Future()
        try:
            self._queue.put((item, fut), block=block, timeout=timeout)
        except queue.Full:
            self.stats.dropped += 1
            self._notify(0, 0.0)
            raise QueueFull("inference queue full") from None
        self.stats.submitted += 1
        return fut

    def _notify(self, size: int, seconds: float) -> None:
        if self._observer is None:
            return
        try:
            self._observer(self.name.removesuffix("-inference"), size, seconds)
        except Exception:  # a broken metrics hook never breaks inference
            logging.getLogger(__name__).exception("batch observer failed")

    def run_soon(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the inference thread after what is queued now (a measurement that must
        use the thread's own settings). Its exceptions are logged; inference goes on."""
        if self._closed:
            raise RuntimeError("inference scheduler is closed")
        self._queue.put(_Job(fn))

    @property
    def running(self) -> bool:
        """The inference thread is alive (still after :meth:`close` while it finishes)."""
        return self._thread.is_alive()

    @property
    def pending(self) -> int:
        return self._queue.qsize()

    def close(self, timeout: float | None = 10.0) -> None:
        """Finish what is queued, then stop the worker thread."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(_STOP)
        self._thread.join(timeout)

    def _run(self) -> None:
        if self._on_start is not None:
            try:
                self._on_start()
            except Exception:  # a failed tuning hook must not kill inference
                logging.getLogger(__name__).exception("inference thread set-up failed")
        while True:
            first = self._queue.get()
            if first is _STOP:
                return
            if isinstance(first, _Job):
                self._run_job(first)
                continue
            batch = [first]
            deadline = time.monotonic() + self.max_wait_s
            stop = False
            job: _Job | None = None  # one that arrived while the batch filled: run after it
            while len(batch) < self.max_batch:
                remaining = deadline - time.monotonic()
                try:
                    nxt = self._queue.get(timeout=max(remaining, 0)) if remaining > 0 else \
                        self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is _STOP:
                    stop = True
                    break
                if isinstance(nxt, _Job):
                    job = nxt
                    break
                batch.append(nxt)
            self._run_batch(batch)  # type: ignore[arg-type]
            if job is not None:
                self._run_job(job)
            if stop:
                return

    def _run_job(self, job: _Job) -> None:
        try:
            job.fn()
        except Exception:  # a failed measurement must not kill inference
            logging.getLogger(__name__).exception("job on the inference thread failed")

    def _run_batch(self, batch: list[tuple[In, Future[Out]]]) -> None:
        live = [(item, fut) for item, fut in batch if fut.set_running_or_notify_cancel()]
        if not live:
            return
        started = time.perf_counter()
        error: BaseException | None = None
        results: Sequence[Out] = ()
        try:
            results = self._predict([item for item, _ in live])
            if len(results) != len(live):
                raise RuntimeError(f"model returned {len(results)} results for {len(live)} inputs")
        except BaseException as exc:  # one bad batch fails its own futures, never the thread
            error = exc
        # Stats first, so that whoever wakes on a result sees them up to date.
        elapsed = time.perf_counter() - started
        self._notify(len(live), elapsed)
        self.stats.busy_s += elapsed
        self.stats.batches += 1
        self.stats.items += len(live)
        self.stats.batch_sizes.append(len(live))
        del self.stats.batch_sizes[:-1000]
        for i, (_, fut) in enumerate(live):
            if error is not None:
                fut.set_exception(error)
            else:
                fut.set_result(results[i])


async def infer(scheduler: InferenceScheduler[In, Out], item: In, *, wait: bool) -> Out | None:
    """Run ``item`` through ``scheduler`` from async code.

    ``wait`` (offline analysis): wait for room in the queue, off the event loop, so nothing is
    lost. Otherwise (live): a full queue returns None at once; the drop is counted.
    """
    if wait:
        loop = asyncio.get_running_loop()
        fut = await loop.run_in_executor(None, scheduler.submit, item)
    else:
        try:
            fut = scheduler.submit(item, block=False)
        except QueueFull:
            return None
    return await asyncio.wrap_future(fut)


class SpeechChunkAnalyzer(Generic[Out]):
    """Base of the analyzers whose model hears each speaker's new speech chunks through a shared
    scheduler (emotion, semantic). Subclasses set ``_scheduler`` in ``load()``."""

    min_audio_s: float = 1.0
    _scheduler: InferenceScheduler[npt.NDArray[np.float32], Out] | None = None
    on_batch: BatchObserver | None = None  # given to from_options; handed to the scheduler

    @property
    def scheduler(self) -> InferenceScheduler[npt.NDArray[np.float32], Out] | None:
        return self._scheduler

    async def analyze(self, window: SpeechWindow, *, wait: bool = False) -> Out | None:
        """The result for the speech handed over with this window; None when there is too
        little of it, or (``wait`` false, the live case) when the shared queue is full."""
        if self._scheduler is None or len(window.new_speech) < self.min_audio_s * SAMPLE_RATE:
            return None
        return await infer(self._scheduler, window.new_speech, wait=wait)

    def close(self) -> None:
        if self._scheduler is not None:
            self._scheduler.close()
