"""One live speaker (:class:`LiveSpeaker`): its track drained from the first frame into its
:class:`~bridge.pipeline.analysis.SpeakerAnalysis`.

aiortc decodes into an unbounded queue per track, so a track nobody reads grows without limit:
the drain loop starts before anything else and runs for as long as the track lives.

Time comes from the media clock (:class:`~bridge.pipeline.audio.MediaClock`): RTP timestamps, arrival
time where they jump. Gaps (DTX, lost packets, a sender that stopped) enter the analysis as
silence of their true length, so offsets, windows and pause ratios stay on the call's clock.

Quiet is not gone: a track that delivers no frame for ``silence_timeout_s`` is reported idle
(``speaker.idle``) and keeps being drained; when frames come again the same speaker, with its
baseline, is analysed again at once (``speaker.resumed``). Only the connector (leave,
unpublish, connection closed) or ``gone_timeout_s`` without frames (reason ``silent``) ends a
speaker. A watchdog checks the time of the last frame (no timer per frame). An unexpected error
in the drain ends this speaker alone, with reason ``error``.

Resampled audio reaches the analysis in ``FEED_S`` pieces rather than per 20 ms frame (the
windows cut are the same either way).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import cast

import av
import numpy as np
from aiortc import MediaStreamTrack, RTCRtpReceiver
from aiortc.mediastreams import MediaStreamError

from analyzers.types import SAMPLE_RATE, AudioChunk
from bridge import events as ev
from bridge import stats
from bridge.pipeline.analysis import AnalysisEngine, Emit, SpeakerAnalysis
from bridge.pipeline.audio import FrameConverter, MediaClock
from bridge.tasks import report_failure

__all__ = ["FEED_S", "LiveSpeaker"]

log = logging.getLogger(__name__)

FEED_S = 0.1  # audio handed to the analysis at a time
FRESH_S = 0.001  # a read that waited at least this long got a frame that had just arrived
# No frame for FILL_AFTER_S (20 ms is normal; DTX sends one per 400 ms): the timeline moves on
# as silence up to FILL_LAG_S before now, so windows come due while a sender sends nothing.
FILL_AFTER_S = 0.3
FILL_LAG_S = 0.1


class LiveSpeaker:
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
        gone_timeout_s: float | None = None,
        receiver: RTCRtpReceiver | None = None,
    ) -> None:
        self.speaker = speaker
        self.receiver = receiver
        self.call = call
        self.track = track
        self.analysis = SpeakerAnalysis(engine, call, speaker, emit, offline=False)
        self._emit = emit
        self._call_started = call_started
        self._silence_timeout = silence_timeout_s
        self._gone_timeout = gone_timeout_s
        self._task: asyncio.Task[None] | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self._last_frame = 0.0
        self.clock: MediaClock | None = None
        self.frames = 0
        self._reported = (0, 0.0)  # frames and speech seconds already in stats
        self.idle = False
        self.ended = asyncio.Event()
        self.reason = "left"

    def _now(self) -> float:
        """Call time: seconds since the call started, on the event loop's monotonic clock."""
        return asyncio.get_running_loop().time() - self._call_started

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._last_frame = loop.time()
        self._task = asyncio.create_task(self._drain(), name=f"drain:{self.speaker.id}")
        self._watchdog = asyncio.create_task(self._watch(self._task),
                                             name=f"silence:{self.speaker.id}")
        await self.analysis.start(round(self._now(), 3))

    async def _watch(self, drain: asyncio.Task[None]) -> None:
        """Report the speaker idle after ``silence_timeout_s`` without frames; end the drain
        after ``gone_timeout_s``."""
        loop = asyncio.get_running_loop()
        gone = self._gone_timeout
        while not drain.done():
            self._report()
            silent = loop.time() - self._last_frame
            if gone is not None and silent >= gone:
                self.reason = "silent"
                drain.cancel()
                return
            if not self.idle and silent >= self._silence_timeout:
                self.idle = True
                await self._emit(ev.SpeakerIdle(call=self.call, speaker=self.speaker, data=(
                    ev.SpeakerIdleData(offset_s=round(self._now(), 3), silent_s=round(silent, 3)))))
            due = [t - silent for t in (self._silence_timeout if not self.idle else None, gone)
                   if t is not None and t > silent]
            await asyncio.sleep(min([1.0, *due]))

    async def _drain(self) -> None:
        feed: _Gatherer | None = None
        clock: MediaClock | None = None
        loop = asyncio.get_running_loop()
        try:
            while True:
                asked = loop.time()
                try:
                    async with asyncio.timeout(None if clock is None else FILL_AFTER_S):
                        frame = await self.track.recv()
                except TimeoutError:  # nothing comes: time passes as silence, in real time
                    assert clock is not None and feed is not None
                    await feed.silence(clock.fill(loop.time() - self._call_started - FILL_LAG_S))
                    continue
                except MediaStreamError:
                    self.reason = "track ended"
                    return
                now = loop.time()
                idle_s = now - self._last_frame
                self._last_frame = now
                self.frames += 1
                wall = now - self._call_started
                try:
                    audio = cast(av.AudioFrame, frame)
                    duration = audio.samples / audio.sample_rate
                    pts, time_base = audio.pts, audio.time_base
                except (AttributeError, TypeError, ZeroDivisionError):
                    log.warning("speaker %s: a frame without audio timing skipped",
                                self.speaker.id)
                    continue
                if clock is None:  # the speaker's timeline starts where its first frame arrived
                    clock = self.clock = MediaClock(wall - duration)
                    feed = _Gatherer(self.analysis, FrameConverter(start_s=clock.end_s))
                assert feed is not None
                await feed.silence(clock.place(pts, time_base, duration, wall_s=wall,
                                               fresh=now - asked >= FRESH_S))
                if self.idle:
                    self.idle = False
                    await self._emit(ev.SpeakerResumed(
                        call=self.call, speaker=self.speaker, data=ev.SpeakerResumedData(
                            offset_s=round(clock.end_s - duration, 3), idle_s=round(idle_s, 3))))
                try:
                    chunks = feed.converter.convert(audio)
                except Exception as exc:  # garbage frame: its time passes as silence
                    log.warning("speaker %s: unusable frame skipped: %s", self.speaker.id, exc)
                    await feed.silence(round(duration * SAMPLE_RATE))
                    continue
                await feed.audio(chunks)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # this speaker ends; the call and its other speakers go on
            self.reason = "error"
            report_failure("speaker/drain", exc, name=f"draining speaker {self.speaker.id}")
        finally:
            self.ended.set()

    def _report(self) -> None:
        """Frames and speech since the last report, as statistics (about once a second)."""
        frames, speech = self._reported
        now = (self.frames, self.analysis.windower.speech_s)
        if now[0] > frames:
            self.analysis.engine.record(stats.FramesReceived(now[0] - frames))
        if now[1] > speech:
            self.analysis.engine.record(stats.SpeechHeard(self.call.id, self.speaker.id,
                                                          now[1] - speech))
        self._reported = now

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
        self._report()
        await self.analysis.finish(self.reason, at_s=round(self._now(), 3))


