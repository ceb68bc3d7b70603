"""Audio in: PyAV frames (live tracks or files) -> 16 kHz float32 ``AudioChunk``s.

Resampling is PyAV's (libswresample); nothing here writes audio anywhere.
"""

from __future__ import annotations

from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from analyzers.types import SAMPLE_RATE, AudioChunk

__all__ = ["AudioDecodeError", "FrameConverter", "MediaClock", "channel_count", "read_file",
           "require_audio"]


class AudioDecodeError(ValueError):
    """A file or stream that cannot be decoded as audio; the message is one line."""


class FrameConverter:
    """Converts ``av.AudioFrame``s of any rate/layout/format to 16 kHz chunks.

    ``channels=False`` (default) mixes down to mono; ``channels=True`` keeps each channel and
    ``convert`` returns one chunk per channel. Time is counted in output samples from ``start_s``,
    so chunks are contiguous whatever the input's timestamps say.
    """

    def __init__(self, *, channels: bool = False, start_s: float = 0.0) -> None:
        self._per_channel = channels
        self._resampler: av.AudioResampler | None = None
        self._samples = 0
        self._start_s = start_s

    def advance(self, n_samples: int) -> None:
        """Move the output clock on by ``n_samples`` (a gap filled with silence elsewhere)."""
        self._samples += n_samples

    def convert(self, frame: av.AudioFrame | None) -> list[AudioChunk]:
        """Chunks for one frame (``None`` flushes the resampler at the end of the stream)."""
        if self._resampler is None:
            if frame is None:
                return []
            layout = frame.layout.name if self._per_channel else "mono"
            self._resampler = av.AudioResampler(format="fltp", layout=layout, rate=SAMPLE_RATE)
        out: list[AudioChunk] = []
        for resampled in self._resampler.resample(frame):
            planes = resampled.to_ndarray()  # (channels, samples) float32
            start = self._start_s + self._samples / SAMPLE_RATE
            self._samples += planes.shape[1]
            out.extend(AudioChunk(np.ascontiguousarray(p, dtype=np.float32), start)
                       for p in planes)
        return out


class MediaClock:
    """Where each received frame belongs on a live speaker's timeline (call-clock seconds).

    The timeline starts where the first frame arrived and then follows the media clock: the RTP
    timestamps aiortc puts in ``frame.pts`` (unwrapped, ``time_base`` 1/48000). A jump in them
    is a gap in the media (DTX sends ~5 packets/s in silence instead of 50; lost packets; a
    sender that stopped), and ``place`` returns how many samples of silence fill it. Arrival
    time overrules RTP only where RTP is implausible:

    - the media would run ahead of the wall clock by more than ``ahead_s``: the timestamps
      jumped (a sender or SFU reset them), so the gap is only what arrival time allows;
    - a frame that arrived live (the reader was waiting for it: ``fresh``) sits more than
      ``behind_s`` behind the wall clock: the sender paused without its timestamps saying so,
      and the timeline catches up. A frame that waited in the queue (the reader fell behind)
      says nothing about when it arrived and never moves the timeline.

    aiortc's jitter buffer holds the last packets before a pause until new ones come, so the
    wall-clock gap shows a few frames before the RTP jump; with the rules above that only moves
    the silence by those frames (~0.1 s), never adds it twice.
    """

    def __init__(self, start_s: float, *, rate: int = SAMPLE_RATE, ahead_s: float = 0.25,
                 behind_s: float = 1.0) -> None:
        self.end_s = start_s  # timeline position after the last frame placed
        self._rate = rate
        self._ahead_s = ahead_s
        self._behind_s = behind_s
        self._expected: int | None = None  # pts the next frame has if nothing is missing
        self._time_base: Fraction | None = None
        self._placed = 0
        self.gaps = 0
        self.gap_s = 0.0  # silence inserted so far

    def fill(self, upto_s: float) -> int:
        """No frame has come for a while (a sender that stopped sends nothing, not even DTX):
        the timeline moves on to ``upto_s`` as silence, so windows come due in real time.
        Returns the samples of silence. Frames that come later are placed after it (the
        ahead-of-wall rule keeps their RTP jump from adding it twice)."""
        n = max(0, round((upto_s - self.end_s) * self._rate))
        if n:
            self.gaps += 1
            self.gap_s += n / self._rate
            self.end_s += n / self._rate
        return n

    def place(self, pts: int | None, time_base: Fraction | None, duration_s: float, *,
              wall_s: float, fresh: bool) -> int:
        """Samples (at ``rate``) of silence to insert before a frame of ``duration_s`` that
        the reader got at ``wall_s``; advances the timeline past the frame."""
        gap_s = 0.0
        if (pts is not None and time_base and self._expected is not None
                and time_base == self._time_base):
            gap_s = max(0.0, float((pts - self._expected) * time_base))
        if self._placed:
            if self.end_s + gap_s + duration_s > wall_s + self._ahead_s:
                gap_s = max(0.0, wall_s - self.end_s - duration_s)
            if fresh and wall_s - (self.end_s + gap_s + duration_s) > self._behind_s:
                gap_s = wall_s - self.end_s - duration_s
        n = round(gap_s * self._rate)
        if n:
            self.gaps += 1
            self.gap_s += n / self._rate
        self.end_s += n / self._rate + duration_s
        self._placed += 1
        if pts is not None and time_base:
            self._expected = pts + round(duration_s / time_base)
            self._time_base = time_base
        else:
            self._expected = None
        return n


def _open(path: Path | str) -> av.container.InputContainer:
    path = Path(path)
    if not path.exists():
        raise AudioDecodeError(f"{path}: no such file")
    if path.is_dir():
        raise AudioDecodeError(f"{path}: is a directory")
    if path.stat().st_size == 0:
        raise AudioDecodeError(f"{path}: empty file")
    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, UnicodeDecodeError, ValueError) as exc:
        raise AudioDecodeError(f"{path}: not a readable audio file ({_reason(exc)})") from None
    if not container.streams.audio:
        container.close()
        raise AudioDecodeError(f"{path}: has no audio stream")
    return container


def require_audio(path: Path) -> None:
    """Raise :class:`AudioDecodeError` unless ``path`` decodes to at least one audio sample
    (FFmpeg probes some random bytes as audio, and a WAV may hold zero samples)."""
    container = _open(path)
    try:
        for frame in container.decode(container.streams.audio[0]):
            if frame.samples:
                return
    except av.error.FFmpegError as exc:
        raise AudioDecodeError(f"{path}: decoding failed ({_reason(exc)})") from None
    finally:
        container.close()
    raise AudioDecodeError(f"{path}: no audio in that file (nothing could be decoded)")


def channel_count(path: Path) -> int:
    with _open(path) as container:
        return container.streams.audio[0].channels or 1


def read_file(path: Path, *, per_channel: bool = False) -> Iterator[list[AudioChunk]]:
    """Decode ``path`` frame by frame; each item holds one chunk (mono) or one per channel.

    Streams: memory stays bounded by one decoded frame however long the file is.
    """
    container = _open(path)
    converter = FrameConverter(channels=per_channel)
    try:
        stream = container.streams.audio[0]
        try:
            for frame in container.decode(stream):
                chunks = converter.convert(frame)
                if chunks:
                    yield chunks
            chunks = converter.convert(None)
            if chunks:
                yield chunks
        except av.error.FFmpegError as exc:
            raise AudioDecodeError(f"{path}: decoding failed ({_reason(exc)})") from None
    finally:
        container.close()


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
