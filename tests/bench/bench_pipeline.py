#!/usr/bin/env python
"""Benchmark: affect-bridge's analysis pipeline vs the reference article's approach.

Speed: the same synthetic conversation (about 40 % speech) through

* the reference approach (temp WAV -> ``librosa.load`` -> 5 s chunks of ALL audio, one unbatched
  model call per chunk),
* ours, full (``analyze_files`` with prosody + emotion),
* ours without the emotion model (prosody only),

with the same model architecture: a random-init wav2vec2-base classifier saved to a temp dir
(random weights compute exactly what trained ones do; nothing is downloaded).

Memory: peak RSS of ``affect-bridge analyze`` (prosody only) on a 1-minute vs a 2-hour recording,
each in its own child process.

This is not a test (pytest does not collect it) and nothing here is timed against a limit: it
prints figures, and PASS/FAIL against the project's targets for information.

Emotion inference (bench_inference.py): every precision side by side on one thread, the default
against the previous one, per-operator profiles; and start-up in fresh processes.

    .venv/bin/python tests/bench/bench_pipeline.py [--quick] [--json OUT.json]
        [--speed | --memory | --precision | --startup | --families] [--repeat N] [--seconds S]
        [--long-seconds S]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import soundfile as sf
from procstat import machine_busy_s  # tests/bench/, beside this script

from analyzers.precision import processor

# Before transformers / huggingface_hub are imported (they are imported lazily below).
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

ROOT = Path(__file__).resolve().parents[2]
SR = 16_000
FIXTURES = (
    # (speaker, path): alice has two recordings, both go into her pool of sentences.
    ("alice", ROOT / "tests" / "fixtures" / "audio" / "alice_calm.flac"),
    ("alice", ROOT / "bridge" / "assets" / "demo" / "alice_calm_then_stressed.flac"),
    ("bob", ROOT / "bridge" / "assets" / "demo" / "bob_calm.flac"),
    ("carol", ROOT / "bridge" / "assets" / "demo" / "carol_calm.flac"),
)
LABELS = {0: "neu", 1: "hap", 2: "ang", 3: "sad"}
NAMES = ("reference", "ours (full)", "ours (no emotion model)", "reference, ours' torch threads",
         "ours (full, fp32 model)")

SPEECH_FRACTION = 0.40
SILENCE_DBFS = -60.0  # quieter 10 ms frames count as pause when splitting sentences
MIN_PAUSE_S = 0.5  # a pause at least this long ends a sentence
MIN_SENTENCE_S = 0.3  # shorter "sentences" are clicks, dropped
EDGE_S = 0.02  # kept around each sentence
GAP_DBFS = -65.0  # level of the pink-ish noise between turns
SEED = 1234

REF_CHUNK_S = 5.0
REF_MIN_CHUNK_S = 1.0
WARMUP_S = 10.0

TARGET_FULL_VS_REF = 3.0  # ours (full) / reference, audio-s per CPU-s
TARGET_PROSODY_RATE = 100.0  # ours without emotion, audio-s per CPU-s
TARGET_MEMORY_MB = 50.0  # 2-hour peak RSS minus 1-minute peak RSS
TARGET_DEFAULT_VS_BEFORE = 2.5  # emotion audio-s per CPU-s, default now / int8 before (native bf16)
TARGET_WHOLE_VS_REF = 4.0  # whole analyze incl. start-up / reference, per CPU-second
TARGET_FIRST_VS_REF = 3.0  # the same, the first run with a new checkpoint (measure + prepare)
TARGET_FIRST_VS_LATER = 1.25  # first run CPU / later run CPU
TARGET_STARTUP_VS_IMPORTS = 2.0  # 3 s clip analyze CPU-s / import torch, transformers CPU-s
TARGET_STARTUP_RSS_MB = 900.0


# --------------------------------------------------------------------------------------------
# Test material
# --------------------------------------------------------------------------------------------


def build_model(directory: Path) -> Path:
    """Random-init wav2vec2-base (``Wav2Vec2Config()`` defaults) with a 4-way emotion head."""
    import torch
    from transformers import (
        Wav2Vec2Config,
        Wav2Vec2FeatureExtractor,
        Wav2Vec2ForSequenceClassification,
    )

    torch.manual_seed(0)
    head: dict[str, Any] = {"num_labels": len(LABELS), "id2label": dict(LABELS),
                            "label2id": {v: k for k, v in LABELS.items()}}
    cfg = Wav2Vec2Config(**head)  # every other field: the defaults, i.e. wav2vec2-base
    Wav2Vec2ForSequenceClassification(cfg).save_pretrained(directory)
    Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=SR, padding_value=0.0, do_normalize=True,
                             return_attention_mask=False).save_pretrained(directory)
    return directory


#: wav2vec2-large-robust pruned to 12 layers, the shape of audEERING's dimensional model
#: (audeering/wav2vec2-large-robust-12-ft-emotion-msp-dim's config.json).
LARGE_12 = dict(hidden_size=1024, num_hidden_layers=12, num_attention_heads=16,
                intermediate_size=4096, feat_extract_norm="layer", do_stable_layer_norm=True,
                conv_bias=True, final_dropout=0.1)


def build_dimensional_large(directory: Path) -> Path:
    """Random-init dimensional model of the audEERING form at its real size (12 layers, hidden
    1024): ``Wav2Vec2ForSpeechClassification`` with arousal, dominance, valence."""
    import torch
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor

    from analyzers.dimensional import Wav2Vec2ForSpeechClassification

    torch.manual_seed(0)
    dims = ("arousal", "dominance", "valence")
    cfg = Wav2Vec2Config(**LARGE_12, architectures=["Wav2Vec2ForSpeechClassification"],
                         num_labels=3, id2label=dict(enumerate(dims)),
                         label2id={d: i for i, d in enumerate(dims)})
    Wav2Vec2ForSpeechClassification(cfg).save_pretrained(directory)
    Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=SR, padding_value=0.0, do_normalize=True,
                             return_attention_mask=False).save_pretrained(directory)
    return directory


def decode(path: Path) -> npt.NDArray[np.float32]:
    """The whole fixture as 16 kHz mono float32, decoded by the product's own reader."""
    from bridge.pipeline.audio import read_file

    parts = [chunks[0].samples for chunks in read_file(path)]
    return np.concatenate(parts).astype(np.float32, copy=False)


