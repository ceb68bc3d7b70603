"""Calls and their speakers: the registry, and who owns which task.

A call is registered as ``joining`` while its connector joins, and becomes ``joined`` (with
``call.joined``) once that succeeded. Leaving a call that is still joining cancels the join: the
connector finishes the request it has in flight and tears down whatever it made remotely, the
join request gets :class:`JoinCancelled`, and no ``call.left`` is emitted (there was no
``call.joined``). Speakers found while joining wait for ``call.joined``.

A track the bridge stops analysing (the speaker left, a duplicate) is drained and discarded for
as long as it lives (:func:`~bridge.connectors.base.discard_track`), so aiortc's decode queue
never grows. On shutdown every call is left at once (concurrently).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from pydantic import BaseModel

from bridge import events as ev
from bridge.connectors.base import Connector, ConnectorFactory, SpeakerTrack, discard_track
from bridge.connectors.context import JoinContext
from bridge.errors import AlreadyJoined, JoinCancelled
from bridge.live.speaker import LiveSpeaker
from bridge.pipeline.analysis import AnalysisEngine, Emit
from bridge.tasks import TaskSet

__all__ = ["Call", "CallHost", "CallManager", "CallView", "Join"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Join:
    """A call to join, validated once where the request came in: the call, the factory that
    makes its connector (what this process joins with) and, for a join a worker process can
    make too, the connector's name and validated request model (a worker pool sends those)."""

    info: ev.CallInfo
    factory: ConnectorFactory
    connector: str | None = None
    request: BaseModel | None = None

    @classmethod
    def of(cls, connector: type[Connector], request: BaseModel, ctx: JoinContext) -> Join:
        """The join a connector's validated ``Request`` names (no connection is made here)."""
        info, factory = connector.from_request(request, ctx)
        return cls(info, factory, connector.name, request)


class CallView(Protocol):
    """What the control API and auto-join see of a call, in this process or in a worker."""

    @property
    def info(self) -> ev.CallInfo: ...
    @property
    def state(self) -> str: ...
    @property
    def ended(self) -> asyncio.Event: ...
    @property
    def end_reason(self) -> str: ...
    def summary(self) -> dict[str, Any]: ...


class CallHost(Protocol):
    """Who holds the calls: a :class:`CallManager` (one process) or a worker pool
    (:class:`bridge.workers.pool.WorkerPool`)."""

    @property
    def calls(self) -> Mapping[str, CallView]: ...
    def joined(self) -> list[Any]: ...
    async def join(self, join: Join) -> Any: ...
    async def leave(self, call_id: str, reason: str) -> None: ...
    async def aclose(self, reason: str = "shutting down") -> None: ...


@dataclass
class Call:
    info: ev.CallInfo
    connector: Connector
    started: float
    state: str = "joining"  # joining -> joined
    speakers: dict[str, LiveSpeaker] = field(default_factory=dict)
    seen_speakers: int = 0
    empty: asyncio.Event = field(default_factory=asyncio.Event)
    watcher: asyncio.Task[None] | None = None
    waiting: list[SpeakerTrack] = field(default_factory=list)  # found while joining
    join_task: asyncio.Task[None] | None = None
    settled: asyncio.Event = field(default_factory=asyncio.Event)  # the join ended either way
    leaving: bool = False
    tasks: TaskSet = field(init=False)  # tracks being discarded

    def __post_init__(self) -> None:
        self.tasks = TaskSet(f"call:{self.info.id}")

    @property
    def ended(self) -> asyncio.Event:
        """Set when the call ended by itself (room destroyed, room empty, supervision died)."""
        return self.connector.ended

    @property
    def end_reason(self) -> str:
        return self.connector.end_reason

    def summary(self) -> dict[str, Any]:
        """The control API's view of the call."""
        return {"id": self.info.id, "connector": self.info.connector, "room": self.info.room,
                "state": self.state,
                "speakers": [{"id": p.speaker.id, "display": p.speaker.display,
                              "state": "idle" if p.idle else "active",
                              "stress_index": p.analysis.latest_index,
                              "speech_s": round(p.analysis.windower.speech_s, 3)}
                             for p in list(self.speakers.values())]}


