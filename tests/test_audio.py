"""PyAV frames -> 16 kHz chunks, as the live bridge will feed them (aiortc: 48 kHz s16 stereo)."""

import itertools

import av
import numpy as np
import pytest

from analyzers.types import SAMPLE_RATE
from bridge.audio import FrameConverter


def aiortc_like_frames(seconds: float, f0: float = 440.0) -> list[av.AudioFrame]:
    """What aiortc's Opus decoder hands out: 20 ms frames, 960 samples, s16, stereo, 48 kHz."""
    frames = []
    t = np.arange(int(seconds * 48000)) / 48000
    left = (0.5 * np.sin(2 * np.pi * f0 * t) * 32767).astype(np.int16)
    right = np.zeros_like(left)
    interleaved = np.stack([left, right], axis=1).reshape(1, -1)
    for i in range(0, interleaved.shape[1] // 2, 960):
        chunk = np.ascontiguousarray(interleaved[:, 2 * i : 2 * (i + 960)])
        frame = av.AudioFrame.from_ndarray(chunk, format="s16", layout="stereo")
        frame.sample_rate = 48000
        frames.append(frame)
    return frames


def test_mono_16k_contiguous_chunks() -> None:
    conv = FrameConverter(start_s=10.0)
    chunks = [c for f in aiortc_like_frames(1.0) for c in conv.convert(f)] + conv.convert(None)
    total = sum(len(c.samples) for c in chunks)
    assert total == pytest.approx(SAMPLE_RATE, abs=40)
    assert chunks[0].start_s == 10.0
    for a, b in itertools.pairwise(chunks):
        assert b.start_s == pytest.approx(a.start_s + len(a.samples) / SAMPLE_RATE)
    audio = np.concatenate([c.samples for c in chunks])
    assert audio.dtype == np.float32
    # Left channel at 0.5 full scale, right silent: the mono mix has a quarter of the power
    # (amplitude 0.25) — or half, depending on the downmix law; either way a 440 Hz tone.
    spectrum = np.abs(np.fft.rfft(audio[2000:14000]))
    assert np.argmax(spectrum) * SAMPLE_RATE / 12000 == pytest.approx(440, abs=3)
    assert 0.1 < np.abs(audio[2000:14000]).max() < 0.6


def test_per_channel_keeps_channels_apart() -> None:
    conv = FrameConverter(channels=True)
    chunks = [c for f in aiortc_like_frames(0.5) for c in conv.convert(f)]
    left = np.concatenate([c.samples for c in chunks[0::2]])
    right = np.concatenate([c.samples for c in chunks[1::2]])
    assert np.abs(left).max() > 0.4
    assert np.abs(right).max() < 1e-3


def test_flush_without_input_is_empty() -> None:
    assert FrameConverter().convert(None) == []
