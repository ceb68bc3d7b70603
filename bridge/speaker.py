"""One live speaker: drain the track from its first frame into the shared analysis pipeline.

aiortc decodes into an unbounded queue per track, so a track nobody reads grows without limit:
the drain loop starts before anything else. A track that delivers nothing for
``silence_timeout_s`` (its publisher was killed, or stopped sending) counts as gone: a watchdog
checks the time of the last frame (no timer per frame). Resampled audio reaches the analysis in
``FEED_S`` pieces rather than per 20 ms frame (the windows cut are the same either way).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import numpy as np
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError

from analyzers.types import SAMPLE_RATE, AudioChunk
from bridge import events as ev
from bridge.audio import FrameConverter
from bridge.pipeline import AnalysisEngine, Emit, SpeakerAnalysis

__all__ = ["FEED_S", "SpeakerPipeline"]

log = logging.getLogger(__name__)

FEED_S = 0.1  # audio handed to the analysis at a time


class SpeakerPipeline:
    def __init__(
        self,
        engine: AnalysisEngine,
        call: ev.CallInfo,
        speaker: ev.SpeakerInfo,
        track: MediaStreamTrack,
        emit: Emit,
        *,
        call_started: float,
        silence_timeout_s: float = 10.0,
    ) -> None:
        self.speaker = speaker
        self.track = track
        self.analysis = SpeakerAnalysis(engine, call, speaker, emit, offline=False)
        self._call_started = call_started
        self._silence_timeout = silence_timeout_s
        self._task: asyncio.Task[None] | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self._last_frame = 0.0
        self.frames = 0
        self.ended = asyncio.Event()
        self.reason = "left"

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        offset = loop.time() - self._call_started
        self._last_frame = loop.time()
        self._task = asyncio.create_task(self._drain(offset), name=f"drain:{self.speaker.id}")
        self._watchdog = asyncio.create_task(self._watch(self._task),
                                             name=f"silence:{self.speaker.id}")
        await self.analysis.start(round(offset, 3))

    async def _watch(self, drain: asyncio.Task[None]) -> None:
        """End the drain when no frame came for ``silence_timeout_s``."""
        loop = asyncio.get_running_loop()
        while not drain.done():
            idle = loop.time() - self._last_frame
            if idle >= self._silence_timeout:
                self.reason = "silent"
                drain.cancel()
                return
            await asyncio.sleep(min(1.0, self._silence_timeout - idle))

    async def _drain(self, offset: float) -> None:
        converter: FrameConverter | None = None
        loop = asyncio.get_running_loop()
        pending: list[AudioChunk] = []
        pending_n = 0
        feed_n = int(FEED_S * SAMPLE_RATE)
        try:
            while True:
                try:
                    frame = await self.track.recv()
                except MediaStreamError:
                    self.reason = "track ended"
                    return
                self._last_frame = loop.time()
                self.frames += 1
                if converter is None:  # time the speaker's audio from its first frame
                    converter = FrameConverter(start_s=self._last_frame - self._call_started)
                try:
                    chunks = converter.convert(frame)  # type: ignore[arg-type]
                except Exception as exc:  # garbage frame: skip it, keep the speaker
                    log.warning("speaker %s: unusable frame skipped: %s", self.speaker.id, exc)
                    continue
                pending.extend(chunks)
                pending_n += sum(len(c.samples) for c in chunks)
                if pending_n >= feed_n:
                    await self.analysis.feed(_join(pending))
                    pending, pending_n = [], 0
        finally:
            self.ended.set()

    async def aclose(self, reason: str | None = None) -> None:
        """Stop draining, emit ``speaker.left``; idempotent."""
        if reason is not None and not self.ended.is_set():
            self.reason = reason
        task, self._task = self._task, None
        if task is None:
            return
        if self._watchdog is not None:
            self._watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watchdog
            self._watchdog = None
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await self.analysis.finish(self.reason)


def _join(chunks: list[AudioChunk]) -> AudioChunk:
    """Contiguous chunks (the converter counts samples) as one."""
    if len(chunks) == 1:
        return chunks[0]
    return AudioChunk(np.concatenate([c.samples for c in chunks]), chunks[0].start_s)