def split_sentences(audio: npt.NDArray[np.float32]) -> list[npt.NDArray[np.float32]]:
    """Cut at pauses: runs of 10 ms frames below ``SILENCE_DBFS`` lasting ``MIN_PAUSE_S`` or more."""
    hop = SR // 100
    n = len(audio) // hop
    frames = audio[: n * hop].reshape(n, hop)
    db = 20 * np.log10(np.sqrt(np.mean(frames.astype(np.float64) ** 2, axis=1)) + 1e-12)
    loud = db >= SILENCE_DBFS
    min_pause = round(MIN_PAUSE_S * 100)
    edge = round(EDGE_S * 100)
    sentences: list[npt.NDArray[np.float32]] = []
    start: int | None = None  # first loud frame of the current sentence
    last_loud = -1
    for i in range(n):
        if loud[i]:
            if start is None:
                start = i
            last_loud = i
        elif start is not None and i - last_loud >= min_pause:
            sentences.append(_cut(audio, start, last_loud, edge, hop, n))
            start = None
    if start is not None:
        sentences.append(_cut(audio, start, last_loud, edge, hop, n))
    return [s for s in sentences if len(s) >= MIN_SENTENCE_S * SR]


def _cut(audio: npt.NDArray[np.float32], first: int, last: int, edge: int, hop: int,
         n: int) -> npt.NDArray[np.float32]:
    lo = max(0, first - edge) * hop
    hi = min(n, last + 1 + edge) * hop
    return audio[lo:hi].copy()


def pink_noise(n: int, dbfs: float, rng: np.random.Generator) -> npt.NDArray[np.float32]:
    """1/f-shaped noise (white noise, spectrum scaled by 1/sqrt(f)) at ``dbfs`` RMS."""
    if n == 0:
        return np.zeros(0, np.float32)
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n, 1 / SR)
    spec /= np.sqrt(np.maximum(f, 20.0))  # flat below 20 Hz: no DC drift
    y = np.fft.irfft(spec, n)
    y *= 10 ** (dbfs / 20) / max(float(np.sqrt(np.mean(y**2))), 1e-12)
    return y.astype(np.float32)


@dataclass
class Conversation:
    audio: npt.NDArray[np.float32]
    speech_s: float  # sentence audio, by construction
    sentences: int

    @property
    def seconds(self) -> float:
        return len(self.audio) / SR

    @property
    def speech_fraction(self) -> float:
        return self.speech_s / self.seconds


def load_pools() -> dict[str, list[npt.NDArray[np.float32]]]:
    pools: dict[str, list[npt.NDArray[np.float32]]] = {}
    for speaker, path in FIXTURES:
        pools.setdefault(speaker, []).extend(split_sentences(decode(path)))
    return pools


