"""Audio in: PyAV frames (live tracks or files) -> 16 kHz float32 ``AudioChunk``s.

Resampling is PyAV's (libswresample); nothing here writes audio anywhere.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import av
import numpy as np

from analyzers.types import SAMPLE_RATE, AudioChunk

__all__ = ["AudioDecodeError", "FrameConverter", "channel_count", "read_file"]


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
