"""The emotion model's numeric precision on a CPU: chosen by measurement, remembered per machine.

Candidates: ``fp32`` (always), ``bf16`` (only where the processor computes bf16 natively, AMX or
AVX512-BF16: elsewhere torch emulates it and it is slower than fp32) and ``int8`` (dynamic
quantisation of the linear layers). :func:`choose` runs each candidate on probe signals: it must
agree with fp32 (mean total-variation distance of the class probabilities, or for a dimensional model
the mean absolute difference on the -1..1 scale, at most ``tolerance``),
and the fastest that agrees wins. Machines differ (the developer's, CI's and production's CPUs
are not the same), so nothing is assumed: the decision is measured where the model runs.

Measuring costs a few seconds (and loading the checkpoint in fp32 to measure from as much
again), so a first start need not wait for it: :func:`provisional` takes the variant this
processor's kind favours (:func:`likely_fastest`) after checking only that it agrees with fp32,
and the measurement runs later, in a background process (:mod:`analyzers.prepare_job`).

The decision is cached (:class:`DecisionCache`, a small JSON file in the user's cache directory)
under a key of the checkpoint's content hash, the processor and the torch version: a later start
on the same machine pays nothing, a changed checkpoint or processor measures again, and an
unreadable cache is ignored (one log line) and rewritten. A provisional decision is marked so
until the measurement replaces it.

The batch size of the live service is chosen the same way (:func:`choose_batch`: equal-length
chunks of several speakers in one forward pass, where the processor gains from the larger
matrices) and kept in the same file.
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import functools
import hashlib
import json
import logging
import os
import platform
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from analyzers.types import SAMPLE_RATE

__all__ = ["PRECISIONS", "BatchChoice", "Decision", "DecisionCache", "cache_dir", "candidates",
           "choose", "choose_batch", "cpu_flags", "decision_key", "files_digest",
           "likely_fastest", "native_bf16", "probe_signals", "processor", "provisional",
           "to_precision", "total_variation"]

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "bf16", "int8")
VARIANTS = (*PRECISIONS, "bf16+matmul", "int8+matmul", "fp32+matmul")
CACHE_VERSION = 1

Run = Callable[[Any, npt.NDArray[np.float32]], npt.NDArray[np.float64]]


@functools.cache
def _cpuinfo() -> dict[str, str]:
    """The first processor's ``/proc/cpuinfo`` fields (Linux; empty where unreadable), read
    once per process."""
    fields: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if not line.strip():
                break  # the end of the first processor's block
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    return fields


def cpu_flags() -> frozenset[str]:
    """The processor's feature flags (Linux ``/proc/cpuinfo``; empty where unreadable)."""
    return frozenset(_cpuinfo().get("flags", "").split())


def native_bf16(flags: Iterable[str] | None = None) -> bool:
    """Whether the CPU computes bf16 itself (AMX tiles or AVX512-BF16 dot products)."""
    have = set(cpu_flags() if flags is None else flags)
    return bool(have & {"amx_bf16", "avx512_bf16"})


def processor() -> str:
    """The processor: its name, vector and matrix extensions, and core count."""
    name = _cpuinfo().get("model name") or platform.processor() or platform.machine()
    relevant = sorted(f for f in cpu_flags() if f.startswith(("avx", "amx", "fma", "f16c")))
    return f"{name} [{' '.join(relevant)}] x{os.cpu_count() or 1}"


def candidates(flags: Iterable[str] | None = None) -> list[str]:
    """The variants worth measuring on this CPU: bf16 only where it is native (there also with
    the matrix-product encoder, which spares oneDNN's bf16 convolution its layout reorders)."""
    out = ["fp32"]
    if native_bf16(flags):
        out += ["bf16", "bf16+matmul"]
    if _int8_available():
        out.append("int8")
    return out