def build_conversation(pools: dict[str, list[npt.NDArray[np.float32]]], seconds: float,
                       seed: int = SEED) -> Conversation:
    """Speakers take turns, one sentence each, separated by faint noise; speech ~40 %."""
    rng = np.random.default_rng(seed)
    speech_target = SPEECH_FRACTION * seconds * SR
    speakers = sorted(pools)
    turns: list[npt.NDArray[np.float32]] = []
    speech = 0
    i = 0
    while speech < speech_target:
        pool = pools[speakers[i % len(speakers)]]
        sentence = pool[(i // len(speakers)) % len(pool)]
        if turns and speech + len(sentence) > speech_target:
            # Stop at whichever of "with" or "without" this sentence is closer to the target.
            if speech + len(sentence) - speech_target > speech_target - speech:
                break
        turns.append(sentence)
        speech += len(sentence)
        i += 1
    total = round(speech / SPEECH_FRACTION)
    gap_total = total - speech
    # One gap before each turn and one after the last, of varied length, summing to gap_total.
    weights = rng.uniform(0.5, 1.5, len(turns) + 1)
    gaps = np.floor(weights / weights.sum() * gap_total).astype(int)
    gaps[-1] += gap_total - int(gaps.sum())
    pieces: list[npt.NDArray[np.float32]] = []
    for gap, sentence in zip(gaps[:-1], turns, strict=True):
        pieces += [pink_noise(int(gap), GAP_DBFS, rng), sentence]
    pieces.append(pink_noise(int(gaps[-1]), GAP_DBFS, rng))
    audio = np.clip(np.concatenate(pieces), -1.0, 1.0)
    return Conversation(audio, speech / SR, len(turns))


def energy_speech_fraction(audio: npt.NDArray[np.float32]) -> float:
    """Share of 10 ms frames at or above ``SILENCE_DBFS`` (an independent check of the mix)."""
    hop = SR // 100
    n = len(audio) // hop
    frames = audio[: n * hop].reshape(n, hop).astype(np.float64)
    db = 20 * np.log10(np.sqrt(np.mean(frames**2, axis=1)) + 1e-12)
    return float(np.mean(db >= SILENCE_DBFS))


def write_wav(path: Path, audio: npt.NDArray[np.float32]) -> Path:
    sf.write(path, audio, SR, subtype="PCM_16")
    return path


def write_long_flac(path: Path, conversation: npt.NDArray[np.float32], seconds: float,
                    block_s: float = 60.0) -> Path:
    """``conversation`` repeated to ``seconds``, written in blocks (never the whole in memory)."""
    total = round(seconds * SR)
    block = round(block_s * SR)
    with sf.SoundFile(path, "w", samplerate=SR, channels=1, format="FLAC", subtype="PCM_16") as f:
        written = 0
        while written < total:
            n = min(block, total - written)
            pos = written % len(conversation)
            idx = (pos + np.arange(n)) % len(conversation)
            f.write(conversation[idx])
            written += n
    return path


# --------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------


@dataclass
class Timing:
    wall_s: float
    cpu_s: float
    other_cpu_s: float | None = None  # CPU the rest of the machine used meanwhile (Linux)


def timed(fn: Callable[[], Any]) -> tuple[Any, Timing]:
    """Wall (perf_counter) and CPU time of the whole process, all threads (process_time).

    Also what the rest of the machine used meanwhile: on a shared 2-core box another process
    leaves torch's two OpenMP threads one core, and their spin-waits then inflate *our* CPU time
    several times over. A run with much ``other_cpu_s`` is not a clean measurement.
    """
    b0, w0, c0 = machine_busy_s(), time.perf_counter(), time.process_time()
    value = fn()
    wall, cpu, b1 = time.perf_counter() - w0, time.process_time() - c0, machine_busy_s()
    other = None if b0 is None or b1 is None else max(0.0, b1 - b0 - cpu)
    return value, Timing(wall, cpu, other)


@dataclass
class Result:
    name: str
    audio_s: float
    wall_s: float
    cpu_s: float
    excluded_wall_s: float = 0.0  # model loading subtracted from the measured time (ours)
    excluded_cpu_s: float = 0.0
    other_cpu_s: float | None = None  # median CPU used by other processes during a run
    runs: list[dict[str, Any]] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def per_wall(self) -> float:
        return self.audio_s / self.wall_s

    @property
    def per_cpu(self) -> float:
        return self.audio_s / self.cpu_s

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["audio_s_per_wall_s"] = self.per_wall
        d["audio_s_per_cpu_s"] = self.per_cpu
        return d


# ---- the reference article's approach ------------------------------------------------------


@dataclass
class Reference:
    """Loaded once, outside the timed section (as a server would)."""

    extractor: Any
    model: Any

    @classmethod
    def load(cls, model_dir: Path) -> Reference:
        # The article used Wav2Vec2Processor, which needs a tokenizer: classifier checkpoints
        # (and ours) have none, so it fails to load. AutoFeatureExtractor is what it needs.
        from transformers import AutoFeatureExtractor, AutoModelForAudioClassification

        extractor = AutoFeatureExtractor.from_pretrained(model_dir)
        model = AutoModelForAudioClassification.from_pretrained(model_dir)
        model.eval()
        return cls(extractor, model)

    def analyze(self, wav_bytes: bytes) -> list[dict[str, Any]]:
        """One request: the uploaded bytes in, one label + "stress" per 5 s chunk out."""
        import librosa
        import torch

        with tempfile.NamedTemporaryFile(suffix=".wav") as tmp:
            tmp.write(wav_bytes)
            tmp.flush()
            audio, _ = librosa.load(tmp.name, sr=SR)
        id2label = self.model.config.id2label
        step = int(REF_CHUNK_S * SR)
        out: list[dict[str, Any]] = []
        for start in range(0, len(audio), step):
            chunk = audio[start : start + step]
            if len(chunk) < REF_MIN_CHUNK_S * SR:
                continue
            inputs = self.extractor(chunk, sampling_rate=SR, return_tensors="pt", padding=True)
            with torch.no_grad():
                logits = self.model(**inputs).logits
            probs = torch.nn.functional.softmax(logits, dim=-1)[0]
            label = id2label[int(torch.argmax(probs))]
            # The article's hard-coded score (its labels were "angry"/"fear"; kept verbatim).
            stress = 0.8 if label in ("angry", "fear") else 0.3
            out.append({"start_s": start / SR, "label": label, "confidence": float(probs.max()),
                        "stress": stress})
        return out


def reference_timed(ref: Reference, wav_bytes: bytes, threads: int) -> tuple[Timing, dict[str, Any]]:
    """The reference as written runs with torch's default thread count; ``threads`` sets it
    (our emotion model sets torch's process-wide count when it loads, so it is reset here)."""
    import torch

    torch.set_num_threads(threads)
    out, t = timed(lambda: ref.analyze(wav_bytes))
    return t, {"model_calls": len(out), "torch_threads": threads}


# ---- ours ----------------------------------------------------------------------------------


def ours_settings(model_dir: Path, emotion: bool, precision: str = "auto") -> Any:
    """Our defaults (``precision = "auto"``: measured on this machine, analyzers/precision.py),
    or ``precision="fp32"`` for the model as published."""
    from bridge.config import load_settings

    analyzers = ["prosody", "emotion"] if emotion else ["prosody"]
    return load_settings(None, analyzers=analyzers,
                         emotion={"model": str(model_dir), "device": "cpu",
                                  "precision": precision})


def ours_once(wav: Path, settings: Any) -> Any:
    from bridge.offline.analyze import analyze_files

    result = asyncio.run(analyze_files([wav], settings, per="file", out=None))
    if result.failed or result.degraded:
        raise RuntimeError(f"pipeline failed: {result.degraded or result.speakers}")
    return result


def engine_load(settings: Any) -> Timing:
    """What ``analyze_files`` spends in ``engine.start()`` + ``aclose()`` (model load, scheduler
    thread start/stop) with no audio: measured on its own, subtracted from the timed call.

    Timing "a second call" would not exclude loading: every ``analyze_files`` call builds its own
    engine and loads the model again. The reference loads once before its timed section; for
    ours the same load is measured just before each timed call (warm file cache, like the load
    inside it) and subtracted. Both the subtracted figure and the raw one are in the JSON.
    """
    from bridge.pipeline.analysis import AnalysisEngine

    async def go() -> None:
        engine = AnalysisEngine(settings)
        await engine.start()
        await engine.aclose()

    _, t = timed(lambda: asyncio.run(go()))
    return t


def ours_timed(wav: Path, settings: Any) -> tuple[Timing, dict[str, Any]]:
    """One timed ``analyze_files`` call, less its engine start/close measured just before."""
    load = engine_load(settings)
    result, t = timed(lambda: ours_once(wav, settings))
    sp = result.speakers[0]
    info = {"raw_wall_s": t.wall_s, "raw_cpu_s": t.cpu_s,
            "vad_speech_s": sp.speech_s, "windows": len(sp.series),
            "vad_speech_fraction": sp.speech_s / max(sp.audio_s, 1e-9),
            "load_wall_s": load.wall_s, "load_cpu_s": load.cpu_s}
    return Timing(t.wall_s - load.wall_s, t.cpu_s - load.cpu_s, t.other_cpu_s), info


def emotion_calls(wav: Path, settings: Any) -> dict[str, float]:
    """Untimed diagnostics: what the scheduler sent to the model (calls, seconds of audio), and
    what those same calls cost when run alone, one after another, outside the pipeline."""
    from analyzers import emotion as emo

    seen: list[npt.NDArray[np.float32]] = []
    models: list[Any] = []
    original = emo.EmotionModel.predict

    def recording(self: Any, waveforms: list[npt.NDArray[np.float32]]) -> Any:
        seen.extend(w.copy() for w in waveforms)
        models[:] = [self]
        return original(self, waveforms)

    emo.EmotionModel.predict = recording  # type: ignore[method-assign]
    try:
        ours_once(wav, settings)
    finally:
        emo.EmotionModel.predict = original  # type: ignore[method-assign]
    audio = sum(len(w) for w in seen) / SR
    info = {"model_items": len(seen), "model_audio_s": audio,
            "mean_item_s": audio / len(seen) if seen else 0.0}
    if models:
        _, alone = timed(lambda: [original(models[0], [w]) for w in seen])
        info |= {"model_alone_wall_s": alone.wall_s, "model_alone_cpu_s": alone.cpu_s}
    return info


def _result(name: str, audio_s: float, runs: list[tuple[Timing, dict[str, Any]]]) -> Result:
    res = Result(
        name=name, audio_s=audio_s,
        wall_s=statistics.median(t.wall_s for t, _ in runs),
        cpu_s=statistics.median(t.cpu_s for t, _ in runs),
        runs=[asdict(t) for t, _ in runs], info=dict(runs[-1][1]),
    )
    others = [t.other_cpu_s for t, _ in runs if t.other_cpu_s is not None]
    res.other_cpu_s = statistics.median(others) if others else None
    if "load_cpu_s" in res.info:
        res.excluded_wall_s = statistics.median(i["load_wall_s"] for _, i in runs)
        res.excluded_cpu_s = statistics.median(i["load_cpu_s"] for _, i in runs)
    return res


# --------------------------------------------------------------------------------------------
# Memory (child processes)
# --------------------------------------------------------------------------------------------


@dataclass
class ChildRun:
    audio_s: float
    peak_rss_mb: float
    wall_s: float
    cpu_s: float  # user + sys of the child
    exit_code: int
    other_cpu_s: float | None  # the rest of the machine meanwhile (the launcher included)

    @property
    def per_cpu(self) -> float:
        return self.audio_s / self.cpu_s if self.cpu_s > 0 else float("nan")


# ru_maxrss is a high-water mark kept across fork and exec: a child forked from this (large)
# process starts with our RSS as its peak, so its reading would be ours, not its own. A small
# launcher interpreter (a few MB) forks the real child instead, reaps it with os.wait4 and prints
# that child's own rusage.
_LAUNCHER = """
import json, os, subprocess, sys, time
out, err, cmd = sys.argv[1], sys.argv[2], sys.argv[3:]
with open(out, "wb") as o, open(err, "wb") as e:
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=o, stderr=e)
    _, status, ru = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
proc.returncode = os.waitstatus_to_exitcode(status)
print(json.dumps({"exit_code": proc.returncode, "maxrss_kib": ru.ru_maxrss, "wall_s": wall,
                  "cpu_s": ru.ru_utime + ru.ru_stime}))
"""


def run_cli_child(path: Path, config: Path, audio_s: float, workdir: Path,
                  env: dict[str, str] | None = None) -> ChildRun:
    """``affect-bridge analyze`` in a fresh interpreter; its own rusage via ``os.wait4``."""
    cmd = [sys.executable, "-m", "bridge.cli", "analyze", str(path), "--format", "table",
           "--config", str(config)]
    return run_child(cmd, audio_s, workdir, path.stem, env)


def run_child(cmd: list[str], audio_s: float, workdir: Path, name: str,
              env: dict[str, str] | None = None) -> ChildRun:
    """``cmd`` in a fresh process; its own rusage via ``os.wait4`` (see _LAUNCHER)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
    out_path, err_path = workdir / f"{name}.out", workdir / f"{name}.err"
    busy0 = machine_busy_s()
    launched = subprocess.run([sys.executable, "-c", _LAUNCHER, str(out_path), str(err_path), *cmd],
                              capture_output=True, text=True, env=env, cwd=ROOT, check=True)
    busy1 = machine_busy_s()
    usage = json.loads(launched.stdout)
    other = None if busy0 is None or busy1 is None else max(0.0, busy1 - busy0 - usage["cpu_s"])
    if usage["exit_code"] != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {usage['exit_code']}:\n"
                           f"{err_path.read_text()[-2000:]}")
    # Linux: ru_maxrss is in KiB.
    return ChildRun(audio_s, usage["maxrss_kib"] / 1024, usage["wall_s"], usage["cpu_s"],
                    usage["exit_code"], other)


def memory_part(conv_short: Conversation, conv_loop: Conversation, long_s: float,
                workdir: Path) -> dict[str, Any]:
    config = workdir / "prosody-only.toml"
    config.write_text('analyzers = ["prosody"]\n', encoding="utf-8")
    short = write_wav(workdir / "one-minute.wav", conv_short.audio)
    print(f"  1 minute: {conv_short.seconds:.1f} s, speech {conv_short.speech_fraction:.1%}; long: "
          f"a {conv_loop.seconds:.1f} s conversation (speech {conv_loop.speech_fraction:.1%}) "
          f"repeated to {long_s:.0f} s", flush=True)
    print(f"  writing the {long_s / 3600:.2g}-hour FLAC ...", flush=True)
    long = write_long_flac(workdir / "long.flac", conv_loop.audio, long_s)
    print(f"  {long.name}: {long.stat().st_size / 1e6:.0f} MB; running children ...", flush=True)
    a = run_cli_child(short, config, conv_short.seconds, workdir)
    b = run_cli_child(long, config, long_s, workdir)
    return {"short": asdict(a) | {"audio_s_per_cpu_s": a.per_cpu},
            "long": asdict(b) | {"audio_s_per_cpu_s": b.per_cpu},
            "difference_mb": b.peak_rss_mb - a.peak_rss_mb}


def families_part(conv: Conversation, workdir: Path) -> dict[str, Any]:
    """wav2vec2-base (categorical) and the dimensional large model, side by side in one run:
    ``affect-bridge analyze`` of the conversation (prosody + emotion, precision auto) in fresh
    children, each model's first run on this machine (provisional precision; its background
    job, which measures the precisions and prepares the model, ends before the later run) and a
    later run (prepared). Audio-seconds per CPU-second, start-up included, and peak RSS."""
    from bench_inference import _wait_for_job  # beside this script
    wav = write_wav(workdir / "conversation-families.wav", conv.audio)
    models = {"wav2vec2-base (categorical)": build_model(workdir / "family-base"),
              "wav2vec2-large-12 (dimensional)": build_dimensional_large(workdir / "family-large")}
    print(f"\n== emotion families: analyze of {conv.seconds:.0f} s ({conv.speech_fraction:.0%} "
          "speech), prosody + emotion, precision auto, fresh children", flush=True)
    out: dict[str, Any] = {}
    rows = []
    for name, model_dir in models.items():
        config = workdir / f"{model_dir.name}.toml"
        config.write_text(f'[emotion]\nmodel = "{model_dir}"\n', encoding="utf-8")
        env = {"AFFECT_BRIDGE_CACHE_DIR": str(workdir / f"cache-{model_dir.name}")}
        first = run_cli_child(wav, config, conv.seconds, workdir, env)
        job = _wait_for_job(Path(env["AFFECT_BRIDGE_CACHE_DIR"]))
        later = run_cli_child(wav, config, conv.seconds, workdir, env)
        chosen = _chosen_precision(workdir / f"{wav.stem}.err")
        out[name] = {"first": asdict(first) | {"audio_s_per_cpu_s": first.per_cpu},
                     "later": asdict(later) | {"audio_s_per_cpu_s": later.per_cpu},
                     "precision": chosen, "background_job_cpu_s": job}
        for label, run in (("first run", first), ("later run", later)):
            rows.append([f"{name}, {label}", chosen, f"{run.cpu_s:.1f}", f"{run.per_cpu:.1f}",
                         f"{run.peak_rss_mb:.0f}"])
    print(table(rows, ["model", "precision", "CPU s", "audio s/CPU s", "peak RSS MB"]))
    return out


def _chosen_precision(stderr: Path) -> str:
    """The precision the child's log line names ("emotion model ... loaded: ... in P on cpu")."""
    for line in stderr.read_text(errors="replace").splitlines():
        if "emotion model" in line and " loaded: " in line and " in " in line:
            return line.rsplit(" in ", 1)[1].split(" on ", 1)[0]
    return "?"


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    line = "  ".join("-" * w for w in widths)
    fmt = [h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(header, widths,
                                                                               strict=True))]
    out = ["  ".join(fmt), line]
    for r in rows:
        out.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                             for i, (c, w) in enumerate(zip(r, widths, strict=True))))
    return "\n".join(out)


