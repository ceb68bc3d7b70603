"""A worker process of ``affect-bridge run --workers N``: it owns whole calls.

Started by the supervisor (:mod:`bridge.workers.pool`) as ``python -m bridge.workers.child --fd FD
--index I``, with one end of a socketpair as FD. The first message is the configuration; then
the worker loads its analyzers (its own copy of each model), says ``ready`` and serves:

* ``join`` {req, connector, body} -> joins with the connector's own ``from_request``; answers
  ``joined`` or ``join_failed`` {status, error, reason}
* ``leave`` {req, call, reason} -> ``left``
* ``ping`` {n} -> ``pong``
* ``stop`` -> leaves every call, closes the analyzers, exits 0

Events go back as ``event`` (the envelope's JSON), statistics every half second as ``stats``
(:mod:`bridge.stats` on the wire, plus task failures). SIGINT/SIGTERM are ignored: the
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
import time
from collections import Counter
from typing import Any

from pydantic import ValidationError

from bridge import stats
from bridge.workers.channel import MAX_LINE, OutChannel, read_message

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
            elif len(self._other) < 5000:  # latencies and batches: plenty per half second
                self._other.append(stat)

    def take(self, channel_dropped: int) -> list[list[Any]]:
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
        return [stats.to_wire(s) for s in out]


class Worker:
    def __init__(self, index: int, reader: asyncio.StreamReader, out: OutChannel) -> None:
        self.index = index
        self.reader = reader
        self.out = out
        self.stats = _Stats()
        self._sent_drops = 0
        self._sent_failures: Counter[str] = Counter()
        self._jobs: set[asyncio.Task[Any]] = set()

    async def emit(self, event: Any) -> None:
        await self.out.send({"op": "event", "e": event.model_dump(mode="json")},
                            droppable=event.type == "affect.sample")

    async def run(self) -> int:
        from bridge.config import ConfigError, load_settings
        from bridge.connectors import load_connectors
        from bridge.control.app import join_context
        from bridge.live.calls import CallManager
        from bridge.live.ice import restrict_host_addresses
        from bridge.pipeline.analysis import AnalysisEngine

        first = await read_message(self.reader)
        if first is None or first.get("op") != "settings":
            log.error("worker %d: no configuration from the supervisor", self.index)
            return 2
        try:
            settings = load_settings(None, **first["settings"])
        except ConfigError as exc:
            log.error("worker %d: %s", self.index, exc)
            return 2
        logging.getLogger().setLevel(first.get("log_level") or settings.log_level)
        restrict_host_addresses(settings.live.ice_host_addresses)
        self.ctx = join_context(settings)
        self.connectors = load_connectors()
        engine = AnalysisEngine(settings, record=self.stats.record)
        await engine.start(warm_up=True)
        self.manager = CallManager(engine, self.emit,
                                   silence_timeout_s=settings.live.silence_timeout_s,
                                   gone_timeout_s=settings.live.gone_timeout_s)
        await self.out.send({"op": "ready", "pid": os.getpid(),
                             "analyzers": [a.name for a in engine.analyzers],
                             "degraded": engine.degraded})
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
                msg = await read_message(self.reader)
            except ValueError as exc:
                log.error("worker %d: bad message from the supervisor: %s", self.index, exc)
                continue
            except (ConnectionError, OSError):  # the supervisor is gone: leave and exit
                return
            if msg is None or msg["op"] == "stop":
                return
            op = msg["op"]
            if op == "ping":
                await self.out.send({"op": "pong", "n": msg.get("n")})
            elif op == "join":
                self._spawn(self._join(msg))
            elif op == "leave":
                self._spawn(self._leave(msg))
            else:
                log.error("worker %d: unknown op %r", self.index, op[:40])

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._jobs.add(task)
        task.add_done_callback(self._jobs.discard)

    async def _join(self, msg: dict[str, Any]) -> None:
        from bridge.connectors.base import ConnectorError

        req_id = msg.get("req")
        reply: dict[str, Any]
        try:
            cls = self.connectors[msg["connector"]]
            request = cls.Request.model_validate(msg["body"])
            info, factory = cls.from_request(request, self.ctx)
            if msg.get("call") not in (None, info.id):
                raise ConnectorError("the request names another call", error="bad_request",
                                     status=400)
            await self.manager.join(info, factory)
            reply = {"op": "joined", "req": req_id, "call": info.id}
        except ConnectorError as exc:
            reply = {"op": "join_failed", "req": req_id, "status": exc.status,
                     "error": exc.error, "reason": str(exc)}
        except (KeyError, ValidationError, ValueError) as exc:
            reply = {"op": "join_failed", "req": req_id, "status": 409 if isinstance(
                exc, ValueError) and "already in call" in str(exc) else 400,
                "error": "join_failed", "reason": str(exc)[:300]}
        except Exception as exc:
            log.exception("worker %d: join failed", self.index)
            reply = {"op": "join_failed", "req": req_id, "status": 500,
                     "error": "internal_error", "reason": type(exc).__name__}
        await self.out.send(reply)

    async def _leave(self, msg: dict[str, Any]) -> None:
        call_id = str(msg.get("call"))
        was = self.manager.calls.get(call_id)
        await self.manager.leave(call_id, str(msg.get("reason") or "left on request"))
        await self.out.send({"op": "left", "req": msg.get("req"), "call": call_id,
                             "found": was is not None})

    async def _flush_stats(self) -> None:
        while True:
            await asyncio.sleep(STATS_EVERY_S)
            await self._send_stats()

    async def _send_stats(self) -> None:
        from bridge.tasks import failures, recent_failures

        drops = self.out.dropped - self._sent_drops
        self._sent_drops = self.out.dropped
        wire = self.stats.take(drops)
        failed: list[list[Any]] = []
        now = failures()
        for kind, n in now.items():
            new = n - self._sent_failures[kind]
            if new > 0:
                recent = [f for f in recent_failures(time.time()) if f.task == kind][-new:]
                failed += [[kind, f.error, f.at] for f in recent]
                failed += [[kind, "", time.time()]] * (new - len(recent))
                self._sent_failures[kind] = n
        if wire or failed:
            await self.out.send({"op": "stats", "s": wire, "failures": failed})


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
    from bridge.cli import configure_logging

    configure_logging(debug=os.environ.get("AFFECT_BRIDGE_DEBUG") == "1",
                      prefix=f"affect-bridge[worker {args.index}]")
    return asyncio.run(_amain(args.index, args.fd))


if __name__ == "__main__":
    sys.exit(main())

