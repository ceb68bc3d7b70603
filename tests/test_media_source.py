"""The demo's media source track: a clip in real time, looped without restarting its clock."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from aiortc.mediastreams import MediaStreamError

from bridge.demo.media_source import FRAME, ClipTrack
from tests.conftest import SR, harmonic


def _clip(tmp_path: Path, seconds: float) -> Path:
    path = tmp_path / "clip.wav"
    sf.write(path, harmonic(200, seconds), SR, subtype="PCM_16")
    return path


async def test_a_looped_clip_keeps_its_timestamps_running_and_its_memory(tmp_path: Path) -> None:
    track = ClipTrack(_clip(tmp_path, 0.1), loop=True)  # five 20 ms frames
    held = track._pcm  # decoded once: looping allocates nothing new
    frames = [await track.recv() for _ in range(16)]  # more than three times round
    assert [f.pts for f in frames] == [i * FRAME for i in range(16)]  # never restarts
    assert all(f.samples == FRAME and f.sample_rate == SR for f in frames)
    first, sixth = frames[0].to_ndarray(), frames[5].to_ndarray()
    assert np.array_equal(first, sixth)  # the sixth frame is the clip's first again
    assert track._pcm is held
    track.stop()
    with pytest.raises(MediaStreamError):
        await track.recv()


async def test_a_clip_without_loop_ends_the_track(tmp_path: Path) -> None:
    track = ClipTrack(_clip(tmp_path, 0.1), loop=False)
    got = [await track.recv() for _ in range(5)]
    assert len(got) == 5
    with pytest.raises(MediaStreamError):
        await track.recv()
    assert track.readyState == "ended"
