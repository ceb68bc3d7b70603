"""``affect-bridge run --workers N``: one supervisor, N worker processes that own whole calls.

A Python process is bound to about one core by its GIL, and an aiortc peer connection cannot
be split across processes, so the unit of work is the call. The supervisor (this module, in
the ``run`` process) keeps the control API, auto-join, the webhook outbox, ``/metrics`` and the
console; each worker (:mod:`bridge.workers.child`) runs connectors, peer connections, drains and
analysis with its own copy of the models, and sends events and statistics back over its
channel (:mod:`bridge.workers.channel`). Metrics are built from those events and statistics by the same
sink as in one process.

Placement: a new call goes to the ready worker with the fewest speakers (then calls).

Supervision: every worker answers a ping each second; one that exits, closes its channel or
does not answer for ``PING_TIMEOUT_S`` is killed and replaced. Its calls are joined again on
the other workers (or its replacement): their speakers get ``speaker.left`` (reason ``worker
failed``; an open spike first gets its ``stress.spike.ended``, reason ``stream ended``) and
come back with ``speaker.joined`` from the new worker; the call itself is not left (no second
``call.joined``). Everything a worker wrote to its channel before it died is read and
published, so a spike it emitted is never lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import SecretStr, ValidationError

from bridge import events as ev
from bridge import stats
from bridge.config import Settings, usable_cpus
from bridge.connectors.base import Backoff, ConnectorError, ConnectorFactory
from bridge.live.calls import JoinCancelled, JoinRequest
from bridge.tasks import TaskSet, record_failure
from bridge.workers.channel import MAX_LINE, OutChannel, read_message

__all__ = ["RemoteCall", "WorkerPool"]

log = logging.getLogger(__name__)

PING_EVERY_S = 1.0
PING_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 20.0


@dataclass
class _SpeakerView:
    info: ev.SpeakerInfo
    index: float | None = None
    speech_s: float = 0.0
    spikes: int = 0
    idle: bool = False
    last_offset_s: float = 0.0
    open_spike: ev.SpikeStartedData | None = None


@dataclass
class RemoteCall:
    """A call as the supervisor sees it: on which worker, in which state, its speakers (from
    events)."""

    info: ev.CallInfo
    request: JoinRequest
    worker: _Worker | None
    state: str = "joining"  # joining -> joined (rejoining while moved to another worker)
    speakers: dict[str, _SpeakerView] = field(default_factory=dict)
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    end_reason: str = "left"
    leaving: bool = False
    announced: bool = False  # call.joined published (a rejoin does not publish it again)

    def summary(self) -> dict[str, Any]:
        return {"id": self.info.id, "connector": self.info.connector, "room": self.info.room,
                "state": "joined" if self.state == "rejoining" else self.state,
                "worker": self.worker.index if self.worker is not None else None,
                "speakers": [{"id": s.info.id, "display": s.info.display,
                              "state": "idle" if s.idle else "active",
                              "stress_index": s.index, "speech_s": round(s.speech_s, 3)}
                             for s in list(self.speakers.values())]}


class _Worker:
    def __init__(self, index: int) -> None:
        self.index = index
        self.proc: asyncio.subprocess.Process | None = None
        self.out: OutChannel | None = None
        self.state = "starting"  # starting -> ready -> dead
        self.pid: int | None = None
        self.analyzers: list[str] = []
        self.degraded: dict[str, str] = {}
        self.last_pong = 0.0
        self.ready = asyncio.Event()
        self.gone = asyncio.Event()
        self.replies: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.restarts = 0


def _reveal(value: Any) -> Any:
    """A request model's values with their secrets as plain strings (for the worker's channel,
    a socketpair between two processes of this service; never logged)."""
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, dict):
        return {k: _reveal(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_reveal(v) for v in value]
    return value


class WorkerPool:
    """The supervisor's side: starts the workers, places calls, publishes their events."""

    def __init__(self, settings: Settings, count: int, emit: Callable[[Any], Any], *,
                 record: stats.Record) -> None:
        self.settings = settings
        self.count = count
        self._emit = emit
        self._record = record
        self.workers = [_Worker(i) for i in range(count)]
        self.calls: dict[str, RemoteCall] = {}
        self._tasks = TaskSet("workers")
        self._next_req = 0
        self._announced_degraded: set[str] = set()
        self._closing = False
        self._all_started = asyncio.Event()  # every worker was ready once
        self.started = False

    # --- the call-manager face the control API and auto-join use -----------------------------

    def joined(self) -> list[RemoteCall]:
        return [c for c in list(self.calls.values()) if c.state != "joining"]

    async def join(self, info: ev.CallInfo, factory: ConnectorFactory | None = None, *,
                   request: JoinRequest | None = None) -> RemoteCall:
        """Join ``info`` on the least loaded worker (``factory`` is not used: a worker makes
        its own from ``request``). Raises ConnectorError, JoinCancelled, or ValueError when
        the call is already there."""
        if request is None:
            raise ValueError("a worker pool joins from a join request")
        if info.id in self.calls:
            raise ValueError(f"already in call {info.id}")
        call = RemoteCall(info, request, None)
        self.calls[info.id] = call
        try:
            await self._place(call)
        except BaseException:
            if self.calls.get(info.id) is call:
                del self.calls[info.id]
            raise
        return call

    async def _place(self, call: RemoteCall) -> None:
        worker = await self._pick()
        call.worker = worker
        body = _reveal(call.request.body.model_dump())
        try:
            reply = await self._ask(worker, {"op": "join", "connector": call.request.connector,
                                             "body": body, "call": call.info.id})
        except asyncio.CancelledError:  # whoever asked went away: the worker must not keep it
            self._tasks.spawn(self._ask(worker, {"op": "leave", "call": call.info.id,
                                                 "reason": "join abandoned"}),
                              name=f"abandon:{call.info.id}")
            raise
        if reply["op"] == "joined":
            if call.leaving or self.calls.get(call.info.id) is not call:
                # Left while the worker was joining (a rejoin after the call was given up):
                # the worker must not keep it.
                with contextlib.suppress(ConnectorError):
                    await self._ask(worker, {"op": "leave", "call": call.info.id,
                                             "reason": "left on request"})
                raise JoinCancelled(call.info.id)
            call.state = "joined"
            return
        if reply.get("error") == "join_cancelled":
            raise JoinCancelled(call.info.id)
        raise ConnectorError(str(reply.get("reason", "join failed")),
                             error=str(reply.get("error", "join_failed")),
                             status=int(reply.get("status", 422)))

    async def _pick(self) -> _Worker:
        """The ready worker with the fewest speakers, then calls; waits (up to 30 s) while
        none is ready. While the pool is starting it waits (up to 60 s) for every worker, so
        the first calls are spread instead of all going to whichever loaded first."""
        if not self._all_started.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(60):
                    await self._all_started.wait()
        try:
            return await self._ready_worker()
        except TimeoutError:
            raise ConnectorError("no worker process is ready to take the call",
                                 error="unavailable", status=503) from None

    async def _ready_worker(self) -> _Worker:
        async with asyncio.timeout(30):
            while True:
                ready = [w for w in self.workers if w.state == "ready"]
                if ready:
                    def load(w: _Worker) -> tuple[int, int]:
                        mine = [c for c in self.calls.values() if c.worker is w]
                        return sum(len(c.speakers) for c in mine), len(mine)
                    return min(ready, key=load)
                if self._closing:
                    raise ConnectorError("the bridge is shutting down", error="unavailable",
                                         status=503)
                waiters = [asyncio.create_task(w.ready.wait()) for w in self.workers]
                try:
                    await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for t in waiters:
                        t.cancel()

    async def _ask(self, worker: _Worker, msg: dict[str, Any]) -> dict[str, Any]:
        """Send a request and wait for its reply; a worker that dies meanwhile is a 503."""
        self._next_req += 1
        req = msg["req"] = self._next_req
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        worker.replies[req] = fut
        try:
            if worker.out is None or worker.state == "dead":
                raise ConnectorError(f"worker {worker.index} is not running",
                                     error="worker_failed", status=503)
            await worker.out.send(msg)
            return await fut
        finally:
            worker.replies.pop(req, None)

    async def leave(self, call_id: str, reason: str) -> None:
        call = self.calls.get(call_id)
        if call is None or call.leaving:
            return
        call.leaving = True
        worker = call.worker
        if worker is not None and worker.state != "dead":
            with contextlib.suppress(ConnectorError):
                await self._ask(worker, {"op": "leave", "call": call_id, "reason": reason})
        # The worker's call.left (read before its reply) has unregistered the call; a call
        # whose worker is gone is left here.
        if self.calls.get(call_id) is call and call.state != "joining":
            await self._left(call, reason)

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        for worker in self.workers:
            await self._launch(worker)
        self._tasks.spawn(self._ping(), name="ping")
        self.started = True

    async def _launch(self, worker: _Worker) -> None:
        ours, theirs = socket.socketpair()
        env = dict(os.environ)
        env.setdefault("OPENBLAS_NUM_THREADS", "1")  # numpy's BLAS: one thread per worker
        env.setdefault("OMP_NUM_THREADS", "1")
        if logging.getLogger("bridge").isEnabledFor(logging.DEBUG):
            env["AFFECT_BRIDGE_DEBUG"] = "1"
        try:
            worker.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "bridge.workers.child", "--fd", str(theirs.fileno()),
                "--index", str(worker.index), pass_fds=(theirs.fileno(),),
                stdin=asyncio.subprocess.DEVNULL, env=env)
        finally:
            theirs.close()
        worker.pid = worker.proc.pid
        worker.state = "starting"
        worker.ready.clear()
        worker.gone.clear()
        worker.last_pong = time.monotonic()
        reader, writer = await asyncio.open_unix_connection(sock=ours, limit=MAX_LINE)
        worker.out = OutChannel(writer)
        level = logging.getLevelName(logging.getLogger().level)
        await worker.out.send({"op": "settings", "settings": self._worker_settings(),
                               "log_level": level if isinstance(level, str) else None})
        self._tasks.spawn(self._read(worker, reader), name=f"read:{worker.index}")
        self._tasks.spawn(self._reap(worker), name=f"reap:{worker.index}")

    def _worker_settings(self) -> dict[str, Any]:
        """The configuration a worker gets: this one, with the models' CPU threads shared out
        (``threads = 0`` means half the cores for one process; with N workers each gets half
        of its share, at least one, so N workers do not start N times as many threads)."""
        dump = self.settings.model_dump(mode="json")
        share = max(1, usable_cpus() // (2 * self.count))
        for section in ("emotion", "semantic"):
            if dump.get(section, {}).get("threads") == 0:
                dump[section]["threads"] = share
        return dump

    async def _reap(self, worker: _Worker) -> None:
        assert worker.proc is not None
        code = await worker.proc.wait()
        await worker.gone.wait()  # its channel has been read to the end
        if self._closing:
            return
        log.error("worker %d (pid %s) exited with %s; its calls move to the other workers",
                  worker.index, worker.pid, code)
        record_failure("workers/exit", f"worker {worker.index} exited with {code}")
        await self._lost(worker)
        backoff = Backoff(cap_s=30.0)
        while not self._closing:
            worker.restarts += 1
            try:
                await self._launch(worker)
                return
            except OSError as exc:
                log.error("worker %d could not be started again: %s", worker.index, exc)
                await backoff.sleep()

    async def _read(self, worker: _Worker, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                try:
                    msg = await read_message(reader)
                except ValueError as exc:
                    log.error("worker %d sent something unreadable: %s", worker.index, exc)
                    continue
                except (ConnectionError, OSError):
                    break
                if msg is None:
                    break
                await self._on_message(worker, msg)
        finally:
            worker.state = "dead"
            worker.ready.clear()
            for fut in list(worker.replies.values()):
                if not fut.done():
                    fut.set_exception(ConnectorError(
                        f"worker {worker.index} stopped while handling the request",
                        error="worker_failed", status=503))
            if worker.out is not None:
                await worker.out.aclose(flush=False)
            worker.gone.set()
            if worker.proc is not None and worker.proc.returncode is None and not self._closing:
                with contextlib.suppress(ProcessLookupError):
                    worker.proc.kill()  # its channel is gone: it cannot be reached any more

    async def _on_message(self, worker: _Worker, msg: dict[str, Any]) -> None:
        op = msg["op"]
        if op == "event":
            try:
                event = ev.parse_event(msg["e"])
            except (ValidationError, KeyError, TypeError):
                log.error("worker %d sent an invalid event", worker.index)
                return
            await self._on_event(worker, event)
        elif op == "stats":
            for raw in msg.get("s", []):
                try:
                    stat = stats.from_wire(raw)
                except ValueError:
                    continue
                if isinstance(stat, stats.SpeechHeard):
                    call = self.calls.get(stat.call)
                    view = call.speakers.get(stat.speaker) if call is not None else None
                    if view is not None:
                        view.speech_s += stat.seconds
                self._record(stat)
            for task, error, at in msg.get("failures", []):
                record_failure(str(task), str(error), at=float(at))
        elif op == "pong":
            worker.last_pong = time.monotonic()
        elif op == "ready":
            worker.analyzers = list(msg.get("analyzers", []))
            worker.degraded = dict(msg.get("degraded", {}))
            worker.state = "ready"
            worker.last_pong = time.monotonic()
            worker.ready.set()
            if all(w.state == "ready" for w in self.workers):
                self._all_started.set()
            log.info("worker %d ready (pid %s)", worker.index, msg.get("pid"))
            for name, reason in worker.degraded.items():
                if name not in self._announced_degraded:
                    self._announced_degraded.add(name)
                    await self._emit(ev.AnalyzerDegraded(data=ev.AnalyzerDegradedData(
                        analyzer=name, reason=reason)))
        elif op in ("joined", "join_failed", "left"):
            fut = worker.replies.get(int(msg.get("req", -1)))
            if fut is not None and not fut.done():
                fut.set_result(msg)

    async def _on_event(self, worker: _Worker, event: Any) -> None:
        call = self.calls.get(event.call.id) if event.call is not None else None
        if event.call is not None and (call is None or call.worker is not worker):
            return  # a late event of a call that has moved on or was given up
        kind = event.type
        if call is not None:
            if kind == "call.joined":
                if call.announced:
                    log.info("call %s joined again on worker %d", call.info.id, worker.index)
                    return
                call.announced = True
            elif kind == "call.left":
                self._unregister(call, str(event.data.reason))
            elif event.speaker is not None:
                self._follow(call, event)
        await self._emit(event)

    def _follow(self, call: RemoteCall, event: Any) -> None:
        sid = event.speaker.id
        kind = event.type
        if kind == "speaker.joined":
            call.speakers[sid] = _SpeakerView(event.speaker)
            return
        view = call.speakers.get(sid)
        if view is None:
            return
        view.last_offset_s = max(view.last_offset_s, float(getattr(event.data, "offset_s", 0)))
        if kind == "speaker.left":
            del call.speakers[sid]
        elif kind == "affect.sample":
            view.index = event.data.stress.index
        elif kind == "stress.spike.started":
            view.spikes += 1
            view.open_spike = event.data
        elif kind == "stress.spike.ended":
            view.open_spike = None
        elif kind == "speaker.idle":
            view.idle = True
        elif kind == "speaker.resumed":
            view.idle = False

    def _unregister(self, call: RemoteCall, reason: str) -> None:
        if self.calls.get(call.info.id) is call:
            del self.calls[call.info.id]
        call.end_reason = reason
        call.ended.set()

    async def _left(self, call: RemoteCall, reason: str) -> None:
        """A call left without its worker (the worker is gone): its speakers and the call get
        their closing events here."""
        await self._drop_speakers(call, reason)
        self._unregister(call, reason)
        if call.announced:
            await self._emit(ev.CallLeft(call=call.info, data=ev.CallLeftData(
                offset_s=0.0, reason=reason)))

    async def _drop_speakers(self, call: RemoteCall, reason: str) -> None:
        for sid, view in list(call.speakers.items()):
            at = round(view.last_offset_s, 3)
            if view.open_spike is not None:
                s = view.open_spike
                await self._emit(ev.SpikeEnded(call=call.info, speaker=view.info, data=(
                    ev.SpikeEndedData(offset_s=at, started_s=s.started_s, index=s.index,
                                      peak=s.peak, components=s.components,
                                      duration_s=round(max(0.0, at - s.started_s), 3),
                                      reason="stream ended"))))
            await self._emit(ev.SpeakerLeft(call=call.info, speaker=view.info, data=(
                ev.SpeakerLeftData(offset_s=at, reason=reason, speech_s=round(view.speech_s, 3),
                                   spikes=view.spikes))))
            del call.speakers[sid]

    async def _lost(self, worker: _Worker) -> None:
        """The worker died: its joined calls move to another worker."""
        moved = [c for c in list(self.calls.values()) if c.worker is worker]
        for call in moved:
            if call.state == "joining":
                continue  # its join request fails with worker_failed (503)
            await self._drop_speakers(call, "worker failed")
            call.state = "rejoining"
            self._tasks.spawn(self._rejoin(call), name=f"rejoin:{call.info.id}")

    async def _rejoin(self, call: RemoteCall) -> None:
        try:
            await self._place(call)
            log.info("call %s moved to worker %d", call.info.id,
                     call.worker.index if call.worker else -1)
        except ConnectorError as exc:
            log.warning("call %s could not be joined again: %s", call.info.id, exc)
            if self.calls.get(call.info.id) is call:
                await self._left(call, "error")

    async def _ping(self) -> None:
        n = 0
        while True:
            await asyncio.sleep(PING_EVERY_S)
            n += 1
            now = time.monotonic()
            for worker in self.workers:
                if worker.state != "ready" or worker.out is None:
                    continue
                if now - worker.last_pong > PING_TIMEOUT_S and worker.proc is not None:
                    log.error("worker %d has not answered for %.0f s: killing it",
                              worker.index, now - worker.last_pong)
                    with contextlib.suppress(ProcessLookupError):
                        worker.proc.kill()
                    continue
                await worker.out.send({"op": "ping", "n": n}, droppable=True)

    def readiness(self) -> dict[str, Any]:
        now = time.monotonic()
        return {"workers": [{"index": w.index, "pid": w.pid, "state": w.state,
                             "restarts": w.restarts,
                             "calls": sum(1 for c in self.calls.values() if c.worker is w),
                             "speakers": sum(len(c.speakers) for c in self.calls.values()
                                             if c.worker is w),
                             "last_pong_s": round(now - w.last_pong, 1)}
                            for w in self.workers]}

    def analyzers(self) -> dict[str, str]:
        """What the workers loaded (the first ready worker speaks for all: same config)."""
        for w in self.workers:
            if w.state == "ready":
                return ({name: "ready" for name in w.analyzers}
                        | {name: f"degraded: {reason}" for name, reason in w.degraded.items()})
        return {}

    async def aclose(self, reason: str = "shutting down") -> None:
        """Stop every worker: each leaves its calls (their events are published), then exits."""
        self._closing = True
        for worker in self.workers:
            if worker.out is not None and worker.state != "dead":
                with contextlib.suppress(Exception):
                    await worker.out.send({"op": "stop", "reason": reason})
        for worker in self.workers:
            if worker.proc is None:
                continue
            try:
                async with asyncio.timeout(STOP_TIMEOUT_S):
                    await worker.proc.wait()
                    await worker.gone.wait()
            except TimeoutError:
                log.error("worker %d did not stop in %.0f s: killing it", worker.index,
                          STOP_TIMEOUT_S)
                with contextlib.suppress(ProcessLookupError):
                    worker.proc.kill()
                await worker.proc.wait()
        for call in list(self.calls.values()):  # calls whose worker could not say goodbye
            await self._left(call, reason)
        await self._tasks.aclose()
