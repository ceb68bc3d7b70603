"""The channel between a worker process and its supervisor: JSON lines over a socketpair.

Messages are small JSON objects with an ``op``. The worker's side is bounded
(:class:`OutChannel`): when it is full, ``affect.sample`` events are dropped first (the newest
one, or the oldest waiting, counted as ``affect_dropped_total{stage="worker_channel"}``); every
other message (spikes, speaker and call events, replies, statistics) waits for room, and its
sender gets control back only once it has been written to the socket, so it survives the
worker being killed right after (the kernel keeps what was written for the reader).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import deque
from typing import Any

__all__ = ["MAX_LINE", "OutChannel", "read_message"]

log = logging.getLogger(__name__)

MAX_LINE = 4 * 1024 * 1024  # one message; an event is a few kB


class OutChannel:
    """Bounded, ordered, written by one task. ``send(msg, droppable=...)``."""

    def __init__(self, writer: asyncio.StreamWriter, *, maxsize: int = 2048) -> None:
        self._writer = writer
        # drain() returns only once everything is in the kernel's socket buffer, not in ours.
        writer.transport.set_write_buffer_limits(0)
        self._maxsize = maxsize
        # (line, droppable, future set once written or None)
        self._items: deque[tuple[bytes, bool, asyncio.Future[None] | None]] = deque()
        self._wake = asyncio.Event()
        self._space = asyncio.Event()
        self._space.set()
        self._idle = asyncio.Event()  # nothing queued
        self._idle.set()
        self.dropped = 0
        self.closed = False
        self._task = asyncio.create_task(self._run(), name="channel:writer")

    async def send(self, msg: dict[str, Any], *, droppable: bool = False) -> None:
        if self.closed:
            return
        line = json.dumps(msg, separators=(",", ":")).encode() + b"\n"
        while len(self._items) >= self._maxsize:
            if droppable:
                self.dropped += 1
                return
            oldest = next((i for i, item in enumerate(self._items) if item[1]), None)
            if oldest is not None:
                del self._items[oldest]
                self.dropped += 1
                break
            self._space.clear()
            await self._space.wait()
            if self.closed:
                return
        fut: asyncio.Future[None] | None = None
        if not droppable:
            fut = asyncio.get_running_loop().create_future()
        self._items.append((line, droppable, fut))
        self._idle.clear()
        self._wake.set()
        if fut is not None:
            await fut

    async def _run(self) -> None:
        fut: asyncio.Future[None] | None = None
        try:
            while True:
                while not self._items:
                    self._idle.set()
                    self._wake.clear()
                    await self._wake.wait()
                line, _, fut = self._items.popleft()
                self._space.set()
                self._writer.write(line)
                await self._writer.drain()
                if fut is not None and not fut.done():
                    fut.set_result(None)
        except (ConnectionError, OSError):  # the other side is gone
            log.warning("channel closed by the other side")
        finally:
            self.closed = True
            self._space.set()
            # Nobody waits forever on a channel that is gone (the message in flight included).
            for waiting in [fut, *(item[2] for item in self._items)]:
                if waiting is not None and not waiting.done():
                    waiting.set_result(None)
            self._items.clear()
            self._idle.set()

    async def aclose(self, *, flush: bool = True) -> None:
        """Write what is queued (``flush``: for up to 10 s), then close."""
        if flush:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(10):
                    await self._idle.wait()
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._writer.close()
        with contextlib.suppress(Exception):
            await self._writer.wait_closed()


async def read_message(reader: asyncio.StreamReader) -> dict[str, Any] | None:
    """The next message, or None at the end of the stream. A line that is not a JSON object
    raises ValueError."""
    line = await reader.readline()
    if not line:
        return None
    msg = json.loads(line)
    if not isinstance(msg, dict) or not isinstance(msg.get("op"), str):
        raise ValueError(f"not a channel message: {line[:80]!r}")
    return msg
