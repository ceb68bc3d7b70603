"""One supervised worker process: launched, pinged, reaped and launched again.

:class:`WorkerProcess` is the supervisor's handle on one ``python -m bridge.workers.child``: it
starts the process with one end of a socketpair, sends it its configuration, reads everything it
sends (replies go to whoever asked, every other message to ``on_message``), pings it, and when
it exits, closes its channel or stops answering (``PING_TIMEOUT_S``), kills it, tells
``on_lost`` and starts it again with backoff. Which calls run where is the pool's business
(:mod:`bridge.workers.pool`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from bridge import stats
from bridge.connectors.base import Backoff
from bridge.errors import Unavailable
from bridge.tasks import TaskSet
from bridge.workers import protocol as proto
from bridge.workers.channel import MAX_LINE, OutChannel

__all__ = ["PING_EVERY_S", "PING_TIMEOUT_S", "STOP_TIMEOUT_S", "WorkerProcess"]

log = logging.getLogger(__name__)

PING_EVERY_S = 1.0
PING_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 20.0

OnMessage = Callable[["WorkerProcess", proto.Message], Awaitable[None]]
OnLost = Callable[["WorkerProcess", int], Awaitable[None]]


class WorkerProcess:
    """``state``: starting -> ready -> dead (and starting again after a restart)."""

    def __init__(self, index: int, settings: Callable[[], dict[str, Any]], *,
                 on_message: OnMessage, on_lost: OnLost, tasks: TaskSet) -> None:
        self.index = index
        self._settings = settings
        self._on_message = on_message
        self._on_lost = on_lost
        self._tasks = tasks
        self.proc: asyncio.subprocess.Process | None = None
        self.out: OutChannel | None = None
        self.state = "starting"
        self.told_service_ready = False  # this process was sent ServiceReady
        self.pid: int | None = None
        self.analyzers: list[str] = []
        self.degraded: dict[str, str] = {}
        self.last_pong = 0.0
        self.ready = asyncio.Event()
        self.gone = asyncio.Event()
        self.restarts = 0
        self.stopping = False
        self._replies: dict[int, asyncio.Future[proto.Reply]] = {}
        self._next_req = 0

    def next_req(self) -> int:
        self._next_req += 1
        return self._next_req

    async def launch(self) -> None:
        ours, theirs = socket.socketpair()
        env = dict(os.environ)
        env.setdefault("OPENBLAS_NUM_THREADS", "1")  # numpy's BLAS: one thread per worker
        env.setdefault("OMP_NUM_THREADS", "1")
        if logging.getLogger("bridge").isEnabledFor(logging.DEBUG):
            env["AFFECT_BRIDGE_DEBUG"] = "1"
        try:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "bridge.workers.child", "--fd", str(theirs.fileno()),
                "--index", str(self.index), pass_fds=(theirs.fileno(),),
                stdin=asyncio.subprocess.DEVNULL, env=env)
        finally:
            theirs.close()
        self.pid = self.proc.pid
        self.state = "starting"
        self.told_service_ready = False
        self.ready.clear()
        self.gone.clear()
        self.last_pong = time.monotonic()
        reader, writer = await asyncio.open_unix_connection(sock=ours, limit=MAX_LINE)
        self.out = OutChannel(writer)
        level = logging.getLevelName(logging.getLogger().level)
        await self.send(proto.Configure(self._settings(),
                                        level if isinstance(level, str) else None))
        self._tasks.spawn(self._read(reader), name=f"read:{self.index}")
        self._tasks.spawn(self._reap(), name=f"reap:{self.index}")

    async def send(self, msg: proto.Message, *, droppable: bool = False) -> None:
        if self.out is not None:
            await self.out.send(proto.encode(msg), droppable=droppable)

    async def ask(self, msg: proto.JoinCall | proto.LeaveCall) -> proto.Reply:
        """Send a request and wait for its reply; a worker that is gone, or dies meanwhile,
        raises Unavailable (``worker_failed``)."""
        fut: asyncio.Future[proto.Reply] = asyncio.get_running_loop().create_future()
        self._replies[msg.req] = fut
        try:
            if self.out is None or self.state == "dead":
                raise Unavailable(f"worker {self.index} is not running", code="worker_failed")
            await self.send(msg)
            return await fut
        finally:
            self._replies.pop(msg.req, None)

    def mark_ready(self, msg: proto.Ready) -> None:
        self.analyzers, self.degraded = list(msg.analyzers), dict(msg.degraded)
        self.state = "ready"
        self.last_pong = time.monotonic()
        self.ready.set()

    def note_analyzer(self, state: stats.AnalyzerState) -> None:
        """A loaded analyzer's model went down (a reason) or came back (none)."""
        if state.reason:
            self.degraded[state.analyzer] = state.reason
        elif state.analyzer in self.analyzers:  # never clears a load failure
            self.degraded.pop(state.analyzer, None)

    async def ping(self, n: int) -> None:
        """Ping a ready worker; kill one that has not answered for PING_TIMEOUT_S."""
        if self.state != "ready" or self.out is None:
            return
        silent = time.monotonic() - self.last_pong
        if silent > PING_TIMEOUT_S and self.proc is not None:
            log.error("worker %d has not answered for %.0f s: killing it", self.index, silent)
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            return
        await self.send(proto.Ping(n), droppable=True)

    async def _read(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                try:
                    msg = await proto.receive(reader)
                except ValueError as exc:
                    log.error("worker %d sent something unreadable: %s", self.index, exc)
                    continue
                if msg is None:
                    break
                await self._dispatch(msg)
        finally:
            await self._closed()

    async def _dispatch(self, msg: proto.Message) -> None:
        match msg:
            case proto.Pong():
                self.last_pong = time.monotonic()
            case proto.Joined() | proto.JoinFailed() | proto.Left():
                fut = self._replies.get(msg.req)
                if fut is not None and not fut.done():
                    fut.set_result(msg)
            case _:
                await self._on_message(self, msg)

    async def _closed(self) -> None:
        self.state = "dead"
        self.ready.clear()
        for fut in list(self._replies.values()):
            if not fut.done():
                fut.set_exception(Unavailable(
                    f"worker {self.index} stopped while handling the request",
                    code="worker_failed"))
        if self.out is not None:
            await self.out.aclose(flush=False)
        self.gone.set()
        if self.proc is not None and self.proc.returncode is None and not self.stopping:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()  # its channel is gone: it cannot be reached any more

    async def _reap(self) -> None:
        assert self.proc is not None
        code = await self.proc.wait()
        await self.gone.wait()  # its channel has been read to the end
        if self.stopping:
            return
        log.error("worker %d (pid %s) exited with %s; its calls move to the other workers",
                  self.index, self.pid, code)
        await self._on_lost(self, code)
        backoff = Backoff(cap_s=30.0)
        while not self.stopping:
            self.restarts += 1
            try:
                await self.launch()
                return
            except OSError as exc:
                log.error("worker %d could not be started again: %s", self.index, exc)
                await backoff.sleep()

    async def stop(self, reason: str) -> None:
        """Ask the worker to leave its calls and exit; kill it after STOP_TIMEOUT_S."""
        self.stopping = True
        if self.out is not None and self.state != "dead":
            with contextlib.suppress(Exception):
                await self.send(proto.Stop(reason))

    async def wait_stopped(self) -> None:
        if self.proc is None:
            return
        try:
            async with asyncio.timeout(STOP_TIMEOUT_S):
                await self.proc.wait()
                await self.gone.wait()
        except TimeoutError:
            log.error("worker %d did not stop in %.0f s: killing it", self.index,
                      STOP_TIMEOUT_S)
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            await self.proc.wait()

    def readiness(self, calls: int, speakers: int) -> dict[str, Any]:
        return {"index": self.index, "pid": self.pid, "state": self.state,
                "restarts": self.restarts, "calls": calls, "speakers": speakers,
                "last_pong_s": round(time.monotonic() - self.last_pong, 1)}
