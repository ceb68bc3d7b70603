import itertools
import math

import numpy as np
import pytest

from analyzers.pitch import yin
from analyzers.prosody import ProsodyConfig, analyze_prosody
from analyzers.types import SpeechWindow
from tests.conftest import SR, harmonic


def window(samples: np.ndarray, mask: np.ndarray | None = None) -> SpeechWindow:
    frames = len(samples) // 480
    if mask is None:
        mask = np.ones(frames, bool)
    return SpeechWindow(samples=samples.astype(np.float32), start_s=0.0,
                        end_s=len(samples) / SR, speech_mask=mask, frame_s=0.03,
                        new_speech=samples.astype(np.float32))


@pytest.mark.parametrize("f0", [80.0, 110.0, 155.0, 220.0, 310.0, 440.0])
def test_f0_within_5_percent_of_synthetic_truth(f0: float) -> None:
    p = analyze_prosody(window(harmonic(f0, 2.0)))
    assert p.f0_hz == pytest.approx(f0, rel=0.05)
    assert p.f0_range_st < 0.5  # a steady tone has (almost) no range


def test_f0_range_of_a_glide() -> None:
    # 150 -> 300 Hz glide: one octave; the 10..90 % range is 80 % of 12 semitones.
    t = np.arange(3 * SR) / SR
    f = 150 * 2 ** (t / 3)
    y = 0.3 * np.sin(2 * np.pi * np.cumsum(f) / SR) + 0.1 * np.sin(4 * np.pi * np.cumsum(f) / SR)
    p = analyze_prosody(window(y.astype(np.float32)))
    assert p.f0_range_st == pytest.approx(0.8 * 12, abs=1.0)


def test_jitter_rises_with_period_perturbation() -> None:
    values = [analyze_prosody(window(harmonic(150, 3.0, jitter=j, seed=3))).jitter
              for j in (0.0, 0.005, 0.01, 0.02, 0.04)]
    assert values[0] < 0.002
    assert all(b > a for a, b in itertools.pairwise(values)), values
    # Local jitter of i.i.d. period noise with relative s.d. s is about 2 s / sqrt(pi) = 1.13 s.
    assert values[3] == pytest.approx(0.02 * 1.13, rel=0.35)


def test_shimmer_rises_with_amplitude_perturbation() -> None:
    values = [analyze_prosody(window(harmonic(150, 3.0, shimmer=s, seed=4))).shimmer
              for s in (0.0, 0.03, 0.08)]
    assert values[0] < 0.01
    assert values[0] < values[1] < values[2], values


def test_hnr_falls_with_added_noise() -> None:
    clean = harmonic(180, 2.0)
    rng = np.random.default_rng(5)
    noisy = [clean + rng.standard_normal(len(clean)).astype(np.float32) * a for a in (0.01, 0.05)]
    hnr = [analyze_prosody(window(y)).hnr_db for y in [clean, *noisy]]
    assert hnr[0] > hnr[1] > hnr[2], hnr


def test_energy_and_pause_ratio() -> None:
    tone = harmonic(200, 1.5, amplitude=0.3)
    y = np.concatenate([tone, np.zeros(int(1.5 * SR), np.float32)])
    frames = len(y) // 480
    mask = np.arange(frames) < frames // 2
    p = analyze_prosody(window(y, mask))
    rms_db = 20 * math.log10(float(np.sqrt(np.mean(tone**2))))
    assert p.energy_db == pytest.approx(rms_db, abs=0.5)
    assert p.pause_ratio == pytest.approx(0.5, abs=0.02)


