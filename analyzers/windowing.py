"""Turn a stream of audio chunks into overlapping analysis windows with a VAD speech mask."""

from __future__ import annotations

import itertools
import math
from collections import deque
from typing import Annotated

import numpy as np
import numpy.typing as npt
from pydantic import ConfigDict, Field
from pydantic.dataclasses import dataclass

from analyzers.types import SAMPLE_RATE, AudioChunk, QuietWindow, SpeechWindow
from analyzers.vad import Detector, SileroModel, VadConfig, make_detector, sanitize

__all__ = ["SpeechWindower", "WindowConfig"]

_STREAMS = itertools.count(1)  # stream ids, unique in the process
LEVEL_MEMORY_S = 30.0  # the speaker's own level: the median of this much of its recent speech
LEVEL_WARMUP_S = 3.0  # no level is known before this much speech was heard


@dataclass(frozen=True, slots=True, config=ConfigDict(extra="forbid"))
class WindowConfig:
    """The ``[windowing]`` section: how speech is cut into analysis windows and emotion chunks.
    Validated on construction."""

    window_s: Annotated[float, Field(gt=0, le=60, description="analysis window length")] = 4.0
    hop_s: Annotated[float, Field(gt=0, le=60,
                                  description="a window is considered every hop")] = 2.0
    min_voiced_s: Annotated[float, Field(
        ge=0, description="windows with less speech than this are skipped")] = 1.0
    emotion_chunk_s: Annotated[float, Field(
        gt=0, le=60, description="new speech goes to the emotion model in pieces this long")] = 4.0
    emotion_max_s: Annotated[float, Field(
        gt=0, le=60, description="at most this much new speech is kept for the emotion "
                                 "model")] = 8.0

    def __post_init__(self) -> None:
        if self.hop_s > self.window_s:
            raise ValueError("windowing needs hop_s <= window_s")
        if self.min_voiced_s > self.window_s:
            raise ValueError("windowing needs min_voiced_s <= window_s")
        if self.emotion_chunk_s > self.emotion_max_s:
            raise ValueError("windowing needs emotion_chunk_s <= emotion_max_s")


