"""Prometheus metrics: per-speaker series follow the live speakers, capped per process."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from prometheus_client import generate_latest

from analyzers.types import EmotionScores
from bridge.metrics import Metrics


def _speaker(sid: str, index: float | None, emotion: EmotionScores | None = None) -> Any:
    analysis = SimpleNamespace(latest_index=index, last_emotion=emotion,
                               windower=SimpleNamespace(speech_s=12.5),
                               stress=SimpleNamespace(spikes=2))
    return SimpleNamespace(speaker=SimpleNamespace(id=sid), analysis=analysis, frames=100,
                           idle=False)


def _manager(*speakers: Any) -> Any:
    call = SimpleNamespace(info=SimpleNamespace(id="janus:1"),
                           speakers={s.speaker.id: s for s in speakers})
    manager = SimpleNamespace(calls={"janus:1": call})
    manager.joined = lambda: list(manager.calls.values())
    manager.frames_total = lambda: 100 * len(call.speakers)
    return manager


def test_series_follow_speakers_and_the_cap_counts_what_is_left_out() -> None:
    emotion = EmotionScores({"neutral": 0.7, "angry": 0.3}, arousal=0.2, valence=-0.1, audio_s=4.0)
    manager = _manager(_speaker("a", 0.4, emotion), _speaker("b", None), _speaker("c", 0.9))
    metrics = Metrics(max_speakers=2)
    metrics.watch(manager)
    value = metrics.registry.get_sample_value
    assert value("affect_stress_index", {"call": "janus:1", "speaker": "a"}) == 0.4
    assert value("affect_stress_index", {"call": "janus:1", "speaker": "b"}) is None  # no index yet
    assert value("affect_speech_seconds_total", {"call": "janus:1", "speaker": "b"}) == 12.5
    assert value("affect_emotion_probability", {"call": "janus:1", "speaker": "a",
                                                "emotion": "angry"}) == 0.3
    assert value("affect_stress_index", {"call": "janus:1", "speaker": "c"}) is None  # capped
    assert value("affect_dropped_total", {"stage": "metrics"}) == 1
    assert value("affect_speakers_active") == 3 and value("affect_audio_frames_total") == 300
    del manager.calls["janus:1"].speakers["a"]  # a speaker leaves: its series go
    text = generate_latest(metrics.registry).decode()
    assert 'speaker="a"' not in text and 'speaker="c"' in text
    metrics.close()
