"""One live speaker: drain the track from its first frame into the shared analysis pipeline.

aiortc decodes into an unbounded queue per track, so a track nobody reads grows without limit:
the drain loop starts before anything else. A track that delivers nothing for
``silence_timeout_s`` (its publisher was killed, or stopped sending) counts as gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError

from bridge import events as ev
from bridge.audio import FrameConverter
from bridge.pipeline import AnalysisEngine, Emit, SpeakerAnalysis

__all__ = ["SpeakerPipeline"]

log = logging.getLogger(__name__)


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
        self.frames = 0
        self.ended = asyncio.Event()
        self.reason = "left"

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        offset = loop.time() - self._call_started
        self._task = asyncio.create_task(self._drain(offset), name=f"drain:{self.speaker.id}")
        await self.analysis.start(round(offset, 3))

    async def _drain(self, offset: float) -> None:
        converter: FrameConverter | None = None
        loop = asyncio.get_running_loop()
        try:
            while True:
                try:
                    # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancel that
                    # lands as a frame arrives (CPython gh-86296), and then leaving hangs; it
                    # also costs a task per frame.
                    async with asyncio.timeout(self._silence_timeout):
                        frame = await self.track.recv()
                except TimeoutError:
                    self.reason = "silent"
                    return
                except MediaStreamError:
                    self.reason = "track ended"
                    return
                self.frames += 1
                if converter is None:  # time the speaker's audio from its first frame
                    converter = FrameConverter(start_s=loop.time() - self._call_started)
                try:
                    chunks = converter.convert(frame)  # type: ignore[arg-type]
                except Exception as exc:  # garbage frame: skip it, keep the speaker
                    log.warning("speaker %s: unusable frame skipped: %s", self.speaker.id, exc)
                    continue
                for chunk in chunks:
                    await self.analysis.feed(chunk)
        finally:
            self.ended.set()

    async def aclose(self, reason: str | None = None) -> None:
        """Stop draining, emit ``speaker.left``; idempotent."""
        if reason is not None and not self.ended.is_set():
            self.reason = reason
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await self.analysis.finish(self.reason)
