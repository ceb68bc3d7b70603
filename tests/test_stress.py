import math

import pytest

from analyzers.stress import StressConfig, StressEngine, stress_features
from analyzers.types import EmotionScores, ProsodyFeatures

CALM = {"f0": 30.0, "f0_range": 3.0, "energy": -30.0, "speech_rate": 4.0,
        "jitter": 0.02, "shimmer": 0.2, "hnr": 12.0}


def calm(i: int) -> dict[str, float]:
    """Calm features with a small, deterministic wobble."""
    wobble = math.sin(i * 1.7)
    return {k: v + wobble * 0.1 * (abs(v) * 0.02 + 0.1) for k, v in CALM.items()}


def stressed(amount: float) -> dict[str, float]:
    """Move every feature ``amount`` floors in the stressed direction."""
    return {"f0": 30 + amount, "f0_range": 3 + amount, "energy": -30 + 1.5 * amount,
            "speech_rate": 4 + 0.5 * amount, "jitter": 0.02 + 0.005 * amount,
            "shimmer": 0.2 + 0.02 * amount, "hnr": 12 - amount}


def engine(**kw: float) -> StressEngine:
    return StressEngine(StressConfig(calibration_s=10, calibration_windows=5, **kw))


def feed_calm(e: StressEngine, n: int, t0: float = 0.0) -> float:
    for i in range(n):
        e.update(calm(i), voiced_s=2.0, at_s=t0 + 2 * (i + 1))
    return t0 + 2 * n


def test_calibration_is_flagged_then_ends() -> None:
    e = engine()
    flags = [e.update(calm(i), 2.0, 2.0 * (i + 1)).calibrating for i in range(8)]
    # 10 voiced seconds and 5 windows: the first five windows are calibration.
    assert flags == [True] * 5 + [False] * 3


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
    assert all(r.spike is None for r in results)


def test_calm_speech_stays_low_and_stress_raises_the_index() -> None:
    e = engine()
    t = feed_calm(e, 20)
    low = e.update(calm(21), 2.0, t + 2)
    high = e.update(stressed(4), 2.0, t + 4)
    assert low.index < 0.25
    assert high.index > 0.75
    assert set(high.components) == set(CALM)
    assert high.components["f0"] == pytest.approx(4.0, rel=0.3)


def test_hysteresis_and_minimum_duration() -> None:
    e = engine(on=0.6, off=0.4, min_duration_s=4.0)
    t = feed_calm(e, 10)
    events = []
    # One stressed window alone (2 s) is shorter than min_duration: no spike.
    r = e.update(stressed(4), 2.0, t + 2)
    assert r.spike is None and r.index > 0.6
    r = e.update(calm(0), 2.0, t + 4)
    assert r.spike is None
    # Sustained: starts once 4 s above `on` (three windows 2 s apart).
    for k, amount in enumerate([4, 4, 4, 1.2, 1.2, 0]):
        res = e.update(stressed(amount), 2.0, t + 6 + 2 * k)
        events.append((res.index, res.spike))
    starts = [s for _, s in events if s is not None and not s.ended]
    ends = [s for _, s in events if s is not None and s.ended]
    assert len(starts) == 1 and starts[0].started_s == t + 6
    # amount 1.2 sits between off and on: the spike holds (hysteresis); 0 ends it.
    assert 0.4 < events[3][0] < 0.6
    assert len(ends) == 1 and ends[0].at_s == t + 16
    assert ends[0].peak >= starts[0].index
    assert e.spikes == 1


def test_baseline_does_not_adapt_during_a_spike() -> None:
    e = engine(min_duration_s=2.0)
    t = feed_calm(e, 10)
    before = dict(e.center)
    for k in range(10):
        e.update(stressed(5), 2.0, t + 2 * (k + 1))
    assert e.in_spike
    assert e.center == before


def test_baseline_follows_slow_drift_when_calm() -> None:
    e = engine(adapt_rate=0.1)
    t = feed_calm(e, 10)
    start = e.center["f0"]
    for k in range(30):
        e.update({**CALM, "f0": 30.5}, 2.0, t + 2 * (k + 1))
    assert start < e.center["f0"] <= 30.5 + 1e-9


def test_close_ends_an_open_spike() -> None:
    e = engine(min_duration_s=0.0)
    t = feed_calm(e, 10)
    assert e.update(stressed(5), 2.0, t + 2).spike is not None
    end = e.close(t + 3)
    assert end is not None and end.ended and end.duration_s == pytest.approx(1.0)
    assert e.close(t + 4) is None


def test_features_skip_nan_and_add_emotion() -> None:
    p = ProsodyFeatures(200.0, 3.0, float("nan"), 0.1, 12.0, -30.0, 4.0, 0.2)
    emo = EmotionScores({"angry": 0.5, "fearful": 0.2, "neutral": 0.3}, 0.5, -0.4, 2.0)
    f = stress_features(p, emo)
    assert "jitter" not in f
    assert f["f0"] == pytest.approx(12 * math.log2(2.0))
    assert f["emotion"] == pytest.approx(0.7)
    assert stress_features(None, None) == {}


@pytest.mark.parametrize("kw", [{"on": 0.3, "off": 0.5}, {"weights": {"pitch": 1.0}},
                                {"floors": {"f0": 0.0}}, {"scale": 0.0}])
def test_bad_config_is_rejected(kw: dict) -> None:
    with pytest.raises(ValueError):
        StressConfig(**kw)
