#!/usr/bin/env python
"""Benchmark: the VAD engines (webrtcvad, Silero) on speech in noise and on noise alone.

Speech: the fixtures (tests/fixtures/audio/alice_calm.flac, bridge/assets/demo/*.flac; about
220 s, three voices, pauses holding only a faint noise floor below -65 dBFS). Reference speech
boundaries come from the clean speech on a 10 ms grid: a frame is speech when its RMS reaches
-55 dBFS (sentences sit at -45..-25 dBFS, pauses below -65), then kept on for 150 ms after the
last such frame (the same hangover the detectors use, so word endings are not counted against
them).

Mixes: each file with the room noises of tests/noise.py (white, pink, brown; a fan: 100 Hz hum
and harmonics over broadband hiss; keyboard-like clicks; synthetic tonal chords), at 20, 10, 5
and 0 dB SNR (speech power over the reference speech frames against the noise's mean power; a
mix that would clip is scaled down whole). Noises are generated with fixed seeds; nothing is downloaded.
Scores: frame-level precision, recall and F1 against the reference on the 10 ms grid (a
detector's decision for a 10 ms frame is that of its frame holding the 10 ms frame's centre),
counts summed over the files.

Noise alone: each kind at -45, -35, -26 and -20 dBFS RMS, 60 s each: the fraction called speech.

CPU: thread CPU time (``time.thread_time``) of the calling thread inside ``process`` over the
whole run, per audio-second, audio fed in 20 ms pieces as a live track delivers it; torch on one
thread (``torch.set_num_threads(1)``). The Silero model load is not counted.

    .venv/bin/python tests/bench/bench_vad.py            # about 2 minutes on one core
    .venv/bin/python tests/bench/bench_vad.py --quick    # 20 s of speech, 10 s of noise
    .venv/bin/python tests/bench/bench_vad.py --json out.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from analyzers.vad import Detector, SileroModel, VadConfig, make_detector  # noqa: E402
from bridge.pipeline.audio import read_file  # noqa: E402
from tests import noise as room  # noqa: E402

SR = 16000
GRID = 160  # 10 ms reference frames
REF_DBFS = -55.0
REF_HANGOVER = 15  # 150 ms of 10 ms frames
SPEECH = [ROOT / "tests" / "fixtures" / "audio" / "alice_calm.flac",
          *sorted((ROOT / "bridge" / "assets" / "demo").glob("*.flac"))]
NOISES = list(room.KINDS)  # white, pink, brown, fan, clicks, music
SNRS = [20, 10, 5, 0]
LEVELS = [-45, -35, -26, -20]
ENGINES: dict[str, VadConfig] = {
    "webrtc": VadConfig(engine="webrtc"),  # aggressiveness 2, 30 ms, hangover 150 ms
    "webrtc-a3": VadConfig(engine="webrtc", aggressiveness=3),
    "silero": VadConfig(engine="silero"),  # threshold 0.5, 32 ms, hangover 150 ms
}


# --- noise (tests/noise.py: the project's room noises) ----------------------------------------

def noise(kind: str, n: int, seed: int) -> np.ndarray:
    """``n`` samples of one kind, unit RMS."""
    x = room.raw(kind, (n + 1) / SR, seed)[:n]
    assert len(x) == n
    return x / np.sqrt(np.mean(x**2))


# --- reference and scoring -------------------------------------------------------------------

def frame_db(audio: np.ndarray) -> np.ndarray:
    n = len(audio) // GRID
    frames = audio[: n * GRID].reshape(n, GRID).astype(np.float64)
    return 10 * np.log10((frames**2).mean(axis=1) + 1e-12)


def reference(clean: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(active frames, active frames with the hangover) on the 10 ms grid."""
    active = frame_db(clean) >= REF_DBFS
    held = active.copy()
    left = 0
    for i, a in enumerate(active):
        if a:
            left = REF_HANGOVER
        elif left:
            left -= 1
            held[i] = True
    return active, held


