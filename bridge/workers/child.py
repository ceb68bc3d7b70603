"""A worker process of ``affect-bridge run --workers N``: it owns whole calls.

Started by the supervisor (:mod:`bridge.workers.process`) as ``python -m bridge.workers.child
--fd FD --index I``, with one end of a socketpair as FD. It speaks the typed messages of
:mod:`bridge.workers.protocol`: the first is :class:`~bridge.workers.protocol.Configure`; then
the worker loads its analyzers (its own copy of each model), says ``Ready`` and serves
``JoinCall`` (answered ``Joined`` or ``JoinFailed``), ``LeaveCall`` (``Left``), ``Ping``
(``Pong``) and ``Stop`` (it leaves every call, closes the analyzers and exits 0).

Events go back as ``Published``, statistics every half second as one ``StatsReport`` (task
failures among them, as :class:`~bridge.stats.TaskFailed`). SIGINT/SIGTERM are ignored: the
supervisor decides when a worker stops. When the channel closes (the supervisor died) the
worker leaves its calls and exits.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import threading
from collections import Counter
from typing import Any

from bridge import stats
from bridge.errors import BridgeError
from bridge.logsafe import configure_logging
from bridge.tasks import record_failures
from bridge.workers import protocol as proto
from bridge.workers.channel import MAX_LINE, OutChannel

__all__ = ["main"]

log = logging.getLogger("bridge.workers.child")

STATS_EVERY_S = 0.5


class _Stats:
    """Statistics gathered from any thread and sent as one message every STATS_EVERY_S."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._frames = 0
        self._speech: dict[tuple[str, str], float] = {}
        self._dropped: Counter[str] = Counter()
        self._other: list[stats.Stat] = []

    def record(self, stat: stats.Stat) -> None:
        with self._lock:
            if isinstance(stat, stats.FramesReceived):
                self._frames += stat.n
            elif isinstance(stat, stats.SpeechHeard):
                key = (stat.call, stat.speaker)
                self._speech[key] = self._speech.get(key, 0.0) + stat.seconds
            elif isinstance(stat, stats.Dropped):
                self._dropped[stat.stage] += stat.n
            elif isinstance(stat, stats.TaskFailed) or len(self._other) < 5000:
                # latencies and batches: 5000 is plenty per half second
                self._other.append(stat)

    def take(self, channel_dropped: int) -> list[stats.Stat]:
        with self._lock:
            out: list[stats.Stat] = []
            if self._frames:
                out.append(stats.FramesReceived(self._frames))
            out += [stats.SpeechHeard(c, s, v) for (c, s), v in self._speech.items()]
            out += [stats.Dropped(stage, n) for stage, n in self._dropped.items()]
            if channel_dropped:
                out.append(stats.Dropped("worker_channel", channel_dropped))
            out += self._other
            self._frames, self._other = 0, []
            self._speech.clear()
            self._dropped.clear()
        return out


