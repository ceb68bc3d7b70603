import math

import numpy as np
import pytest

from analyzers.prosody import analyze_prosody
from analyzers.stress import StressConfig, StressEngine, stress_features
from analyzers.types import AudioChunk, EmotionScores, ProsodyFeatures, SpeechWindow
from analyzers.vad import VadConfig
from analyzers.windowing import SpeechWindower
from tests.conftest import SR, harmonic

CALM = {"f0": 30.0, "f0_range": 3.0, "energy": -30.0, "speech_rate": 4.0,
        "jitter": 0.02, "shimmer": 0.2, "hnr": 12.0}
FLOOR = {"f0": 1.0, "f0_range": 1.0, "energy": 1.5, "speech_rate": 0.5,
         "jitter": 0.005, "shimmer": 0.02, "hnr": -1.0}  # hnr: lower is more stressed


def calm(i: int) -> dict[str, float]:
    """Calm features with a small, deterministic wobble."""
    wobble = math.sin(i * 1.7)
    return {k: v + wobble * 0.1 * (abs(v) * 0.02 + 0.1) for k, v in CALM.items()}


def stressed(amount: float, only: set[str] | None = None) -> dict[str, float]:
    """Move features ``amount`` floors in the stressed direction (all, or ``only`` these)."""
    return {k: v + (amount * FLOOR[k] if only is None or k in only else 0.0)
            for k, v in CALM.items()}


def engine(**kw: float) -> StressEngine:
    return StressEngine(StressConfig(calibration_s=10, calibration_windows=5, **kw))


def feed(e: StressEngine, features: list[dict[str, float]], t0: float, voiced_s: float = 2.0):
    """One window every 2 s; returns (end time, estimates)."""
    out = []
    for i, f in enumerate(features):
        out.append(e.update(f, voiced_s, t0 + 2 * (i + 1)))
    return t0 + 2 * len(features), out


def feed_calm(e: StressEngine, n: int, t0: float = 0.0) -> float:
    return feed(e, [calm(i) for i in range(n)], t0)[0]


def starts(estimates) -> list:
    return [s for est in estimates for s in est.spikes if not s.ended]


def test_calibration_is_flagged_then_ends() -> None:
    e = engine()
    flags = [e.update(calm(i), 2.0, 2.0 * (i + 1)).calibrating for i in range(8)]
    # 10 voiced seconds and 5 windows: the first five windows are calibration.
    assert flags == [True] * 5 + [False] * 3


def test_overlapping_windows_count_voiced_time_once() -> None:
    """4 s windows every 2 s over continuous speech: calibration needs 20 s of speech, so it
    lasts until about 20 s (summing each window's voiced_s ended it at about 10 s). The
    'speech' is a harmonic tone, which webrtcvad passes (Silero rightly does not)."""
    windower = SpeechWindower(vad=VadConfig(engine="webrtc"))
    e = StressEngine(StressConfig(calibration_s=20, calibration_windows=5))
    audio = harmonic(150, 40.0)
    last_calibrating = last_end = fresh = 0.0
    for i in range(0, len(audio), 960):
        for w in windower.push(AudioChunk(audio[i:i + 960], i / SR)):
            fresh += w.new_voiced_s
            last_end = w.end_s
            if e.update(calm(0), w.new_voiced_s, w.end_s).calibrating:
                last_calibrating = w.end_s
    assert fresh == pytest.approx(last_end, abs=0.1)  # all of it is speech, each second once
    assert 19.0 <= last_calibrating <= 22.5


def test_baseline_is_the_robust_centre_of_calibration() -> None:
    e = engine()
    values = [30.0, 31.0, 29.0, 30.5, 80.0]  # one outlier
    for i, v in enumerate(values):
        e.update({"f0": v}, 2.0, 2.0 * (i + 1))
    assert e.center["f0"] == pytest.approx(30.5)


def test_no_spike_while_calibrating_even_if_extreme() -> None:
    e = engine()
    e.update(calm(0), 2.0, 2.0)
    results = [e.update(stressed(10), 2.0, 2.0 * (i + 2)) for i in range(3)]
    assert not starts(results) and all(r.index == 0 for r in results)


def test_scores_are_signed_and_calm_stays_near_zero() -> None:
    e = engine()
    t = feed_calm(e, 20)
    low = e.update(calm(21), 2.0, t + 2)
    calmer = e.update(stressed(-2), 2.0, t + 4)
    high = e.update(stressed(2), 2.0, t + 6)
    assert abs(low.score) < 0.2 and low.index == 0
    assert calmer.score < -1 and calmer.components["f0"] == pytest.approx(-2, rel=0.3)
    assert high.score > 1.5 and high.components["f0"] == pytest.approx(2, rel=0.3)


