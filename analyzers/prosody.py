"""Prosody of a speech window: F0 level and range, jitter, shimmer, HNR, energy, rate, pauses.

F0 comes from yin (``analyzers.pitch``: librosa.yin's arithmetic value for value, without
librosa's import; about 2 ms of CPU per audio-second here; pyin is ~35x dearer, parselmouth is
GPL-3: see the README's "Pitch" section). Voicing, HNR, jitter and shimmer are measured
on the waveform with the F0 track as a guide:

* voicing and HNR: Boersma's (1993) normalised autocorrelation at the F0 lag, corrected for the
  analysis window; HNR = 10 log10(r / (1 - r)), averaged over voiced frames. Voice means
  periodic: a frame is voiced only where r reaches ``voicing_threshold`` (Praat's 0.45) at a true
  peak of the autocorrelation, one that rises at least ``min_dip`` above the autocorrelation's
  lowest point at shorter lags (Praat, too, takes only local maxima as candidates; low-frequency
  noise, brown noise or rumble, has a high autocorrelation that only falls with the lag and no
  such peak), and only in runs of at least ``min_run_ms`` (a glottal pulse train lasts longer;
  steady noise passes the test in isolated frames). A window with less than
  ``min_voiced_s`` of such frames has no F0, jitter, shimmer, HNR or rate, and says why
  (``ProsodyFeatures.unvoiced``): it is not scored. Frames more than ``crosstalk_db`` under the
  speaker's own speech level (``SpeechWindow.own_level_db``) are not this speaker's voice: a
  second voice leaking in 15 dB down is speech to the VAD, and its pitch is not the speaker's.
* octave jumps: yin, like every autocorrelation tracker, can lock onto twice or half the true
  period where the waveform changes (de Cheveigne & Kawahara 2002, section II.F; Hess 1983). A
  voiced frame more than half an octave away from the median of the voiced frames around it
  (``OCTAVE_SPAN``) is moved by an octave when that brings it within a quarter octave of that
  median, else dropped, so one sound join cannot widen the F0 range.
* jitter (local) and shimmer (local): glottal cycles are marked by peak picking one period apart
  (sub-sample parabolic interpolation) inside voiced runs, as Praat's ``To PointProcess`` does;
  jitter = mean |T_i - T_(i-1)| / mean T, shimmer = mean |A_i - A_(i-1)| / mean A. Periods
  outside [1/fmax, 1/fmin] or changing by more than 30 % break the run (Praat's factor 1.3).
* speech rate: syllable nuclei per voiced second (de Jong & Wempe 2009): intensity peaks at least
  2 dB above the dips around them, in voiced frames.
"""

from __future__ import annotations

import asyncio
import math
import threading
from collections import OrderedDict
from typing import Annotated, Any

import numpy as np
import numpy.typing as npt
import scipy.fft
from pydantic import ConfigDict, Field
from pydantic.dataclasses import dataclass

from analyzers.peaks import find_peaks
from analyzers.pitch import frames as frame_rows
from analyzers.pitch import yin
from analyzers.types import SAMPLE_RATE, ProsodyFeatures, SpeechWindow
from analyzers.vad import true_runs

__all__ = ["FrameCache", "ProsodyAnalyzer", "ProsodyConfig", "analyze_prosody"]

HOP = 160  # 10 ms pitch frames
NAN = float("nan")
OCTAVE_SPAN = 15  # voiced frames on each side whose median F0 judges an octave jump (150 ms)


@dataclass(frozen=True, slots=True, config=ConfigDict(extra="forbid"))
class ProsodyConfig:
    """The ``[prosody]`` section: the pitch range and what counts as voice. Validated on
    construction."""

    fmin_hz: Annotated[float, Field(ge=30, le=300)] = 65.0
    fmax_hz: Annotated[float, Field(ge=100, le=1500)] = 500.0
    voicing_threshold: Annotated[float, Field(
        gt=0, lt=1, description="normalised autocorrelation at the F0 lag a voiced frame "
                                "reaches")] = 0.45
    silence_db: Annotated[float, Field(
        le=0, description="frames quieter than this are never voiced")] = -50.0
    min_dip: Annotated[float, Field(
        ge=0, lt=1, description="the F0 peak of the autocorrelation must rise this far above "
                                "its lowest point at shorter lags")] = 0.3
    min_run_ms: Annotated[float, Field(
        ge=0, le=1000, description="voiced runs shorter than this are not voice")] = 50.0
    min_voiced_s: Annotated[float, Field(
        ge=0, le=10, description="a window with less periodic voicing than this is not scored "
                                 "(steady noise, not a voice)")] = 0.25
    crosstalk_db: Annotated[float, Field(
        ge=0, le=60, description="voicing this far under the speaker's own speech level is "
                                 "another voice leaking in; 0: off")] = 6.0

    def __post_init__(self) -> None:
        if self.fmin_hz * 1.5 > self.fmax_hz:
            raise ValueError(f"fmax_hz ({self.fmax_hz:g}) must be at least 1.5 x fmin_hz "
                             f"({self.fmin_hz:g}): no pitch could be tracked in between")


