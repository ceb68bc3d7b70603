"""What an emotion model's outputs mean: categorical labels, or dimensions.

Categorical models (softmax over ``config.id2label``): labels are mapped onto a canonical set
(:func:`canonical_label`); arousal and valence are the probability-weighted means of the
per-emotion coordinates in :data:`CIRCUMPLEX` (positions on Russell's circumplex, as commonly
used to place categorical emotions; README "Emotion"), ``source = "labels"``.

Dimensional models (one regression output per dimension: arousal, dominance, valence): each
output is mapped linearly from the model's range (``value_range``, 0..1 for audEERING's models)
onto -1..1 and clipped there, ``source = "model"``; there are no emotion probabilities.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from analyzers.types import EmotionScores

__all__ = ["CANONICAL", "CIRCUMPLEX", "Head", "canonical_label", "scores_from_probabilities"]

# (arousal, valence), each in -1..1.
CIRCUMPLEX: dict[str, tuple[float, float]] = {
    "neutral": (0.0, 0.0),
    "calm": (-0.6, 0.3),
    "happy": (0.5, 0.8),
    "surprised": (0.7, 0.2),
    "sad": (-0.5, -0.7),
    "angry": (0.8, -0.6),
    "fearful": (0.7, -0.7),
    "disgusted": (0.3, -0.7),
    "other": (0.0, 0.0),
}
CANONICAL = tuple(CIRCUMPLEX)

_ALIASES = {
    "neu": "neutral", "neutral": "neutral",
    "calm": "calm",
    "hap": "happy", "happy": "happy", "happiness": "happy", "joy": "happy", "exc": "happy",
    "sur": "surprised", "surprise": "surprised", "surprised": "surprised", "ps": "surprised",
    "sad": "sad", "sadness": "sad",
    "ang": "angry", "anger": "angry", "angry": "angry",
    "fea": "fearful", "fear": "fearful", "fearful": "fearful",
    "dis": "disgusted", "disgust": "disgusted", "disgusted": "disgusted",
}


def canonical_label(label: str) -> str:
    """Map a checkpoint's label ("ang", "Anger", "angry") to the canonical set, else "other"."""
    return _ALIASES.get(label.strip().lower(), "other")


def scores_from_probabilities(
    probabilities: dict[str, float], audio_s: float
) -> EmotionScores:
    arousal = sum(p * CIRCUMPLEX[label][0] for label, p in probabilities.items())
    valence = sum(p * CIRCUMPLEX[label][1] for label, p in probabilities.items())
    return EmotionScores(probabilities, float(arousal), float(valence), audio_s)


@dataclass(frozen=True, slots=True)
class Head:
    """How one model's output row becomes :class:`EmotionScores`.

    ``labels`` are the canonical emotion of each output (categorical) or the dimension name of
    each output (dimensional), in the model's output order.
    """

    kind: Literal["categorical", "dimensional"]
    labels: tuple[str, ...]
    value_range: tuple[float, float] = (0.0, 1.0)

    @classmethod
    def from_labels(cls, raw: list[str], *, dimensional: bool,
                    value_range: tuple[float, float] = (0.0, 1.0)) -> Head:
        if dimensional:
            return cls("dimensional", tuple(label.strip().lower() for label in raw), value_range)
        return cls("categorical", tuple(canonical_label(label) for label in raw))

    def outputs(self, logits: Any) -> Any:
        """A batch of raw outputs (a torch tensor) as float32: probabilities (softmax) for a
        categorical head, the regression values for a dimensional one."""
        import torch

        return torch.softmax(logits.float(), dim=-1) if self.kind == "categorical" \
            else logits.float()

    def scores(self, row: npt.NDArray[Any], audio_s: float) -> EmotionScores:
        if self.kind == "categorical":
            merged: dict[str, float] = {}
            for label, p in zip(self.labels, row, strict=True):
                merged[label] = merged.get(label, 0.0) + float(p)
            return scores_from_probabilities(merged, audio_s)
        value = dict(zip(self.labels, self.to_unit(np.asarray(row, np.float64)), strict=True))
        return EmotionScores({}, value["arousal"], value["valence"], audio_s,
                             dominance=value.get("dominance"), source="model")

    def to_unit(self, row: npt.NDArray[np.float64]) -> list[float]:
        """Dimensional outputs mapped linearly from ``value_range`` onto -1..1, clipped."""
        lo, hi = self.value_range
        return [float(v) for v in np.clip(2 * (row - lo) / (hi - lo) - 1, -1.0, 1.0)]

    def distance(self, a: npt.NDArray[np.float64], b: npt.NDArray[np.float64]) -> float:
        """How far two output rows are apart: total variation for probabilities, the mean
        absolute difference on the -1..1 scale for dimensions (both 0 when equal, at most 1 for
        probabilities, 2 for dimensions)."""
        if self.kind == "categorical":
            return float(0.5 * np.abs(a - b).sum())
        lo, hi = self.value_range
        return float(np.mean(np.abs(a - b)) * 2 / (hi - lo))

    def describe(self) -> str:
        if self.kind == "dimensional":
            return "dimensions " + ", ".join(self.labels)
        return "labels " + ", ".join(dict.fromkeys(self.labels))
