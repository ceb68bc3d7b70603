"""Speech emotion from the checkpoint families people use, loaded by what they are.

:mod:`analyzers.checkpoint` says what a checkpoint is (transformers audio sequence classifiers,
Whisper-encoder classifiers, dimensional regression heads of the audEERING form, opted-in remote
code) and refuses the rest; :mod:`analyzers.heads` turns outputs into :class:`EmotionScores`
(categorical labels through the circumplex, or the model's own arousal/valence/dominance). Here
the model is loaded, brought to its precision (measured, :mod:`analyzers.precision`), kept
prepared for the next start (:mod:`analyzers.prepared`) and run in batches of equal length.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import threading
import time
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import numpy.typing as npt
from pydantic import ConfigDict, Field, field_validator, model_validator
from pydantic.dataclasses import dataclass

from analyzers.batching import BatchObserver, InferenceScheduler, SpeechChunkAnalyzer
from analyzers.checkpoint import (
    DIMENSIONAL_ARCHITECTURE,
    CheckpointInfo,
    ModelRefused,
    fetch_checkpoint,
    inspect_checkpoint,
    local_root,
    missing_after_load,
    weight_files,
)
from analyzers.heads import CANONICAL, CIRCUMPLEX, Head, canonical_label, scores_from_probabilities
from analyzers.loading import ModelUnavailable, first_sentence, resolve_device, set_cpu_threads
from analyzers.precision import (
    BatchChoice,
    Decision,
    DecisionCache,
    cache_dir,
    candidates,
    choose,
    choose_batch,
    decision_key,
    files_digest,
    probe_signals,
    provisional,
    to_precision,
)
from analyzers.prepare_job import LOG_NAME, MAX_ATTEMPTS, start_job
from analyzers.prepared import (
    Prepared,
    PrepareLock,
    clear_job_attempts,
    count_job_attempt,
    eligible,
    job_attempts,
    load_prepared,
    normalize,
    prepared_path,
    save_prepared,
    unpreparable,
)
from analyzers.types import SAMPLE_RATE, EmotionScores

__all__ = [
    "CANONICAL",
    "CIRCUMPLEX",
    "EmotionAnalyzer",
    "EmotionConfig",
    "EmotionModel",
    "RemoteConfig",
    "canonical_label",
    "scores_from_probabilities",
]

log = logging.getLogger(__name__)


_PRECISION_CHOICES = ("auto", "fp32", "bf16", "int8", "fp16")  # [emotion] precision


@dataclass(frozen=True, slots=True, config=ConfigDict(extra="forbid"))
class RemoteConfig:
    """``[emotion.remote]``: an Open Inference Protocol (KServe v2) endpoint serving a model
    exported by ``affect-bridge export-model`` (input ``waveform``, FP32 [batch, samples] of
    16 kHz audio; output ``scores``, FP32 [batch, len(labels)]). The requests themselves are
    made by the bridge (bridge/pipeline/remote.py): only to this URL's origin, no redirects."""

    url: Annotated[str, Field(
        pattern=r"^$|^https?://[^\s/?#@]+(/[^\s?#]*)?$", max_length=2048,
        description="the server's base URL (http or https, no user info, query or fragment)")] = ""
    model: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,128}$",
                                description="the model's name on the server")] = "affect-emotion"
    version: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{0,64}$",
                                  description="the model version; empty: the server's "
                                              "default")] = ""
    labels: Annotated[list[str], Field(
        max_length=64, description="the model's output labels in order (export-model prints "
                                   "them)")] = dataclasses.field(default_factory=list)
    kind: Literal["categorical", "dimensional"] = "categorical"
    value_range: Annotated[tuple[float, float], Field(
        description="a dimensional model's output range, mapped onto -1..1")] = (0.0, 1.0)
    timeout_s: Annotated[float, Field(gt=0, le=60, description="per request")] = 5.0
    max_in_flight: Annotated[int, Field(
        ge=1, le=1024, description="requests waiting on the server, per process; a chunk "
                                   "beyond that is dropped (counted), as a full local queue "
                                   "drops")] = 8
    token_env: Annotated[str, Field(
        pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,127}$|^$",
        description="environment variable holding a bearer token")] = ""
    token_file: Annotated[str, Field(max_length=4096,
                                     description="file holding a bearer token")] = ""
    ca_file: Annotated[str, Field(max_length=4096,
                                  description="CA bundle for an https server with a private "
                                              "CA (default: the system's)")] = ""

    @model_validator(mode="after")
    def _consistent(self) -> RemoteConfig:
        if self.token_env and self.token_file:
            raise ValueError("set token_env or token_file, not both")
        if self.kind == "dimensional" and not self.value_range[0] < self.value_range[1]:
            raise ValueError("value_range must be (low, high) with low < high")
        if len(set(self.labels)) != len(self.labels):
            raise ValueError("labels must be distinct")
        return self


