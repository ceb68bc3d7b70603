"""Room noise for tests and benchmarks, made from fixed seeds (nothing stored): white, pink and
brown noise, a fan-like hum with broadband hiss, keyboard-like clicks, synthetic tonal music."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

SR = 16000
KINDS = ("white", "pink", "brown", "fan", "clicks", "music")


def _coloured(n: int, exponent: float, rng: np.random.Generator) -> npt.NDArray[np.float64]:
    """Gaussian noise whose power falls as 1/f**exponent (0 white, 1 pink, 2 brown)."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n, 1 / SR)
    f[0] = f[1]
    return np.fft.irfft(spectrum / f ** (exponent / 2), n)


def raw(kind: str, seconds: float, seed: int = 0) -> npt.NDArray[np.float64]:
    """``seconds`` of one kind of noise, unscaled."""
    rng = np.random.default_rng(seed)
    n = int(seconds * SR)
    t = np.arange(n) / SR
    if kind in ("white", "pink", "brown"):
        return _coloured(n, {"white": 0.0, "pink": 1.0, "brown": 2.0}[kind], rng)
    if kind == "fan":  # a motor's 100 Hz hum and harmonics, slowly wavering, over broadband hiss
        wobble = 1 + 0.002 * np.sin(2 * np.pi * 0.3 * t)
        hum = sum(np.sin(2 * np.pi * 100 * k * wobble * t + k) / k for k in range(1, 6))
        hiss = _coloured(n, 1.0, rng)
        return hum / np.std(hum) + 0.7 * hiss / np.std(hiss)
    if kind == "clicks":  # key presses: short decaying bursts, 3 to 8 a second
        out = 0.02 * rng.standard_normal(n)
        at = 0
        while (at := at + int(SR * rng.uniform(0.12, 0.33))) < n - 400:
            burst = rng.standard_normal(400) * np.exp(-np.arange(400) / 60)
            out[at:at + 400] += burst
        return out
    if kind == "music":  # tonal chords changing every half second, with a soft attack
        out = np.zeros(n)
        step = SR // 2
        for start in range(0, n, step):
            seg = t[start:start + step]
            notes = 220 * 2 ** (rng.integers(0, 24, 3) / 12)
            env = np.minimum(1, (seg - seg[0]) * 20)
            out[start:start + step] = env * sum(np.sin(2 * np.pi * f * seg) for f in notes)
        return out
    raise ValueError(f"unknown noise {kind!r}; known: {', '.join(KINDS)}")


def at_level(x: npt.NDArray[np.floating], dbfs: float) -> npt.NDArray[np.float32]:
    """``x`` scaled to an RMS level of ``dbfs``."""
    return (x / np.sqrt(np.mean(np.square(x))) * 10 ** (dbfs / 20)).astype(np.float32)


def noise(kind: str, seconds: float, dbfs: float, seed: int = 0) -> npt.NDArray[np.float32]:
    return at_level(raw(kind, seconds, seed), dbfs)