class FrameCache:
    """Per-stream pitch-frame results of the last window, reused on the next window's overlap.

    Windows overlap (4 s every 2 s by default), so without it every pitch frame is computed
    twice. Only frames that lie wholly inside a window (no edge padding) are kept and reused, and
    a frame is found by its stream and absolute sample position, so the results are the same
    frame for frame as computing everything afresh. At most ``max_streams`` streams are kept
    (least recently used dropped first).
    """

    def __init__(self, max_streams: int = 4096) -> None:
        self.max_streams = max_streams
        self._streams: OrderedDict[int, dict[int, tuple[float, float | None]]] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, stream: int) -> dict[int, tuple[float, float | None]]:
        with self._lock:
            frames = self._streams.get(stream, {})
            if stream in self._streams:
                self._streams.move_to_end(stream)
            return frames

    def put(self, stream: int, frames: dict[int, tuple[float, float | None]]) -> None:
        with self._lock:
            self._streams[stream] = frames
            self._streams.move_to_end(stream)
            while len(self._streams) > self.max_streams:
                self._streams.popitem(last=False)


def _pitch_frames(y: npt.NDArray[np.float32], frame_length: int, cfg: ProsodyConfig,
                  window: SpeechWindow, cache: FrameCache | None, first: int,
                  ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float32], dict[int, float]]:
    """yin F0 per 10 ms frame (as ``librosa.yin(center=True)`` would give on ``y``, which starts at
    stream sample ``first``), the frames, and the periodicity already known for some of them
    (from the cache)."""
    half = frame_length // 2
    ypad = np.pad(y, half)
    frames = frame_rows(ypad, frame_length, HOP)
    n = len(frames)
    f0 = np.full(n, np.nan)
    known_r: dict[int, float] = {}
    cached = cache.get(window.stream) if cache is not None and window.first_sample >= 0 else {}
    for k, key in enumerate(first + np.arange(n) * HOP if cached else ()):
        hit = cached.get(int(key))
        if hit is not None and _interior(k, half, len(y)):
            f0[k] = hit[0]
            if hit[1] is not None:
                known_r[k] = hit[1]
    missing = np.flatnonzero(np.isnan(f0))
    for a, b in _spans(missing):
        f0[a:b] = yin(ypad[a * HOP:(b - 1) * HOP + frame_length], fmin=cfg.fmin_hz,
                      fmax=cfg.fmax_hz, sr=SAMPLE_RATE, frame_length=frame_length, hop_length=HOP)
    if cache is not None:
        cache.hits += n - len(missing)
        cache.misses += len(missing)
    return f0, frames, known_r


def _interior(k: int, half: int, length: int) -> bool:
    """Frame ``k`` lies wholly inside the window's samples (no padding)."""
    return k * HOP - half >= 0 and k * HOP + half <= length


def _spans(indices: npt.NDArray[np.intp]) -> list[tuple[int, int]]:
    """Sorted indices as half-open runs of consecutive values."""
    if len(indices) == 0:
        return []
    breaks = np.flatnonzero(np.diff(indices) > 1)
    starts = np.concatenate([[indices[0]], indices[breaks + 1]])
    ends = np.concatenate([indices[breaks] + 1, [indices[-1] + 1]])
    return [(int(a), int(b)) for a, b in zip(starts, ends, strict=True)]