class Worker:
    def __init__(self, index: int, reader: asyncio.StreamReader, out: OutChannel) -> None:
        self.index = index
        self.reader = reader
        self.out = out
        self.stats = _Stats()
        self._sent_drops = 0
        self._jobs: set[asyncio.Task[Any]] = set()

    async def send(self, msg: proto.Message, *, droppable: bool = False) -> None:
        await self.out.send(proto.encode(msg), droppable=droppable)

    async def emit(self, event: Any) -> None:
        await self.send(proto.Published(event.model_dump(mode="json")),
                        droppable=event.type == "affect.sample")

    async def _configure(self) -> Any:
        """The settings the supervisor sent first, or None (logged) when they are unusable."""
        from bridge.config import ConfigError, load_settings

        try:
            first = await proto.receive(self.reader)
        except ValueError as exc:
            log.error("worker %d: bad first message: %s", self.index, exc)
            return None
        if not isinstance(first, proto.Configure):
            log.error("worker %d: no configuration from the supervisor", self.index)
            return None
        try:
            settings = load_settings(None, **first.settings)
        except ConfigError as exc:
            log.error("worker %d: %s", self.index, exc)
            return None
        logging.getLogger().setLevel(first.log_level or settings.log_level)
        return settings

    async def run(self) -> int:
        from bridge.connectors import load_connectors
        from bridge.connectors.context import join_context
        from bridge.live.calls import CallManager
        from bridge.live.ice import restrict_host_addresses
        from bridge.pipeline.analysis import AnalysisEngine

        settings = await self._configure()
        if settings is None:
            return 2
        restrict_host_addresses(settings.live.ice_host_addresses)
        self.ctx = join_context(settings)
        self.connectors = load_connectors()
        with record_failures(self.stats.record):
            engine = AnalysisEngine(settings, record=self.stats.record)
            await engine.start(warm_up=True)
            self.manager = CallManager(engine, self.emit,
                                       silence_timeout_s=settings.live.silence_timeout_s,
                                       gone_timeout_s=settings.live.gone_timeout_s)
            await self.send(proto.Ready(os.getpid(), [a.name for a in engine.analyzers],
                                        dict(engine.degraded)))
            flusher = asyncio.create_task(self._flush_stats(), name="worker:stats")
            try:
                await self._serve()
            finally:
                for job in list(self._jobs):
                    job.cancel()
                await self.manager.aclose("shutting down")
                await engine.aclose()
                flusher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await flusher
                await self._send_stats()
                await self.out.aclose()
        return 0

    async def _serve(self) -> None:
        while True:
            try:
                msg = await proto.receive(self.reader)
            except ValueError as exc:
                log.error("worker %d: bad message from the supervisor: %s", self.index, exc)
                continue
            match msg:
                case None:  # the supervisor is gone: leave and exit
                    return
                case proto.Stop():
                    return
                case proto.Ping():
                    await self.send(proto.Pong(msg.n))
                case proto.ServiceReady():
                    self._spawn(self.manager.engine.service_ready())
                case proto.JoinCall():
                    self._spawn(self._join(msg))
                case proto.LeaveCall():
                    self._spawn(self._leave(msg))
                case _:
                    log.error("worker %d: unexpected %s", self.index, msg.op)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._jobs.add(task)
        task.add_done_callback(self._jobs.discard)

    async def _join(self, msg: proto.JoinCall) -> None:
        from bridge.live.calls import Join

        reply: proto.Reply
        try:
            cls = self.connectors.get(msg.connector)
            if cls is None:
                raise BridgeError(f"this worker has no connector {msg.connector!r}")
            await self.manager.join(Join.of(cls, msg.request, self.ctx))
            reply = proto.Joined(msg.req, msg.call)
        except BridgeError as exc:
            reply = proto.JoinFailed.of(msg.req, exc)
        except Exception as exc:
            log.exception("worker %d: join failed", self.index)
            reply = proto.JoinFailed(msg.req, "BridgeError", "internal_error",
                                     type(exc).__name__)
        await self.send(reply)

    async def _leave(self, msg: proto.LeaveCall) -> None:
        was = self.manager.calls.get(msg.call)
        await self.manager.leave(msg.call, msg.reason or "left on request")
        await self.send(proto.Left(msg.req, msg.call, was is not None))

    async def _flush_stats(self) -> None:
        while True:
            await asyncio.sleep(STATS_EVERY_S)
            await self._send_stats()

    async def _send_stats(self) -> None:
        drops = self.out.dropped - self._sent_drops
        self._sent_drops = self.out.dropped
        taken = self.stats.take(drops)
        if taken:
            await self.send(proto.StatsReport(taken))


def _dump_tasks() -> None:
    """SIGUSR2: log where every task of this worker is waiting (for a worker that hangs)."""
    import io

    for task in asyncio.all_tasks():
        buf = io.StringIO()
        task.print_stack(limit=8, file=buf)
        log.warning("task %s:\n%s", task.get_name(), buf.getvalue())


async def _amain(index: int, fd: int) -> int:
    asyncio.get_running_loop().add_signal_handler(signal.SIGUSR2, _dump_tasks)
    sock = socket.socket(fileno=fd)
    reader, writer = await asyncio.open_unix_connection(sock=sock, limit=MAX_LINE)
    out = OutChannel(writer)
    return await Worker(index, reader, out).run()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bridge.workers.child")
    p.add_argument("--fd", type=int, required=True)
    p.add_argument("--index", type=int, required=True)
    args = p.parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor decides
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    configure_logging(debug=os.environ.get("AFFECT_BRIDGE_DEBUG") == "1",
                      prefix=f"affect-bridge[worker {args.index}]")
    return asyncio.run(_amain(args.index, args.fd))


if __name__ == "__main__":
    sys.exit(main())