def on_grid(decisions: np.ndarray, frame_len: int, n: int) -> np.ndarray:
    centre = (np.arange(n) * GRID + GRID // 2) // frame_len
    out = np.zeros(n, dtype=bool)
    ok = centre < len(decisions)
    out[ok] = decisions[centre[ok]]
    return out


@dataclass
class Counts:
    tp: int = 0
    fp: int = 0
    fn: int = 0

    def add(self, ref: np.ndarray, hyp: np.ndarray) -> None:
        self.tp += int((ref & hyp).sum())
        self.fp += int((~ref & hyp).sum())
        self.fn += int((ref & ~hyp).sum())

    def scores(self) -> dict[str, float]:
        p = self.tp / (self.tp + self.fp) if self.tp + self.fp else 0.0
        r = self.tp / (self.tp + self.fn) if self.tp + self.fn else 0.0
        return {"precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r else 0.0}


class Runner:
    """Runs a detector over audio in 20 ms pieces, adding its thread CPU time."""

    def __init__(self, silero: SileroModel) -> None:
        self.silero = silero
        self.cpu_s = dict.fromkeys(ENGINES, 0.0)
        self.audio_s = dict.fromkeys(ENGINES, 0.0)

    def run(self, engine: str, audio: np.ndarray) -> tuple[np.ndarray, int]:
        vad: Detector = make_detector(ENGINES[engine], self.silero)
        out = []
        t0 = time.thread_time()
        for i in range(0, len(audio), 320):
            out.append(vad.process(audio[i : i + 320]))
        self.cpu_s[engine] += time.thread_time() - t0
        self.audio_s[engine] += len(audio) / SR
        return np.concatenate(out), vad.frame_len


# --- the run ---------------------------------------------------------------------------------

def processor() -> dict[str, Any]:
    """The CPU's model name and whether it has AMX / AVX-512 (first processor of /proc/cpuinfo)."""
    name, flags = platform.processor() or "unknown", ""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        lines = []
    for line in lines:
        key, _, value = line.partition(":")
        if key.strip() == "model name" and name == (platform.processor() or "unknown"):
            name = value.strip()
        elif key.strip() == "flags" and not flags:
            flags = value
    words = flags.split()
    return {"model": name, "amx": sorted(w for w in words if w.startswith("amx")),
            "avx512": sorted(w for w in words if w.startswith("avx512"))}


def load_speech(quick: bool) -> list[np.ndarray]:
    files = SPEECH[:1] if quick else SPEECH
    out = []
    for path in files:
        audio = np.concatenate([c[0].samples for c in read_file(path)])
        out.append(audio[: 20 * SR] if quick else audio)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--quick", action="store_true", help="20 s of one file, 10 s of noise")
    ap.add_argument("--json", type=Path, metavar="OUT.json", help="write every figure as JSON")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(1)
    cpu = processor()
    print(f"processor: {cpu['model']}; amx: {' '.join(cpu['amx']) or 'none'}; "
          f"avx512: {' '.join(cpu['avx512']) or 'none'}; torch {torch.__version__}, 1 thread")
    runner = Runner(SileroModel.load())
    speech = load_speech(args.quick)
    refs = [reference(s) for s in speech]
    print(f"speech: {len(speech)} file(s), {sum(len(s) for s in speech) / SR:.1f} s, "
          f"reference speech {np.mean(np.concatenate([r[1] for r in refs])):.0%} of frames")

    mixes: list[dict[str, Any]] = []
    conditions = [("clean", None)] + [(k, snr) for k in NOISES for snr in SNRS]
    for kind, snr in conditions:
        counts = {e: Counts() for e in ENGINES}
        for f, (clean, (active, held)) in enumerate(zip(speech, refs, strict=True)):
            mix = clean.astype(np.float64)
            if snr is not None:
                speech_power = float(np.mean(10 ** (frame_db(clean)[active] / 10)))
                mix = mix + noise(kind, len(clean), seed=1000 * f + NOISES.index(kind)) * np.sqrt(
                    speech_power / 10 ** (snr / 10))
            peak = float(np.max(np.abs(mix)))
            mix_f = (mix / peak * 0.99 if peak > 0.99 else mix).astype(np.float32)
            for engine in ENGINES:
                decisions, frame_len = runner.run(engine, mix_f)
                counts[engine].add(held, on_grid(decisions, frame_len, len(held)))
        for engine, c in counts.items():
            mixes.append({"noise": kind, "snr_db": snr, "engine": engine, **c.scores(),
                          **asdict(c)})

    seconds = 10 if args.quick else 60
    alone: list[dict[str, Any]] = []
    for kind in NOISES:
        base = noise(kind, seconds * SR, seed=7 + NOISES.index(kind))
        for level in LEVELS:
            x = room.at_level(base, level)
            for engine in ENGINES:
                decisions, _ = runner.run(engine, x)
                alone.append({"noise": kind, "dbfs": level, "engine": engine,
                              "speech_fraction": float(decisions.mean())})

    engines = list(ENGINES)
    print("\nSpeech in noise: frame precision / recall / F1 (10 ms grid)")
    print(f"{'noise':9} {'SNR':>5} " + " ".join(f"{e:>20}" for e in engines))
    for kind, snr in conditions:
        row = {r["engine"]: r for r in mixes if r["noise"] == kind and r["snr_db"] == snr}
        cells = [f"{row[e]['precision']:.2f}/{row[e]['recall']:.2f}/{row[e]['f1']:.2f}"
                 for e in engines]
        print(f"{kind:9} {'-' if snr is None else snr:>5} " + " ".join(f"{c:>20}" for c in cells))
    print(f"{'mean F1':9} {'noisy':>5} " + " ".join(
        f"{np.mean([r['f1'] for r in mixes if r['engine'] == e and r['snr_db'] is not None]):>20.3f}"
        for e in engines))
    for snr in SNRS:
        print(f"{'mean F1':9} {snr:>5} " + " ".join(
            f"{np.mean([r['f1'] for r in mixes if r['engine'] == e and r['snr_db'] == snr]):>20.3f}"
            for e in engines))

    print(f"\nNoise alone ({seconds} s each): fraction called speech")
    print(f"{'noise':9} {'dBFS':>5} " + " ".join(f"{e:>10}" for e in engines))
    for kind in NOISES:
        for level in LEVELS:
            row = {r["engine"]: r for r in alone if r["noise"] == kind and r["dbfs"] == level}
            print(f"{kind:9} {level:>5} " + " ".join(
                f"{row[e]['speech_fraction']:>10.3f}" for e in engines))

    cpu_per_s = {e: runner.cpu_s[e] / runner.audio_s[e] for e in engines}
    print("\nCPU seconds per audio-second (thread time, one thread):")
    for e in engines:
        print(f"  {e:10} {cpu_per_s[e]:.5f}  ({runner.audio_s[e]:.0f} audio-s)")

    if args.json:
        args.json.write_text(json.dumps({
            "processor": cpu, "torch": torch.__version__, "quick": args.quick,
            "reference": {"grid_ms": GRID * 1000 // SR, "dbfs": REF_DBFS,
                          "hangover_ms": REF_HANGOVER * 10},
            "engines": {e: asdict(c) for e, c in ENGINES.items()},
            "mixes": mixes, "noise_alone": alone, "cpu_s_per_audio_s": cpu_per_s,
            "audio_s": runner.audio_s}, indent=1))


if __name__ == "__main__":
    main()