class SpeechWindower:
    """Streaming: ``push`` chunks as they arrive, get back the windows that became due
    (``push_due`` also returns the due windows that had too little speech, as ``QuietWindow``).

    Memory is bounded by ``window_s`` of audio plus ``emotion_max_s`` of new speech, however
    long the stream runs.
    """

    def __init__(self, config: WindowConfig | None = None, vad: VadConfig | None = None, *,
                 silero: SileroModel | None = None) -> None:
        self.config = config or WindowConfig()
        # ``silero``: the model all speakers share, when the VAD engine is silero.
        self.vad: Detector = make_detector(vad, silero)
        self._frame = self.vad.frame_len
        self._window_frames = round(self.config.window_s / self.vad.frame_s)
        self._pending = np.zeros(0, dtype=np.float32)
        self._frames: deque[npt.NDArray[np.float32]] = deque(maxlen=self._window_frames)
        self._mask: deque[bool] = deque(maxlen=self._window_frames)
        self._new_speech: deque[npt.NDArray[np.float32]] = deque(
            maxlen=max(1, math.ceil(self.config.emotion_max_s / self.vad.frame_s))
        )
        self._chunk_frames = max(1, round(self.config.emotion_chunk_s / self.vad.frame_s))
        self._levels: deque[float] = deque(maxlen=round(LEVEL_MEMORY_S / self.vad.frame_s))
        self._origin_s: float | None = None
        self.stream = next(_STREAMS)
        self._frames_seen = 0
        self._next_due_s = 0.0
        self._cut_frames = 0  # frames seen when the last SpeechWindow was cut
        self.speech_s = 0.0  # total voiced seconds so far
        self.audio_s = 0.0  # total seconds so far

    @property
    def now_s(self) -> float:
        """Stream time at the end of the last complete VAD frame."""
        return (self._origin_s or 0.0) + self._frames_seen * self.vad.frame_s

    def push(self, chunk: AudioChunk) -> list[SpeechWindow]:
        """The windows with enough speech that became due."""
        return [w for w in self.push_due(chunk) if isinstance(w, SpeechWindow)]

    def push_due(self, chunk: AudioChunk) -> list[SpeechWindow | QuietWindow]:
        """Every window that became due: analysable ones, and quiet ones (too little speech)."""
        whole = self.take(chunk)
        return self.advance(whole, self.vad.process(whole)) if len(whole) else []

    def take(self, chunk: AudioChunk) -> npt.NDArray[np.float32]:
        """The first half of :meth:`push_due`, for a caller that runs the VAD itself: the
        whole VAD frames now available (the rest waits). Hand them, with the VAD's decisions
        on exactly these samples, to :meth:`advance` before the next ``take``."""
        if self._origin_s is None:
            self._origin_s = chunk.start_s
            self._next_due_s = chunk.start_s + self.config.hop_s
        samples = sanitize(chunk.samples)
        if len(self._pending):
            samples = np.concatenate([self._pending, samples])
        n = len(samples) // self._frame
        self._pending = samples[n * self._frame :].copy()
        return samples[: n * self._frame]

    def advance(self, whole: npt.NDArray[np.float32], decisions: npt.NDArray[np.bool_],
                ) -> list[SpeechWindow | QuietWindow]:
        """The second half of :meth:`push_due`: frames and their decisions into the window."""
        n = len(whole) // self._frame
        if n == 0:
            return []
        frames = whole.reshape(n, self._frame)
        level = 10 * np.log10(np.mean(np.square(frames, dtype=np.float64), axis=1) + 1e-12)
        due: list[SpeechWindow | QuietWindow] = []
        for i in range(n):
            self._frames.append(frames[i])
            self._mask.append(bool(decisions[i]))
            if decisions[i]:
                self._new_speech.append(frames[i])
                # Frame by frame, so a window's own level never includes later frames (it
                # did up to the end of the caller's chunk: results depended on how the audio
                # was cut, 20 ms live, a FLAC file's 4096-sample frames offline).
                self._levels.append(float(level[i]))
            self._frames_seen += 1
            if self.now_s + 1e-9 >= self._next_due_s:
                self._next_due_s += self.config.hop_s
                due.append(self._make_window() or QuietWindow(self.now_s))
        voiced = int(decisions.sum())
        self.speech_s += voiced * self.vad.frame_s
        self.audio_s += n * self.vad.frame_s
        return due

    @property
    def own_level_db(self) -> float | None:
        """This speaker's own speech level: the median level (dB re full scale, per VAD frame)
        of the speech the VAD passed in the last 30 s; None before 3 s of it. A VAD hears any
        voice, this track's or one leaking in from the room or the far end; prosody takes only
        voicing near this level as the speaker's (``ProsodyConfig.crosstalk_db``)."""
        if len(self._levels) * self.vad.frame_s < LEVEL_WARMUP_S:
            return None
        return float(np.median(np.fromiter(self._levels, float, len(self._levels))))

    def push_silence(self, n_samples: int) -> list[SpeechWindow | QuietWindow]:
        """``n_samples`` of silence: a gap in the media (DTX, packet loss, a sender that stopped)
        enters the timeline at its true length. Costs O(window) however long the gap: once the
        window holds nothing but silence, the rest is skipped and its due windows come back as
        one ``QuietWindow`` run."""
        if n_samples <= 0:
            return []
        if self._origin_s is None:
            raise ValueError("silence before the first audio has no place on the timeline")
        # Through the VAD until the window holds only silence (the hangover runs out there too).
        lead = (self._frame - len(self._pending)) % self._frame + self._window_frames * self._frame
        head = min(n_samples, lead)
        due = self.push_due(AudioChunk(np.zeros(head, np.float32), self.now_s))
        rest = n_samples - head
        if rest == 0:
            return due
        skipped, tail = divmod(rest, self._frame)
        self._frames_seen += skipped
        self.audio_s += skipped * self.vad.frame_s
        hop = self.config.hop_s
        now = self.now_s
        if now + 1e-9 >= self._next_due_s:
            hops = math.floor((now + 1e-9 - self._next_due_s) / hop) + 1
            first = self._next_due_s
            self._next_due_s += hops * hop
            due.append(QuietWindow(first + (hops - 1) * hop, first if hops > 1 else None))
        if tail:
            due.extend(self.push_due(AudioChunk(np.zeros(tail, np.float32), self.now_s)))
        return due

    def flush(self) -> list[SpeechWindow]:
        """At the end of the stream: a last window carrying whatever new speech is waiting."""
        if self._frames_seen == 0 or not self._new_speech:
            return []
        window = self._make_window(final=True)
        return [window] if window is not None else []

    def _make_window(self, final: bool = False) -> SpeechWindow | None:
        mask = np.fromiter(self._mask, dtype=bool, count=len(self._mask))
        if mask.sum() * self.vad.frame_s < self.config.min_voiced_s or not mask.any():
            return None
        samples = np.concatenate(self._frames)
        # New speech waits until a whole emotion chunk has gathered (fewer, longer model calls:
        # each call has a fixed cost), or the stream ends. A chunk is exactly that long, the
        # rest waits for the next one: chunks of one length from many speakers share one
        # forward pass (analyzers/batching.py).
        if final:
            take = len(self._new_speech)
        else:
            take = self._chunk_frames if len(self._new_speech) >= self._chunk_frames else 0
        if take:
            new_speech = np.concatenate([self._new_speech.popleft() for _ in range(take)])
        else:
            new_speech = np.zeros(0, np.float32)
        end = self.now_s
        # Voiced time in the frames no earlier window held (overlapping windows share frames).
        fresh = min(len(mask), self._frames_seen - self._cut_frames)
        self._cut_frames = self._frames_seen
        return SpeechWindow(
            samples=samples,
            start_s=end - len(samples) / SAMPLE_RATE,
            end_s=end,
            speech_mask=mask,
            frame_s=self.vad.frame_s,
            new_speech=new_speech,
            stream=self.stream,
            first_sample=(self._frames_seen - len(self._frames)) * self._frame,
            fresh_voiced_s=float(mask[len(mask) - fresh:].sum()) * self.vad.frame_s,
            own_level_db=self.own_level_db,
        )
