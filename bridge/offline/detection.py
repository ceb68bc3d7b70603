"""How well spikes and the index find labelled stress: the measures shared by ``affect-bridge
evaluate`` and the detection benchmark (tests/bench/bench_detection.py).

Conventions (the README's "Detection performance" section):

* a stressed segment is **detected** when a spike is decided (its ``stress.spike.started`` event)
  at or after the segment's start and before its end; the **delay** is the decision time minus
  the segment's start;
* a **false spike** is one decided inside a calm segment; the rate is per hour of calm recording
  time (pauses included);
* the **window-level ROC AUC** compares the index of windows (their end time) in stressed
  segments with those in calm segments, calibration windows left out: the probability that a
  stressed window scores higher than a calm one (Mann-Whitney; ties count half). Undefined when
  either side is empty.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.stats import rankdata

__all__ = ["Segment", "StressOutcome", "auc", "percentile", "score_stress"]


@dataclass(frozen=True, slots=True)
class Segment:
    start_s: float
    end_s: float
    stressed: bool

    def holds(self, t: float) -> bool:
        return self.start_s <= t < self.end_s


@dataclass(frozen=True, slots=True)
class StressOutcome:
    """One recording's stress measures against its labelled segments."""

    detected: list[bool]  # per stressed segment
    delays_s: list[float]  # per detected stressed segment
    false_spikes: int
    calm_s: float
    calm_index: list[float]
    stressed_index: list[float]


def score_stress(segments: Sequence[Segment], spike_starts: Iterable[float],
                 samples: Iterable[tuple[float, float, bool]]) -> StressOutcome:
    """``spike_starts``: decision times; ``samples``: (window end, index, calibrating)."""
    starts = sorted(spike_starts)
    detected: list[bool] = []
    delays: list[float] = []
    false = 0
    calm_s = 0.0
    for seg in segments:
        inside = [t for t in starts if seg.holds(t)]
        if seg.stressed:
            detected.append(bool(inside))
            if inside:
                delays.append(inside[0] - seg.start_s)
        else:
            false += len(inside)
            calm_s += seg.end_s - seg.start_s
    calm_index: list[float] = []
    stressed_index: list[float] = []
    for t, index, calibrating in samples:
        if calibrating:
            continue
        for seg in segments:
            if seg.holds(t):
                (stressed_index if seg.stressed else calm_index).append(index)
                break
    return StressOutcome(detected, delays, false, calm_s, calm_index, stressed_index)


def auc(negatives: Sequence[float], positives: Sequence[float]) -> float:
    """P(positive > negative), ties half (Mann-Whitney U / (n_pos n_neg)); NaN if a side is empty."""
    if not negatives or not positives:
        return math.nan
    ranks = rankdata(np.concatenate([np.asarray(negatives), np.asarray(positives)]))
    n, p = len(negatives), len(positives)
    u = float(ranks[n:].sum()) - p * (p + 1) / 2
    return u / (n * p)


def percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(values, q)) if len(values) else math.nan
