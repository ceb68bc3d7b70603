"""Speech emotion with any ``AutoModelForAudioClassification`` checkpoint (hub id or local path).

Labels from ``config.id2label`` are mapped onto a canonical set; arousal and valence are the
probability-weighted means of the per-emotion coordinates in :data:`CIRCUMPLEX` (positions on
Russell's circumplex, as commonly used to place categorical emotions; documented in the README).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from analyzers.batching import BatchObserver, InferenceScheduler, SpeechChunkAnalyzer
from analyzers.loading import ModelUnavailable, first_sentence, resolve_device, set_cpu_threads
from analyzers.precision import (
    DecisionCache,
    candidates,
    choose,
    decision_key,
    files_digest,
    probe_signals,
    to_precision,
)
from analyzers.prepared import eligible, load_prepared, normalize, save_prepared
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
    # "auto": on CPU the fastest of fp32 / bf16 (native bf16 only) / int8 that agrees with fp32,
    # measured once per checkpoint and machine (analyzers/precision.py); on CUDA bf16 where the
    # GPU has it, else fp16. Or forced: "fp32", "bf16", "int8" (CPU), "fp16" (CUDA).
    precision: str = "auto"
    tolerance: float = 0.05  # most mean total variation from fp32 a precision may show
    quantize: str | None = None  # deprecated: "auto" | "int8" | "none" (= precision fp32)

    def __post_init__(self) -> None:
        if self.precision not in ("auto", "fp32", "bf16", "int8", "fp16"):
            raise ValueError("emotion precision must be auto, fp32, bf16, int8 or fp16, got "
                             f"{self.precision!r}")
        if self.quantize not in (None, "auto", "int8", "none"):
            raise ValueError(f"emotion quantize must be auto, int8 or none, got {self.quantize!r}")

    @property
    def wanted_precision(self) -> str:
        """``precision``, or what the deprecated ``quantize`` asked for when precision is auto."""
        if self.precision == "auto" and self.quantize in ("int8", "none"):
            return "int8" if self.quantize == "int8" else "fp32"
        return self.precision


def checkpoint_files(model: str) -> list[Path]:
    """The files that make up a checkpoint (config, weights, feature extractor): a local
    directory's, or the local HuggingFace cache's snapshot of a hub id."""
    root = Path(model)
    if not root.is_dir():
        from huggingface_hub import snapshot_download

        root = Path(snapshot_download(model, local_files_only=True))
    return sorted(p for p in root.iterdir() if p.is_file() and (
        p.suffix in (".safetensors", ".bin") or p.name in ("config.json",
                                                          "preprocessor_config.json")))


def in_local_cache(model: str) -> bool:
    """Whether the local HuggingFace cache holds hub id ``model`` (its config at least)."""
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(model, "config.json")
    except Exception:  # not a valid hub id: nothing can be cached under it
        return False
    return isinstance(found, str)


def fold_weight_norm(model: Any) -> int:
    """Fold weight-normalised convolutions (wav2vec2's positional convolution) into plain
    weights: the same maths, computed once at load instead of on every call. Returns how many."""
    import torch
    from torch.nn.utils import parametrize

    folded = 0
    for module in model.modules():
        if parametrize.is_parametrized(module, "weight"):
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
            folded += 1
        elif hasattr(module, "weight_g") and hasattr(module, "weight_v"):
            torch.nn.utils.remove_weight_norm(module)
            folded += 1
    return folded


class EmotionModel:
    """A loaded checkpoint: ``predict`` takes a batch of 16 kHz waveforms (blocking)."""

    def __init__(self, config: EmotionConfig) -> None:
        self.config = config
        self._extractor: Any = None
        self._model: Any = None
        self._labels: list[str] = []
        self.device = "cpu"
        self.precision = "fp32"
        self.decision: Any = None  # the precision Decision when one was measured or cached
        self._dtype: Any = None
        self._normalize: bool | None = None  # set when inputs are made without transformers
        self._cache = DecisionCache()

    @property
    def loaded(self) -> bool:
        return self._model is not None

    def load(self, *, download: bool = False) -> None:
        """Blocking: load the model. Raises :class:`ModelUnavailable`.

        On a CPU a model prepared earlier on this machine (analyzers/prepared.py) loads with
        torch alone; otherwise ``from_pretrained`` reads the checkpoint, which is converted to
        its precision and kept prepared for the next start. Without ``download`` only local
        paths and the local HuggingFace cache are used: weights are fetched ahead of time
        (``affect-bridge download-models``), never on a first call.
        """
        started = time.perf_counter()
        device = resolve_device(self.config.device)
        wanted = self.config.wanted_precision
        if device == "cpu" and wanted == "fp16":
            raise ModelUnavailable("fp16 is a CUDA precision; on CPU use auto, fp32, bf16 or int8")
        if device != "cpu" and wanted == "int8":
            raise ModelUnavailable("int8 is a CPU precision; on CUDA use auto, bf16, fp16 or fp32")
        self.device = device
        key = None
        if device == "cpu":
            self.configure_thread()
            key = self._key()
            variant = wanted if wanted != "auto" else self._cached_variant(key)
            prepared = load_prepared(key, variant) if key and variant and not download \
                else None
            if prepared is not None:
                self._model, self._normalize = prepared.module, prepared.normalize
                self.precision = prepared.precision
                self._finish(prepared.labels, f"prepared, {time.perf_counter() - started:.1f} s")
                return
        if not download and not Path(self.config.model).exists() \
                and not in_local_cache(self.config.model):
            # Known without importing transformers' model code (seconds of CPU for nothing).
            raise ModelUnavailable(
                f"cannot load emotion model {self.config.model!r}: it is not in the local model "
                "cache (weights are only read locally: run 'affect-bridge download-models' first)")
        try:
            from transformers import AutoFeatureExtractor, AutoModelForAudioClassification
        except ImportError as exc:  # pragma: no cover - torch/transformers are core deps
            raise ModelUnavailable(f"emotion needs torch and transformers: {exc}") from exc
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
        model.eval()
        fold_weight_norm(model)
        self._extractor, self._normalize = extractor, None
        if download:  # fetching weights (image builds): no measuring, nothing prepared here
            self._model, self.precision = model.to(device), "fp32"
            self._finish([str(model.config.id2label[i]) for i in range(len(model.config.id2label))],
                         "downloaded")
            return
        if device == "cpu" and key is None:
            key = self._key()  # the checkpoint is in the local cache now
        self._model = self._in_precision(model.to(device), key)
        id2label = model.config.id2label
        labels = [str(id2label[i]) for i in range(len(id2label))]
        if key is not None and eligible(extractor):
            saved = save_prepared(self._model, key, self.precision, labels,
                                  bool(getattr(extractor, "do_normalize", False)),
                                  probe_signals()[1])
            if saved is not None:
                log.info("emotion model kept prepared in %s", saved)
        self._finish(labels, f"from the checkpoint, {time.perf_counter() - started:.1f} s")

    def _finish(self, labels: list[str], how: str) -> None:
        self._dtype = next(p.dtype for p in self._model.parameters() if p.is_floating_point())
        self._labels = [canonical_label(label) for label in labels]
        unknown = [raw for raw, c in zip(labels, self._labels, strict=True) if c == "other"]
        if unknown:
            log.warning("emotion labels %s have no canonical name; reported as 'other'", unknown)
        log.info("emotion model %s loaded on %s in %s (%d labels; %s)", self.config.model,
                 self.device, self.precision, len(self._labels), how)

    def _key(self) -> str | None:
        """The precision decision's key (checkpoint content, processor, torch version), or None
        when the checkpoint's files are not found locally."""
        try:
            files = checkpoint_files(self.config.model)
        except Exception:  # not local (yet): from_pretrained says why, if it fails
            return None
        if not files:
            return None
        return decision_key(files_digest(files, self._cache), self.config.tolerance)

    def _cached_variant(self, key: str | None) -> str | None:
        decision = self._cache.get(key) if key else None
        if decision is None or decision.precision not in candidates():
            return None
        self.decision = decision
        return decision.precision

    def _in_precision(self, model: Any, key: str | None) -> Any:
        """``model`` (fp32) converted to the configured precision, or on CPU with "auto" to the
        measured one (cached under ``key``)."""
        import torch

        wanted = self.config.wanted_precision
        if self.device != "cpu":
            if wanted == "auto":
                wanted = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
            self.precision = wanted
            dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
            return model.to(dtype[wanted])
        if wanted == "auto" and (self.decision is not None  # found by load() already
                                 or self._cached_variant(key) is not None):
            wanted = self.decision.precision
            log.info("emotion precision %s (cached measurement: %s)", wanted,
                     self.decision.describe())
        if wanted != "auto":
            self.precision = wanted
            return to_precision(model, wanted)
        started = time.perf_counter()
        model, decision = choose(model, self._probabilities, candidates(),
                                 tolerance=self.config.tolerance)
        log.info("emotion precision %s, measured in %.1f s (%s)%s", decision.precision,
                 time.perf_counter() - started, decision.describe(),
                 f"; cached in {self._cache.path}" if key else "")
        if key is not None:
            self._cache.put(key, decision)
        self.decision, self.precision = decision, decision.precision
        return model

    def configure_thread(self) -> None:
        """Run in the thread that calls ``predict``."""
        set_cpu_threads(self.device, self.config.threads)

    def _probabilities(self, model: Any, audio: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
        import torch

        inputs = self._extractor(audio, sampling_rate=SAMPLE_RATE, return_tensors="pt")
        dtype = next(p.dtype for p in model.parameters() if p.is_floating_point())
        with torch.inference_mode():
            logits = model(inputs["input_values"].to(dtype)).logits
        return torch.softmax(logits.double(), dim=-1)[0].numpy()

    def _inputs(self, waveforms: list[npt.NDArray[np.float32]]) -> Any:
        """The model's input values for waveforms of one length."""
        import torch

        if self._normalize is None:
            return self._extractor(waveforms, sampling_rate=SAMPLE_RATE,
                                   return_tensors="pt")["input_values"]
        return torch.from_numpy(np.stack([normalize(w) if self._normalize else
                                          np.asarray(w, np.float32) for w in waveforms]))

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
        # Only waveforms of equal length share a forward pass: zero-padding (even with an
        # attention mask, which group-norm checkpoints like the default ignore in their first
        # layer) would make a speaker's result depend on who it was batched with.
        probs: list[Any] = [None] * len(waveforms)
        by_length: dict[int, list[int]] = {}
        for i, wave in enumerate(waveforms):
            by_length.setdefault(len(wave), []).append(i)
        for group in by_length.values():
            values = self._inputs([waveforms[i] for i in group]).to(self.device, self._dtype)
            with torch.inference_mode():
                logits = self._model(values)["logits"]
            for i, row in zip(group, torch.softmax(logits.float(), dim=-1).cpu().numpy(),
                              strict=True):
                probs[i] = row
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

    def __init__(self, config: EmotionConfig | None = None, *,
                 on_batch: BatchObserver | None = None) -> None:
        self.config = config or EmotionConfig()
        self.on_batch = on_batch
        self.min_audio_s = self.config.min_audio_s
        self.model = EmotionModel(self.config)

    @classmethod
    def from_options(cls, options: dict[str, Any], *,
                     on_batch: BatchObserver | None = None) -> EmotionAnalyzer:
        return cls(EmotionConfig(**options), on_batch=on_batch)

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
            observer=self.on_batch,
        )
