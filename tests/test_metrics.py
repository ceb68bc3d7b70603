"""Prometheus metrics, a sink of the event bus: per-speaker series are made from events
(created on speaker.joined, removed on speaker.left), capped per process; statistics come as
typed stats; a speaker is the one fold of its events (SpeakerState). The dependency direction
holds."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest

from bridge import events as ev
from bridge import stats
from bridge.delivery.prometheus import PrometheusSink
from bridge.delivery.summary import SpeakerState
from tests.conftest import require_tool

ROOT = Path(__file__).resolve().parents[1]
CALL = ev.CallInfo(id="janus:1", connector="janus", room="1")


def _speaker(sid: str) -> ev.SpeakerInfo:
    return ev.SpeakerInfo(id=sid, display=sid.upper())


def _sample(sid: str, index: float, emotion: dict[str, float] | None = None, *,
            dimensions: tuple[float, float, float] | None = None) -> ev.AffectSample:
    """A categorical estimate (``emotion``: arousal 0.2, valence -0.1 from its labels), a
    dimensional one (``dimensions``: arousal, valence, dominance; no emotion) or none."""
    prosody = ev.ProsodyData(f0_hz=None, f0_range_st=None, jitter=None, shimmer=None,
                             hnr_db=None, energy_db=None, speech_rate=None, pause_ratio=0.5)
    arousal, valence, dominance = dimensions or ((0.2, -0.1, None) if emotion else (None,) * 3)
    source = "model" if dimensions else "labels" if emotion else None
    return ev.AffectSample(call=CALL, speaker=_speaker(sid), data=ev.AffectSampleData(
        offset_s=4.0, window_start_s=0.0, window_end_s=4.0, voiced_s=2.0, emotion=emotion,
        arousal=arousal, valence=valence, dominance=dominance, affect_source=source,
        prosody=prosody, stress=ev.StressData(index=index, components={}, calibrating=False)))


def _feed(sink: PrometheusSink, *events: Any) -> None:
    for event in events:
        sink.on_event(event)


def test_series_follow_events_and_the_cap_counts_what_is_left_out() -> None:
    sink = PrometheusSink(max_speakers=2)
    value = sink.registry.get_sample_value
    joined = [ev.SpeakerJoined(call=CALL, speaker=_speaker(s), data=ev.SpeakerJoinedData(
        offset_s=0.0)) for s in "abc"]
    _feed(sink, ev.CallJoined(call=CALL, data=ev.CallJoinedData()), *joined,
          _sample("a", 0.4, {"neutral": 0.7, "angry": 0.3}), _sample("c", 0.9))
    sink.record(stats.SpeechHeard("janus:1", "b", 12.5))
    sink.record(stats.FramesReceived(300))
    a = {"call": "janus:1", "speaker": "a"}
    assert value("affect_stress_index", a) == 0.4
    assert value("affect_arousal", a) == 0.2
    assert value("affect_stress_index", {"call": "janus:1", "speaker": "b"}) is None  # no sample
    assert value("affect_speech_seconds_total", {"call": "janus:1", "speaker": "b"}) == 12.5
    assert value("affect_emotion_probability", {**a, "emotion": "angry"}) == 0.3
    assert value("affect_stress_index", {"call": "janus:1", "speaker": "c"}) is None  # capped
    assert value("affect_dropped_total", {"stage": "metrics"}) == 1
    assert value("affect_speakers_active") == 3 and value("affect_calls_active") == 1
    assert value("affect_audio_frames_total") == 300
    spike = ev.SpikeStarted(call=CALL, speaker=_speaker("a"), data=ev.SpikeStartedData(
        offset_s=9.0, started_s=6.0, index=0.7, peak=0.7, components=["f0"]))
    idle = ev.SpeakerIdle(call=CALL, speaker=_speaker("b"), data=ev.SpeakerIdleData(
        offset_s=10.0, silent_s=10.0))
    _feed(sink, spike, idle)
    assert value("affect_stress_spikes_total", a) == 1 and value("affect_speakers_idle") == 1
    _feed(sink, ev.SpeakerLeft(call=CALL, speaker=_speaker("a"), data=ev.SpeakerLeftData(
        offset_s=11.0, reason="left", speech_s=3.0, spikes=1)))
    text = generate_latest(sink.registry).decode()
    assert 'speaker="a"' not in text and 'speaker="b"' in text
    _feed(sink, ev.CallLeft(call=CALL, data=ev.CallLeftData(offset_s=12.0, reason="left")))
    text = generate_latest(sink.registry).decode()
    assert 'speaker="' not in text and value("affect_calls_active") == 0
    sink.close()


def test_dimensional_and_categorical_estimates() -> None:
    """A dimensional model's sample (no emotion dict) sets arousal, valence and dominance; a
    categorical one sets arousal, valence and the emotion mix and no dominance; a sample without
    an estimate leaves the last one standing."""
    sink = PrometheusSink()
    value = sink.registry.get_sample_value
    _feed(sink, ev.CallJoined(call=CALL, data=ev.CallJoinedData()),
          *(ev.SpeakerJoined(call=CALL, speaker=_speaker(s), data=ev.SpeakerJoinedData(
              offset_s=0.0)) for s in "dc"),
          _sample("d", 0.3, dimensions=(0.5, -0.25, 0.75)),
          _sample("c", 0.4, {"neutral": 0.6, "happy": 0.4}))
    d, c = ({"call": "janus:1", "speaker": s} for s in "dc")
    assert (value("affect_arousal", d), value("affect_valence", d)) == (0.5, -0.25)
    assert value("affect_dominance", d) == 0.75
    assert (value("affect_arousal", c), value("affect_valence", c)) == (0.2, -0.1)
    assert value("affect_dominance", c) is None
    assert value("affect_emotion_probability", {**c, "emotion": "happy"}) == 0.4
    text = generate_latest(sink.registry).decode()
    mixes = [line for line in text.splitlines() if line.startswith("affect_emotion_probability{")]
    assert len(mixes) == 2 and all('speaker="c"' in line for line in mixes)  # none for d
    assert "# HELP affect_dominance Dominance from a dimensional emotion model, -1..1." in text
    lint = subprocess.run([require_tool("promtool"), "check", "metrics"], input=text,
                          capture_output=True, text=True, timeout=30, check=False)
    assert lint.returncode == 0 and not lint.stdout + lint.stderr, lint.stdout + lint.stderr
    _feed(sink, _sample("d", 0.35))  # no estimate in this window: the last one stands
    assert value("affect_dominance", d) == 0.75 and value("affect_stress_index", d) == 0.35
    _feed(sink, ev.SpeakerLeft(call=CALL, speaker=_speaker("d"), data=ev.SpeakerLeftData(
        offset_s=11.0, reason="left", speech_s=3.0, spikes=0)))
    assert "affect_dominance{" not in generate_latest(sink.registry).decode()
    sink.close()


def test_statistics_land_in_their_series() -> None:
    sink = PrometheusSink()
    value = sink.registry.get_sample_value
    sink.record(stats.WindowLatency(0.03))
    sink.record(stats.Dropped("window_queue", 2))
    sink.record(stats.InferenceBatch("emotion", 4, 0.2))
    sink.record(stats.InferenceBatch("emotion", 0, 0.0))  # turned away: a drop
    assert value("affect_pipeline_latency_seconds_count") == 1
    assert value("affect_dropped_total", {"stage": "window_queue"}) == 2
    assert value("affect_inference_batch_size_sum", {"analyzer": "emotion"}) == 4
    assert value("affect_dropped_total", {"stage": "inference_emotion"}) == 1
    for stat in (stats.SpeechHeard("c", "s", 1.5), stats.Dropped("x"), stats.FramesReceived(3)):
        assert stats.from_wire(stats.to_wire(stat)) == stat
    sink.close()


def test_webhook_statistics_land_in_their_series() -> None:
    """The webhook sink reports through ``record`` (it never touches this sink's metrics)."""
    sink = PrometheusSink()
    value = sink.registry.get_sample_value
    sink.record(stats.WebhookEndpoint("hooks"))
    hooks = {"endpoint": "hooks"}
    for outcome in ("delivered", "retry", "failed", "disabled"):
        assert value("affect_webhook_deliveries_total", {**hooks, "outcome": outcome}) == 0
    sink.record(stats.WebhookDelivery("hooks", "retry", 0.02))
    sink.record(stats.WebhookDelivery("hooks", "delivered", 0.04))
    sink.record(stats.OutboxPending(7))
    sink.record(stats.Dropped("webhook_outbox", 3))
    assert value("affect_webhook_deliveries_total", {**hooks, "outcome": "retry"}) == 1
    assert value("affect_webhook_deliveries_total", {**hooks, "outcome": "delivered"}) == 1
    assert value("affect_webhook_delivery_seconds_count", hooks) == 2
    assert value("affect_webhook_delivery_seconds_sum", hooks) == pytest.approx(0.06)
    assert value("affect_webhook_outbox_pending") == 7
    assert value("affect_dropped_total", {"stage": "webhook_outbox"}) == 3
    for stat in (stats.WebhookEndpoint("hooks"), stats.WebhookDelivery("hooks", "failed", 1.5),
                 stats.OutboxPending(2)):
        assert stats.from_wire(stats.to_wire(stat)) == stat
    sink.close()


def test_one_fold_of_a_speaker_and_its_closing_events() -> None:
    """SpeakerState folds events and speech statistics; a speaker that vanished mid-spike is
    closed with the spike's end, then speaker.left, at the last offset heard."""
    state = SpeakerState(_speaker("a"))
    spike = ev.SpikeStarted(call=CALL, speaker=_speaker("a"), data=ev.SpikeStartedData(
        offset_s=9.0, started_s=6.0, index=0.7, peak=0.8, components=["f0"]))
    for item in (_sample("a", 0.4, {"angry": 0.6, "neutral": 0.4}), _sample("a", 0.5), spike,
                 stats.SpeechHeard("janus:1", "a", 2.25), stats.SpeechHeard("janus:1", "a", 1.0),
                 ev.SpeakerIdle(call=CALL, speaker=_speaker("a"), data=ev.SpeakerIdleData(
                     offset_s=12.3456, silent_s=3.0))):
        state.apply(item)
    assert (state.index, state.calibrating, state.spikes, state.idle) == (0.5, False, 1, True)
    assert state.emotion == {"angry": 0.6, "neutral": 0.4}  # the last estimate stands
    assert state.in_spike and state.open_spike == spike.data and state.speech_s == 3.25
    ended, left = state.closing_events(CALL, "worker failed")
    assert isinstance(ended, ev.SpikeEnded) and isinstance(left, ev.SpeakerLeft)
    assert ended.data.model_dump() == {
        "offset_s": 12.346, "started_s": 6.0, "index": 0.7, "peak": 0.8, "components": ["f0"],
        "duration_s": 6.346, "reason": "stream ended"}
    assert left.data.model_dump() == {"offset_s": 12.346, "reason": "worker failed",
                                      "speech_s": 3.25, "spikes": 1}
    for event in (ended, left):
        state.apply(event)
    assert not state.in_spike and state.left == "worker failed"
    assert [type(e) for e in state.closing_events(CALL, "x")] == [ev.SpeakerLeft]


