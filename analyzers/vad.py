"""Voice activity detection with webrtcvad (the ``webrtcvad-wheels`` distribution)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import webrtcvad

from analyzers.types import SAMPLE_RATE

__all__ = ["VadConfig", "VoiceActivityDetector", "sanitize"]


@dataclass(frozen=True, slots=True)
class VadConfig:
    aggressiveness: int = 2  # webrtcvad mode 0 (least) .. 3 (most aggressive filtering)
    frame_ms: int = 30  # 10, 20 or 30: what webrtcvad accepts
    hangover_ms: int = 150  # speech kept on after the detector drops, to keep word endings

    def __post_init__(self) -> None:
        if self.aggressiveness not in (0, 1, 2, 3):
            raise ValueError(f"vad aggressiveness must be 0..3, got {self.aggressiveness}")
        if self.frame_ms not in (10, 20, 30):
            raise ValueError(f"vad frame_ms must be 10, 20 or 30, got {self.frame_ms}")
        if self.hangover_ms < 0:
            raise ValueError(f"vad hangover_ms must be >= 0, got {self.hangover_ms}")


def sanitize(samples: npt.NDArray[np.floating]) -> npt.NDArray[np.float32]:
    """Float32 in [-1, 1] with NaN and infinities replaced by 0: garbage never reaches an analyzer."""
    out = np.asarray(samples, dtype=np.float32)
    if not np.isfinite(out).all():
        out = np.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0)
    return np.clip(out, -1.0, 1.0)


class VoiceActivityDetector:
    """Streaming VAD: feed any number of samples, get one decision per complete frame.

    Keeps the partial frame between calls, so decisions line up with a fixed frame grid from the
    first sample of the stream.
    """

    def __init__(self, config: VadConfig | None = None) -> None:
        self.config = config or VadConfig()
        self._vad = webrtcvad.Vad(self.config.aggressiveness)
        self.frame_len = SAMPLE_RATE * self.config.frame_ms // 1000
        self._hangover_frames = self.config.hangover_ms // self.config.frame_ms
        self._pending = np.zeros(0, dtype=np.int16)
        self._hang = 0

    @property
    def frame_s(self) -> float:
        return self.config.frame_ms / 1000

    def process(self, samples: npt.NDArray[np.float32]) -> npt.NDArray[np.bool_]:
        """Speech decisions for the complete frames now available (float32 input, any length)."""
        pcm = (sanitize(samples) * 32767.0).astype(np.int16)
        if len(self._pending):
            pcm = np.concatenate([self._pending, pcm])
        n = len(pcm) // self.frame_len
        self._pending = pcm[n * self.frame_len :].copy()
        decisions = np.zeros(n, dtype=bool)
        frame_bytes = pcm[: n * self.frame_len].tobytes()
        step = self.frame_len * 2
        for i in range(n):
            if self._vad.is_speech(frame_bytes[i * step : (i + 1) * step], SAMPLE_RATE):
                self._hang = self._hangover_frames
                decisions[i] = True
            elif self._hang > 0:
                self._hang -= 1
                decisions[i] = True
        return decisions
