"""Stress index relative to each speaker's own baseline, with spike detection.

What this is: a 0..1 indicator of how far a speaker's voice has moved, in one window, from that
same speaker's calm baseline in the directions linked to acute stress (F0 up, wider F0 range,
louder, faster, more jitter/shimmer, lower HNR, more high-arousal negative emotion, and, with
the semantic stream on, more negative words than usual). What it is
not: a clinical measure or a cortisol estimate. See the README.

1. Calibration: the first ``calibration_s`` voiced seconds (and at least
   ``calibration_windows`` windows) build the baseline: per-feature median and scale
   (1.4826 x MAD, never below the feature's ``floors`` entry). Events say ``calibrating``.
2. Each window: robust z-score per feature, signed so that "more stressed" is positive, clipped to
   0..``z_max``; the fused score ``s`` is their weighted mean over the features present; the index
   is ``1 - exp(-s / scale)`` (s = 1 -> 0.39, 2 -> 0.63, 3 -> 0.78 with the default scale 2).
3. Spikes: start when the index stays >= ``on`` for ``min_duration_s``, end when it falls below
   ``off`` (hysteresis). No spike can start while calibrating.
4. After calibration the baseline follows slowly (rate ``adapt_rate`` per window, steps clipped
   to 2 scales), and not at all during a spike or while the index is above ``off``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from analyzers.types import (
    EmotionScores,
    ProsodyFeatures,
    SemanticResult,
    StressEstimate,
    StressSpike,
)

__all__ = ["DEFAULT_WEIGHTS", "StressConfig", "StressEngine", "stress_features"]

# Feature -> (direction, weight). Direction +1: higher is more stressed.
DEFAULT_WEIGHTS: dict[str, float] = {
    "f0": 0.25,
    "f0_range": 0.15,
    "energy": 0.20,
    "speech_rate": 0.15,
    "jitter": 0.05,
    "shimmer": 0.05,
    "hnr": 0.05,
    "emotion": 0.10,
    "sentiment": 0.10,  # only with the semantic stream on
}
DIRECTIONS: dict[str, float] = {
    "f0": 1.0, "f0_range": 1.0, "energy": 1.0, "speech_rate": 1.0,
    "jitter": 1.0, "shimmer": 1.0, "hnr": -1.0, "emotion": 1.0, "sentiment": 1.0,
}
DEFAULT_FLOORS: dict[str, float] = {
    "f0": 1.0,  # semitones
    "f0_range": 1.0,  # semitones
    "energy": 1.5,  # dB
    "speech_rate": 0.5,  # syllables per second
    "jitter": 0.005,
    "shimmer": 0.02,
    "hnr": 1.0,  # dB
    "emotion": 0.1,  # probability
    "sentiment": 0.2,  # negativity, -1..1
}
HIGH_AROUSAL_NEGATIVE = ("angry", "fearful", "disgusted")


@dataclass(frozen=True, slots=True)
class StressConfig:
    calibration_s: float = 20.0
    calibration_windows: int = 5
    scale: float = 2.0
    z_max: float = 6.0
    on: float = 0.6
    off: float = 0.4
    min_duration_s: float = 2.0
    adapt_rate: float = 0.02
    weights: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_WEIGHTS))
    floors: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_FLOORS))

    def __post_init__(self) -> None:
        if not 0 < self.off <= self.on < 1:
            raise ValueError("stress needs 0 < off <= on < 1")
        if self.calibration_s < 0 or self.calibration_windows < 1 or self.scale <= 0:
            raise ValueError("stress needs calibration_s >= 0, calibration_windows >= 1, scale > 0")
        unknown = (set(self.weights) | set(self.floors)) - set(DEFAULT_WEIGHTS)
        if unknown:
            raise ValueError(f"unknown stress features {sorted(unknown)}; "
                             f"known: {sorted(DEFAULT_WEIGHTS)}")
        if any(w < 0 for w in self.weights.values()) or any(f <= 0 for f in self.floors.values()):
            raise ValueError("stress weights must be >= 0 and floors > 0")


def stress_features(
    prosody: ProsodyFeatures | None,
    emotion: EmotionScores | None,
    semantic: SemanticResult | None = None,
) -> dict[str, float]:
    """The raw per-window values the index is built from (NaN-free; missing ones left out).

    F0 is in semitones re 100 Hz so that its scale is perceptual; the baseline takes it from there.
    Sentiment enters as negativity (minus the -1..1 score): more negative than this speaker's
    baseline raises the index, and so does plainly negative speech against a neutral baseline.
    """
    out: dict[str, float] = {}
    if prosody is not None:
        raw = {
            "f0": 12 * math.log2(prosody.f0_hz / 100.0) if prosody.f0_hz > 0 else math.nan,
            "f0_range": prosody.f0_range_st,
            "energy": prosody.energy_db,
            "speech_rate": prosody.speech_rate,
            "jitter": prosody.jitter,
            "shimmer": prosody.shimmer,
            "hnr": prosody.hnr_db,
        }
        out.update({k: float(v) for k, v in raw.items() if math.isfinite(v)})
    if emotion is not None:
        out["emotion"] = float(sum(emotion.probabilities.get(k, 0.0) for k in HIGH_AROUSAL_NEGATIVE))
    if semantic is not None and math.isfinite(semantic.sentiment_score):
        out["sentiment"] = -float(semantic.sentiment_score)
    return out


class StressEngine:
    """Per-speaker state: baseline, spike state. Feed windows in time order."""

    def __init__(self, config: StressConfig | None = None) -> None:
        self.config = config or StressConfig()
        self._calibration: dict[str, list[float]] = {}
        self._voiced_s = 0.0
        self._windows = 0
        self.center: dict[str, float] = {}
        self.spread: dict[str, float] = {}
        self.calibrating = True
        self._above_since: float | None = None
        self._spike: tuple[float, float, tuple[str, ...]] | None = None  # start, peak, components
        self.spikes = 0

    @property
    def in_spike(self) -> bool:
        return self._spike is not None

    def update(self, features: dict[str, float], voiced_s: float, at_s: float) -> StressEstimate:
        cfg = self.config
        self._windows += 1
        self._voiced_s += voiced_s
        if self.calibrating:
            for k, v in features.items():
                self._calibration.setdefault(k, []).append(v)
            self._fit(self._calibration)
            done = self._voiced_s >= cfg.calibration_s and self._windows >= cfg.calibration_windows
            index, components = self._score(features) if self._windows >= 3 else (0.0, {})
            if done:
                self.calibrating = False
                self._calibration = {}
            return StressEstimate(index, components, calibrating=True)

        index, components = self._score(features)
        spike = self._spike_step(index, components, at_s)
        if not self.in_spike and index < cfg.off:
            self._adapt(features)
        return StressEstimate(index, components, calibrating=False, spike=spike)

    def close(self, at_s: float) -> StressSpike | None:
        """End an open spike at the end of the stream."""
        if self._spike is None:
            return None
        start, peak, main = self._spike
        self._spike = None
        return StressSpike(True, start, at_s, peak, peak, main)

    def _fit(self, samples: dict[str, list[float]]) -> None:
        for k, values in samples.items():
            arr = np.asarray(values)
            med = float(np.median(arr))
            self.center[k] = med
            self.spread[k] = 1.4826 * float(np.median(np.abs(arr - med)))

    def _scale(self, k: str) -> float:
        return max(self.spread.get(k, 0.0), self.config.floors.get(k, DEFAULT_FLOORS[k]))

    def _score(self, features: dict[str, float]) -> tuple[float, dict[str, float]]:
        cfg = self.config
        components: dict[str, float] = {}
        total = weight = 0.0
        for k, v in features.items():
            w = cfg.weights.get(k, 0.0)
            if k not in self.center or w <= 0:
                continue
            z = DIRECTIONS[k] * (v - self.center[k]) / self._scale(k)
            z = min(max(z, 0.0), cfg.z_max)
            components[k] = round(z, 4)
            total += w * z
            weight += w
        if weight == 0:
            return 0.0, components
        fused = total / weight
        return 1.0 - math.exp(-fused / cfg.scale), components

    def _spike_step(
        self, index: float, components: dict[str, float], at_s: float
    ) -> StressSpike | None:
        cfg = self.config
        if self._spike is not None:
            start, peak, main = self._spike
            if index < cfg.off:
                self._spike = None
                self._above_since = None
                return StressSpike(True, start, at_s, index, peak, main)
            if index > peak:
                self._spike = (start, index, _main(components, cfg.weights))
            return None
        if index < cfg.on:
            self._above_since = None
            return None
        if self._above_since is None:
            self._above_since = at_s
        if at_s - self._above_since + 1e-9 >= cfg.min_duration_s:
            main = _main(components, cfg.weights)
            self._spike = (self._above_since, index, main)
            self.spikes += 1
            return StressSpike(False, self._above_since, at_s, index, index, main)
        return None

    def _adapt(self, features: dict[str, float]) -> None:
        rate = self.config.adapt_rate
        for k, v in features.items():
            if k not in self.center:
                continue
            scale = self._scale(k)
            step = min(max(v - self.center[k], -2 * scale), 2 * scale)
            self.center[k] += rate * step
            # Mean absolute deviation of a normal is 0.798 sigma.
            self.spread[k] += rate * (min(abs(v - self.center[k]) / 0.798, 3 * scale)
                                      - self.spread[k])


def _main(components: dict[str, float], weights: dict[str, float]) -> tuple[str, ...]:
    ranked = sorted(components, key=lambda k: weights.get(k, 0.0) * components[k], reverse=True)
    return tuple(k for k in ranked[:3] if components[k] > 0)
