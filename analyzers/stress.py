"""Stress index relative to each speaker's own baseline, with spike detection by accumulated evidence.

What this is: a 0..1 indicator of how much evidence has built up, over the speaker's recent
windows, that the voice has moved away from that same speaker's calm baseline in the directions
linked to acute stress (F0 up, wider F0 range, faster, more jitter/shimmer, lower HNR, more
high-arousal negative emotion, and, with the semantic stream on, more negative words than usual;
louder only together with those). What it is not: a clinical measure or a cortisol estimate. See
the README.

1. Calibration: the speaker's first ``calibration_s`` voiced seconds (each voiced second counted
   once, although windows overlap) and at least ``calibration_windows`` windows build the
   baseline: per-feature median and scale (1.4826 x MAD, never below the feature's ``floors``
   entry). Events say ``calibrating``. A feature measured in fewer than
   ``min(late_calibration_windows, calibration_windows)`` calibration windows (F0 in a noisy
   start, say) collects ``late_calibration_windows`` values of its own before it is scored.
2. Each window gets a **score**: per-feature robust z-scores, signed so that "more stressed" is
   positive (and negative when calmer than usual), clipped to +-``z_max``, averaged with
   ``weights`` over the features present. Loudness only corroborates: energy adds at most
   ``weights["energy"]`` times the other cues' score, in their direction, and nothing on its own
   (a microphone moved closer must not look like stress). The score is clipped to
   +-``step_max``.
3. Evidence accumulates as a one-sided CUSUM (Page 1954) on the score:
   ``S = clip(S + score - reference, 0, saturation)``. ``reference`` is the drift allowance (half
   the smallest shift worth detecting, in baseline z units): calm windows, whose scores centre on
   0, drain evidence; a sustained shift of score ``d > reference`` adds ``d - reference`` per
   window. The published **index is S / saturation**. CUSUM is the standard quickest detector of
   a sustained mean shift (Lorden 1971 / Moustakides 1986: optimal for a shift of the designed
   size); unlike a per-window threshold it sums small consistent deviations and, with
   ``step_max``, one extreme window alone cannot reach the threshold.
4. Spikes: start when the index reaches ``on``; ``started_s`` is where the evidence last rose from
   zero (the CUSUM change-point estimate), the event's offset is when it was decided. A spike ends
   when the index falls below ``off`` ("recovered"), after ``end_silence_s`` without analysable
   speech ("silence"), or when the stream ends. Evidence that is not a spike yet is dropped after
   ``onset_gap_s`` without speech, so two high windows a minute apart are not "sustained".
5. After calibration the baseline follows slowly (rate ``adapt_rate`` per window, steps clipped to
   2 scales), only while there is no evidence of a shift (S = 0) and never during a spike.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated

import numpy as np
import pydantic.dataclasses
from pydantic import ConfigDict, Field, field_validator

from analyzers.types import (
    EmotionScores,
    ProsodyFeatures,
    SemanticResult,
    StressEstimate,
    StressSpike,
)

__all__ = ["DEFAULT_FLOORS", "DEFAULT_WEIGHTS", "DIMENSIONAL_EMOTION", "StressConfig", "StressEngine",
           "stress_features"]

# Feature weights in the window score. "energy" is not averaged in: it is the corroboration
# factor (see the module docstring).
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
# Direction +1: higher is more stressed.
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
CORROBORATING = "energy"
HIGH_AROUSAL_NEGATIVE = ("angry", "fearful", "disgusted")
#: The emotion term from a dimensional model: weight per dimension (each -1..1).
DIMENSIONAL_EMOTION: dict[str, float] = {"arousal": 0.5, "valence": -0.5}


@pydantic.dataclasses.dataclass(frozen=True, slots=True, config=ConfigDict(extra="forbid"))
class StressConfig:
    """The ``[stress]`` section: the detector (module docstring; README "Stress index").
    Validated on construction. Detector defaults chosen by tests/bench/bench_detection.py
    --sweep (README "Detection performance"): reference 0.7, decision threshold on x
    saturation = 6, step_max 3, z_max 4."""

    calibration_s: Annotated[float, Field(
        ge=0, description="voiced seconds of baseline, each once")] = 20.0
    calibration_windows: Annotated[int, Field(ge=1)] = 5
    late_calibration_windows: Annotated[int, Field(
        ge=1, description="values a feature first seen after calibration collects first")] = 5
    z_max: Annotated[float, Field(
        gt=0, description="per-feature z-scores are clipped to +-z_max")] = 4.0
    step_max: Annotated[float, Field(
        gt=0, description="a window's score is clipped to +-step_max")] = 3.0
    reference: Annotated[float, Field(
        ge=0, description="CUSUM drift allowance, baseline z units")] = 0.7
    saturation: Annotated[float, Field(gt=0, description="evidence at which the index is 1")] = 10.0
    on: Annotated[float, Field(gt=0, le=1, description="index at which a spike starts")] = 0.6
    off: Annotated[float, Field(gt=0, lt=1, description="index below which a spike ends")] = 0.3
    onset_gap_s: Annotated[float, Field(
        gt=0, description="evidence short of a spike is dropped after this long without "
                          "speech")] = 10.0
    end_silence_s: Annotated[float, Field(
        gt=0, description="a spike ends after this long without speech (reason: silence)")] = 20.0
    adapt_rate: Annotated[float, Field(ge=0, le=1)] = 0.02
    weights: dict[str, Annotated[float, Field(ge=0)]] = Field(
        default_factory=lambda: dict(DEFAULT_WEIGHTS),
        description="feature weights in the window score (energy: the corroboration factor)")
    floors: dict[str, Annotated[float, Field(gt=0)]] = Field(
        default_factory=lambda: dict(DEFAULT_FLOORS),
        description="the least baseline scale of each feature")
    dimensional_emotion: dict[str, float] = Field(
        default_factory=lambda: dict(DIMENSIONAL_EMOTION),
        description="with a dimensional emotion model, the emotion term is the sum of these "
        "weights times its dimensions (-1..1): default 0.5 x arousal - 0.5 x valence")

    @field_validator("weights", "floors")
    @classmethod
    def _features(cls, v: dict[str, float]) -> dict[str, float]:
        unknown = set(v) - set(DEFAULT_WEIGHTS)
        if unknown:
            raise ValueError(f"unknown stress features {sorted(unknown)}; "
                             f"known: {sorted(DEFAULT_WEIGHTS)}")
        return v

    @field_validator("dimensional_emotion")
    @classmethod
    def _dimensions(cls, v: dict[str, float]) -> dict[str, float]:
        if not v or set(v) - {"arousal", "valence", "dominance"}:
            raise ValueError("stress dimensional_emotion needs weights for arousal, valence "
                             f"and/or dominance, got {sorted(v)}")
        return v

    def __post_init__(self) -> None:
        if self.off >= self.on:
            raise ValueError("stress needs off < on")
        if self.step_max - self.reference >= self.on * self.saturation:
            raise ValueError("stress needs step_max - reference < on x saturation: one window "
                             "alone must not start a spike")

    @property
    def threshold(self) -> float:
        """Evidence (CUSUM units) at which a spike starts."""
        return self.on * self.saturation


def stress_features(
    prosody: ProsodyFeatures | None,
    emotion: EmotionScores | None,
    semantic: SemanticResult | None = None,
    dimensional: dict[str, float] | None = None,
) -> dict[str, float]:
    """The raw per-window values the index is built from (NaN-free; missing ones left out).

    F0 is in semitones re 100 Hz so that its scale is perceptual; the baseline takes it from there.
    The emotion term is the probability of high-arousal negative emotions (angry, fearful,
    disgusted) for a categorical model, and for a dimensional one the weighted sum of its own
    dimensions (``dimensional``, default :data:`DIMENSIONAL_EMOTION`: 0.5 x arousal - 0.5 x
    valence, -1..1, high when the voice is aroused and negative).
    Sentiment enters as negativity (minus the -1..1 score): more negative than this speaker's
    baseline raises the index, and so does plainly negative speech against a neutral baseline.
    """
    out: dict[str, float] = {}
    dimensional = DIMENSIONAL_EMOTION if dimensional is None else dimensional
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
    if emotion is not None and emotion.source == "model":
        values = {"arousal": emotion.arousal, "valence": emotion.valence,
                  "dominance": emotion.dominance}
        out["emotion"] = float(sum(w * (values[k] or 0.0) for k, w in dimensional.items()))
    elif emotion is not None:
        out["emotion"] = float(sum(emotion.probabilities.get(k, 0.0) for k in HIGH_AROUSAL_NEGATIVE))
    if semantic is not None and math.isfinite(semantic.sentiment_score):
        out["sentiment"] = -float(semantic.sentiment_score)
    return out


@dataclass(slots=True)
class _Spike:
    started_s: float
    peak: float
    main: tuple[str, ...]


class StressEngine:
    """Per-speaker state: baseline, evidence, spike. Feed windows in time order.

    ``update`` for each analysed window (with the voiced seconds no earlier window held),
    ``quiet`` for each window that came due with too little speech, ``close`` at the end.
    """

    def __init__(self, config: StressConfig | None = None) -> None:
        self.config = config or StressConfig()
        self._pending: dict[str, list[float]] = {}  # values of features not yet calibrated
        self._voiced_s = 0.0
        self._windows = 0
        self.center: dict[str, float] = {}
        self.spread: dict[str, float] = {}
        self.calibrating = True
        self.evidence = 0.0
        self._rise_from: float | None = None  # where the current evidence began to build
        self._last_speech_s: float | None = None
        self._spike: _Spike | None = None
        self.spikes = 0

    @property
    def in_spike(self) -> bool:
        return self._spike is not None

    @property
    def index(self) -> float:
        return min(self.evidence / self.config.saturation, 1.0)

    def update(self, features: dict[str, float], voiced_s: float, at_s: float) -> StressEstimate:
        """One analysed window ending at ``at_s``; ``voiced_s``: its speech no earlier window held."""
        cfg = self.config
        transitions = self._gap(at_s)
        self._last_speech_s = at_s
        self._windows += 1
        self._voiced_s += voiced_s
        if self.calibrating:
            for k, v in features.items():
                self._pending.setdefault(k, []).append(v)
            done = self._voiced_s >= cfg.calibration_s and self._windows >= cfg.calibration_windows
            provisional = self._windows >= 3
            if provisional or done:
                self._fit(self._pending)  # provisional: components shown while calibrating
            score, components = self._score(features) if provisional else (0.0, {})
            if done:
                self.calibrating = False
                # Features measured too rarely so far keep collecting values of their own.
                enough = min(cfg.late_calibration_windows, cfg.calibration_windows)
                rare = {k for k, v in self._pending.items() if len(v) < enough}
                for k in rare:
                    del self.center[k], self.spread[k]
                self._pending = {k: v for k, v in self._pending.items() if k in rare}
            return StressEstimate(0.0, components, calibrating=True, score=score,
                                  spikes=tuple(transitions))
        for k, v in features.items():
            if k not in self.center:
                self._pending.setdefault(k, []).append(v)
        ready = {k: v for k, v in self._pending.items() if len(v) >= cfg.late_calibration_windows}
        if ready:  # a late feature's own short calibration is over: it is scored from now on
            self._fit(ready)
            self._pending = {k: v for k, v in self._pending.items() if k not in ready}

        score, components = self._score(features)
        if self.evidence == 0.0:
            self._rise_from = at_s
        self.evidence = min(max(self.evidence + score - cfg.reference, 0.0), cfg.saturation)
        index = self.index
        spike = self._spike_step(index, components, at_s)
        if spike is not None:
            transitions.append(spike)
        if self._spike is None and self.evidence == 0.0:
            self._adapt(features)
        return StressEstimate(index, components, calibrating=False, score=score,
                              spikes=tuple(transitions))

    def quiet(self, at_s: float, since_s: float | None = None) -> list[StressSpike]:
        """Windows came due with too little speech to analyse, the last at ``at_s`` (the first
        at ``since_s`` for a run of them: a spike then ends when its silence reached
        ``end_silence_s``, not at the end of the run)."""
        return self._gap(at_s, since_s)

    def close(self, at_s: float, reason: str = "stream ended") -> StressSpike | None:
        """End an open spike at the end of the stream."""
        return self._end(at_s, reason) if self._spike is not None else None

    def _gap(self, at_s: float, since_s: float | None = None) -> list[StressSpike]:
        """Time without speech since the last analysed window: end a spike, drop evidence."""
        cfg = self.config
        if self._last_speech_s is None:
            return []
        silent = at_s - self._last_speech_s
        if self._spike is not None:
            if silent + 1e-9 >= cfg.end_silence_s:
                end = at_s if since_s is None else max(
                    since_s, self._last_speech_s + cfg.end_silence_s)
                return [self._end(min(end, at_s), "silence")]
        elif silent > cfg.onset_gap_s + 1e-9:
            self.evidence = 0.0
        return []

    def _end(self, at_s: float, reason: str) -> StressSpike:
        assert self._spike is not None
        s = self._spike
        index = self.index
        self._spike = None
        self.evidence = 0.0  # a new spike needs new evidence
        return StressSpike(True, s.started_s, at_s, index, s.peak, s.main, reason)

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
            z = min(max(z, -cfg.z_max), cfg.z_max)
            components[k] = round(z, 4)
            if k != CORROBORATING:
                total += w * z
                weight += w
        if weight == 0:
            return 0.0, components
        score = total / weight
        loud = components.get(CORROBORATING)
        if loud is not None and loud * score > 0:
            score += cfg.weights.get(CORROBORATING, 0.0) * math.copysign(
                min(abs(loud), abs(score)), score)
        return min(max(score, -cfg.step_max), cfg.step_max), components

    def _spike_step(self, index: float, components: dict[str, float], at_s: float
                    ) -> StressSpike | None:
        cfg = self.config
        if self._spike is not None:
            if index < cfg.off:
                return self._end(at_s, "recovered")
            if index > self._spike.peak:
                self._spike.peak = index
                self._spike.main = _main(components, cfg.weights)
            return None
        if index + 1e-12 < cfg.on:
            return None
        start = self._rise_from if self._rise_from is not None else at_s
        self._spike = _Spike(start, index, _main(components, cfg.weights))
        self.spikes += 1
        return StressSpike(False, start, at_s, index, index, self._spike.main)

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
