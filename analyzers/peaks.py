"""Peak picking for the speech rate: ``scipy.signal.find_peaks(x, height=h, distance=d,
prominence=p)`` on a 1-D contour, the same peaks, without importing ``scipy.signal``.

Why: ``scipy.signal``'s import (its filter design, windows, splines and their ``scipy.linalg``
and ``scipy.special`` dependencies) cost about 1.1 CPU-s in every process that analyses
prosody, for one call on a few hundred intensity frames. ``tests/test_peaks.py`` checks this
against ``scipy.signal.find_peaks`` on random and real contours, plateaus and ties included.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

__all__ = ["find_peaks"]


def find_peaks(x: npt.NDArray[np.floating], *, height: float, distance: float,
               prominence: float) -> npt.NDArray[np.intp]:
    """Indices of the local maxima of ``x`` (a flat top counts once, at its middle) that are
    at least ``height``, at least ``distance`` samples from a higher kept peak, and stand at
    least ``prominence`` above the higher of the two lowest points between them and the
    nearest higher sample on each side; applied in that order, as scipy does."""
    if distance < 1:
        raise ValueError("distance must be >= 1")
    v: npt.NDArray[np.float64] = np.asarray(x, dtype=np.float64)
    peaks = _local_maxima(v)
    peaks = peaks[v[peaks] >= height]
    peaks = peaks[_by_distance(peaks, v[peaks], math.ceil(distance))]
    keep = [p for p in peaks if _prominence(v, int(p)) >= prominence]
    return np.asarray(keep, dtype=np.intp)


def _local_maxima(x: npt.NDArray[np.float64]) -> npt.NDArray[np.intp]:
    """Runs of equal samples higher than the samples on both sides; the first and last sample
    never count. Each run gives its middle index (rounded down)."""
    n = len(x)
    if n < 3:
        return np.zeros(0, dtype=np.intp)
    starts = np.concatenate([[0], np.flatnonzero(x[1:] != x[:-1]) + 1])
    ends = np.concatenate([starts[1:] - 1, [n - 1]])
    values = x[starts]
    inner = np.arange(1, len(starts) - 1)
    up = values[inner - 1] < values[inner]
    down = values[inner + 1] < values[inner]
    runs = inner[up & down]
    return ((starts[runs] + ends[runs]) // 2).astype(np.intp)


def _by_distance(peaks: npt.NDArray[np.intp], priority: npt.NDArray[np.float64],
                 distance: int) -> npt.NDArray[np.bool_]:
    """From the highest peak down, drop the lower peaks closer than ``distance``."""
    keep = np.ones(len(peaks), dtype=bool)
    for j in np.argsort(priority)[::-1]:
        if not keep[j]:
            continue
        k = j - 1
        while k >= 0 and peaks[j] - peaks[k] < distance:
            keep[k] = False
            k -= 1
        k = j + 1
        while k < len(peaks) and peaks[k] - peaks[j] < distance:
            keep[k] = False
            k += 1
    return keep


def _prominence(x: npt.NDArray[np.float64], peak: int) -> float:
    """Height of ``peak`` over the higher of its two bases: the minimum of ``x`` from the
    peak out to (not including) the nearest sample on each side that is higher or NaN."""
    top = x[peak]
    left = np.flatnonzero(~(x[:peak] <= top))
    lo = left[-1] + 1 if len(left) else 0
    right = np.flatnonzero(~(x[peak + 1:] <= top))
    hi = peak + 1 + right[0] if len(right) else len(x)
    return float(top - max(np.min(x[lo:peak + 1]), np.min(x[peak:hi])))