def _voicing(window: SpeechWindow, cfg: ProsodyConfig, lead: int, f0: npt.NDArray[np.float64],
             frames: npt.NDArray[np.float32], rms: npt.NDArray[Any],
             known_r: dict[int, float]) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.float64],
                                                 npt.NDArray[np.bool_]]:
    """Which pitch frames are this speaker's voice: (candidates: the VAD passed them, loud
    enough and not a voice leaking in; their periodicity r, from the cache where known;
    voiced: periodic candidates in runs of at least ``min_run_ms``)."""
    mask = window.speech_mask
    # The VAD mask (its own frame grid) resampled onto the pitch frames.
    vad = mask[np.minimum(((lead + np.arange(len(f0)) * HOP) / SAMPLE_RATE
                           / window.frame_s).astype(int), len(mask) - 1)]
    level = _db_array(rms)
    candidate = vad & (level > cfg.silence_db)
    if window.own_level_db is not None and cfg.crosstalk_db > 0:
        # A voice leaking in (the room, the far end) is speech to the VAD, not this speaker.
        candidate &= level >= window.own_level_db - cfg.crosstalk_db
    r = np.zeros(len(f0), dtype=np.float64)
    todo = candidate.copy()
    for k, value in known_r.items():
        if todo[k]:
            r[k] = value
            todo[k] = False
    if todo.any():
        r[todo] = _periodicity(frames[todo], SAMPLE_RATE / f0[todo], cfg.min_dip)
    voiced = _long_runs(candidate & (r >= cfg.voicing_threshold),
                        max(1, round(cfg.min_run_ms / 1000 * SAMPLE_RATE / HOP)))
    return candidate, r, voiced


def analyze_prosody(window: SpeechWindow, config: ProsodyConfig | None = None,
                    cache: FrameCache | None = None) -> ProsodyFeatures:
    cfg = config or ProsodyConfig()
    # Pitch frames on the stream's own 10 ms grid, whatever the VAD's frame (Silero's 32 ms
    # puts window starts off it): consecutive windows then share frames the cache can reuse.
    lead = (-window.first_sample) % HOP if window.first_sample >= 0 else 0
    y = window.samples[lead:].astype(np.float32, copy=False)
    mask = window.speech_mask
    speech_frames = int(mask.sum())
    pause_ratio = 1.0 - speech_frames / len(mask) if len(mask) else 1.0
    voiced_audio = window.voiced_samples()
    energy_db = _db(float(np.sqrt(np.mean(voiced_audio**2)))) if len(voiced_audio) else NAN

    frame_length = _frame_length(cfg.fmin_hz)
    if len(y) < frame_length:
        return ProsodyFeatures(NAN, NAN, NAN, NAN, NAN, energy_db, NAN, pause_ratio)
    first = window.first_sample + lead
    f0, frames, known_r = _pitch_frames(y, frame_length, cfg, window, cache, first)
    rms = np.sqrt(np.mean(frames**2, axis=1))
    candidate, r, voiced = _voicing(window, cfg, lead, f0, frames, rms, known_r)
    if cache is not None and window.first_sample >= 0:
        half = frame_length // 2
        cache.put(window.stream, {
            first + k * HOP: (float(f0[k]), float(r[k]) if candidate[k] else None)
            for k in range(len(f0)) if _interior(k, half, len(y))})

    periodic_s = float(voiced.sum()) * HOP / SAMPLE_RATE
    if voiced.sum() < 3 or periodic_s < cfg.min_voiced_s:
        # Too little voice to measure: the values are missing, not zero (a zero would drag the
        # speaker's baseline down), and the window is not scored.
        return ProsodyFeatures(NAN, NAN, NAN, NAN, NAN, energy_db, NAN, pause_ratio,
                               voiced_s=periodic_s,
                               unvoiced=f"{periodic_s:.2f} s of periodic voicing in "
                                        f"{speech_frames * window.frame_s:.2f} s the VAD passed "
                                        f"(at least {cfg.min_voiced_s:g} s needed)")
    f0 = _octave_guard(f0, voiced)
    voiced &= np.isfinite(f0)
    f0v = f0[voiced]
    p10, p50, p90 = np.percentile(f0v, [10, 50, 90])
    rv = np.clip(r[voiced], 1e-4, 1 - 1e-4)
    hnr_db = float(np.mean(10 * np.log10(rv / (1 - rv))))
    jitter, shimmer = _jitter_shimmer(y, f0, voiced, cfg)
    voiced_s = speech_frames * window.frame_s
    nuclei = _syllable_nuclei(rms, voiced)
    return ProsodyFeatures(
        f0_hz=float(p50),
        f0_range_st=float(12 * math.log2(p90 / p10)),
        jitter=jitter,
        shimmer=shimmer,
        hnr_db=hnr_db,
        energy_db=energy_db,
        speech_rate=nuclei / voiced_s if voiced_s > 0 else NAN,
        pause_ratio=pause_ratio,
        voiced_s=periodic_s,
    )


