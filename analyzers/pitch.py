"""yin F0 (de Cheveigne & Kawahara 2002) in numpy and ``scipy.fft``: the same arithmetic as
``librosa.yin(center=False)`` 0.11, step for step, without librosa's import.

Why not call librosa: every process that analyses prosody (each ``run`` worker, each ``analyze``)
paid for importing librosa and numba and loading librosa's compiled numba kernels, about 1.5
CPU-s and tens of MB per process, for four small array functions (framing, the cumulative mean
normalised difference, local minima, parabolic interpolation). Measured in the README's
"Performance" section. ``tests/test_pitch.py`` checks that the F0 track equals librosa's, value
for value, on speech, noise, silence and tones, so every published figure made with librosa 0.11's yin
stands (0.10 computed the difference function otherwise).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import scipy.fft

__all__ = ["frames", "yin"]


def frames(y: npt.NDArray[np.floating], frame_length: int, hop_length: int
           ) -> npt.NDArray[np.floating]:
    """Frames of ``y`` as rows (n_frames, frame_length), a read-only view like
    ``librosa.util.frame(y, ...).T``: frame ``k`` starts at sample ``k * hop_length``."""
    if len(y) < frame_length:
        raise ValueError(f"input of {len(y)} samples is shorter than frame_length "
                         f"{frame_length}")
    return np.lib.stride_tricks.sliding_window_view(y, frame_length)[::hop_length]


def yin(y: npt.NDArray[np.floating], *, fmin: float, fmax: float, sr: int, frame_length: int,
        hop_length: int, trough_threshold: float = 0.1) -> npt.NDArray[np.float64]:
    """F0 in Hz for every frame of ``y`` (frames start at 0, no centring padding)."""
    if not 0 < fmin < fmax <= sr / 2:
        raise ValueError(f"need 0 < fmin ({fmin:g}) < fmax ({fmax:g}) <= sr/2 ({sr / 2:g})")
    if sr / fmin >= frame_length - 1:
        raise ValueError(f"fmin={fmin:g} is too low for frame_length={frame_length} at {sr} Hz")
    y_frames = frames(y, frame_length, hop_length)  # (n, frame_length)
    min_period = int(np.floor(sr / fmax))
    max_period = min(int(np.ceil(sr / fmin)), frame_length - 1)
    d = _cmnd(y_frames, min_period, max_period)  # (n, lags)
    shifts = _parabolic_shifts(d)
    # Troughs: below both neighbours (the first lag: below the next one; the last: below the
    # one before), as librosa.util.localmin with yin's own first-lag rule.
    trough = np.zeros(d.shape, dtype=bool)
    trough[:, 1:-1] = (d[:, 1:-1] < d[:, :-2]) & (d[:, 1:-1] <= d[:, 2:])
    trough[:, 0] = d[:, 0] < d[:, 1]
    trough[:, -1] = d[:, -1] < d[:, -2]
    # The smallest lag with a trough under the threshold, else the global minimum.
    below = trough & (d < trough_threshold)
    period = np.argmax(below, axis=1)
    none = ~below.any(axis=1)
    period[none] = np.argmin(d[none], axis=1)
    rows = np.arange(len(d))
    lag = min_period + period + shifts[rows, period]
    f0: npt.NDArray[np.float64] = sr / lag
    return f0


def _cmnd(y_frames: npt.NDArray[np.floating], min_period: int, max_period: int
          ) -> npt.NDArray[np.float64]:
    """Cumulative mean normalised difference d'(tau) for tau in [min_period, max_period]
    (equation 8 of the paper), per frame."""
    n = y_frames.shape[1]
    n_pad = scipy.fft.next_fast_len(2 * n - 1, real=True)
    spec = scipy.fft.rfft(y_frames, n=n_pad, axis=1)
    power = spec.real ** 2 + spec.imag ** 2
    acf = scipy.fft.irfft(power, n=n_pad, axis=1)[:, :max_period + 1]
    # d(k) = 2 (r(0) - r(k)) - sum_{m<k} y(m)^2, computed in place over the running energy as
    # librosa does: its first entry is zeroed before the subtraction, so the sum for d(k) leaves
    # out y(0)^2 (kept here so the track stays librosa's, value for value).
    diff = np.cumsum(np.square(y_frames), axis=1)
    diff[:, 0] = 0
    diff[:, 1:max_period + 1] = 2 * (acf[:, 0:1] - acf[:, 1:max_period + 1]) \
        - diff[:, :max_period]
    k = np.arange(1, max_period + 1)
    mean = np.cumsum(diff[:, 1:max_period + 1], axis=1) / k
    denominator = mean[:, min_period - 1:max_period]
    out: npt.NDArray[np.float64] = diff[:, min_period:max_period + 1] / (
        denominator + np.finfo(denominator.dtype).tiny)
    return out


def _parabolic_shifts(d: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Offset of the parabola through each lag and its neighbours; 0 where it would leave
    [lag-1, lag+1] and at both ends."""
    shifts = np.zeros_like(d)
    left, mid, right = d[:, :-2], d[:, 1:-1], d[:, 2:]
    a = right + left - 2 * mid
    b = (right - left) / 2
    inside = np.abs(b) < np.abs(a)
    np.divide(-b, a, out=shifts[:, 1:-1], where=inside)
    return shifts
