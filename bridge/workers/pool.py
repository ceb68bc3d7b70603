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
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from analyzers.loading import usable_cpus
from bridge import events as ev
from bridge import stats
from bridge.config import Settings
from bridge.delivery.summary import SpeakerState
from bridge.errors import AlreadyJoined, BridgeError, JoinCancelled, Unavailable
from bridge.live.calls import Join
from bridge.tasks import TaskSet
from bridge.workers import protocol as proto
from bridge.workers.process import PING_EVERY_S, WorkerProcess

__all__ = ["RemoteCall", "WorkerPool"]

log = logging.getLogger(__name__)
#: How long the pool waits for every worker to start (one may hang while loading) before it
#: places the first calls on the ready workers only, and before it tells those the service is
#: ready anyway.
START_WAIT_S = 60.0


@dataclass
class RemoteCall:
    """A call as the supervisor sees it: on which worker, in which state, its speakers (from
    events)."""

    info: ev.CallInfo
    join: Join
    worker: WorkerProcess | None
    state: str = "joining"  # joining -> joined (rejoining while moved to another worker)
    speakers: dict[str, SpeakerState] = field(default_factory=dict)
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


class WorkerPool:
    """The supervisor's side: starts the workers, places calls, publishes their events."""

    def __init__(self, settings: Settings, count: int, emit: Callable[[Any], Any], *,
                 record: stats.Record) -> None:
        self.settings = settings
        self.count = count
        self._emit = emit
        self._record = record
        self._tasks = TaskSet("workers")
        self.workers = [WorkerProcess(i, self._worker_settings, on_message=self._on_message,
                                      on_lost=self._lost, tasks=self._tasks)
                        for i in range(count)]
        self.calls: dict[str, RemoteCall] = {}
        self._announced_degraded: set[str] = set()
        self._closing = False
        self._all_started = asyncio.Event()  # every worker was ready once
        self.started = False

    # --- the call-host face the control API and auto-join use -------------------------------

    def joined(self) -> list[RemoteCall]:
        return [c for c in list(self.calls.values()) if c.state != "joining"]

    async def join(self, join: Join) -> RemoteCall:
        """Join on the least loaded worker, which makes its connector from the join's request
        (its factory is for one process). Raises BridgeError (ConnectorError, AlreadyJoined,
        JoinCancelled, Unavailable)."""
        if join.connector is None or join.request is None:
            raise TypeError("a worker pool joins from a connector's request")
        if join.info.id in self.calls:
            raise AlreadyJoined.call(join.info.id)
        call = RemoteCall(join.info, join, None)
        self.calls[join.info.id] = call
        try:
            await self._place(call)
        except BaseException:
            if self.calls.get(join.info.id) is call:
                del self.calls[join.info.id]
            raise
        return call

    async def _place(self, call: RemoteCall) -> None:
        worker = call.worker = await self._pick()
        assert call.join.connector is not None and call.join.request is not None
        ask = proto.JoinCall(worker.next_req(), call.info.id, call.join.connector,
                             call.join.request)
        try:
            reply = await worker.ask(ask)
        except asyncio.CancelledError:  # whoever asked went away: the worker must not keep it
            self._tasks.spawn(worker.ask(proto.LeaveCall(worker.next_req(), call.info.id,
                                                         "join abandoned")),
                              name=f"abandon:{call.info.id}")
            raise
        match reply:
            case proto.Joined() if call.leaving or self.calls.get(call.info.id) is not call:
                # Left while the worker was joining (a rejoin after the call was given up):
                # the worker must not keep it.
                with contextlib.suppress(Unavailable):
                    await worker.ask(proto.LeaveCall(worker.next_req(), call.info.id,
                                                     "left on request"))
                raise JoinCancelled.call(call.info.id)
            case proto.Joined():
                call.state = "joined"
            case proto.JoinFailed():
                raise reply.error()
            case _:
                raise Unavailable(f"worker {worker.index} answered a join with {reply.op}",
                                  code="worker_failed")

    async def _pick(self) -> WorkerProcess:
        """The ready worker with the fewest speakers, then calls; waits (up to 30 s) while
        none is ready. While the pool is starting it waits (up to 60 s) for every worker, so
        the first calls are spread instead of all going to whichever loaded first."""
        if not self._all_started.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(START_WAIT_S):
                    await self._all_started.wait()
        try:
            async with asyncio.timeout(30):
                return await self._ready_worker()
        except TimeoutError:
            raise Unavailable("no worker process is ready to take the call") from None

    async def _ready_worker(self) -> WorkerProcess:
        while True:
            ready = [w for w in self.workers if w.state == "ready"]
            if ready:
                return min(ready, key=self._load)
            if self._closing:
                raise Unavailable("the bridge is shutting down")
            waiters = [asyncio.create_task(w.ready.wait()) for w in self.workers]
            try:
                await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for t in waiters:
                    t.cancel()

    def _load(self, worker: WorkerProcess) -> tuple[int, int]:
        """(speakers, calls) on ``worker``."""
        mine = [c for c in self.calls.values() if c.worker is worker]
        return sum(len(c.speakers) for c in mine), len(mine)

    async def leave(self, call_id: str, reason: str) -> None:
        call = self.calls.get(call_id)
        if call is None or call.leaving:
            return
        call.leaving = True
        worker = call.worker
        if worker is not None and worker.state != "dead":
            with contextlib.suppress(Unavailable):
                await worker.ask(proto.LeaveCall(worker.next_req(), call_id, reason))
        # The worker's call.left (read before its reply) has unregistered the call; a call
        # whose worker is gone is left here.
        if self.calls.get(call_id) is call and call.state != "joining":
            await self._left(call, reason)

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        for worker in self.workers:
            await worker.launch()
        self._tasks.spawn(self._ping(), name="ping")
        self.started = True

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

    async def _on_message(self, worker: WorkerProcess, msg: proto.Message) -> None:
        match msg:
            case proto.Published():
                try:
                    event = ev.parse_event(msg.event)
                except (ValidationError, KeyError, TypeError):
                    log.error("worker %d sent an invalid event", worker.index)
                    return
                await self._on_event(worker, event)
            case proto.StatsReport():
                for stat in msg.stats:
                    if isinstance(stat, stats.AnalyzerState):  # what /readyz reports
                        worker.note_analyzer(stat)
                    if isinstance(stat, stats.SpeechHeard):
                        call = self.calls.get(stat.call)
                        state = call.speakers.get(stat.speaker) if call is not None else None
                        if state is not None:
                            state.apply(stat)
                    self._record(stat)
            case proto.Ready():
                await self._ready(worker, msg)
            case _:
                log.error("worker %d sent an unexpected %s", worker.index, msg.op)

    async def _ready(self, worker: WorkerProcess, msg: proto.Ready) -> None:
        worker.mark_ready(msg)
        if all(w.state == "ready" for w in self.workers):
            self._all_started.set()
        log.info("worker %d ready (pid %s)", worker.index, msg.pid)
        await self._service_ready()
        if not worker.told_service_ready:  # another is still starting: not forever
            self._tasks.spawn(self._service_ready_after(START_WAIT_S),
                              name=f"service-ready:{worker.index}")
        for name, reason in worker.degraded.items():
            if name not in self._announced_degraded:
                self._announced_degraded.add(name)
                await self._emit(ev.AnalyzerDegraded(data=ev.AnalyzerDegradedData(
                    analyzer=name, reason=reason)))

    async def _on_event(self, worker: WorkerProcess, event: ev.Event) -> None:
        call = self.calls.get(event.call.id) if event.call is not None else None
        if event.call is not None and (call is None or call.worker is not worker):
            return  # a late event of a call that has moved on or was given up
        match event:
            case _ if call is None:
                pass
            case ev.CallJoined() if call.announced:
                log.info("call %s joined again on worker %d", call.info.id, worker.index)
                return
            case ev.CallJoined():
                call.announced = True
            case ev.CallLeft():
                self._unregister(call, event.data.reason)
            case _ if event.speaker is not None:
                self._follow(call, event)
        await self._emit(event)

    def _follow(self, call: RemoteCall, event: ev.Event) -> None:
        """The call mirror: each speaker's state folded from its events."""
        assert event.speaker is not None
        sid = event.speaker.id
        if isinstance(event, ev.SpeakerJoined):
            call.speakers[sid] = SpeakerState(event.speaker)
        state = call.speakers.get(sid)
        if state is None:
            return
        state.apply(event)
        if isinstance(event, ev.SpeakerLeft):
            del call.speakers[sid]

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
        """Speakers whose worker is gone: their closing events (an open spike ends first)."""
        for sid, state in list(call.speakers.items()):
            for event in state.closing_events(call.info, reason):
                await self._emit(event)
            del call.speakers[sid]

    async def _service_ready_after(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
        await self._service_ready(force=True)

    async def _service_ready(self, *, force: bool = False) -> None:
        """Once no worker is starting, tell each ready worker that has not been told yet: what
        it left until then (the emotion batch measurement, the background preparation) runs
        now, not beside another worker's model load (on a first start with a checkpoint that
        made ``run`` ready 1.0-1.6x later). A worker restarted later is told once it is ready;
        one that dies while starting does not hold the others back, nor (``force``, after
        :data:`START_WAIT_S`) one that hangs."""
        if not force and any(w.state == "starting" for w in self.workers):
            return
        for w in self.workers:
            if w.state == "ready" and not w.told_service_ready:
                w.told_service_ready = True
                await w.send(proto.ServiceReady())

    async def _lost(self, worker: WorkerProcess, code: int) -> None:
        """The worker died: counted, and its joined calls move to another worker."""
        self._record(stats.TaskFailed("workers/exit", f"worker {worker.index} exited with {code}",
                                      time.time()))
        await self._service_ready()  # the others need not wait for it
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
        except BridgeError as exc:
            log.warning("call %s could not be joined again: %s", call.info.id, exc)
            if self.calls.get(call.info.id) is call:
                await self._left(call, "error")

    async def _ping(self) -> None:
        n = 0
        while True:
            await asyncio.sleep(PING_EVERY_S)
            n += 1
            for worker in self.workers:
                await worker.ping(n)

    def readiness(self) -> dict[str, Any]:
        out = []
        for w in self.workers:
            speakers, calls = self._load(w)
            out.append(w.readiness(calls=calls, speakers=speakers))
        return {"workers": out}

    def analyzers(self) -> dict[str, str]:
        """What the workers loaded (the first ready worker speaks for all: same config), and
        what any ready worker has degraded now (a remote model down for one is down for all,
        but each finds out on its own)."""
        ready = [w for w in self.workers if w.state == "ready"]
        if not ready:
            return {}
        out = {name: "ready" for name in ready[0].analyzers}
        for w in ready:
            out |= {name: f"degraded: {reason}" for name, reason in w.degraded.items()}
        return out

    async def aclose(self, reason: str = "shutting down") -> None:
        """Stop every worker: each leaves its calls (their events are published), then exits."""
        self._closing = True
        for worker in self.workers:
            await worker.stop(reason)
        for worker in self.workers:
            await worker.wait_stopped()
        for call in list(self.calls.values()):  # calls whose worker could not say goodbye
            await self._left(call, reason)
        await self._tasks.aclose()
