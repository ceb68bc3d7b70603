"""PyAV frames -> 16 kHz chunks, as the live bridge will feed them (aiortc: 48 kHz s16 stereo)."""

from __future__ import annotations

import itertools
from fractions import Fraction

import av
import numpy as np
import pytest

from analyzers.types import SAMPLE_RATE
from bridge.pipeline.audio import FrameConverter, MediaClock


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


TB = Fraction(1, 48000)
F = 0.02  # one 20 ms Opus frame


class Feed:
    """Frames as the drain sees them: (pts, wall_s when read, fresh)."""

    def __init__(self, wall: float = 5.0) -> None:
        self.frames: list[tuple[int, float, bool]] = []
        self.pts, self.wall = 0, wall

    def live(self, n: int, *, fresh: bool = True, wall_step: float = F) -> Feed:
        for _ in range(n):
            self.frames.append((self.pts, self.wall, fresh))
            self.pts += 960
            self.wall += wall_step
        return self

    def skip(self, *, pts_s: float = 0.0, wall_s: float = 0.0) -> Feed:
        self.pts += round(pts_s * 48000)
        self.wall += wall_s
        return self

    def run(self, start: float = 5.0) -> tuple[MediaClock, list[int]]:
        clock = MediaClock(start)
        return clock, [clock.place(p, TB, F, wall_s=w, fresh=f) for p, w, f in self.frames]


def test_clock_follows_rtp_through_dtx_and_loss() -> None:
    """DTX (one packet per 400 ms in silence) and a lost packet: the gaps are filled with
    silence of their RTP length and the timeline keeps to the wall clock."""
    feed = Feed().live(50)  # 1 s of speech
    for _ in range(25):  # 10 s of DTX: a packet every 400 ms
        feed.skip(pts_s=19 * F, wall_s=19 * F).live(1)
    feed.skip(pts_s=F, wall_s=F).live(50)  # one packet lost, then speech
    clock, gaps = feed.run()
    assert sum(gaps) == 25 * 19 * 320 + 320  # 16 kHz samples: every missing 20 ms filled
    assert clock.end_s == pytest.approx(feed.wall, abs=1e-6)


def test_clock_jitter_buffer_prefetch_moves_the_silence_a_little_and_adds_it_once() -> None:
    """aiortc releases the last frames before a pause only when packets come again: the wall gap
    shows 5 frames before the RTP jump (measured with aiortc 1.16). The silence is inserted
    once, within 0.1 s of where it belongs."""
    feed = Feed().live(45).skip(wall_s=2.0)  # the sender paused 2 s
    feed.live(5, wall_step=0.0)  # the held frames come out at once ...
    feed.skip(pts_s=2.0).live(20)  # ... then the first frame after the pause, 2 s later in RTP
    clock, gaps = feed.run()
    assert sum(gaps) / 16000 == pytest.approx(2.0, abs=0.11)
    assert clock.end_s == pytest.approx(feed.wall, abs=0.11)


def test_clock_ignores_timestamp_resets_and_a_reader_that_fell_behind() -> None:
    feed = Feed().live(50)
    feed.skip(pts_s=2**32 / 48000).live(50)  # aiortc unwraps a timestamp reset as a wrap
    feed.skip(wall_s=3.0).live(150, fresh=False, wall_step=0.0)  # the loop was busy 3 s
    clock, gaps = feed.run()
    assert sum(gaps) == 0  # no silence invented: the audio was contiguous all along
    assert clock.end_s == pytest.approx(5.0 + 250 * F)


def test_clock_catches_up_when_a_sender_pauses_without_saying_so() -> None:
    """A sender whose timestamps do not jump across a pause: a live frame far behind the wall
    clock moves the timeline on (the pause is silence)."""
    feed = Feed().live(50).skip(wall_s=5.0).live(50)
    clock, gaps = feed.run()
    assert sum(gaps) / 16000 == pytest.approx(5.0, abs=0.03)
    assert clock.end_s == pytest.approx(feed.wall, abs=0.03)


def test_clock_without_timestamps_counts_frames_and_still_catches_up() -> None:
    clock = MediaClock(0.0)
    # wall_s: when the frame was read, i.e. when its 20 ms were over
    assert [clock.place(None, None, F, wall_s=(i + 1) * F, fresh=True)
            for i in range(10)] == [0] * 10
    assert clock.place(None, None, F, wall_s=11 * F + 4.0, fresh=True) == 4 * 16000
