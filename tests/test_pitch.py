"""analyzers.pitch against librosa.yin: the same F0 track, value for value (librosa is a test
dependency; the product no longer imports it)."""

import numpy as np
import pytest

from analyzers.pitch import frames, yin
from bridge.pipeline.audio import read_file
from tests.conftest import CALM, CALM_THEN_STRESSED, SR, harmonic
from tests.noise import noise

librosa = pytest.importorskip("librosa")  # a dev dependency: present wherever the suite runs


def _speech(path: object, seconds: float) -> np.ndarray:
    y = np.concatenate([chunk.samples for [chunk] in read_file(path)])
    return y[:int(seconds * SR)]


SIGNALS = {
    "speech": lambda: _speech(CALM, 12.0),
    "stressed speech": lambda: _speech(CALM_THEN_STRESSED, 20.0)[-8 * SR:],
    "pink noise": lambda: noise("pink", 3.0, -26.0, seed=1),
    "brown noise": lambda: noise("brown", 3.0, -24.0, seed=2),
    "silence": lambda: np.zeros(SR, np.float32),
    "harmonic voice": lambda: harmonic(180.0, 2.0, jitter=0.01, shimmer=0.05),
    "speech in float64": lambda: _speech(CALM, 4.0).astype(np.float64),
}


@pytest.mark.parametrize("name", list(SIGNALS))
@pytest.mark.parametrize(("fmin", "fmax", "frame_length"),
                         [(65.0, 500.0, 512), (65.0, 500.0, 1024), (100.0, 300.0, 512),
                          (40.0, 1000.0, 1024)])
def test_yin_equals_librosa_value_for_value(name: str, fmin: float, fmax: float,
                                            frame_length: int) -> None:
    y = SIGNALS[name]()
    ours = yin(y, fmin=fmin, fmax=fmax, sr=SR, frame_length=frame_length, hop_length=160)
    theirs = librosa.yin(y, fmin=fmin, fmax=fmax, sr=SR, frame_length=frame_length,
                         hop_length=160, center=False)
    assert ours.shape == theirs.shape
    np.testing.assert_array_equal(ours, theirs)
    if name == "harmonic voice":  # and it is a pitch tracker, not two equal wrong answers
        assert np.median(ours) == pytest.approx(180.0, rel=0.02)


def test_frames_are_librosas_frames_as_rows() -> None:
    y = np.arange(5000, dtype=np.float32)
    ours = frames(y, 512, 160)
    np.testing.assert_array_equal(ours, librosa.util.frame(y, frame_length=512,
                                                           hop_length=160).T)
    assert ours[3, 0] == 480 and not ours.flags.writeable  # a view, never a copy to write into


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"fmin": 0.0, "fmax": 500.0}, "fmin"),
    ({"fmin": 400.0, "fmax": 300.0}, "fmin"),
    ({"fmin": 65.0, "fmax": 9000.0}, "sr/2"),
    ({"fmin": 20.0, "fmax": 500.0}, "too low for frame_length"),
])
def test_impossible_limits_are_refused(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        yin(np.zeros(SR, np.float32), sr=SR, frame_length=512, hop_length=160, **kwargs)


def test_input_shorter_than_one_frame_is_refused() -> None:
    with pytest.raises(ValueError, match="shorter than frame_length"):
        yin(np.zeros(100, np.float32), fmin=65.0, fmax=500.0, sr=SR, frame_length=512,
            hop_length=160)