class _Gatherer:
    """Audio on its way to a speaker's analysis: converted chunks gather to ``FEED_S``; a gap
    first hands on what gathered, then enters as silence (the converter's clock moves on)."""

    def __init__(self, analysis: SpeakerAnalysis, converter: FrameConverter) -> None:
        self._analysis = analysis
        self.converter = converter
        self._pending: list[AudioChunk] = []
        self._pending_n = 0

    async def audio(self, chunks: list[AudioChunk]) -> None:
        self._pending.extend(chunks)
        self._pending_n += sum(len(c.samples) for c in chunks)
        if self._pending_n >= FEED_S * SAMPLE_RATE:
            await self._flush()

    async def silence(self, n_samples: int) -> None:
        if n_samples <= 0:
            return
        await self._flush()
        self.converter.advance(n_samples)
        await self._analysis.feed_silence(n_samples)

    async def _flush(self) -> None:
        if self._pending:
            chunks, self._pending, self._pending_n = self._pending, [], 0
            await self._analysis.feed(_join(chunks))


def _join(chunks: list[AudioChunk]) -> AudioChunk:
    """Contiguous chunks (the converter counts samples) as one."""
    if len(chunks) == 1:
        return chunks[0]
    return AudioChunk(np.concatenate([c.samples for c in chunks]), chunks[0].start_s)
