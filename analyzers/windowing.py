"""Turn a stream of audio chunks into overlapping analysis windows with a VAD speech mask."""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from analyzers.types import SAMPLE_RATE, AudioChunk, SpeechWindow
from analyzers.vad import VadConfig, VoiceActivityDetector, sanitize

__all__ = ["SpeechWindower", "WindowConfig"]


@dataclass(frozen=True, slots=True)
class WindowConfig:
    window_s: float = 4.0  # analysis window length
    hop_s: float = 2.0  # a window is considered every hop
    min_voiced_s: float = 1.0  # windows with less speech than this are skipped
    emotion_max_s: float = 8.0  # at most this much new speech is kept for the emotion model

    def __post_init__(self) -> None:
        if not (0 < self.hop_s <= self.window_s):
            raise ValueError("windowing needs 0 < hop_s <= window_s")
        if not (0 <= self.min_voiced_s <= self.window_s):
            raise ValueError("windowing needs 0 <= min_voiced_s <= window_s")
        if self.emotion_max_s <= 0:
            raise ValueError("windowing needs emotion_max_s > 0")


class SpeechWindower:
    """Streaming: ``push`` chunks as they arrive, get back the windows that became due.

    Memory is bounded by ``window_s`` of audio plus ``emotion_max_s`` of new speech, however
    long the stream runs.
    """

    def __init__(self, config: WindowConfig | None = None, vad: VadConfig | None = None) -> None:
        self.config = config or WindowConfig()
        self.vad = VoiceActivityDetector(vad)
        self._frame = self.vad.frame_len
        self._window_frames = round(self.config.window_s / self.vad.frame_s)
        self._pending = np.zeros(0, dtype=np.float32)
        self._frames: deque[npt.NDArray[np.float32]] = deque(maxlen=self._window_frames)
        self._mask: deque[bool] = deque(maxlen=self._window_frames)
        self._new_speech: deque[npt.NDArray[np.float32]] = deque(
            maxlen=max(1, math.ceil(self.config.emotion_max_s / self.vad.frame_s))
        )
        self._origin_s: float | None = None
        self._frames_seen = 0
        self._next_due_s = 0.0
        self.speech_s = 0.0  # total voiced seconds so far
        self.audio_s = 0.0  # total seconds so far

    @property
    def now_s(self) -> float:
        """Stream time at the end of the last complete VAD frame."""
        return (self._origin_s or 0.0) + self._frames_seen * self.vad.frame_s

    def push(self, chunk: AudioChunk) -> list[SpeechWindow]:
        if self._origin_s is None:
            self._origin_s = chunk.start_s
            self._next_due_s = chunk.start_s + self.config.hop_s
        samples = sanitize(chunk.samples)
        if len(self._pending):
            samples = np.concatenate([self._pending, samples])
        n = len(samples) // self._frame
        self._pending = samples[n * self._frame :].copy()
        if n == 0:
            return []
        whole = samples[: n * self._frame]
        decisions = self.vad.process(whole)
        frames = whole.reshape(n, self._frame)
        due: list[SpeechWindow] = []
        for i in range(n):
            self._frames.append(frames[i])
            self._mask.append(bool(decisions[i]))
            if decisions[i]:
                self._new_speech.append(frames[i])
            self._frames_seen += 1
            if self.now_s + 1e-9 >= self._next_due_s:
                self._next_due_s += self.config.hop_s
                window = self._make_window()
                if window is not None:
                    due.append(window)
        voiced = int(decisions.sum())
        self.speech_s += voiced * self.vad.frame_s
        self.audio_s += n * self.vad.frame_s
        return due

    def flush(self) -> list[SpeechWindow]:
        """At the end of the stream: a last window if enough new speech is waiting."""
        if self._frames_seen == 0:
            return []
        window = self._make_window()
        return [window] if window is not None and len(window.new_speech) else []

    def _make_window(self) -> SpeechWindow | None:
        mask = np.fromiter(self._mask, dtype=bool, count=len(self._mask))
        if mask.sum() * self.vad.frame_s < self.config.min_voiced_s or not mask.any():
            return None
        samples = np.concatenate(self._frames)
        new_speech = (
            np.concatenate(self._new_speech) if self._new_speech else np.zeros(0, np.float32)
        )
        self._new_speech.clear()
        end = self.now_s
        return SpeechWindow(
            samples=samples,
            start_s=end - len(samples) / SAMPLE_RATE,
            end_s=end,
            speech_mask=mask,
            frame_s=self.vad.frame_s,
            new_speech=new_speech,
        )