def speed_table(results: list[Result]) -> str:
    rows = [[r.name, f"{r.audio_s:.1f}", f"{r.wall_s:.2f}", f"{r.cpu_s:.2f}", f"{r.per_wall:.1f}",
             f"{r.per_cpu:.1f}", f"{r.excluded_cpu_s:.2f}" if r.excluded_cpu_s else "-",
             "?" if r.other_cpu_s is None else f"{r.other_cpu_s:.2f}"]
            for r in results]
    return table(rows, ["approach", "audio s", "wall s", "CPU s", "audio s/wall s",
                        "audio s/CPU s", "load CPU s excl.", "other procs CPU s"])


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


@dataclass
class Options:
    seconds: float
    long_s: float
    repeat: int
    speed: bool
    memory: bool
    precision: bool
    startup: bool
    families: bool
    json_out: Path | None


def parse_args(argv: list[str] | None) -> Options:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--quick", action="store_true",
                   help="60 s conversation, 10-minute 'long' recording for the memory part")
    p.add_argument("--seconds", type=float, help="conversation length (default 180, quick 60)")
    p.add_argument("--long-seconds", type=float,
                   help="length of the long recording for the memory part (default 7200)")
    p.add_argument("--repeat", type=int,
                   help="interleaved timed runs per approach, median kept (default 3, quick 1)")
    only = p.add_mutually_exclusive_group()
    only.add_argument("--memory", action="store_true", help="only the memory part")
    only.add_argument("--speed", action="store_true", help="only the speed part")
    only.add_argument("--precision", action="store_true",
                      help="only the emotion precisions, side by side (bench_inference.py)")
    only.add_argument("--startup", action="store_true",
                      help="only what start-up costs, in fresh processes (bench_inference.py)")
    only.add_argument("--families", action="store_true",
                      help="only wav2vec2-base beside the dimensional large model, analyze in "
                           "fresh children (speed and peak RSS, first and later runs)")
    p.add_argument("--json", type=Path, metavar="OUT.json", help="write every figure as JSON")
    a = p.parse_args(argv)
    parts = ("speed", "memory", "precision", "startup", "families")
    chosen = [part for part in parts if getattr(a, part)]
    return Options(
        seconds=a.seconds or (60.0 if a.quick else 180.0),
        long_s=a.long_seconds or (600.0 if a.quick else 7200.0),
        repeat=max(1, a.repeat or (1 if a.quick else 3)),
        **{part: not chosen or part in chosen for part in parts},
        json_out=a.json,
    )


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    for name in ("transformers", "bridge", "analyzers", "huggingface_hub"):
        logging.getLogger(name).setLevel(logging.ERROR)
    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    report: dict[str, Any] = {
        "python": platform.python_version(), "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(), "cpus": os.cpu_count(),
        "machine": platform.machine(), "processor": processor(),
    }
    print(f"processor: {report['processor']}")
    print(f"torch {torch.__version__}, torch.get_num_threads() = {torch.get_num_threads()}, "
          f"os.cpu_count() = {os.cpu_count()}")

    pools = load_pools()
    print("sentences per speaker: " + ", ".join(f"{k} {len(v)}" for k, v in pools.items()))
    with tempfile.TemporaryDirectory(prefix="bench-affect-") as tmp:
        workdir = Path(tmp)
        if opts.speed:
            conv = build_conversation(pools, opts.seconds)
            report["recording"] = _describe_recording(conv)
            report["speed"] = speed_part(conv, workdir, opts.repeat)
        if opts.precision or opts.startup:
            from bench_inference import precision_part, startup_part  # beside this script

            model_dir = build_model(workdir / "wav2vec2-base-random-inference")
            if opts.precision:
                report["precision"] = precision_part(model_dir, opts.repeat)
            if opts.startup:
                conv = build_conversation(pools, opts.seconds)
                clip = write_wav(workdir / "clip-3s.wav", conv.audio[: 3 * SR])
                wav = write_wav(workdir / "conversation-startup.wav", conv.audio)
                report["startup"] = startup_part(model_dir, clip, wav, conv.seconds, workdir,
                                                 run_child)
        if opts.families:
            report["families"] = families_part(build_conversation(pools, opts.seconds), workdir)
        if opts.memory:
            print("\n== memory: peak RSS of `affect-bridge analyze` (prosody only), fresh children")
            short = build_conversation(pools, 60.0)
            loop = build_conversation(pools, 180.0)
            report["memory"] = memory_part(short, loop, opts.long_s, workdir)
            _print_memory(report["memory"], opts.long_s)
    _print_targets(report)
    if opts.json_out is not None:
        opts.json_out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        print(f"\nwrote {opts.json_out}")
    return 0


