"""Speech emotion with any ``AutoModelForAudioClassification`` checkpoint (hub id or local path).

Labels from ``config.id2label`` are mapped onto a canonical set; arousal and valence are the
probability-weighted means of the per-emotion coordinates in :data:`CIRCUMPLEX` (positions on
Russell's circumplex, as commonly used to place categorical emotions; documented in the README).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from analyzers.batching import InferenceScheduler, SpeechChunkAnalyzer
from analyzers.loading import ModelUnavailable, first_sentence, resolve_device, set_cpu_threads
from analyzers.quantize import quantize_checked
from analyzers.types import SAMPLE_RATE, EmotionScores

__all__ = [
    "CANONICAL",
    "CIRCUMPLEX",
    "EmotionAnalyzer",
    "EmotionConfig",
    "EmotionModel",
    "canonical_label",
    "scores_from_probabilities",
]

log = logging.getLogger(__name__)

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
class EmotionConfig:
    model: str = "superb/wav2vec2-base-superb-er"  # hub id or local directory
    device: str = "auto"  # "auto" (cuda if available), "cpu", "cuda", "cuda:1"
    min_audio_s: float = 1.0  # shorter speech is not sent to the model
    max_batch: int = 0  # 0: 1 on CPU (batching does not pay there), 8 on GPU
    max_wait_ms: float = 20.0  # how long the scheduler waits to fill a batch
    queue_size: int = 64  # windows waiting for inference, all speakers together
    threads: int = 0  # torch intra-op threads on CPU; 0: half the cores (at least 1)
    quantize: str = "auto"  # CPU only: "auto" (int8 if it agrees with fp32), "int8", "none"

    def __post_init__(self) -> None:
        if self.quantize not in ("auto", "int8", "none"):
            raise ValueError(f"emotion quantize must be auto, int8 or none, got {self.quantize!r}")


class EmotionModel:
    """A loaded checkpoint: ``predict`` takes a batch of 16 kHz waveforms (blocking)."""

    def __init__(self, config: EmotionConfig) -> None:
        self.config = config
        self._extractor: Any = None
        self._model: Any = None
        self._labels: list[str] = []
        self.device = "cpu"
        self.quantization = "fp32"

    @property
    def loaded(self) -> bool:
        return self._model is not None

    def load(self, *, download: bool = False) -> None:
        """Blocking: load weights via ``from_pretrained``. Raises :class:`ModelUnavailable`.

        Without ``download`` only local paths and the local HuggingFace cache are used: weights
        are fetched ahead of time (``affect-bridge download-models``), never on a first call.
        """
        try:
            from transformers import AutoFeatureExtractor, AutoModelForAudioClassification
        except ImportError as exc:  # pragma: no cover - torch/transformers are core deps
            raise ModelUnavailable(f"emotion needs torch and transformers: {exc}") from exc
        device = resolve_device(self.config.device)
        try:
            local_only = not download
            extractor = AutoFeatureExtractor.from_pretrained(self.config.model,
                                                             local_files_only=local_only)
            model = AutoModelForAudioClassification.from_pretrained(self.config.model,
                                                                    local_files_only=local_only)
        except Exception as exc:  # hub/offline/path/format errors all mean "unavailable"
            raise ModelUnavailable(
                f"cannot load emotion model {self.config.model!r}: {first_sentence(exc)}"
                + ("" if download or Path(self.config.model).exists() else
                   " (weights are only read locally: run 'affect-bridge download-models' first)")
            ) from exc
        if getattr(extractor, "sampling_rate", SAMPLE_RATE) != SAMPLE_RATE:
            raise ModelUnavailable(
                f"emotion model {self.config.model!r} expects {extractor.sampling_rate} Hz audio; "
                f"only {SAMPLE_RATE} Hz models are supported"
            )
        model.eval().to(device)
        self._extractor, self._model, self.device = extractor, model, device
        self.quantization = "fp32"
        if device == "cpu" and self.config.quantize != "none":
            self.configure_thread()
            tolerance = 0.05 if self.config.quantize == "auto" else 1.0
            self._model, note = quantize_checked(model, self._probabilities, tolerance)
            self.quantization = "int8" if self._model is not model else "fp32"
            log.info("emotion model: %s", note)
        id2label = model.config.id2label
        self._labels = [canonical_label(str(id2label[i])) for i in range(len(id2label))]
        unknown = [str(id2label[i]) for i, c in enumerate(self._labels) if c == "other"]
        if unknown:
            log.warning("emotion labels %s have no canonical name; reported as 'other'", unknown)
        log.info("emotion model %s loaded on %s (%d labels)", self.config.model, device,
                 len(self._labels))

    def configure_thread(self) -> None:
        """Run in the thread that calls ``predict``."""
        set_cpu_threads(self.device, self.config.threads)

    def _probabilities(self, model: Any, audio: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
        import torch

        inputs = self._extractor(audio, sampling_rate=SAMPLE_RATE, return_tensors="pt")
        with torch.inference_mode():
            logits = model(**inputs).logits
        return torch.softmax(logits.double(), dim=-1)[0].numpy()

    @property
    def max_batch(self) -> int:
        if self.config.max_batch > 0:
            return self.config.max_batch
        return 1 if self.device == "cpu" else 8

    def predict(self, waveforms: list[npt.NDArray[np.float32]]) -> list[EmotionScores]:
        """Blocking inference on a batch; call from the scheduler thread only."""
        import torch

        if self._model is None:
            raise ModelUnavailable("emotion model is not loaded")
        # Unequal lengths in a batch are zero-padded; the extractor adds an attention mask when
        # the checkpoint expects one. Checkpoints without (group-norm wav2vec2-base, like the
        # default) see the padding as silence, which shifts results slightly: hence batch 1 on
        # CPU, where batching gains nothing anyway.
        inputs = self._extractor(
            waveforms, sampling_rate=SAMPLE_RATE, return_tensors="pt", padding=len(waveforms) > 1
        )
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        with torch.inference_mode():
            logits = self._model(**inputs).logits
        probs = torch.softmax(logits.float(), dim=-1).cpu().numpy()
        out = []
        for wave, row in zip(waveforms, probs, strict=True):
            merged: dict[str, float] = {}
            for label, p in zip(self._labels, row, strict=True):
                merged[label] = merged.get(label, 0.0) + float(p)
            out.append(scores_from_probabilities(merged, len(wave) / SAMPLE_RATE))
        return out


class EmotionAnalyzer(SpeechChunkAnalyzer[EmotionScores]):
    """Plugin face (entry point ``emotion``): one shared model behind an inference scheduler."""

    name = "emotion"

    def __init__(self, config: EmotionConfig | None = None) -> None:
        self.config = config or EmotionConfig()
        self.min_audio_s = self.config.min_audio_s
        self.model = EmotionModel(self.config)

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> EmotionAnalyzer:
        return cls(EmotionConfig(**options))

    def load(self) -> None:
        """Blocking. Raises :class:`ModelUnavailable`; the caller reports the degradation."""
        self.model.load()
        self._scheduler = InferenceScheduler(
            self.model.predict,
            on_start=self.model.configure_thread,
            max_batch=self.model.max_batch,
            max_wait_ms=self.config.max_wait_ms,
            queue_size=self.config.queue_size,
            name="emotion-inference",
        )