def test_a_sustained_moderate_shift_is_caught_and_one_extreme_window_is_not() -> None:
    e = engine()
    t = feed_calm(e, 10)
    # One window as extreme as it gets, then calm again: never a spike.
    t, out = feed(e, [stressed(50), *[calm(i) for i in range(10)]], t)
    assert not starts(out)
    # A moderate shift (1.2 floors on every cue) that lasts: each window alone is unremarkable,
    # the evidence builds and a spike starts within about 20 s.
    t_shift = t
    t, out = feed(e, [stressed(1.2)] * 15, t)
    [spike] = starts(out)
    assert 4 < spike.at_s - t_shift <= 20
    assert t_shift <= spike.started_s < spike.at_s  # onset estimate: where evidence began
    assert out[-1].index > 0.6 and "f0" in spike.main_components


def test_the_spike_ends_when_the_voice_recovers() -> None:
    e = engine()
    t = feed_calm(e, 10)
    t, out = feed(e, [stressed(2)] * 10 + [calm(i) for i in range(30)], t)
    ends = [s for est in out for s in est.spikes if s.ended]
    assert len(starts(out)) == 1 and len(ends) == 1
    assert ends[0].reason == "recovered" and ends[0].peak >= 0.6


def test_loudness_alone_never_makes_a_spike() -> None:
    e = engine()
    t = feed_calm(e, 10)
    loud = [{**calm(i), "energy": CALM["energy"] + 9.0} for i in range(40)]  # +9 dB, nothing else
    t, out = feed(e, loud, t)
    assert not starts(out) and max(est.index for est in out) < 0.1
    # Together with the other cues it adds to them.
    pitch_only = engine()
    both = engine()
    tp = feed_calm(pitch_only, 10)
    tb = feed_calm(both, 10)
    a = pitch_only.update(stressed(1.5, {"f0", "f0_range", "speech_rate"}), 2.0, tp + 2)
    b = both.update(stressed(1.5, {"f0", "f0_range", "speech_rate", "energy"}), 2.0, tb + 2)
    assert b.score > a.score > 0


def test_high_windows_a_minute_apart_are_not_sustained() -> None:
    e = engine()
    t = feed_calm(e, 10)
    spikes = []
    for _ in range(5):
        # Two high windows, then a minute with no speech (quiet windows only).
        t, out = feed(e, [stressed(1.8)] * 2, t)
        spikes += starts(out)
        for _ in range(30):
            t += 2
            e.quiet(t)
    assert not spikes
    # The same windows back to back are a spike.
    _, out = feed(e, [stressed(1.8)] * 10, t)
    assert starts(out)


def test_evidence_is_dropped_after_a_gap_even_without_quiet_windows() -> None:
    e = engine()
    t = feed_calm(e, 10)
    t, _ = feed(e, [stressed(1.8)] * 2, t)
    assert e.evidence > 0
    e.update(calm(0), 2.0, t + 60)  # next speech a minute later
    assert e.evidence == 0


def test_silence_ends_an_open_spike_with_a_reason() -> None:
    e = engine(end_silence_s=20.0)
    t = feed_calm(e, 10)
    t, out = feed(e, [stressed(3)] * 8, t)
    assert starts(out) and e.in_spike
    ended = []
    for k in range(1, 15):
        ended += e.quiet(t + 2 * k)
    assert len(ended) == 1 and ended[0].reason == "silence"
    assert ended[0].at_s == pytest.approx(t + 20)
    assert not e.in_spike and e.close(t + 40) is None


def test_a_run_of_quiet_windows_ends_the_spike_when_its_silence_reached_the_limit() -> None:
    """A long media gap comes as one quiet run (first and last due window): the spike ends
    end_silence_s after the last speech, as per-window quiet windows would end it."""
    e = engine(end_silence_s=20.0)
    t = feed_calm(e, 10)
    t, _ = feed(e, [stressed(3)] * 8, t)
    assert e.in_spike
    ended = e.quiet(t + 600, t + 2)
    assert [s.reason for s in ended] == ["silence"]
    assert ended[0].at_s == pytest.approx(t + 20)


def test_a_long_gap_ends_the_spike_at_the_next_window_if_no_quiet_window_came() -> None:
    e = engine(end_silence_s=20.0)
    t = feed_calm(e, 10)
    t, _ = feed(e, [stressed(3)] * 8, t)
    est = e.update(stressed(3), 2.0, t + 100)
    assert [s.reason for s in est.spikes if s.ended] == ["silence"]


def test_a_feature_missing_during_calibration_joins_after_its_own_calibration() -> None:
    e = engine(late_calibration_windows=4)
    no_f0 = [{k: v for k, v in calm(i).items() if k != "f0"} for i in range(10)]
    t, _ = feed(e, no_f0, 0.0)
    assert "f0" not in e.center
    t, out = feed(e, [calm(i) for i in range(4)], t)
    assert "f0" not in out[2].components  # still collecting its own baseline
    assert "f0" in e.center
    est = e.update({**calm(0), "f0": CALM["f0"] + 3}, 2.0, t + 2)
    assert est.components["f0"] > 2