class CallManager:
    """Joins calls through connectors and runs a :class:`LiveSpeaker` per speaker; ``aclose``
    leaves all."""

    def __init__(self, engine: AnalysisEngine, emit: Emit, *, silence_timeout_s: float = 10.0,
                 gone_timeout_s: float | None = None) -> None:
        self.engine = engine
        self._emit = emit
        self._silence_timeout = silence_timeout_s
        self._gone_timeout = gone_timeout_s
        self.calls: dict[str, Call] = {}  # joining and joined
        self._tasks = TaskSet("calls")

    def joined(self) -> list[Call]:
        return [c for c in list(self.calls.values()) if c.state == "joined"]

    async def join(self, join: Join) -> Call:
        """Join a call with its factory; raises ConnectorError (and registers nothing) when that
        fails, AlreadyJoined, and JoinCancelled when the call was left while joining."""
        info, factory = join.info, join.factory
        if info.id in self.calls:
            raise AlreadyJoined.call(info.id)
        loop = asyncio.get_running_loop()

        async def on_speaker(found: SpeakerTrack) -> None:
            await self._add_speaker(info.id, found)

        async def on_left(speaker_id: str, reason: str) -> None:
            await self._remove_speaker(info.id, speaker_id, reason)

        connector = factory(info, on_speaker, on_left)
        call = Call(info, connector, loop.time())
        self.calls[info.id] = call
        task = call.join_task = asyncio.create_task(connector.join(), name=f"join:{info.id}")
        try:
            try:
                await asyncio.wait({task})
            except asyncio.CancelledError:  # whoever asked for the join went away
                task.cancel()
                await self._abandon(call)
                raise
            if task.cancelled() or call.leaving:
                await self._abandon(call)
                raise JoinCancelled.call(info.id)
            if task.exception() is not None:
                self._unregister(call)
                raise task.exception()  # type: ignore[misc]
        finally:
            call.settled.set()
        call.state = "joined"
        call.started = loop.time()  # call time 0: call.joined; speakers found so far come now
        await self._emit(ev.CallJoined(call=info, data=ev.CallJoinedData()))
        waiting, call.waiting = call.waiting, []
        for found in waiting:
            await self._add_speaker(info.id, found)
        call.watcher = self._tasks.spawn(self._watch_call(call), name=f"call:{info.id}")
        return call

    async def _abandon(self, call: Call) -> None:
        """A join that was cancelled: tear down what it made (the connector finishes the request
        in flight first), forget the call."""
        if call.join_task is not None:
            with contextlib.suppress(BaseException):
                await call.join_task
        try:
            await call.connector.leave()
        except Exception:
            log.exception("call %s: tearing down a cancelled join failed", call.info.id)
        for found in call.waiting:
            found.track.stop()
        call.waiting = []
        await call.tasks.aclose()
        self._unregister(call)

    def _unregister(self, call: Call) -> None:
        if self.calls.get(call.info.id) is call:
            del self.calls[call.info.id]

    async def _watch_call(self, call: Call) -> None:
        """A call that ends by itself (room destroyed, room empty, its supervision died) is
        left."""
        await call.connector.ended.wait()
        if self.calls.get(call.info.id) is call:
            await self.leave(call.info.id, call.connector.end_reason)

    async def _add_speaker(self, call_id: str, found: SpeakerTrack) -> None:
        call = self.calls.get(call_id)
        if call is not None and call.state == "joining":
            call.waiting.append(found)
            return
        if call is None or call.leaving or found.speaker.id in call.speakers:
            if call is not None:
                call.tasks.spawn(discard_track(found.track, found.receiver),
                                 name=f"discard:{found.speaker.id}")
            else:
                found.track.stop()
            return
        speaker = LiveSpeaker(self.engine, call.info, found.speaker, found.track, self._emit,
                              call_started=call.started,
                              silence_timeout_s=self._silence_timeout,
                              gone_timeout_s=self._gone_timeout, receiver=found.receiver)
        call.speakers[found.speaker.id] = speaker
        call.seen_speakers += 1
        call.empty.clear()
        await speaker.start()
        self._tasks.spawn(self._watch(call_id, speaker), name=f"watch:{found.speaker.id}")

    async def _watch(self, call_id: str, speaker: LiveSpeaker) -> None:
        """A speaker whose track ended, went silent for good or failed leaves by itself."""
        await speaker.ended.wait()
        await self._remove_speaker(call_id, speaker.speaker.id, None)

    async def _remove_speaker(self, call_id: str, speaker_id: str, reason: str | None) -> None:
        call = self.calls.get(call_id)
        if call is not None:
            await self._retire(call, speaker_id, reason)

    async def _retire(self, call: Call, speaker_id: str, reason: str | None) -> None:
        """Stop one live speaker (``speaker.left``); its track, if it still lives, is
        discarded from then on. Idempotent."""
        speaker = call.speakers.pop(speaker_id, None)
        if speaker is None:
            return
        await speaker.aclose(reason)
        if speaker.track.readyState != "ended":
            call.tasks.spawn(discard_track(speaker.track, speaker.receiver),
                             name=f"discard:{speaker_id}")
        if not call.speakers:
            call.empty.set()

    async def leave(self, call_id: str, reason: str) -> None:
        """Leave a call (``call.left``), or cancel its join when it is still joining."""
        call = self.calls.get(call_id)
        if call is None or call.leaving:
            return
        call.leaving = True
        if call.state == "joining":
            if call.join_task is not None:
                call.join_task.cancel()
            await call.settled.wait()
            return
        self._unregister(call)
        await asyncio.gather(*(self._retire(call, s, "call left") for s in list(call.speakers)))
        try:
            await call.connector.leave()
        except Exception:
            log.exception("call %s: the connector failed to leave cleanly", call_id)
        await call.tasks.aclose()
        watcher = call.watcher
        if watcher is not None and watcher is not asyncio.current_task():
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        loop = asyncio.get_running_loop()
        await self._emit(ev.CallLeft(call=call.info, data=ev.CallLeftData(
            offset_s=round(loop.time() - call.started, 3), reason=reason)))

    async def aclose(self, reason: str = "shutting down") -> None:
        """Leave every call at once (a shutdown must fit in the termination grace period)."""
        await asyncio.gather(*(self.leave(call_id, reason) for call_id in list(self.calls)))
        await self._tasks.aclose()