def cache_dir() -> Path:
    """``$AFFECT_BRIDGE_CACHE_DIR``, else ``$XDG_CACHE_HOME/affect-bridge``, else
    ``~/.cache/affect-bridge``."""
    if os.environ.get("AFFECT_BRIDGE_CACHE_DIR"):
        return Path(os.environ["AFFECT_BRIDGE_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "affect-bridge"


class DecisionCache:
    """A JSON file of past decisions (and file digests, so a checkpoint is hashed once per
    change). Unreadable or malformed: ignored with a log line, replaced on the next write.
    Several processes share it (workers, the background job): a write takes a lock, reads the
    file again and adds only this process's own entries to what is there (a measured decision
    is never replaced by a provisional one), then replaces the file atomically (temporary
    file, then rename). A read-only directory only logs."""

    SECTIONS = ("decisions", "digests", "batches")

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or cache_dir() / "precision.json"
        self._data: dict[str, Any] | None = None
        self._mine: dict[str, set[str]] = {name: set() for name in self.SECTIONS}

    def _read(self, *, quiet: bool = False) -> dict[str, Any]:
        data: dict[str, Any] = {}
        if self.path.exists():
            try:
                loaded = json.loads(self.path.read_text(encoding="utf-8"))
                if not isinstance(loaded, dict) or loaded.get("version") != CACHE_VERSION:
                    raise ValueError("not a cache of this version")
                data = loaded
            except (OSError, ValueError) as exc:
                if not quiet:
                    log.warning("precision cache %s is unreadable (%s); measuring again",
                                self.path, type(exc).__name__ if not isinstance(exc, ValueError)
                                else exc)
                data = {}
        data["version"] = CACHE_VERSION
        for name in self.SECTIONS:
            if not isinstance(data.get(name), dict):
                data[name] = {}
        return data

    def _load(self) -> dict[str, Any]:
        if self._data is None:
            self._data = self._read()
        return self._data

    def refresh(self) -> None:
        """Read the file again (another process may have written it), keeping this process's
        own entries (the file digests computed here among them)."""
        mine = {name: {k: self._load()[name][k] for k in keys}
                for name, keys in self._mine.items()}
        self._data = self._read()
        for name, entries in mine.items():
            self._data[name].update(entries)

    def get(self, key: str) -> Decision | None:
        entry = self._load()["decisions"].get(key)
        if entry is None:
            return None
        try:
            decision = Decision(**entry)
            if decision.precision not in VARIANTS:
                raise ValueError(decision.precision)
        except (TypeError, ValueError):
            log.warning("precision cache %s: entry %s is malformed; measuring again",
                        self.path, key[:12])
            return None
        return decision

    def put(self, key: str, decision: Decision) -> None:
        self._load()["decisions"][key] = asdict(decision)
        self._mine["decisions"].add(key)
        self._save()

    def get_batch(self, key: str) -> BatchChoice | None:
        entry = self._load()["batches"].get(key)
        if entry is None:
            return None
        try:
            choice = BatchChoice(int(entry["size"]),
                                 {int(k): float(v) for k, v in entry["rates"].items()})
            if choice.size < 1:
                raise ValueError(choice.size)
        except (TypeError, ValueError, KeyError, AttributeError):
            log.warning("precision cache %s: batch entry %s is malformed; measuring again",
                        self.path, key[:12])
            return None
        return choice

    def put_batch(self, key: str, choice: BatchChoice) -> None:
        self._load()["batches"][key] = {"size": choice.size,
                                        "rates": {str(k): v for k, v in choice.rates.items()}}
        self._mine["batches"].add(key)
        self._save()

    def digest(self, path: Path, *, known_only: bool = False) -> str | None:
        """sha256 of ``path``'s content, remembered by (path, size, mtime); with
        ``known_only`` None where this file (at this size and time) was never hashed here."""
        st = path.stat()
        stamp = f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}"
        digests = self._load()["digests"]
        if stamp not in digests:
            if known_only:
                return None
            with path.open("rb") as f:
                digests[stamp] = hashlib.file_digest(f, "sha256").hexdigest()
            self._mine["digests"].add(stamp)
        return str(digests[stamp])

    def _merged(self) -> dict[str, Any]:
        """The file as another process may have left it, with this process's entries on top."""
        ours = self._load()
        merged = self._read(quiet=True)
        for name, keys in self._mine.items():
            for key in keys:
                there = merged[name].get(key)
                if (name == "decisions" and ours[name][key].get("provisional")
                        and isinstance(there, dict) and not there.get("provisional", False)):
                    ours[name][key] = there  # measured meanwhile: that stands
                else:
                    merged[name][key] = ours[name][key]
        return merged

    def _save(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with _locked(self.path.with_name(self.path.name + ".lock")):
                merged = self._merged()
                fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".precision-")
                with os.fdopen(fd, "w", encoding="utf-8") as f:
                    json.dump(merged, f, indent=1, sort_keys=True)
                os.replace(tmp, self.path)
            self._data = merged
        except OSError as exc:
            log.info("precision cache %s not written (%s); the decision holds for this run",
                     self.path, exc.strerror or type(exc).__name__)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive flock on ``path`` (created) while the block runs; without one where the file
    system has no locks."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def files_digest(files: Iterable[Path], cache: DecisionCache, *,
                 known_only: bool = False) -> str | None:
    """One hash over the content of ``files`` (a checkpoint's weights and config); with
    ``known_only`` None unless every file was hashed here before (nothing is read)."""
    h = hashlib.sha256()
    for path in sorted(files, key=lambda p: p.name):
        digest = cache.digest(path, known_only=known_only)
        if digest is None:
            return None
        h.update(path.name.encode() + b"\0" + digest.encode() + b"\0")
    return h.hexdigest()