def _describe_recording(conv: Conversation) -> dict[str, Any]:
    energy = energy_speech_fraction(conv.audio)
    print(f"conversation: {conv.seconds:.1f} s, {conv.sentences} sentences, speech (sentence audio) "
          f"{conv.speech_s:.1f} s = {conv.speech_fraction:.1%}; frames >= {SILENCE_DBFS:.0f} dBFS: "
          f"{energy:.1%}")
    return {"audio_s": conv.seconds, "sentences": conv.sentences, "speech_s": conv.speech_s,
            "speech_fraction": conv.speech_fraction, "energy_speech_fraction": energy}


def speed_part(conv: Conversation, workdir: Path, repeat: int) -> dict[str, Any]:
    import torch

    default_threads = torch.get_num_threads()  # before our model load changes it
    model_dir = build_model(workdir / "wav2vec2-base-random")
    wav = write_wav(workdir / "conversation.wav", conv.audio)
    warm = write_wav(workdir / "warmup.wav", conv.audio[: int(WARMUP_S * SR)])
    full, prosody = ours_settings(model_dir, True), ours_settings(model_dir, False)
    full_fp32 = ours_settings(model_dir, True, precision="fp32")

    ref, load = timed(lambda: Reference.load(model_dir))
    print(f"reference model load (excluded): {load.wall_s:.2f} s wall, {load.cpu_s:.2f} s CPU")
    print(f"warm-up on the first {WARMUP_S:.0f} s (untimed) ...", flush=True)
    ref.analyze(warm.read_bytes())
    ours_once(warm, full)
    # What our inference thread uses (emotion.threads = 0: half the cores); set in that thread.
    ours_threads = full.emotion.threads or max(1, (os.cpu_count() or 2) // 2)
    ours_once(warm, prosody)
    ours_once(warm, full_fp32)

    wav_bytes = wav.read_bytes()  # the reference's request body, already received
    runs: dict[str, list[tuple[Timing, dict[str, Any]]]] = {k: [] for k in NAMES}
    load_before = os.getloadavg()[0]
    for i in range(repeat):
        # Interleaved, so that whatever else the machine is doing hits every approach alike.
        print(f"timed run {i + 1}/{repeat} ...", flush=True)
        runs[NAMES[0]].append(reference_timed(ref, wav_bytes, default_threads))
        runs[NAMES[1]].append(ours_timed(wav, full))
        runs[NAMES[2]].append(ours_timed(wav, prosody))
        # Diagnostic: the reference on our thread count, to show what threading alone gives.
        runs[NAMES[3]].append(reference_timed(ref, wav_bytes, ours_threads))
        runs[NAMES[4]].append(ours_timed(wav, full_fp32))
    load_after = os.getloadavg()[0]
    results = [_result(name, conv.seconds, runs[name]) for name in NAMES]
    results[1].info |= emotion_calls(wav, full)
    results[0].info |= {"model_audio_s": conv.seconds}
    ref_r, ours_full, ours_pro, ref_same_threads, ours_fp32 = results
    ratios: dict[str, Any] = {
        "full_vs_reference_per_cpu": ours_full.per_cpu / ref_r.per_cpu,
        "full_vs_reference_per_wall": ours_full.per_wall / ref_r.per_wall,
        "no_emotion_vs_reference_per_cpu": ours_pro.per_cpu / ref_r.per_cpu,
        "no_emotion_vs_reference_per_wall": ours_pro.per_wall / ref_r.per_wall,
    }
    per_run_ratio = [ours_full.audio_s / f["cpu_s"] / (ref_r.audio_s / r["cpu_s"])
                     for f, r in zip(ours_full.runs, ref_r.runs, strict=True)]
    ratios["full_vs_reference_per_cpu_each_run"] = per_run_ratio
    ratios["full_vs_reference_same_threads_per_cpu"] = ours_full.per_cpu / ref_same_threads.per_cpu
    ratios["full_fp32_vs_reference_per_cpu"] = ours_fp32.per_cpu / ref_r.per_cpu
    ratios["full_fp32_vs_reference_per_wall"] = ours_fp32.per_wall / ref_r.per_wall
    print(f"\n== speed: {conv.seconds:.0f} s conversation, median of {repeat} interleaved run(s), "
          f"torch threads: reference {default_threads} (torch default), ours {ours_threads}, "
          f"load average {load_before:.2f} -> {load_after:.2f} (on {os.cpu_count()} CPUs)")
    print(speed_table(results))
    print("ours: the timed analyze_files() call includes engine.start() (model load) and "
          "aclose();\n      the same start+aclose measured alone just before is subtracted "
          "('load CPU s excl.').\nreference: model loaded once before timing (a server keeps it).")
    print(f"model input: reference {ref_r.info['model_calls']} calls, {conv.seconds:.0f} s of audio; "
          f"ours {ours_full.info['model_items']} calls, {ours_full.info['model_audio_s']:.1f} s "
          f"(new voiced speech only; mean {ours_full.info['mean_item_s']:.2f} s per call)")
    print(f"ours VAD speech: {ours_full.info['vad_speech_s']:.1f} s "
          f"({ours_full.info['vad_speech_fraction']:.1%}), {ours_full.info['windows']} windows")
    if "model_alone_cpu_s" in ours_full.info:
        alone = ours_full.info["model_alone_cpu_s"]
        rest = ours_full.cpu_s - ours_pro.cpu_s - alone
        print(f"ours (full) CPU {ours_full.cpu_s:.2f} s = no-emotion pipeline {ours_pro.cpu_s:.2f} s "
              f"+ the same model calls run alone {alone:.2f} s + the rest {rest:+.2f} s "
              "(contention, scheduling)")
    noisy = [r.name for r in results
             if r.other_cpu_s is not None and r.other_cpu_s > 0.1 * r.wall_s]
    if noisy:
        print("WARNING: other processes used the CPU during: " + ", ".join(noisy)
              + " (their figures are inflated; rerun on a quiet machine or with --repeat)")
    print("\nratios ours / reference:")
    print(table([["ours (full)", f"{ratios['full_vs_reference_per_cpu']:.2f}x",
                  f"{ratios['full_vs_reference_per_wall']:.2f}x"],
                 ["ours (full, fp32 model)", f"{ratios['full_fp32_vs_reference_per_cpu']:.2f}x",
                  f"{ratios['full_fp32_vs_reference_per_wall']:.2f}x"],
                 ["ours (no emotion model)", f"{ratios['no_emotion_vs_reference_per_cpu']:.2f}x",
                  f"{ratios['no_emotion_vs_reference_per_wall']:.2f}x"]],
                ["", "per CPU-second", "per wall-second"]))
    print(f"ours (full) / reference run on ours' torch threads ({ours_threads}), per CPU-second: "
          f"{ratios['full_vs_reference_same_threads_per_cpu']:.2f}x")
    if repeat > 1:
        print("ours (full) / reference per CPU-second, run by run: "
              + ", ".join(f"{x:.2f}x" for x in per_run_ratio))
    return {"results": [r.as_dict() for r in results], "ratios": ratios, "repeat": repeat,
            "load_average": [load_before, load_after]}


def _print_memory(mem: dict[str, Any], long_s: float) -> None:
    rows = []
    for key, label in (("short", "1 minute"), ("long", f"{long_s / 3600:.3g} hours")):
        m = mem[key]
        other = "?" if m["other_cpu_s"] is None else f"{m['other_cpu_s']:.1f}"
        rows.append([label, f"{m['audio_s']:.0f}", f"{m['peak_rss_mb']:.1f}", f"{m['wall_s']:.1f}",
                     f"{m['cpu_s']:.1f}", f"{m['audio_s_per_cpu_s']:.1f}", other])
    print(table(rows, ["recording", "audio s", "peak RSS MB", "wall s", "CPU s (user+sys)",
                       "audio s/CPU s", "other procs CPU s"]))
    print("(each a fresh `python -m bridge.cli analyze FILE --format table` with "
          "analyzers = [\"prosody\"];\n CPU and audio s/CPU s include interpreter start-up and "
          "imports)")
    print(f"difference: {mem['difference_mb']:+.1f} MB")


def _print_targets(report: dict[str, Any]) -> None:
    rows: list[list[str]] = []
    checks: dict[str, dict[str, Any]] = {}
    if "speed" in report:
        ratio = report["speed"]["ratios"]["full_vs_reference_per_cpu"]
        rate = report["speed"]["results"][2]["audio_s_per_cpu_s"]
        checks["full_vs_reference_per_cpu"] = {"value": ratio, "target": TARGET_FULL_VS_REF,
                                               "pass": ratio >= TARGET_FULL_VS_REF}
        checks["no_emotion_audio_s_per_cpu_s"] = {"value": rate, "target": TARGET_PROSODY_RATE,
                                                  "pass": rate >= TARGET_PROSODY_RATE}
        rows += [["ours full / reference, audio s per CPU s", f">= {TARGET_FULL_VS_REF:.0f}x",
                  f"{ratio:.2f}x", verdict(ratio >= TARGET_FULL_VS_REF)],
                 ["ours without emotion, audio s per CPU s", f">= {TARGET_PROSODY_RATE:.0f}",
                  f"{rate:.1f}", verdict(rate >= TARGET_PROSODY_RATE)]]
    if "memory" in report:
        diff = report["memory"]["difference_mb"]
        checks["memory_difference_mb"] = {"value": diff, "target": TARGET_MEMORY_MB,
                                          "pass": diff <= TARGET_MEMORY_MB}
        rows.append(["peak RSS, long minus 1-minute recording", f"<= {TARGET_MEMORY_MB:.0f} MB",
                     f"{diff:+.1f} MB", verdict(diff <= TARGET_MEMORY_MB)])
    if "precision" in report:
        ratio = report["precision"]["default_vs_before"]
        native = report["precision"]["native_bf16"]
        checks["emotion_default_vs_before"] = {
            "value": ratio, "target": TARGET_DEFAULT_VS_BEFORE if native else None,
            "pass": ratio >= TARGET_DEFAULT_VS_BEFORE if native else None}
        rows.append(["emotion default / int8 before, audio s per CPU s",
                     f">= {TARGET_DEFAULT_VS_BEFORE}x" if native else "(no native bf16 here)",
                     f"{ratio:.2f}x", verdict(ratio >= TARGET_DEFAULT_VS_BEFORE) if native
                     else "info"])
    if "startup" in report:
        st = report["startup"]
        for key, label, target, ok in (
                ("whole_vs_reference_per_cpu", "whole analyze incl. start-up / reference",
                 f">= {TARGET_WHOLE_VS_REF:.0f}x", st["whole_vs_reference_per_cpu"]
                 >= TARGET_WHOLE_VS_REF),
                ("whole_first_vs_reference_per_cpu", "the same, first run with the checkpoint",
                 f">= {TARGET_FIRST_VS_REF:.0f}x", st["whole_first_vs_reference_per_cpu"]
                 >= TARGET_FIRST_VS_REF),
                ("whole_first_vs_later", "first run CPU / later run CPU",
                 f"<= {TARGET_FIRST_VS_LATER}x", st["whole_first_vs_later"]
                 <= TARGET_FIRST_VS_LATER),
                ("run_first_vs_later_wall", "run: first start to ready / later start",
                 f"<= {TARGET_FIRST_VS_LATER}x", st["run_first_vs_later_wall"]
                 <= TARGET_FIRST_VS_LATER),
                ("clip_later_vs_imports", "3 s clip start-up / import torch+transformers",
                 f"<= {TARGET_STARTUP_VS_IMPORTS:.0f}x", st["clip_later_vs_imports"]
                 <= TARGET_STARTUP_VS_IMPORTS),
                ("clip_later_rss_mb", "3 s clip peak RSS", f"<= {TARGET_STARTUP_RSS_MB:.0f} MB",
                 st["clip_later_rss_mb"] <= TARGET_STARTUP_RSS_MB)):
            checks[key] = {"value": st[key], "pass": ok}
            rows.append([label, target, f"{st[key]:.2f}", verdict(ok)])
    report["targets"] = checks
    print("\n== targets")
    print(table(rows, ["target", "wanted", "measured", "result"]))


if __name__ == "__main__":
    sys.exit(main())