def test_a_feature_seen_only_once_in_calibration_is_not_fitted_on_one_value() -> None:
    e = engine(late_calibration_windows=3)
    rows = [{k: v for k, v in calm(i).items() if k != "f0"} for i in range(10)]
    rows[1]["f0"] = 55.0  # a single, wild F0 reading during calibration
    t, _ = feed(e, rows, 0.0)
    assert "f0" not in e.center
    feed(e, [calm(i) for i in range(3)], t)
    assert e.center["f0"] == pytest.approx(CALM["f0"], abs=0.5)


def test_speech_rate_is_missing_not_zero_when_too_little_is_voiced() -> None:
    """A window the VAD passed but with almost no voiced pitch frames (noise): no syllables can
    be counted, so speech_rate is NaN and the stress features leave it out."""
    rng = np.random.default_rng(1)
    noise = (0.1 * rng.standard_normal(4 * SR)).astype(np.float32)
    window = SpeechWindow(samples=noise, start_s=0.0, end_s=4.0,
                          speech_mask=np.ones(133, bool), frame_s=0.03,
                          new_speech=np.zeros(0, np.float32))
    p = analyze_prosody(window)
    assert math.isnan(p.speech_rate)
    assert "speech_rate" not in stress_features(p, None)


def test_baseline_does_not_adapt_during_a_spike() -> None:
    e = engine()
    t = feed_calm(e, 10)
    t, _ = feed(e, [stressed(5)] * 4, t)
    assert e.in_spike
    before = dict(e.center)
    feed(e, [stressed(5)] * 10, t)
    assert e.center == before


def test_baseline_follows_slow_drift_when_calm() -> None:
    e = engine(adapt_rate=0.1)
    t = feed_calm(e, 10)
    start = e.center["f0"]
    feed(e, [{**CALM, "f0": 30.3}] * 30, t)
    assert start < e.center["f0"] <= 30.3 + 1e-9


def test_close_ends_an_open_spike() -> None:
    e = engine()
    t = feed_calm(e, 10)
    t, out = feed(e, [stressed(5)] * 4, t)
    assert starts(out)
    end = e.close(t + 1)
    assert end is not None and end.ended and end.reason == "stream ended"
    assert e.close(t + 4) is None


def test_features_skip_nan_and_add_emotion() -> None:
    p = ProsodyFeatures(200.0, 3.0, float("nan"), 0.1, 12.0, -30.0, 4.0, 0.2)
    emo = EmotionScores({"angry": 0.5, "fearful": 0.2, "neutral": 0.3}, 0.5, -0.4, 2.0)
    f = stress_features(p, emo)
    assert "jitter" not in f
    assert f["f0"] == pytest.approx(12 * math.log2(2.0))
    assert f["emotion"] == pytest.approx(0.7)
    assert stress_features(None, None) == {}


def test_a_dimensional_model_gives_the_emotion_term_from_its_own_dimensions() -> None:
    tense = EmotionScores({}, 0.8, -0.6, 2.0, dominance=0.2, source="model")
    calm = EmotionScores({}, -0.4, 0.5, 2.0, dominance=0.0, source="model")
    assert stress_features(None, tense)["emotion"] == pytest.approx(0.5 * 0.8 + 0.5 * 0.6)
    assert stress_features(None, calm)["emotion"] == pytest.approx(0.5 * -0.4 - 0.5 * 0.5)
    custom = {"arousal": 1.0, "dominance": -1.0}  # weights from [stress] dimensional_emotion
    assert stress_features(None, tense, None, custom)["emotion"] == pytest.approx(0.8 - 0.2)
    # Labels-derived arousal/valence keep the categorical term (probability of tense emotions).
    labelled = EmotionScores({"angry": 0.4, "neutral": 0.6}, 0.32, -0.24, 2.0)
    assert stress_features(None, labelled)["emotion"] == pytest.approx(0.4)
    with pytest.raises(ValueError, match="dimensional_emotion"):
        StressConfig(dimensional_emotion={"pitch": 1.0})


@pytest.mark.parametrize("kw", [{"on": 0.3, "off": 0.5}, {"weights": {"pitch": 1.0}},
                                {"floors": {"f0": 0.0}}, {"saturation": 0.0},
                                {"step_max": 8.0, "saturation": 5.0},  # one window would do
                                {"end_silence_s": 0.0}])
def test_bad_config_is_rejected(kw: dict) -> None:
    with pytest.raises(ValueError):
        StressConfig(**kw)
