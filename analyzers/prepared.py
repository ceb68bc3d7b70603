"""The emotion model as prepared for this machine, kept on disk and loaded with torch alone.

Preparing a checkpoint costs far more CPU than running it on a short recording: importing
transformers' model code (as much again as importing torch and transformers), reading the fp32
weights, folding the weight norm, converting to the chosen precision. So once prepared, the
model in its chosen precision is traced (``torch.jit.trace``: the operations of one forward
pass, which for wav2vec2-style classifiers are the same at every input length; tested equal to
the original from 1 s to 7 s) and saved in the cache directory with its labels, under the
precision decision's key (checkpoint content, processor, torch version) and the precision.
Later starts load that file: no transformers import, no fp32 copy, nothing converted again.

TorchScript is what can hold every precision here: ``torch.export`` (its successor) cannot
export the int8 dynamically quantised layers, and specialises the batch size of these models.
Should a later torch drop TorchScript, saving fails with a log line and the model is prepared
from its checkpoint at every start, as before.

Only checkpoints whose feature extractor is wav2vec2's (zero-mean unit-variance normalisation,
no attention mask: :func:`normalize`) are prepared; others load through transformers every
time. A file that cannot be read is ignored with a log line and written again.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from analyzers.precision import cache_dir
from analyzers.types import SAMPLE_RATE

__all__ = ["PrepareLock", "Prepared", "clear_job_attempts", "count_job_attempt", "eligible",
           "eligible_config", "job_attempts", "load_prepared", "normalize", "prepared_path", "save_prepared",
           "unpreparable"]

log = logging.getLogger(__name__)

META = "affect_bridge.json"
FORMAT = 2  # 2: the head's kind, value range and family are kept too


def normalize(wave: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """What ``Wav2Vec2FeatureExtractor(do_normalize=True)`` does to one unpadded waveform."""
    x = np.asarray(wave, dtype=np.float32)
    return ((x - x.mean()) / np.sqrt(x.var() + 1e-7)).astype(np.float32)


def eligible_config(extractor: dict[str, Any]) -> bool:
    """:func:`eligible` for an extractor's ``preprocessor_config.json`` (read without
    transformers): a ``Wav2Vec2FeatureExtractor`` of one 16 kHz channel."""
    return (extractor.get("feature_extractor_type") == "Wav2Vec2FeatureExtractor"
            and extractor.get("feature_size", 1) == 1
            and extractor.get("sampling_rate", SAMPLE_RATE) == SAMPLE_RATE)


def eligible(extractor: Any) -> bool:
    """Whether inputs for this checkpoint can be made without its transformers extractor. An
    extractor that also returns an attention mask (``return_attention_mask``, the large
    checkpoints') normalises an unpadded waveform the same way, and no model here is ever given
    a mask: only equal-length waveforms share a batch."""
    return eligible_config({
        "feature_extractor_type": type(extractor).__name__,
        "feature_size": getattr(extractor, "feature_size", 1),
        "sampling_rate": getattr(extractor, "sampling_rate", SAMPLE_RATE)})


@dataclass
class Prepared:
    module: Any  # a torch.jit.ScriptModule: (batch, samples) -> {"logits": ...}
    labels: list[str]  # the checkpoint's id2label, in index order
    normalize: bool
    precision: str
    kind: Literal["categorical", "dimensional"] = "categorical"
    value_range: tuple[float, float] = (0.0, 1.0)  # a dimensional head's output range
    family: str = "classifier"  # analyzers/checkpoint.py's family name


def prepared_path(key: str, precision: str) -> Path:
    return cache_dir() / "models" / f"{key[:40]}-{precision}.pt"


def _failed_path(key: str, precision: str) -> Path:
    return prepared_path(key, precision).with_suffix(".failed")


def unpreparable(key: str, precision: str) -> bool:
    """Whether preparing ``key`` in ``precision`` failed here before (the model does not
    trace): the background job is not started for it again."""
    try:
        return _failed_path(key, precision).is_file()
    except OSError:
        return False


def save_prepared(model: Any, key: str, precision: str, labels: list[str], do_normalize: bool,
                  example: npt.NDArray[np.float32], *, kind: str = "categorical",
                  value_range: tuple[float, float] = (0.0, 1.0),
                  family: str = "classifier") -> Path | None:
    """Trace ``model`` (converted, eval) on ``example`` and save it; None (logged) on failure."""
    import torch

    path = prepared_path(key, precision)
    dtype = next(p.dtype for p in model.parameters() if p.is_floating_point())
    meta = {"format": FORMAT, "labels": labels, "normalize": do_normalize,
            "precision": precision, "kind": kind, "value_range": list(value_range),
            "family": family}
    tmp = None
    try:
        x = torch.from_numpy(normalize(example) if do_normalize else example)[None].to(dtype)
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale(path.parent)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".prepared-", suffix=".pt")
        os.close(fd)
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TorchScript's deprecation (see the module doc)
            traced = torch.jit.trace(model, x, check_trace=False, strict=False)
            torch.jit.save(traced, tmp, _extra_files={META: json.dumps(meta)})
        os.replace(tmp, path)
    except Exception as exc:  # a model that does not trace still runs, just prepared each time
        log.info("emotion model not kept prepared (%s: %s)", type(exc).__name__, exc)
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if not isinstance(exc, OSError):  # the model itself, not a full or read-only disk
            with contextlib.suppress(OSError):
                _failed_path(key, precision).write_text(f"{type(exc).__name__}: {exc}\n",
                                                        encoding="utf-8")
        return None
    _failed_path(key, precision).unlink(missing_ok=True)
    return path


def _remove_stale(directory: Path, older_s: float = 3600.0) -> None:
    """Temporary files of saves that never finished (a process killed while writing one)."""
    now = time.time()
    for tmp in directory.glob(".prepared-*.pt"):
        try:
            if now - tmp.stat().st_mtime > older_s:
                tmp.unlink()
        except OSError:
            pass


def load_prepared(key: str, precision: str) -> Prepared | None:
    """The prepared model for ``key`` and ``precision``, or None (not there, or unreadable:
    logged)."""
    import torch

    path = prepared_path(key, precision)
    if not path.is_file():
        return None
    extra = {META: ""}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
        meta = json.loads(extra[META])
        if meta.get("format") != FORMAT or meta.get("precision") != precision:
            raise ValueError("made by another version")
        labels = [str(label) for label in meta["labels"]]
        if meta["kind"] not in ("categorical", "dimensional"):
            raise ValueError(f"unknown head kind {meta['kind']!r}")
        lo, hi = (float(v) for v in meta["value_range"])
        return Prepared(module.eval(), labels, bool(meta["normalize"]), precision,
                        meta["kind"], (lo, hi), str(meta["family"]))
    except Exception as exc:
        log.warning("prepared emotion model %s is unreadable (%s); preparing it again", path,
                    type(exc).__name__)
        return None


class PrepareLock:
    """One process at a time measures and prepares a checkpoint (``run --workers N`` starts N
    at once): an exclusive ``flock`` on a file beside the prepared models, which names its
    holder's kind. A process measuring at load waits for another such process, then reads what
    it cached and prepared instead of measuring again; it does not wait behind a background job
    (at the lowest priority it may take long beside busy workers): it measures too. The
    background job's lock is taken by the process that starts it and handed over with the file
    descriptor (:meth:`fileno`, :meth:`inherited`), so no second job starts in between."""

    def __init__(self, fd: int) -> None:
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, key: str, timeout_s: float = 600.0, *, wait: bool = True,
                holder: str = "load") -> PrepareLock | None:
        """Wait (polling) for the lock of ``key``. None when the cache directory cannot hold a
        lock file, another process held it past ``timeout_s`` or a background job holds it
        (logged): go on without it. Without ``wait``: None at once when another process holds
        it. ``holder``: what this process is ("load", or "background" for the job)."""
        path = _lock_path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            if wait:
                log.info("no preparation lock at %s (%s); measuring without one", path,
                         exc.strerror or type(exc).__name__)
            return None
        deadline, waited = time.monotonic() + timeout_s, False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if not wait:
                    os.close(fd)
                    return None
                if _holder(fd) == "background":
                    os.close(fd)
                    log.info("a background job is preparing this emotion model; measuring here "
                             "too")
                    return None
                if not waited:
                    log.info("another process is preparing this emotion model; waiting for it")
                    waited = True
                if time.monotonic() > deadline:
                    os.close(fd)
                    log.warning("the emotion model's preparation lock is still held after %.0f s;"
                                " preparing it here too", timeout_s)
                    return None
                time.sleep(0.1)
            except OSError as exc:  # no locks on this file system (some network mounts)
                os.close(fd)
                log.info("no preparation lock at %s (%s); going on without one", path,
                         exc.strerror or type(exc).__name__)
                return None
            else:
                try:
                    os.ftruncate(fd, 0)
                    os.pwrite(fd, holder.encode(), 0)
                except OSError:
                    pass
                return cls(fd)

    @classmethod
    def inherited(cls, fd: int) -> PrepareLock:
        """The lock a parent process took and handed over as file descriptor ``fd``."""
        return cls(fd)

    def fileno(self) -> int:
        assert self._fd is not None
        return self._fd

    def hand_over(self) -> None:
        """Close this process's descriptor without unlocking: the lock stays with the child
        that inherited it, and ends when that child releases it or exits."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def _lock_path(key: str) -> Path:
    return cache_dir() / "models" / f"{key[:40]}.lock"


def _holder(fd: int) -> str:
    try:
        return os.pread(fd, 32, 0).decode(errors="replace").strip()
    except OSError:
        return ""


def _attempts_path(key: str) -> Path:
    return cache_dir() / "models" / f"{key[:40]}.attempts"


def job_attempts(key: str) -> int:
    """How many background jobs were started for ``key`` without finishing (killed, failed)."""
    try:
        return int(_attempts_path(key).read_text(encoding="utf-8").strip() or 0)
    except (OSError, ValueError):
        return 0


def count_job_attempt(key: str) -> None:
    path = _attempts_path(key)
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"{job_attempts(key) + 1}\n", encoding="utf-8")


def clear_job_attempts(key: str) -> None:
    with contextlib.suppress(OSError):
        _attempts_path(key).unlink(missing_ok=True)