class ProsodyAnalyzer:
    """Plugin face of :func:`analyze_prosody` (entry point ``prosody``)."""

    name = "prosody"

    def __init__(self, config: ProsodyConfig | None = None) -> None:
        self.config = config or ProsodyConfig()
        self.cache = FrameCache()

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> ProsodyAnalyzer:
        return cls(ProsodyConfig(**options))

    def load(self) -> None:
        """Nothing to load; present so every analyzer plugin has the same life cycle."""

    def warm_up(self) -> None:
        """Blocking: analyse one synthetic voiced window, so the lazy imports and first-call
        set-up (FFT plans) happen now and not in a live call's first windows."""
        n = int(4.0 * SAMPLE_RATE)
        t = np.arange(n, dtype=np.float64) / SAMPLE_RATE
        f0 = 140.0 + 20.0 * np.sin(2 * np.pi * 0.5 * t)
        phase = 2 * np.pi * np.cumsum(f0) / SAMPLE_RATE
        voiced = sum(np.sin(k * phase) / k for k in range(1, 8))
        samples = (0.3 * voiced / np.max(np.abs(voiced))).astype(np.float32)
        frames = int(4.0 / 0.03)
        window = SpeechWindow(samples, 0.0, 4.0, np.ones(frames, dtype=bool), 0.03,
                              samples[:SAMPLE_RATE])
        analyze_prosody(window, self.config, FrameCache())

    async def analyze(self, window: SpeechWindow, *, wait: bool = False) -> ProsodyFeatures:
        """numpy work runs in the default executor: the event loop never blocks on it."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, analyze_prosody, window, self.config, self.cache)

    def close(self) -> None:
        """Nothing to release."""


def _frame_length(fmin_hz: float) -> int:
    """Smallest power of two holding two periods of the lowest F0 (yin needs that)."""
    return 1 << math.ceil(math.log2(2 * SAMPLE_RATE / fmin_hz + 2))


def _db(x: float) -> float:
    return 20 * math.log10(max(x, 1e-10))


def _db_array(x: npt.NDArray[np.floating]) -> npt.NDArray[np.float64]:
    return 20 * np.log10(np.maximum(x, 1e-10))


def _long_runs(flags: npt.NDArray[np.bool_], min_len: int) -> npt.NDArray[np.bool_]:
    """``flags`` with runs shorter than ``min_len`` cleared."""
    out = np.zeros_like(flags)
    for a, b in true_runs(flags, min_len):
        out[a:b] = True
    return out


def _octave_guard(f0: npt.NDArray[np.float64], voiced: npt.NDArray[np.bool_],
                  ) -> npt.NDArray[np.float64]:
    """``f0`` with octave jumps among the voiced frames corrected (moved by an octave towards
    the median of the voiced frames around it) or, where that does not fit, set to NaN."""
    idx = np.flatnonzero(voiced)
    if len(idx) < 3:
        return f0
    octaves = np.log2(f0[idx])
    padded = np.pad(octaves, OCTAVE_SPAN, mode="edge")
    median = np.median(np.lib.stride_tricks.sliding_window_view(padded, 2 * OCTAVE_SPAN + 1),
                       axis=1)
    off = octaves - median
    far = np.abs(off) > 0.5
    moved = octaves - np.round(off)  # whole octaves towards the local median
    fits = np.abs(moved - median) <= 0.25
    out = f0.copy()
    out[idx] = np.where(far, np.where(fits, np.exp2(moved), np.nan), f0[idx])
    return out


def _periodicity(frames: npt.NDArray[np.float32], lag: npt.NDArray[np.floating],
                 min_dip: float = 0.0) -> npt.NDArray:
    """Boersma's window-corrected normalised autocorrelation of each frame at its (fractional)
    lag; 0 where that is no peak, i.e. where the autocorrelation at shorter lags never falls
    ``min_dip`` below it (see the module docstring)."""
    n = frames.shape[1]
    hann = np.hanning(n).astype(np.float32)
    x = (frames - frames.mean(axis=1, keepdims=True)) * hann
    nfft = 1 << math.ceil(math.log2(2 * n))
    spec = scipy.fft.rfft(x, nfft, axis=1)
    ac = scipy.fft.irfft((spec * spec.conj()).real, nfft, axis=1)[:, :n]
    wspec = scipy.fft.rfft(hann.astype(np.float64), nfft)
    wac = scipy.fft.irfft((wspec * wspec.conj()).real, nfft)[:n]
    energy = np.maximum(ac[:, 0], 1e-12)
    lag = np.clip(lag, 1, n - 2)
    lo = np.floor(lag).astype(int)
    rows = np.arange(len(frames))
    # Search the integer lags around the yin estimate for the true peak, then interpolate.
    best = lo.copy()
    for d in (-1, 0, 1, 2):
        cand = np.clip(lo + d, 1, n - 2)
        better = ac[rows, cand] / wac[cand] > ac[rows, best] / wac[best]
        best = np.where(better, cand, best)
    a, b, c = (ac[rows, best + k] / wac[best + k] for k in (-1, 0, 1))
    denom = a - 2 * b + c
    shift = np.where(np.abs(denom) > 1e-12, 0.5 * (a - c) / np.where(denom == 0, 1, denom), 0.0)
    peak = b - 0.25 * (a - c) * np.clip(shift, -0.5, 0.5)
    r = np.clip(peak / (energy / wac[0]), 0.0, 1.0)
    if min_dip > 0:
        m = int(best.max()) + 1  # the window's autocorrelation is far from 0 up to here
        normalised = ac[:, :m] / wac[:m] / (energy / wac[0])[:, None]
        before = np.arange(m)[None, :] < np.maximum(best, 2)[:, None]
        before[:, 0] = False
        lowest = np.where(before, normalised, np.inf).min(axis=1)
        r = np.where(r - lowest >= min_dip, r, 0.0)
    return r


def _jitter_shimmer(
    y: npt.NDArray[np.float32], f0: npt.NDArray, voiced: npt.NDArray[np.bool_], cfg: ProsodyConfig
) -> tuple[float, float]:
    tmin, tmax = SAMPLE_RATE / cfg.fmax_hz, SAMPLE_RATE / cfg.fmin_hz
    period_diffs: list[float] = []
    periods: list[float] = []
    amp_diffs: list[float] = []
    amps: list[float] = []
    for start, stop in true_runs(voiced, min_len=3):
        seg_lo = start * HOP
        seg_hi = min(len(y), stop * HOP)
        seg = y[seg_lo:seg_hi]
        t0 = SAMPLE_RATE / float(np.median(f0[start:stop]))
        if len(seg) < 3 * t0:
            continue
        # Polarity: glottal pulses show as the larger of the positive and negative extremes.
        sign = 1.0 if seg.max() >= -seg.min() else -1.0
        s = seg * sign
        first = int(np.argmax(s[: int(t0) + 1]))
        marks, peaks = _marks(s, first, f0, seg_lo, t0)
        prev_t = prev_a = None
        for i in range(1, len(marks)):
            t = marks[i] - marks[i - 1]
            if not (tmin <= t <= tmax):
                prev_t = prev_a = None
                continue
            a = peaks[i]
            if prev_t is not None and prev_a is not None and max(t, prev_t) / min(t, prev_t) <= 1.3:
                period_diffs.append(abs(t - prev_t))
                amp_diffs.append(abs(a - prev_a))
            periods.append(t)
            amps.append(a)
            prev_t, prev_a = t, a
    if len(period_diffs) < 2:
        return NAN, NAN
    jitter = float(np.mean(period_diffs) / np.mean(periods))
    shimmer = float(np.mean(amp_diffs) / max(float(np.mean(amps)), 1e-9))
    return jitter, shimmer


def _marks(
    s: npt.NDArray[np.float32], first: int, f0: npt.NDArray, seg_lo: int, t0: float
) -> tuple[list[float], list[float]]:
    """Cycle marks (fractional sample positions) and peak amplitudes along one voiced run."""
    marks: list[float] = []
    peaks: list[float] = []
    pos = first
    n = len(s)
    while True:
        p, a = _parabolic_peak(s, pos)
        marks.append(p)
        peaks.append(a)
        frame = min(len(f0) - 1, (seg_lo + pos) // HOP)
        t = SAMPLE_RATE / float(f0[frame]) if f0[frame] > 0 else t0
        lo = int(pos + 0.8 * t)
        hi = int(pos + 1.2 * t) + 1
        if hi >= n:
            break
        pos = lo + int(np.argmax(s[lo:hi]))
    return marks, peaks


def _parabolic_peak(s: npt.NDArray[np.float32], i: int) -> tuple[float, float]:
    if i <= 0 or i >= len(s) - 1:
        return float(i), float(s[i])
    a, b, c = float(s[i - 1]), float(s[i]), float(s[i + 1])
    denom = a - 2 * b + c
    if denom >= 0:
        return float(i), b
    shift = 0.5 * (a - c) / denom
    return i + shift, b - 0.25 * (a - c) * shift




def _syllable_nuclei(rms: npt.NDArray, voiced: npt.NDArray[np.bool_]) -> int:
    intensity = _db_array(rms)
    # Smooth over ~30 ms so a single cycle's ripple is not counted as a nucleus.
    smooth = np.convolve(intensity, np.ones(3) / 3, mode="same")
    floor = float(np.max(smooth)) - 25.0
    peaks = find_peaks(smooth, prominence=2.0, distance=8, height=floor)
    return int(np.count_nonzero(voiced[peaks]))