def test_speech_rate_counts_syllable_like_bursts() -> None:
    # 4 "syllables" per second: 120 ms voiced bursts separated by 130 ms of near-silence.
    burst = harmonic(160, 0.12)
    gap = np.zeros(int(0.13 * SR), np.float32)
    y = np.concatenate([np.concatenate([burst, gap]) for _ in range(12)])
    mask = np.ones(len(y) // 480, bool)
    p = analyze_prosody(window(y, mask))
    voiced_s = mask.sum() * 0.03
    assert p.speech_rate * voiced_s == pytest.approx(12, abs=1)


def test_silence_and_noise_give_no_pitch_not_an_error() -> None:
    silent = analyze_prosody(window(np.zeros(2 * SR, np.float32)))
    assert math.isnan(silent.f0_hz) and math.isnan(silent.jitter)
    noise = np.random.default_rng(0).standard_normal(2 * SR).astype(np.float32) * 0.2
    p = analyze_prosody(window(noise))
    assert math.isnan(p.f0_hz)  # white noise has no periodicity above the voicing threshold


def test_too_short_window() -> None:
    p = analyze_prosody(window(harmonic(150, 0.03)))
    assert math.isnan(p.f0_hz)


def test_pitch_limits_are_respected() -> None:
    cfg = ProsodyConfig(fmin_hz=100, fmax_hz=250)
    p = analyze_prosody(window(harmonic(200, 2.0)), cfg)
    assert p.f0_hz == pytest.approx(200, rel=0.05)


def test_frame_cache_reuses_the_overlap_and_changes_nothing() -> None:
    """Consecutive overlapping windows of one stream: with the cache about half the pitch frames
    are reused, and every feature is what a fresh computation gives."""
    from analyzers.prosody import FrameCache, analyze_prosody
    from analyzers.windowing import SpeechWindower
    from bridge.pipeline.audio import read_file
    from tests.conftest import CALM

    windower = SpeechWindower()
    windows = []
    for [chunk] in read_file(CALM):
        windows.extend(windower.push(chunk))
    assert len(windows) > 10
    cache = FrameCache()
    for window in windows:
        fresh = analyze_prosody(window)
        cached = analyze_prosody(window, cache=cache)
        for name in fresh.__dataclass_fields__:
            a, b = getattr(fresh, name), getattr(cached, name)
            assert a == b or (isinstance(a, float) and np.isnan(a) and np.isnan(b)), (name, a, b)
    assert cache.hits > 0.4 * (cache.hits + cache.misses)


def _octave_joins(f0: float = 150.0, seconds: float = 4.0, joins: int = 8,
                  join_s: float = 0.1) -> np.ndarray:
    """A steady voice whose odd harmonics vanish for ``join_s`` at ``joins`` places: there the
    waveform repeats at half the period, and yin reports the octave above (as at sound joins)."""
    t = np.arange(int(seconds * SR)) / SR
    phase = 2 * np.pi * np.cumsum(f0 * (1 + 0.01 * np.sin(2 * np.pi * 3 * t))) / SR
    gap = np.zeros(len(t), bool)
    for k in range(joins):
        start = int((k + 0.5) * seconds / joins * SR)
        gap[start:start + int(join_s * SR)] = True
    wave = sum(np.where(gap & (k % 2 == 1), 0.0, np.sin(k * phase) / k) for k in range(1, 12))
    return (0.3 * wave / np.max(np.abs(wave))).astype(np.float32)


def test_an_octave_jump_does_not_widen_the_f0_range() -> None:
    y = _octave_joins()
    track = yin(y, fmin=65, fmax=500, sr=SR, frame_length=512, hop_length=160)
    assert np.mean(track > 250) > 0.1  # the tracker does jump an octave at the joins
    p = analyze_prosody(SpeechWindow(y, 0.0, 4.0, np.ones(133, bool), 0.03, y[:0]))
    assert p.f0_hz == pytest.approx(150, abs=3)
    assert p.f0_range_st < 1.0  # the voice's real range, not an octave (12 st)


@pytest.mark.parametrize(("kind", "dbfs"), [("pink", -26.0), ("brown", -24.0), ("white", -30.0),
                                            ("clicks", -30.0)])
def test_steady_noise_has_no_pitch_and_is_not_scored(kind: str, dbfs: float) -> None:
    from tests.noise import noise

    y = noise(kind, 8.0, dbfs, seed=3)
    p = analyze_prosody(SpeechWindow(y, 0.0, 8.0, np.ones(266, bool), 0.03, y[:0]))
    assert math.isnan(p.f0_hz) and math.isnan(p.f0_range_st) and math.isnan(p.jitter)
    assert p.unvoiced is not None and "periodic voicing" in p.unvoiced
    assert p.voiced_s < 0.25


def test_speech_keeps_its_voicing() -> None:
    from bridge.pipeline.audio import read_file
    from tests.conftest import CALM

    y = np.concatenate([chunk.samples for [chunk] in read_file(CALM)])[2 * SR:10 * SR]
    p = analyze_prosody(SpeechWindow(y, 2.0, 10.0, np.ones(266, bool), 0.03, y[:0]))
    assert p.unvoiced is None and p.voiced_s > 3.0 and 150 < p.f0_hz < 260


def test_a_voice_leaking_in_far_under_the_speakers_own_is_not_their_pitch() -> None:
    """Half a second of the speaker (150 Hz), half a second of another voice 15 dB down
    (250 Hz), and so on: to the VAD all of it is speech; with the speaker's own level known,
    the F0 is the speaker's alone."""
    own, other = harmonic(150, 0.5), harmonic(250, 0.5, seed=3) * 10 ** (-15 / 20)
    y = np.tile(np.concatenate([own, other]), 4).astype(np.float32)
    mask = np.ones(125, bool)
    rms_db = 20 * np.log10(np.sqrt(np.mean(own**2)))
    heard = analyze_prosody(SpeechWindow(y, 0.0, 4.0, mask, 0.032, y[:0]))
    assert heard.f0_range_st > 7  # both voices: 150 to 250 Hz is 8.8 semitones
    gated = analyze_prosody(SpeechWindow(y, 0.0, 4.0, mask, 0.032, y[:0], own_level_db=rms_db))
    assert gated.f0_hz == pytest.approx(150, abs=3) and gated.f0_range_st < 1.0
    off = analyze_prosody(SpeechWindow(y, 0.0, 4.0, mask, 0.032, y[:0], own_level_db=rms_db),
                          ProsodyConfig(crosstalk_db=0))
    assert off.f0_range_st > 7
