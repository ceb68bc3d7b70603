"""Values that cross stage boundaries: frozen, slotted dataclasses (no dicts between modules)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import numpy.typing as npt

__all__ = [
    "SAMPLE_RATE",
    "AudioChunk",
    "EmotionScores",
    "ProsodyFeatures",
    "QuietWindow",
    "SemanticResult",
    "SpeechWindow",
    "StressEstimate",
    "StressSpike",
]

SAMPLE_RATE = 16000
"""Every analyzer works on 16 kHz mono float32 in [-1, 1]."""

Float32Array = npt.NDArray[np.float32]
NAN_DEFAULT = float("nan")


@dataclass(frozen=True, slots=True)
class AudioChunk:
    """A run of 16 kHz mono float32 samples starting ``start_s`` seconds into the stream."""

    samples: Float32Array
    start_s: float

    @property
    def duration_s(self) -> float:
        return len(self.samples) / SAMPLE_RATE


@dataclass(frozen=True, slots=True)
class SpeechWindow:
    """The last ``end_s - start_s`` seconds of a speaker's audio, with the VAD's speech mask.

    ``samples`` covers the whole span (pauses included, so pause ratio can be measured);
    ``speech_mask`` has one bool per VAD frame (``frame_s`` seconds); ``new_speech`` is voiced
    audio not yet seen by the emotion model, handed over in chunks (empty in between), so every
    voiced second goes through the model once. ``stream`` identifies the speaker's stream
    (unique in the process) and ``first_sample`` where ``samples`` start in it (-1: unknown), so
    an analyzer may reuse its work on the overlap of consecutive windows. ``fresh_voiced_s`` is
    the voiced time no earlier window held (windows overlap: summing ``voiced_s`` counts speech
    twice); None when the window was not cut by a windower (then all of it is fresh).
    ``own_level_db`` is the speaker's own speech level, the median per-frame level of its recent
    speech (None before there is enough): voicing far under it is someone else's.
    """

    samples: Float32Array
    start_s: float
    end_s: float
    speech_mask: npt.NDArray[np.bool_]
    frame_s: float
    new_speech: Float32Array
    stream: int = 0
    first_sample: int = -1
    fresh_voiced_s: float | None = None
    own_level_db: float | None = None  # the speaker's own speech level (windowing), if known

    @property
    def voiced_s(self) -> float:
        return float(self.speech_mask.sum()) * self.frame_s

    @property
    def new_voiced_s(self) -> float:
        """Voiced seconds of this window that no earlier window held."""
        return self.voiced_s if self.fresh_voiced_s is None else self.fresh_voiced_s

    def voiced_samples(self) -> Float32Array:
        """Samples of the frames the VAD marked as speech, concatenated."""
        frame = round(self.frame_s * SAMPLE_RATE)
        usable = min(len(self.speech_mask), len(self.samples) // frame)
        frames = self.samples[: usable * frame].reshape(usable, frame)
        return frames[self.speech_mask[:usable]].reshape(-1)


@dataclass(frozen=True, slots=True)
class QuietWindow:
    """Windows came due with too little speech to analyse: time passes without speech.

    One due window ends at ``end_s``; a run of them (a long gap in the media) ends at ``end_s``
    with the first at ``first_end_s``.
    """

    end_s: float
    first_end_s: float | None = None

    @property
    def since_s(self) -> float:
        """When the first of these quiet windows came due."""
        return self.end_s if self.first_end_s is None else self.first_end_s


@dataclass(frozen=True, slots=True)
class ProsodyFeatures:
    """Prosody of one window. NaN where a value cannot be measured (e.g. no voiced frames)."""

    f0_hz: float  # median F0 of voiced frames
    f0_range_st: float  # 10th..90th percentile F0 range, semitones
    jitter: float  # local jitter, fraction (0.01 = 1 %)
    shimmer: float  # local shimmer, fraction
    hnr_db: float  # harmonics-to-noise ratio, dB
    energy_db: float  # RMS level of speech frames, dBFS
    speech_rate: float  # syllable nuclei per voiced second
    pause_ratio: float  # fraction of the window that is not speech
    voiced_s: float = NAN_DEFAULT  # seconds of periodic voicing (the frames F0 came from)
    unvoiced: str | None = None  # why the window is not scored: too little periodic voicing


@dataclass(frozen=True, slots=True)
class EmotionScores:
    """One emotion estimate: canonical emotion probabilities (a categorical model; empty for a
    dimensional one) and arousal/valence (and dominance), each -1..1.

    ``source`` says where the dimensions come from: ``"labels"`` (derived from the probabilities
    through the circumplex table) or ``"model"`` (a dimensional model's own outputs).
    """

    probabilities: dict[str, float]
    arousal: float  # -1 (calm) .. 1 (excited)
    valence: float  # -1 (negative) .. 1 (positive)
    audio_s: float  # seconds of voiced audio the model saw
    dominance: float | None = None  # -1 (submissive) .. 1 (dominant); dimensional models only
    source: Literal["labels", "model"] = "labels"

    @property
    def dominant(self) -> str | None:
        """The most probable emotion; None for a dimensional model (no categories)."""
        if not self.probabilities:
            return None
        return max(self.probabilities, key=self.probabilities.__getitem__)


@dataclass(frozen=True, slots=True)
class SemanticResult:
    """Sentiment of what was said in one chunk of speech (the semantic stream)."""

    sentiment_score: float  # -1 (negative) .. 1 (positive)
    sentiment_label: str  # "negative" | "neutral" | "positive"
    words: int  # words recognised
    audio_s: float  # seconds of speech transcribed
    transcript: str | None = None  # only when include_transcript is on; never logged


@dataclass(frozen=True, slots=True)
class StressEstimate:
    """The stress index after one window and the spike transitions it caused (oldest first)."""

    index: float  # 0..1: evidence accumulated over recent windows that the voice has shifted
    components: dict[str, float] = field(default_factory=dict)  # per-feature signed z-scores
    calibrating: bool = False
    score: float = 0.0  # this window's own fused, signed score (baseline z units)
    spikes: tuple[StressSpike, ...] = ()


@dataclass(frozen=True, slots=True)
class StressSpike:
    """A spike starting (``ended`` false) or ending, in stream seconds."""

    ended: bool
    started_s: float
    at_s: float
    index: float
    peak: float
    main_components: tuple[str, ...]
    reason: str = ""  # why it ended: "recovered", "silence", "stream ended"

    @property
    def duration_s(self) -> float:
        return self.at_s - self.started_s
