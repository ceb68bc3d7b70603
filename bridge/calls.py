"""Calls and their speakers: the registry, and who owns which task."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field

from bridge import events as ev
from bridge.connectors.base import Connector, ConnectorFactory, SpeakerTrack
from bridge.pipeline import AnalysisEngine, Emit
from bridge.speaker import SpeakerPipeline
from bridge.tasks import TaskSet

__all__ = ["Call", "CallManager"]

log = logging.getLogger(__name__)


@dataclass
class Call:
    info: ev.CallInfo
    connector: Connector
    started: float
    speakers: dict[str, SpeakerPipeline] = field(default_factory=dict)
    seen_speakers: int = 0
    empty: asyncio.Event = field(default_factory=asyncio.Event)
    watcher: asyncio.Task[None] | None = None


class CallManager:
    """Joins calls through connectors and runs one pipeline per speaker; ``aclose`` leaves all."""

    def __init__(self, engine: AnalysisEngine, emit: Emit, *, silence_timeout_s: float = 10.0,
                 ) -> None:
        self.engine = engine
        self._emit = emit
        self._silence_timeout = silence_timeout_s
        self.calls: dict[str, Call] = {}
        self._tasks = TaskSet("calls")
        self._frames_retired = 0  # frames of speakers that have left (metrics)

    def frames_total(self) -> int:
        """Audio frames received from every speaker so far, gone ones included."""
        live = sum(p.frames for c in list(self.calls.values()) for p in list(c.speakers.values()))
        return self._frames_retired + live

    async def join(self, info: ev.CallInfo, factory: ConnectorFactory) -> Call:
        """Join a call; raises ConnectorError (and registers nothing) when that fails."""
        if info.id in self.calls:
            raise ValueError(f"already in call {info.id}")
        loop = asyncio.get_running_loop()

        async def on_speaker(found: SpeakerTrack) -> None:
            await self._add_speaker(info.id, found)

        async def on_left(speaker_id: str, reason: str) -> None:
            await self._remove_speaker(info.id, speaker_id, reason)

        connector = factory(info, on_speaker, on_left)
        call = Call(info, connector, loop.time())
        self.calls[info.id] = call
        try:
            await connector.join()
        except BaseException:
            self.calls.pop(info.id, None)
            raise
        await self._emit(ev.CallJoined(call=info, data=ev.CallJoinedData()))
        call.watcher = self._tasks.spawn(self._watch_call(call), name=f"call:{info.id}")
        return call

    async def _watch_call(self, call: Call) -> None:
        """A call that ends by itself (room destroyed, room empty) is left."""
        await call.connector.ended.wait()
        if self.calls.get(call.info.id) is call:
            await self.leave(call.info.id, call.connector.end_reason)

    async def _add_speaker(self, call_id: str, found: SpeakerTrack) -> None:
        call = self.calls.get(call_id)
        if call is None or found.speaker.id in call.speakers:
            found.track.stop()
            return
        pipeline = SpeakerPipeline(self.engine, call.info, found.speaker, found.track, self._emit,
                                   call_started=call.started,
                                   silence_timeout_s=self._silence_timeout)
        call.speakers[found.speaker.id] = pipeline
        call.seen_speakers += 1
        call.empty.clear()
        await pipeline.start()
        self._tasks.spawn(self._watch(call_id, pipeline), name=f"watch:{found.speaker.id}")

    async def _watch(self, call_id: str, pipeline: SpeakerPipeline) -> None:
        """A speaker whose track ended or went silent leaves by itself."""
        await pipeline.ended.wait()
        await self._remove_speaker(call_id, pipeline.speaker.id, None)

    async def _remove_speaker(self, call_id: str, speaker_id: str, reason: str | None) -> None:
        call = self.calls.get(call_id)
        if call is not None:
            await self._retire(call, speaker_id, reason)

    async def _retire(self, call: Call, speaker_id: str, reason: str | None) -> None:
        """Stop one speaker's pipeline (``speaker.left``); idempotent."""
        pipeline = call.speakers.pop(speaker_id, None)
        if pipeline is None:
            return
        self._frames_retired += pipeline.frames
        await pipeline.aclose(reason)
        if not call.speakers:
            call.empty.set()

    async def leave(self, call_id: str, reason: str) -> None:
        call = self.calls.pop(call_id, None)
        if call is None:
            return
        for speaker_id in list(call.speakers):
            await self._retire(call, speaker_id, "call left")
        await call.connector.leave()
        watcher = call.watcher
        if watcher is not None and watcher is not asyncio.current_task():
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        loop = asyncio.get_running_loop()
        await self._emit(ev.CallLeft(call=call.info, data=ev.CallLeftData(
            offset_s=round(loop.time() - call.started, 3), reason=reason)))

    async def aclose(self, reason: str = "shutting down") -> None:
        for call_id in list(self.calls):
            await self.leave(call_id, reason)
        await self._tasks.aclose()