@dataclass(frozen=True, slots=True, config=ConfigDict(extra="forbid"))
class EmotionConfig:
    """The ``[emotion]`` section: which checkpoint, where and how it runs. Validated on
    construction."""

    model: Annotated[str, Field(description="hub id or local directory")] = \
        "superb/wav2vec2-base-superb-er"
    device: Annotated[str, Field(
        pattern=r"^(auto|cpu|cuda(:[0-9]{1,2})?)$",
        description="auto (a GPU when torch sees one), cpu, cuda or cuda:N")] = "auto"
    min_audio_s: Annotated[float, Field(
        ge=0.1, description="shorter speech is not sent to the model")] = 1.0
    max_batch: Annotated[int, Field(
        ge=0, le=256, description="0: on GPU 8; on CPU measured by the live service at start "
                                  "(1, 2, 4 or 8 chunks per forward pass, kept with the "
                                  "precision; 1 until measured, and for analyze)")] = 0
    max_wait_ms: Annotated[float, Field(
        ge=0, le=5000, description="how long the scheduler waits to fill a batch")] = 20.0
    queue_size: Annotated[int, Field(
        ge=1, le=100_000, description="windows waiting for inference, all speakers "
                                      "together")] = 64
    threads: Annotated[int, Field(
        ge=0, le=256, description="torch intra-op threads on CPU; 0: half the cores (at least "
                                  "1)")] = 0
    precision: Annotated[str, Field(
        description="auto: on CPU the fastest of fp32 / bf16 (native bf16 only) / int8 that "
                    "agrees with fp32, measured once per checkpoint and machine "
                    "(analyzers/precision.py); on CUDA bf16 where the GPU has it, else fp16. Or "
                    "forced: fp32, bf16, int8 (CPU), fp16 (CUDA)")] = "auto"
    prepare: Annotated[Literal["background", "at_load"], Field(
        description="on CPU, a checkpoint new to this machine: background starts at once in the "
                    "precision this kind of processor favours (checked against fp32) while a "
                    "process at idle priority measures the precisions and prepares the model for "
                    "later starts; at_load measures and prepares before the first "
                    "inference")] = "background"
    tolerance: Annotated[float, Field(
        gt=0, le=1, description="most mean total variation from fp32 an automatically chosen "
                                "precision may show")] = 0.05
    quantize: Annotated[Literal["auto", "int8", "none"] | None, Field(
        description="deprecated: use precision (none = fp32)")] = None
    trust_remote_code: Annotated[bool, Field(
        description="load checkpoints that bring their own model code (config.json auto_map): "
                    "this runs the checkpoint's Python code; refused when off")] = False
    dimension_range: Annotated[tuple[float, float], Field(
        description="a dimensional model's output range, mapped linearly onto -1..1 "
                    "(audEERING's models: 0..1)")] = (0.0, 1.0)
    backend: Annotated[Literal["local", "remote"], Field(
        description="local: the model runs in this process; remote: on an Open Inference "
                    "Protocol server ([emotion.remote])")] = "local"
    remote: RemoteConfig = dataclasses.field(default_factory=RemoteConfig)

    @field_validator("precision")
    @classmethod
    def _precision(cls, v: str) -> str:
        if v not in _PRECISION_CHOICES:
            raise ValueError(f"must be auto, fp32, bf16, int8 or fp16, got {v!r}")
        return v

    @model_validator(mode="after")
    def _remote_complete(self) -> EmotionConfig:
        if self.backend == "remote":
            if not self.remote.url:
                raise ValueError("backend 'remote' needs [emotion.remote] url")
            if not self.remote.labels:
                raise ValueError("backend 'remote' needs [emotion.remote] labels (export-model "
                                 "prints them)")
        return self

    @field_validator("dimension_range")
    @classmethod
    def _range(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not v[0] < v[1]:
            raise ValueError(f"must be (low, high) with low < high, got {list(v)}")
        return v

    @property
    def wanted_precision(self) -> str:
        """``precision``, or what the deprecated ``quantize`` asked for when precision is auto."""
        if self.precision == "auto" and self.quantize in ("int8", "none"):
            return "int8" if self.quantize == "int8" else "fp32"
        return self.precision


def checkpoint_files(model: str) -> list[Path]:
    """The files that make up a checkpoint (config, weights, feature extractor): a local
    directory's, or the local HuggingFace cache's snapshot of a hub id; none when not local."""
    root = local_root(model)
    if root is None:
        return []
    return sorted(p for p in root.iterdir() if p.is_file() and (
        p.suffix in (".safetensors", ".bin") or p.name in ("config.json",
                                                          "preprocessor_config.json")))


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


def _model_class(info: CheckpointInfo) -> Any:
    """The class that holds every weight of ``info``'s family (never transformers' guess)."""
    import transformers

    if info.family == "dimensional":
        from analyzers.dimensional import Wav2Vec2ForSpeechClassification

        return Wav2Vec2ForSpeechClassification
    if info.family == "remote-code":
        return transformers.AutoModelForAudioClassification
    return getattr(transformers, str(info.architecture))


def _extractor_class(info: CheckpointInfo) -> Any:
    """The feature extractor class ``preprocessor_config.json`` names, when transformers has it
    (what ``AutoFeatureExtractor`` would pick; importing that costs about 0.4 CPU-s more, its
    whole mapping of model types); else ``AutoFeatureExtractor``."""
    import transformers

    name = info.extractor_type or ""
    if info.family != "remote-code" and name.isidentifier() and name.endswith("FeatureExtractor"):
        cls = getattr(transformers, name, None)
        if isinstance(cls, type) and issubclass(cls, transformers.FeatureExtractionMixin):
            return cls
    return transformers.AutoFeatureExtractor


def _fp32_kwargs() -> dict[str, Any]:
    """``from_pretrained``'s argument for an fp32 model: transformers from 4.56 builds the
    model in the dtype its config names (``dtype``/``torch_dtype``, e.g. float16 for a
    checkpoint saved in half precision; 5.x does so by default), and everything here starts
    from fp32 (the precisions are converted from it, and measured against it)."""
    import torch
    import transformers

    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    return {"dtype": torch.float32} if (major, minor) >= (4, 56) else {}


class EmotionModel:
    """A loaded checkpoint: ``predict`` takes a batch of 16 kHz waveforms (blocking)."""

    def __init__(self, config: EmotionConfig) -> None:
        self.config = config
        self.info: CheckpointInfo | None = None  # None when loaded prepared (checked when made)
        self.head: Head | None = None
        self.family = ""
        self.device = "cpu"
        self.precision = "fp32"
        self.decision: Decision | None = None  # the precision decision, measured or cached
        self._extractor: Any = None  # transformers' feature extractor, when loaded through it
        self._input_name = "input_values"
        self._labels: list[str] = []  # the checkpoint's own labels (id2label, in order)
        self._model: Any = None
        self._dtype: Any = None
        self._normalize: bool | None = None  # set when inputs are made without transformers
        self._cache = DecisionCache()
        self._key_cache: str | None = None  # the precision decision's key, once computed
        self.batch: BatchChoice | None = None  # measured or cached (CPU, max_batch 0)
        self._saver: threading.Thread | None = None  # writes the prepared copy (background)
        self._job_key: str | None = None  # the background job's checkpoint key, until started
        self._follow_lock = threading.Lock()  # follow_up: inference thread or close()
        self._deferred = False  # defer_check: loaded in fp32; key and precision by settle()

    @property
    def loaded(self) -> bool:
        return self._model is not None

    @property
    def raw_inputs(self) -> bool:
        """Loaded from the checkpoint: its inputs are the 16 kHz waveform, made without
        transformers (:func:`~analyzers.prepared.eligible`; normalised when
        :attr:`normalizes`), so the model can be prepared or exported."""
        return self._normalize is not None or (self._extractor is not None
                                               and eligible(self._extractor))

    @property
    def normalizes(self) -> bool:
        """With :attr:`raw_inputs`: each waveform is normalised to zero mean, unit variance."""
        if self._normalize is not None:
            return self._normalize
        return bool(getattr(self._extractor, "do_normalize", False))

    def describe(self) -> str:
        """What is loaded, e.g. "dimensional (wav2vec2; dimensions arousal, dominance, valence)
        in bf16+matmul on cpu"."""
        what = self.head.describe() if self.head else "not loaded"
        return f"{self.family} ({what}) in {self.precision} on {self.device}"

    def load(self, *, download: bool = False, background: bool = False,
             start_job: bool = True, defer_check: bool = False) -> None:
        """Blocking: load the model. Raises :class:`ModelUnavailable` (:class:`ModelRefused`
        for a checkpoint this product will not run, see :mod:`analyzers.checkpoint`).

        On a CPU a model prepared earlier on this machine loads with torch alone; otherwise the
        checkpoint is inspected, loaded with its family's class, converted to its precision and
        kept prepared for the next start. Without ``download`` only local paths and the local
        HuggingFace cache are read: weights are fetched ahead of time (``affect-bridge
        download-models``), never on a first call. ``download`` fetches, inspects and loads, but
        measures nothing and prepares nothing (it runs at image build, not where it serves).
        ``background`` (with ``prepare = "at_load"``): the prepared copy is traced and written
        by a thread of its own while inference starts (:meth:`wait_prepared`); the process waits
        for it before it exits.

        With ``prepare = "background"`` (the default) a checkpoint new to this machine measures
        and prepares nothing here: it runs in the precision the processor's kind favours, once
        that agrees with fp32 (:func:`~analyzers.precision.provisional`), and a process of its
        own (:mod:`analyzers.prepare_job`) measures and prepares for later starts: started
        here, or with ``start_job`` false by :meth:`follow_up` once the caller's own work lets
        it (the two processors of a small machine may be one core's two threads: a job beside
        the analysis slows it).

        ``defer_check`` (with ``prepare = "background"`` and precision auto, the analyzer's
        load): a checkpoint whose files this machine has never hashed is loaded in fp32 only;
        hashing it, converting it and checking the provisional variant against fp32 wait for
        :meth:`settle`, before its first inference (``predict`` runs it; the live service runs
        it once every worker is ready). On a first ``run`` with two workers that was about 1 s
        of each worker's load before ``/readyz``, beside the other worker's load. A copy of a
        checkpoint prepared under another path is loaded unprepared once.
        """
        started = time.perf_counter()
        if not download and local_root(self.config.model) is None:
            inspect_checkpoint(self.config.model)  # raises: not here (before torch is imported)
        self.device = self._resolve_device()
        key = None
        deferring = defer_check and not download and self.config.prepare == "background" \
            and self.config.wanted_precision == "auto"
        if self.device == "cpu":
            self.configure_thread()
            key = self._key(known_only=deferring)
            if not download and self._use_prepared(key):
                self._loaded(f"prepared, {time.perf_counter() - started:.1f} s", key, start_job)
                return
        if download:
            try:
                fetch_checkpoint(self.config.model,
                                 trust_remote_code=self.config.trust_remote_code)
            except Exception as exc:  # the hub unreachable, a repository that is not there
                raise ModelUnavailable(f"cannot download emotion model {self.config.model!r}: "
                                       f"{first_sentence(exc)}") from exc
            model = self._from_checkpoint()
            self._model, self.precision = model, "fp32"
            self._finish("downloaded")
            return
        if deferring and self.device == "cpu" and key is None:  # never hashed here: a new file
            self._model, self._deferred = self._from_checkpoint(), True
            self._loaded(f"from the checkpoint, {time.perf_counter() - started:.1f} s; its "
                         "precision is chosen before its first inference")
            return
        if self.config.prepare == "background" and key is not None:
            self._model = self._in_precision(self._from_checkpoint(), key)
            self._loaded(f"from the checkpoint, {time.perf_counter() - started:.1f} s", key,
                         start_job)
            return
        lock = PrepareLock.acquire(key) if key is not None else None
        try:
            if lock is not None:  # another process may have prepared it while this one waited
                self._cache.refresh()
                if self._use_prepared(key):
                    self._loaded(f"prepared by another process, "
                                 f"{time.perf_counter() - started:.1f} s")
                    return
            model = self._from_checkpoint()
            if self.device == "cpu" and key is None:
                key = self._key()
            self._model = self._in_precision(model.to(self.device), key)
            self.batch = self._cached_batch()
            if background:  # the lock goes with the thread: released once the copy is written
                self._saver = threading.Thread(target=self._keep_prepared, args=(key, lock),
                                               name="emotion-prepare")
                self._saver.start()
                lock = None
            else:
                self._keep_prepared(key)
        finally:
            if lock is not None:
                lock.release()
        self._finish(f"from the checkpoint, {time.perf_counter() - started:.1f} s")

    def _loaded(self, how: str, job_key: str | None = None, start_job: bool = False) -> None:
        """The end of a load that is done: the cached batch size, the log line, and the
        background job of ``job_key`` (``prepare = "background"``), started now or by
        :meth:`follow_up`."""
        self.batch = self._cached_batch()
        self._finish(how)
        self._job_key = job_key
        if start_job:
            self.follow_up()

    def measure_and_prepare(self, lock: PrepareLock | None = None) -> str:
        """The background job's work (CPU): measure the precisions where the cached decision is
        provisional, and prepare the model in the chosen one, holding the preparation lock
        (``lock``, handed over by the process that started the job, or taken here without
        waiting). "done", "done already" (another process did it meanwhile) or "busy" (another
        process holds the lock: nothing done)."""
        self.config = dataclasses.replace(self.config, prepare="at_load")  # measure, here
        self.device = "cpu"
        self.configure_thread()
        key = self._key()
        if key is None:
            return "done already"  # not a local checkpoint: nothing to keep
        own = lock is None
        if own:
            lock = PrepareLock.acquire(key, wait=False, holder="background")
            if lock is None:
                return "busy"
        try:
            self._cache.refresh()
            if self._use_prepared(key):
                clear_job_attempts(key)
                return "done already"
            self._model = self._in_precision(self._from_checkpoint(), key)
            self._save_prepared(key)
            clear_job_attempts(key)
        finally:
            if own and lock is not None:
                lock.release()
        return "done"

    def follow_up(self) -> None:
        """``prepare = "background"``, after :meth:`load`: start the job that measures the
        precisions (the decision is provisional) or prepares the model (loaded from its
        checkpoint, preparable, not yet prepared), unless another process holds the
        preparation lock or :data:`~analyzers.prepare_job.MAX_ATTEMPTS` jobs never finished.
        Once per load; never raises (logged)."""
        with self._follow_lock:
            key, self._job_key = self._job_key, None
        if self.config.prepare != "background" or self.device != "cpu" or key is None:
            return
        try:
            self._start_job(key)
        except Exception as exc:  # the job is an optimisation: never the caller's failure
            log.warning("emotion model: the background preparation did not start (%s: %s)",
                        type(exc).__name__, exc)

    def _start_job(self, key: str) -> None:
        measure = self.decision is not None and self.decision.provisional
        prepare = (self.raw_inputs
                   and not prepared_path(key, self.precision).is_file()
                   and not unpreparable(key, self.precision))
        if not (measure or prepare):
            return
        if job_attempts(key) >= MAX_ATTEMPTS:
            log.warning("emotion model: %d background preparations of this checkpoint never "
                        "finished (see %s); running %s as it is. Set [emotion] prepare = "
                        "\"at_load\" to measure and prepare before the first inference",
                        MAX_ATTEMPTS, cache_dir() / LOG_NAME, self.precision)
            return
        lock = PrepareLock.acquire(key, wait=False, holder="background")
        if lock is None:
            return  # a job (or a process measuring at load) is on it
        count_job_attempt(key)
        if start_job(dataclasses.asdict(self.config), lock):
            log.info("emotion model: %s in the background (lowest priority; log: %s)",
                     "measuring the precisions and preparing" if measure else "preparing",
                     cache_dir() / LOG_NAME)

    def _resolve_device(self) -> str:
        device = resolve_device(self.config.device)
        wanted = self.config.wanted_precision
        if device == "cpu" and wanted == "fp16":
            raise ModelUnavailable("fp16 is a CUDA precision; on CPU use auto, fp32, bf16 or int8")
        if device != "cpu" and wanted == "int8":
            raise ModelUnavailable("int8 is a CPU precision; on CUDA use auto, bf16, fp16 or fp32")
        return device

    def _use_prepared(self, key: str | None) -> bool:
        """Load the model prepared earlier for ``key`` (and the cached precision), if any."""
        wanted = self.config.wanted_precision
        variant = wanted if wanted != "auto" else self._cached_variant(key)
        prepared: Prepared | None = load_prepared(key, variant) if key and variant else None
        if prepared is None:
            return False
        self._model, self._normalize = prepared.module, prepared.normalize
        self.precision, self.family = prepared.precision, prepared.family
        self._labels = list(prepared.labels)
        self.head = Head.from_labels(self._labels, dimensional=prepared.kind == "dimensional",
                                     value_range=prepared.value_range)
        return True

    def _from_checkpoint(self) -> Any:
        """Inspect the checkpoint, load it with its family's class (fp32, eval, weight norm
        folded) and its feature extractor; refuse it when a weight would be random."""
        info = inspect_checkpoint(self.config.model,
                                  trust_remote_code=self.config.trust_remote_code)
        if info.refusal:
            raise ModelRefused(info.refusal)
        name = self.config.model
        if info.sampling_rate not in (None, SAMPLE_RATE):
            raise ModelRefused(f"emotion model {name!r} refused: it expects {info.sampling_rate} "
                               f"Hz audio; only {SAMPLE_RATE} Hz models are supported")
        plain = self._plain(info)
        if plain is not None:
            model, self._normalize = plain
            self._extractor, self._input_name = None, "input_values"
            return self._checkpoint_loaded(info, model)
        try:
            remote = info.family == "remote-code"
            extractor = _extractor_class(info).from_pretrained(info.root,
                                                               trust_remote_code=remote)
            model, loading = _model_class(info).from_pretrained(
                info.root, output_loading_info=True, trust_remote_code=remote,
                **_fp32_kwargs())
        except Exception as exc:  # format errors, a remote code that fails: "unavailable"
            raise ModelUnavailable(f"cannot load emotion model {name!r}: "
                                   f"{first_sentence(exc)}") from exc
        missing = missing_after_load(loading)
        if missing:
            raise ModelRefused(f"emotion model {name!r} refused: loading it as "
                               f"{type(model).__name__} would leave {len(missing)} weights "
                               f"initialised at random ({', '.join(missing[:6])}"
                               f"{', ...' if len(missing) > 6 else ''})")
        model.eval()
        fold_weight_norm(model)
        self._extractor, self._normalize = extractor, None
        self._input_name = extractor.model_input_names[0]
        return self._checkpoint_loaded(info, model)

    def _plain(self, info: CheckpointInfo) -> tuple[Any, bool] | None:
        """The checkpoint loaded without transformers (:mod:`analyzers.wav2vec2`), where that
        module runs it exactly as transformers would; else None."""
        if info.family not in ("classifier", "dimensional"):
            return None
        from analyzers.wav2vec2 import load_plain  # torch: only with the model

        arch = DIMENSIONAL_ARCHITECTURE if info.family == "dimensional" else info.architecture
        return load_plain(info.root, arch, len(info.labels), weight_files(info.root))

    def _checkpoint_loaded(self, info: CheckpointInfo, model: Any) -> Any:
        self.info, self.family = info, str(info.family)
        self._labels = list(info.labels)
        self.head = Head.from_labels(self._labels, dimensional=info.dimensional,
                                     value_range=self.config.dimension_range)
        return model

    def wait_prepared(self, timeout: float | None = None) -> None:
        """Until the prepared copy written in the background (if any) is on disk."""
        if self._saver is not None:
            self._saver.join(timeout)

    def _keep_prepared(self, key: str | None, lock: PrepareLock | None = None) -> None:
        try:
            self._save_prepared(key)
        finally:
            if lock is not None:
                lock.release()

    def _save_prepared(self, key: str | None) -> None:
        if key is None or self.head is None or not self.raw_inputs:
            return
        saved = save_prepared(self._model, key, self.precision, self._labels,
                              self.normalizes,
                              probe_signals(1.0)[1], kind=self.head.kind,
                              value_range=self.head.value_range, family=self.family)
        if saved is not None:
            log.info("emotion model kept prepared in %s", saved)

    def _finish(self, how: str) -> None:
        assert self.head is not None
        self._dtype = next(p.dtype for p in self._model.parameters() if p.is_floating_point())
        if self.head.kind == "categorical":
            unknown = [raw for raw, c in zip(self._labels, self.head.labels, strict=True)
                       if c == "other" and raw.strip().lower() != "other"]
            if unknown:
                log.warning("emotion labels %s have no canonical name; reported as 'other'",
                            unknown)
        log.info("emotion model %s loaded: %s (%s)", self.config.model, self.describe(), how)

    def _key(self, *, known_only: bool = False) -> str | None:
        """The precision decision's key (checkpoint content, processor, torch version), or None
        when the checkpoint's files are not found locally (or, ``known_only``, were never
        hashed here: nothing is read then)."""
        files = checkpoint_files(self.config.model)
        digest = files_digest(files, self._cache, known_only=known_only) if files else None
        if digest is None:
            return None
        self._key_cache = decision_key(digest, self.config.tolerance)
        return self._key_cache

    @property
    def deferred(self) -> bool:
        """Loaded with ``defer_check`` in fp32; :meth:`settle` has not run yet."""
        return self._deferred

    def settle(self) -> None:
        """``defer_check``, on the inference thread (or once it has stopped): hash the
        checkpoint for its key, then convert the fp32 model to its precision as a load would
        (:meth:`_in_precision`: the cached decision, or the provisional variant once it agrees
        with fp32, or a measurement). Then :meth:`follow_up` knows the key. A failure leaves
        no model (each inference then fails, logged) rather than an unchecked one."""
        if not self._deferred:
            return
        self._deferred = False
        try:
            key = self._key()
        except OSError as exc:  # the files changed or vanished since the load: nothing cached
            log.warning("emotion model: cannot hash %s (%s); its precision is not cached",
                        self.config.model, exc)
            key = None
        started = time.perf_counter()
        try:
            self._model = self._in_precision(self._model, key)
        except Exception:
            self._model = None
            raise
        self._dtype = next(p.dtype for p in self._model.parameters() if p.is_floating_point())
        log.info("emotion model in %s, %.1f s after its load", self.precision,
                 time.perf_counter() - started)
        self.batch = self._cached_batch()
        with self._follow_lock:
            self._job_key = key

    def _cached_variant(self, key: str | None) -> str | None:
        decision = self._cache.get(key) if key else None
        if decision is None or decision.precision not in candidates():
            return None
        if decision.provisional and self.config.prepare == "at_load":
            return None  # measured here, before the first inference
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
        if wanted == "auto" and self.decision is None:  # not found by load() already
            self._cached_variant(key)
        if wanted == "auto" and self.decision is not None:
            wanted = self.decision.precision
            log.info("emotion precision %s (cached: %s)", wanted, self.decision.describe())
        assert self.head is not None
        if wanted != "auto":
            self.precision = wanted
            return self._runs(to_precision(model, wanted))
        from analyzers.encoder import has_convertible_encoder  # torch: only with the model

        options = candidates()
        if not has_convertible_encoder(model):  # "+matmul" would measure the same model twice
            options = [o for o in options if "+" not in o]
        if self.config.prepare == "background":
            quick = provisional(model, self._outputs, options, tolerance=self.config.tolerance,
                                distance=self.head.distance)
            if quick is not None:
                model, self.decision = quick
                self.precision = self.decision.precision
                log.info("emotion precision %s", self.decision.describe())
                if key is not None:
                    self._cache.put(key, self.decision)
                return model
            model = self._from_checkpoint().to(self.device)  # fp32 again: measured here
        started = time.perf_counter()
        model, decision = choose(model, self._outputs, options, tolerance=self.config.tolerance,
                                 distance=self.head.distance)
        log.info("emotion precision %s, measured in %.1f s (%s)%s", decision.precision,
                 time.perf_counter() - started, decision.describe(),
                 f"; cached in {self._cache.path}" if key else "")
        if key is not None:
            self._cache.put(key, decision)
        self.decision, self.precision = decision, decision.precision
        return model

    def _runs(self, model: Any) -> Any:
        """``model`` after one probe ran through it: a precision some layer cannot run in
        (WavLM's attention reads its projections' weights, which int8 layers do not have) is
        unavailable here at load, not a failure on every window later."""
        try:
            self._outputs(model, probe_signals(1.0)[0])
        except Exception as exc:
            raise ModelUnavailable(
                f"emotion model {self.config.model!r} does not run in {self.precision} "
                f"({type(exc).__name__}: {first_sentence(exc)}); use precision auto or fp32"
            ) from exc
        return model

    def configure_thread(self) -> None:
        """Run in the thread that calls ``predict``."""
        set_cpu_threads(self.device, self.config.threads)

    def _outputs(self, model: Any, audio: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
        """``model``'s output row for one waveform (probabilities or dimensions): the precision
        probe's run."""
        import torch

        assert self.head is not None
        dtype = next(p.dtype for p in model.parameters() if p.is_floating_point())
        with torch.inference_mode():
            out = self.head.outputs(model(self._inputs([audio]).to(dtype))["logits"])
        return out.double()[0].numpy()

    def _inputs(self, waveforms: list[npt.NDArray[np.float32]]) -> Any:
        """The model's inputs (input values, or Whisper's log-mel features) for waveforms of
        one length."""
        import torch

        if self._normalize is None:
            return self._extractor(waveforms, sampling_rate=SAMPLE_RATE,
                                   return_tensors="pt")[self._input_name]
        return torch.from_numpy(np.stack([normalize(w) if self._normalize else
                                          np.asarray(w, np.float32) for w in waveforms]))

    @property
    def max_batch(self) -> int:
        if self.config.max_batch > 0:
            return self.config.max_batch
        if self.device != "cpu":
            return 8
        return self.batch.size if self.batch is not None else 1

    @property
    def batch_unknown(self) -> bool:
        """Whether the batch size is to be measured here (CPU, ``max_batch = 0``, no cached
        measurement for this checkpoint, precision, processor and thread count)."""
        return self.config.max_batch == 0 and self.device == "cpu" and self.batch is None

    def _batch_key(self, chunk_s: float = 4.0) -> str | None:
        import torch

        if self._key_cache is None:
            return None
        raw = (f"{self._key_cache}|{self.precision}|threads {torch.get_num_threads()}"
               f"|chunk {chunk_s}")
        return hashlib.sha256(raw.encode()).hexdigest()

    def _cached_batch(self) -> BatchChoice | None:
        key = self._batch_key() if self.config.max_batch == 0 else None
        return self._cache.get_batch(key) if key else None

    def measure_batch(self, chunk_s: float = 4.0) -> BatchChoice:
        """Blocking, on the inference thread: time 1, 2, 4 and 8 equal-length chunks per
        forward pass (:func:`~analyzers.precision.choose_batch`), keep the choice in the cache
        and in :attr:`batch`."""
        probes = probe_signals(chunk_s)
        chunks = {b: [probes[i % len(probes)] for i in range(b)] for b in (1, 2, 4, 8)}
        started = time.perf_counter()
        choice = choose_batch(lambda b: self.predict(chunks[b]), chunk_s=chunk_s)
        key = self._batch_key(chunk_s)
        if key is not None:
            self._cache.put_batch(key, choice)
        self.batch = choice
        log.info("emotion %s, measured in %.1f s", choice.describe(),
                 time.perf_counter() - started)
        return choice

    def predict(self, waveforms: list[npt.NDArray[np.float32]]) -> list[EmotionScores]:
        """Blocking inference on a batch; call from the scheduler thread only."""
        import torch

        if self._deferred:  # defer_check: before the first inference
            self.settle()
        if self._model is None or self.head is None:
            raise ModelUnavailable("emotion model is not loaded")
        # Only waveforms of equal length share a forward pass: zero-padding (even with an
        # attention mask, which group-norm checkpoints like the default ignore in their first
        # layer) would make a speaker's result depend on who it was batched with.
        rows: list[Any] = [None] * len(waveforms)
        by_length: dict[int, list[int]] = {}
        for i, wave in enumerate(waveforms):
            by_length.setdefault(len(wave), []).append(i)
        # A prepared (TorchScript) model runs its traced graph as it is: the profiling
        # executor's optimisation passes cost about 0.2 CPU-s over a process's first two calls
        # and gave no steady-state gain here (0.13 s per 4 s chunk either way, the same output).
        optimize = not isinstance(self._model, torch.jit.ScriptModule)
        for group in by_length.values():
            values = self._inputs([waveforms[i] for i in group]).to(self.device, self._dtype)
            with torch.inference_mode(), torch.jit.optimized_execution(optimize):
                out = self.head.outputs(self._model(values)["logits"]).cpu().numpy()
            for i, row in zip(group, out, strict=True):
                rows[i] = row
        return [self.head.scores(row, len(wave) / SAMPLE_RATE)
                for wave, row in zip(waveforms, rows, strict=True)]


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

    def after_ready(self) -> None:
        """Live service, once it is ready (with worker processes, once every worker is:
        :meth:`bridge.pipeline.analysis.AnalysisEngine.service_ready`): where the batch size is
        still unknown, measure it on the inference thread, behind whatever is queued (chunks
        that arrive wait for the measurement, then run with the size it chose). Then start the
        background preparation job, if this checkpoint needs one. Not at load: on a first
        start, one worker's measurement beside another's model load made ``run`` ready up to
        1.6x later."""
        scheduler = self._scheduler
        if scheduler is None:
            return

        def measure() -> None:  # on the inference thread
            try:
                self.model.settle()  # a new checkpoint's precision first (defer_check)
                if self.model.batch_unknown:
                    self.model.measure_batch()
                elif self.model.batch is not None:
                    log.info("emotion %s (cached)", self.model.batch.describe())
                scheduler.max_batch = self.model.max_batch
            finally:  # the background job (if any) after the measurement, not beside it
                self.model.follow_up()

        scheduler.run_soon(measure)

    def load(self) -> None:
        """Blocking. Raises :class:`ModelUnavailable`; the caller reports the degradation."""
        # after_ready or close starts the job; a new checkpoint's precision is chosen there (or
        # at its first inference), not in the load
        self.model.load(background=True, start_job=False, defer_check=True)
        self._scheduler = InferenceScheduler(
            self.model.predict,
            on_start=self.model.configure_thread,
            max_batch=self.model.max_batch,
            max_wait_ms=self.config.max_wait_ms,
            queue_size=self.config.queue_size,
            name="emotion-inference",
            observer=self.on_batch,
        )

    def close(self) -> None:
        """After the work (``analyze``: the file is done): the background job starts now, if
        this checkpoint needs one and the live service's warm-up did not start it."""
        super().close()
        self.model.wait_prepared()
        if self.model.deferred and not self._inference_running():
            try:  # a file without a chunk for the model: the key and decision all the same
                self.model.settle()
            except Exception as exc:
                log.warning("emotion model: %s: %s", type(exc).__name__, exc)
        self.model.follow_up()

    def _inference_running(self) -> bool:
        return self._scheduler is not None and self._scheduler.running
