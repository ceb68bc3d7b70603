"""Detection end to end (``affect-bridge analyze``, prosody only) on recordings made here the way
the fixtures are (make_speech.py), with a voice and text the project's fixtures and benchmark do
not use: a subtle shift (+3 st, +12 % tempo, +3 dB) is caught only after it starts, clean and
under steady noise 20 dB down; calm speech with a level step or loud noise bursts never spikes."""

from __future__ import annotations

import json
import subprocess
import wave
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.conftest import require_tool, run_cli
from tests.fixtures.make_speech import make

VOICE = "en-gb-x-rp+m2"
TEXT = [
    "The weather report says it will be sunny for most of the week.",
    "I picked up some bread and milk on the way back from work.",
    "Our team meets every Tuesday to talk about the week ahead.",
    "The painting in the hallway was a gift from my grandmother.",
    "We are thinking about a short trip to the coast in June.",
    "The new software update installed without any problems.",
    "She plays the piano in the evenings when the house is quiet.",
    "Let me check the calendar and get back to you tomorrow.",
]
SR = 16000


def _read(path: Path) -> np.ndarray:
    with wave.open(str(path)) as w:
        return np.frombuffer(w.readframes(w.getnframes()), np.int16).astype(np.float32) / 32768


def _write(path: Path, x: np.ndarray) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SR)
        w.writeframes((np.clip(x, -1, 1) * 32767).astype(np.int16).tobytes())
    return path


def _sox(src: Path, dst: Path, *effects: str) -> Path:
    subprocess.run(["sox", "-R", str(src), str(dst), *effects], check=True)
    return dst


@pytest.fixture(scope="module")
def recordings(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, float | None]]:
    """name -> (file, where stress starts or None). About 2 x 68 s of calm speech."""
    require_tool("espeak-ng")
    require_tool("sox")
    d = tmp_path_factory.mktemp("detection")
    first, second = d / "a.wav", d / "b.wav"
    make("calm", VOICE, first, TEXT)
    make("calm", VOICE, d / "b1.wav", TEXT[4:] + TEXT[:4])
    make("calm", VOICE, d / "b2.wav", TEXT[2:] + TEXT[:2])
    subprocess.run(["sox", "-R", str(d / "b1.wav"), str(d / "b2.wav"), str(second)], check=True)
    a = _read(first)
    lead = np.concatenate([a, _read(d / "b1.wav")])  # the calm part: ~90 s
    _write(d / "lead.wav", lead)
    tail = _read(d / "b2.wav")
    shift_s = len(lead) / SR
    subtle_tail = _read(_sox(d / "b2.wav", d / "b2s.wav", "pitch", "300", "tempo", "-s", "1.12",
                             "gain", "3"))
    subtle = np.concatenate([lead, subtle_tail])
    rng = np.random.default_rng(7)
    speech_rms = float(np.sqrt(np.mean(subtle[np.abs(subtle) > 1e-3] ** 2)))
    pink = np.cumsum(rng.standard_normal(len(subtle))).astype(np.float32)
    pink -= np.convolve(pink, np.ones(400) / 400, mode="same")  # brown noise, low cut ~ pinkish
    pink *= speech_rms / 10 / float(np.sqrt(np.mean(pink**2)))  # 20 dB below the speech
    calm = np.concatenate([lead, tail])
    step = np.concatenate([lead, tail * 10 ** (6 / 20)])
    bursts = calm.copy()
    for t in np.arange(8.0, len(calm) / SR - 1, 17.0):
        n = int(rng.uniform(0.2, 0.8) * SR)
        i = int(t * SR)
        bursts[i:i + n] += rng.standard_normal(len(bursts[i:i + n])).astype(np.float32) * speech_rms * 2
    return {
        "subtle": (_write(d / "subtle.wav", subtle), shift_s),
        "subtle, noise 20 dB down": (_write(d / "subtle_noise.wav", subtle + pink), shift_s),
        "level +6 dB half-way": (_write(d / "step.wav", step), None),
        "noise bursts": (_write(d / "bursts.wav", bursts), None),
    }


def _analyze(path: Path) -> list[dict[str, Any]]:
    proc = run_cli("analyze", str(path), env={"AFFECT_BRIDGE_ANALYZERS": '["prosody"]'})
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines()]


@pytest.mark.slow
@pytest.mark.parametrize("case", ["subtle", "subtle, noise 20 dB down", "level +6 dB half-way",
                                  "noise bursts"])
def test_spikes_only_where_stress_was_put_in(recordings: dict[str, tuple[Path, float | None]],
                                             case: str) -> None:
    path, shift_s = recordings[case]
    evs = _analyze(path)
    spikes = [e["data"] for e in evs if e["type"] == "stress.spike.started"]
    if shift_s is None:
        assert spikes == [], f"{case}: false spike(s) {spikes}"
        return
    assert spikes, f"{case}: the shift at {shift_s:.1f} s was not caught"
    assert all(s["offset_s"] >= shift_s for s in spikes), (shift_s, spikes)
    assert spikes[0]["offset_s"] - shift_s <= 30
    assert spikes[0]["started_s"] >= shift_s - 4  # the onset estimate is near the real onset