def decision_key(checkpoint_digest: str, tolerance: float) -> str:
    import torch

    raw = f"{checkpoint_digest}|{processor()}|torch {torch.__version__}|tol {tolerance}"
    return hashlib.sha256(raw.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Decision:
    precision: str
    #: audio-seconds per CPU-second of each candidate measured (the probes, this process)
    rates: dict[str, float] = field(default_factory=dict)
    #: mean total-variation distance from fp32 of each candidate
    agreement: dict[str, float] = field(default_factory=dict)
    note: str = ""
    #: chosen by the processor's kind and checked against fp32 only; the speeds are measured
    #: later (in the background), which replaces this decision
    provisional: bool = False

    def describe(self) -> str:
        if self.provisional:
            return (f"{self.precision}: provisional, agrees with fp32 (TV "
                    f"{self.agreement.get(self.precision, 0.0):.4f}); speeds not measured yet")
        parts = [f"{p} {self.rates[p]:.1f} audio-s/CPU-s"
                 + (f" (TV {self.agreement[p]:.4f})" if p in self.agreement else "")
                 for p in self.rates]
        return f"{self.precision}: " + ", ".join(parts) + (f"; {self.note}" if self.note else "")


@dataclass(frozen=True, slots=True)
class BatchChoice:
    """How many equal-length chunks share one forward pass, and what each size did."""

    size: int
    #: audio-seconds per second at each batch size measured (the batch's whole audio)
    rates: dict[int, float] = field(default_factory=dict)

    def describe(self) -> str:
        base = self.rates.get(1)
        parts = [f"{b}: {r:.1f}" + (f" ({r / base:.2f}x)" if base and b != 1 else "")
                 for b, r in sorted(self.rates.items())]
        return f"batch {self.size} (audio-s/s by batch size: {', '.join(parts)})"


def choose_batch(run: Callable[[int], object], *, sizes: tuple[int, ...] = (1, 2, 4, 8),
                 rounds: int = 2, min_gain: float = 1.10, near: float = 0.95,
                 chunk_s: float = 4.0,
                 clock: Callable[[], float] = time.perf_counter) -> BatchChoice:
    """Time ``run(b)`` (one forward pass over ``b`` chunks of ``chunk_s`` seconds) for every
    size, after a warm-up at each, interleaved over ``rounds``. A size's gain is its rate over
    one chunk alone *in the same round* (a noisy machine slows a round's sizes alike). Batching
    wins only where it pays in every round: a size qualifies when each round shows at least
    ``min_gain``, and of those the smallest within ``near`` of the best median gain is taken
    (smaller batches fill sooner). Otherwise one chunk at a time."""
    for b in sizes:  # warm-up: first-call allocations at each shape
        run(b)
    seen: dict[int, list[float]] = {b: [] for b in sizes}
    for _ in range(rounds):
        for b in sizes:
            started = clock()
            run(b)
            seen[b].append(b * chunk_s / max(clock() - started, 1e-9))
    rates = {b: float(np.median(v)) for b, v in seen.items()}
    size = 1
    if 1 in seen:
        gains = {b: [r / one for r, one in zip(seen[b], seen[1], strict=True)] for b in sizes}
        paying = {b: float(np.median(g)) for b, g in gains.items()
                  if b != 1 and min(g) >= min_gain}
        if paying:
            best = max(paying.values())
            size = min(b for b, g in paying.items() if g >= near * best)
    return BatchChoice(size, {b: round(r, 2) for b, r in rates.items()})


def probe_signals(seconds: float = 2.0) -> list[npt.NDArray[np.float32]]:
    """Voice-like test inputs: harmonic sources with vibrato at several pitches, plus breath
    noise, and one noise-only input. Fixed seed: the check is repeatable."""
    rng = np.random.default_rng(7)
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    out = []
    for f0, rate in ((110.0, 4.0), (190.0, 5.5), (290.0, 6.5)):
        phase = 2 * np.pi * np.cumsum(f0 * (1 + 0.03 * np.sin(2 * np.pi * rate * t))) / SAMPLE_RATE
        voice = sum(np.sin(k * phase) / k for k in range(1, 12))
        envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 2.5 * t) ** 2  # syllable-like loudness
        out.append((0.1 * voice * envelope + 0.01 * rng.standard_normal(len(t))).astype(np.float32))
    out.append((0.05 * rng.standard_normal(len(t))).astype(np.float32))
    return out


