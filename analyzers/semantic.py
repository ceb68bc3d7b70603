"""The semantic stream (opt-in): what is said, as sentiment per window.

Speech recognition with any transformers ``automatic-speech-recognition`` checkpoint (Whisper
family, or CTC models) from a local path or the local HuggingFace cache, then text sentiment
with VADER (default: the ``vaderSentiment`` lexicon ships with the package, no weights needed)
or a transformers text-classification checkpoint.

Privacy: transcripts exist only inside the inference call. They are never logged, stored or put
in events unless ``include_transcript`` is true; events carry the sentiment score and label.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import numpy.typing as npt
from pydantic import ConfigDict, Field
from pydantic.dataclasses import dataclass

from analyzers.batching import BatchObserver, InferenceScheduler, SpeechChunkAnalyzer
from analyzers.loading import ModelUnavailable, first_sentence, resolve_device, set_cpu_threads
from analyzers.types import SAMPLE_RATE, SemanticResult

__all__ = [
    "SemanticAnalyzer",
    "SemanticConfig",
    "SentimentModel",
    "SpeechRecognizer",
    "sentiment_label",
]

log = logging.getLogger(__name__)

NEUTRAL_BAND = 0.05  # VADER's own convention: |compound| < 0.05 is neutral


def sentiment_label(score: float) -> str:
    if score >= NEUTRAL_BAND:
        return "positive"
    if score <= -NEUTRAL_BAND:
        return "negative"
    return "neutral"


@dataclass(frozen=True, slots=True, config=ConfigDict(extra="forbid"))
class SemanticConfig:
    """The ``[semantic]`` section: the semantic stream, on when "semantic" is in ``analyzers``
    (off by default). Validated on construction."""

    asr_model: Annotated[str, Field(description="hub id (local cache) or directory")] = \
        "openai/whisper-base"
    language: Annotated[str | None, Field(
        description="Whisper language; none lets the model detect it")] = "en"
    device: str = "auto"
    sentiment: Annotated[str, Field(
        description='"vader", or a text-classification hub id / directory')] = "vader"
    include_transcript: Annotated[bool, Field(
        description="put transcripts in events (never in logs)")] = False
    max_new_tokens: Annotated[int, Field(ge=1, le=448)] = 96
    num_beams: Annotated[int, Field(
        ge=1, le=16, description="1, greedy: beam search (transformers' pipeline default, 5) "
                                 "costs about 2x CPU")] = 1
    min_audio_s: Annotated[float, Field(ge=0.1)] = 1.0
    max_batch: Annotated[int, Field(
        ge=0, le=256, description="0: 4 on CPU (greedy Whisper batches save 13-26 % CPU "
                                  "here), 8 on GPU")] = 0
    max_wait_ms: Annotated[float, Field(ge=0, le=5000)] = 20.0
    queue_size: Annotated[int, Field(ge=1, le=100_000)] = 64
    threads: Annotated[int, Field(
        ge=0, le=256, description="torch CPU threads of the inference thread; 0: half the "
                                  "cores")] = 0


def _unavailable(what: str, model: str, exc: BaseException) -> ModelUnavailable:
    hint = "" if Path(model).exists() else \
        " (weights are only read locally: run 'affect-bridge download-models' first)"
    return ModelUnavailable(f"cannot load {what} {model!r}: {first_sentence(exc)}{hint}")


class SpeechRecognizer:
    """A transformers ASR pipeline built from locally available parts."""

    def __init__(self, config: SemanticConfig) -> None:
        self.config = config
        self._pipe: Any = None
        self._generate: dict[str, Any] = {}
        self.device = "cpu"

    def load(self, *, download: bool = False) -> None:
        from transformers import (
            AutoConfig,
            AutoFeatureExtractor,
            AutoModelForCTC,
            AutoModelForSpeechSeq2Seq,
            AutoTokenizer,
            pipeline,
        )

        name, local = self.config.asr_model, not download
        try:
            cfg = AutoConfig.from_pretrained(name, local_files_only=local)
            auto = AutoModelForSpeechSeq2Seq if cfg.is_encoder_decoder else AutoModelForCTC
            model = auto.from_pretrained(name, local_files_only=local)
            tokenizer = AutoTokenizer.from_pretrained(name, local_files_only=local)
            extractor = AutoFeatureExtractor.from_pretrained(name, local_files_only=local)
        except Exception as exc:
            raise _unavailable("speech recognition model", name, exc) from exc
        self.device = resolve_device(self.config.device)
        self._pipe = pipeline("automatic-speech-recognition", model=model, tokenizer=tokenizer,
                              feature_extractor=extractor, device=self.device)
        if cfg.is_encoder_decoder:
            self._generate = {"max_new_tokens": self.config.max_new_tokens,
                              "num_beams": self.config.num_beams}
            if cfg.model_type == "whisper":
                self._generate["task"] = "transcribe"
                if self.config.language:
                    self._generate["language"] = self.config.language

    def transcribe(self, waveforms: list[npt.NDArray[np.float32]]) -> list[str]:
        inputs = [{"raw": w, "sampling_rate": SAMPLE_RATE} for w in waveforms]
        kwargs: dict[str, Any] = {"batch_size": len(inputs)}
        if self._generate:
            kwargs["generate_kwargs"] = dict(self._generate)
        out = self._pipe(inputs, **kwargs)
        return [str(o.get("text", "")).strip() for o in out]


class SentimentModel:
    """Text -> score in -1 (negative) .. 1 (positive): VADER, or P(positive) - P(negative) of a
    text-classification model whose labels name positive/negative (and optionally neutral)."""

    def __init__(self, config: SemanticConfig) -> None:
        self.config = config
        self._vader: Any = None
        self._pipe: Any = None
        self._polarity: dict[str, float] = {}

    def load(self, *, download: bool = False) -> None:
        if self.config.sentiment == "vader":
            try:
                from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
            except ImportError as exc:
                raise ModelUnavailable(
                    "VADER sentiment needs the vaderSentiment package: "
                    "pip install 'affect-bridge[semantic]'") from exc
            self._vader = SentimentIntensityAnalyzer()
            return
        from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

        name, local = self.config.sentiment, not download
        try:
            model = AutoModelForSequenceClassification.from_pretrained(name, local_files_only=local)
            tokenizer = AutoTokenizer.from_pretrained(name, local_files_only=local)
        except Exception as exc:
            raise _unavailable("sentiment model", name, exc) from exc
        labels = [str(model.config.id2label[i]) for i in range(len(model.config.id2label))]
        self._polarity = _polarities(labels)
        self._pipe = pipeline("text-classification", model=model, tokenizer=tokenizer,
                              device=resolve_device(self.config.device), top_k=None)

    def scores(self, texts: list[str]) -> list[float]:
        if self._vader is not None:
            return [float(self._vader.polarity_scores(t)["compound"]) for t in texts]
        out = [0.0] * len(texts)
        spoken = [i for i, t in enumerate(texts) if t]
        if spoken:
            results = self._pipe([texts[i] for i in spoken], batch_size=len(spoken))
            for i, ranked in zip(spoken, results, strict=True):
                out[i] = float(sum(self._polarity[r["label"]] * r["score"] for r in ranked))
        return out


def _polarities(labels: list[str]) -> dict[str, float]:
    """+1 / -1 / 0 per label, from names ("POSITIVE", "neg", ...) or the LABEL_i conventions of
    two-class (negative, positive) and three-class (negative, neutral, positive) models."""
    by_name: dict[str, float] = {}
    for label in labels:
        low = label.lower()
        if low.startswith("pos"):
            by_name[label] = 1.0
        elif low.startswith("neg"):
            by_name[label] = -1.0
        elif low.startswith("neu"):
            by_name[label] = 0.0
    if len(by_name) == len(labels) and {1.0, -1.0} <= set(by_name.values()):
        return by_name
    if labels == [f"LABEL_{i}" for i in range(len(labels))] and len(labels) in (2, 3):
        values = [-1.0, 1.0] if len(labels) == 2 else [-1.0, 0.0, 1.0]
        return dict(zip(labels, values, strict=True))
    raise ModelUnavailable(f"sentiment labels {labels} do not name positive and negative")


class SemanticAnalyzer(SpeechChunkAnalyzer[SemanticResult]):
    """Plugin face (entry point ``semantic``): ASR + sentiment behind one inference scheduler
    shared by every speaker, fed the same new-speech chunks as the emotion model."""

    name = "semantic"

    def __init__(self, config: SemanticConfig | None = None, *,
                 on_batch: BatchObserver | None = None) -> None:
        self.config = config or SemanticConfig()
        self.on_batch = on_batch
        self.min_audio_s = self.config.min_audio_s
        self.asr = SpeechRecognizer(self.config)
        self.sentiment = SentimentModel(self.config)

    @classmethod
    def from_options(cls, options: dict[str, Any], *,
                     on_batch: BatchObserver | None = None) -> SemanticAnalyzer:
        return cls(SemanticConfig(**options), on_batch=on_batch)

    def load(self, *, download: bool = False) -> None:
        self.sentiment.load(download=download)
        self.asr.load(download=download)
        max_batch = self.config.max_batch or (4 if self.asr.device == "cpu" else 8)
        self._scheduler = InferenceScheduler(
            self._predict,
            on_start=lambda: set_cpu_threads(self.asr.device, self.config.threads),
            max_batch=max_batch,
            max_wait_ms=self.config.max_wait_ms,
            queue_size=self.config.queue_size,
            name="semantic-inference",
            observer=self.on_batch,
        )
        log.info("semantic stream on: ASR %s on %s, sentiment %s, transcripts %s",
                 self.config.asr_model, self.asr.device, self.config.sentiment,
                 "in events" if self.config.include_transcript else "discarded")

    def _predict(self, waveforms: list[npt.NDArray[np.float32]]) -> list[SemanticResult]:
        texts = self.asr.transcribe(waveforms)
        scores = self.sentiment.scores(texts)
        keep = self.config.include_transcript
        return [
            SemanticResult(score, sentiment_label(score), len(text.split()),
                           len(w) / SAMPLE_RATE, text if keep else None)
            for w, text, score in zip(waveforms, texts, scores, strict=True)
        ]
