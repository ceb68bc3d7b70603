"""analyzers.peaks against scipy.signal.find_peaks (height, distance and prominence): the same
peaks on random contours, plateaus, ties, NaN and the speech-rate contours of real speech."""

import numpy as np
import pytest
from scipy.signal import find_peaks as scipy_find_peaks

from analyzers.peaks import find_peaks


def _contours() -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    out = []
    for n in (0, 1, 2, 3, 5, 40, 400, 1200):
        out.append(rng.normal(size=n))
        out.append(np.round(rng.normal(size=n) * 3))  # many plateaus and equal peaks
        out.append(np.convolve(rng.normal(size=n + 2) * 10, np.ones(3) / 3, mode="same"))
    x = np.round(rng.normal(size=300), 1)
    x[[5, 50, 51, 120]] = np.nan
    out.append(x)
    out.append(np.ones(50))  # one flat line: no peak
    out.append(np.r_[0.0, 5, 5, 5, 0, 5, 5, 0, 1, 1])  # plateaus, one running to the end
    return out


@pytest.mark.parametrize("height", [-np.inf, -1.0, 0.5])
@pytest.mark.parametrize("distance", [1, 2.5, 8])
@pytest.mark.parametrize("prominence", [0.0, 0.5, 2.0])
def test_same_peaks_as_scipy(height: float, distance: float, prominence: float) -> None:
    for x in _contours():
        expected, _ = scipy_find_peaks(x, height=height, distance=distance,
                                       prominence=prominence)
        np.testing.assert_array_equal(find_peaks(x, height=height, distance=distance,
                                                 prominence=prominence), expected)


def test_the_speech_rate_contour_of_real_speech() -> None:
    from bridge.pipeline.audio import read_file
    from tests.conftest import CALM

    y = np.concatenate([c.samples for [c] in read_file(CALM)]).astype(np.float64)
    rms = np.sqrt(np.mean(y[: len(y) // 160 * 160].reshape(-1, 160) ** 2, axis=1))
    smooth = np.convolve(20 * np.log10(np.maximum(rms, 1e-10)), np.ones(3) / 3, mode="same")
    floor = float(np.max(smooth)) - 25.0
    expected, _ = scipy_find_peaks(smooth, prominence=2.0, distance=8, height=floor)
    ours = find_peaks(smooth, prominence=2.0, distance=8, height=floor)
    assert len(expected) > 20  # syllables, not an empty agreement
    np.testing.assert_array_equal(ours, expected)


def test_distance_under_one_is_refused() -> None:
    with pytest.raises(ValueError, match="distance"):
        find_peaks(np.zeros(5), height=0.0, distance=0.5, prominence=1.0)