def _int8_available() -> bool:
    import torch

    quant = getattr(getattr(torch, "ao", None), "quantization", None)
    return quant is not None and hasattr(quant, "quantize_dynamic") and \
        "fbgemm" in getattr(torch.backends.quantized, "supported_engines", [])


def to_precision(model: Any, variant: str, *, inplace: bool = True) -> Any:
    """``model`` (fp32) as ``variant``: a precision (fp32, bf16, int8), optionally with
    ``+matmul`` (the feature encoder as matrix products, analyzers/encoder.py). In place: bf16
    converts the parameters (the fp32 copy is released), int8 swaps the linear layers for
    dynamically quantised ones. With ``inplace`` false the original stays untouched."""
    import torch

    from analyzers.encoder import use_matmul_encoder

    precision, _, encoder = variant.partition("+")
    if precision not in PRECISIONS or encoder not in ("", "matmul"):
        raise ValueError(f"unknown precision {variant!r}")
    if not inplace and variant != "fp32":
        model = copy.deepcopy(model)
    if encoder == "matmul":
        use_matmul_encoder(model)
    if precision == "bf16":
        return model.to(torch.bfloat16)
    if precision == "int8":
        with warnings.catch_warnings():
            # torch.ao.quantization's dynamic path is deprecated in favour of torchao, whose
            # CPU int8 path needs a newer torch than the one pinned here; it still works.
            warnings.simplefilter("ignore")
            return torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear},
                                                          dtype=torch.qint8, inplace=True)
    return model


def _measure(run: Run, model: Any, probes: list[npt.NDArray[np.float32]],
             ) -> tuple[list[npt.NDArray[np.float64]], float]:
    """Outputs on every probe, and audio-seconds per CPU-second of this process over all probes
    but the first (a warm-up: first-call allocations, oneDNN primitive creation). CPU time, not
    wall time: what a variant costs, and steady while other processes share the machine (the
    measurement may run in the background beside the bridge)."""
    outputs, busy, audio_s = [], 0.0, 0.0
    for i, x in enumerate(probes):
        started = time.process_time()
        outputs.append(run(model, x))
        if i:
            busy += time.process_time() - started
            audio_s += len(x) / SAMPLE_RATE
    return outputs, audio_s / busy if busy > 0 else float("inf")


def total_variation(a: npt.NDArray[np.float64], b: npt.NDArray[np.float64]) -> float:
    return float(0.5 * np.abs(a - b).sum())


def choose(model: Any, run: Run, options: list[str], *, tolerance: float = 0.05,
           min_gain: float = 1.05,
           distance: Callable[[npt.NDArray[np.float64], npt.NDArray[np.float64]], float]
           = total_variation) -> tuple[Any, Decision]:
    """Measure ``options`` (variants: a precision, ``+matmul`` for the matrix-product feature
    encoder) on ``model`` (fp32): each runs the probe signals once, which gives both its
    agreement with fp32 (mean ``distance`` of the output rows: total variation of
    probabilities, or a dimensional head's own) and its speed. The fastest variant that agrees
    within ``tolerance`` and beats fp32 by ``min_gain`` wins (within measurement noise fp32,
    the exact one, stays). Candidates are built one at a time and dropped when beaten. Returns
    the model converted and the decision."""
    probes = probe_signals(1.0)
    reference, fp32_rate = _measure(run, model, probes)
    rates = {"fp32": fp32_rate}
    agreement: dict[str, float] = {}
    best_name, best, best_rate = "fp32", model, fp32_rate * min_gain
    for name in options:
        if name == "fp32":
            continue
        try:
            candidate = to_precision(model, name, inplace=False)
            outputs, rate = _measure(run, candidate, probes)
        except Exception as exc:  # an unsupported layer or backend: fp32 is always correct
            log.info("precision %s unusable here (%s: %s)", name, type(exc).__name__, exc)
            continue
        agreement[name] = float(np.mean([distance(out, ref)
                                         for out, ref in zip(outputs, reference, strict=True)]))
        if agreement[name] > tolerance:
            continue
        rates[name] = rate
        if rate > best_rate:
            best_name, best, best_rate = name, candidate, rate
        del candidate
    disagreeing = [n for n, d in agreement.items() if d > tolerance]
    note = (f"{', '.join(disagreeing)} disagreed with fp32 (> {tolerance} TV)"
            if disagreeing else "")
    return best, Decision(best_name, {k: round(v, 2) for k, v in rates.items()},
                          {k: round(v, 5) for k, v in agreement.items()}, note)


def likely_fastest(options: list[str]) -> str:
    """The variant a processor of this kind has run fastest wherever it was measured (native
    bf16: bf16 with the matrix-product encoder; elsewhere int8), of ``options``
    (:func:`candidates`): what a first start runs before its own measurement."""
    return next((v for v in ("bf16+matmul", "bf16", "int8") if v in options), "fp32")


def provisional(model: Any, run: Run, options: list[str], *, tolerance: float = 0.05,
                distance: Callable[[npt.NDArray[np.float64], npt.NDArray[np.float64]], float]
                = total_variation) -> tuple[Any, Decision] | None:
    """:func:`likely_fastest` of ``options``, converted in place from ``model`` (fp32), when it
    agrees with fp32 on short probes (as :func:`choose` checks); None when it does not (then
    ``model`` is no longer fp32: load it again and :func:`choose`). No speed is measured."""
    variant = likely_fastest(options)
    if variant == "fp32":  # nothing else to measure here
        return model, Decision("fp32", note="the only candidate on this processor")
    probes = probe_signals(0.5)[1::2]  # a voice and noise: a broken precision shows on either
    reference = [run(model, x) for x in probes]
    try:
        converted = to_precision(model, variant)
        outputs = [run(converted, x) for x in probes]
    except Exception as exc:  # an unsupported layer or backend
        log.info("precision %s unusable here (%s: %s)", variant, type(exc).__name__, exc)
        return None
    tv = float(np.mean([distance(out, ref) for out, ref in zip(outputs, reference, strict=True)]))
    if tv > tolerance:
        log.info("precision %s disagrees with fp32 (%.4f > %s)", variant, tv, tolerance)
        return None
    return converted, Decision(variant, agreement={variant: round(tv, 5)}, provisional=True)
