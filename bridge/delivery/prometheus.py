"""Prometheus metrics (names in ARCHITECTURE.md): a sink of the event bus.

Everything here is built from what is pushed to it: events (``emit``) and typed statistics
(``record``, :mod:`bridge.stats`). A speaker's series are created on ``speaker.joined``, updated
from its ``affect.sample``/``stress.spike.started``/``speaker.idle``/``speaker.resumed`` events
and removed on ``speaker.left``; calls are counted from ``call.joined``/``call.left``. Nothing
reaches back into the pipeline, so the same sink serves one process or a supervisor fed by
worker processes (whose events and statistics arrive over their channels).

At most ``max_speakers`` speakers are exported (the rest are counted in
``affect_dropped_total{stage="metrics"}``, once per speaker left out). Webhook delivery
counters are updated by the webhook sink.
"""

from __future__ import annotations

import platform
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from bridge import events as ev
from bridge import stats
from bridge.tasks import failures

__all__ = ["DROP_STAGES", "PrometheusSink"]

# Known stages are exported at 0 from the start, so rates and dashboards have series to show.
DROP_STAGES = ("window_queue", "webhook_outbox", "metrics", "worker_channel")

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("affect-bridge")
    except PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        return "0+unknown"


@dataclass
class _Speaker:
    index: float | None = None
    emotion: dict[str, float] | None = None
    arousal: float | None = None
    valence: float | None = None
    dominance: float | None = None
    speech_s: float = 0.0
    spikes: int = 0
    idle: bool = False
    exported: bool = field(default=False)  # within max_speakers


class PrometheusSink:
    def __init__(self, registry: CollectorRegistry | None = None, *, max_speakers: int = 1000,
                 ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.max_speakers = max_speakers
        r = self.registry
        self.build_info = Gauge("affect_build_info", "Build information (always 1).",
                                ["version", "python"], registry=r)
        self.build_info.labels(_version(), platform.python_version()).set(1)
        self.pipeline_latency = Histogram(
            "affect_pipeline_latency_seconds",
            "From the end of a speech window to its affect.sample being published.",
            buckets=LATENCY_BUCKETS, registry=r)
        self.inference_seconds = Histogram(
            "affect_inference_seconds", "Model time per inference batch.", ["analyzer"],
            buckets=LATENCY_BUCKETS, registry=r)
        self.inference_batch = Histogram(
            "affect_inference_batch_size", "Items per inference batch.", ["analyzer"],
            buckets=BATCH_BUCKETS, registry=r)
        self.dropped = Counter("affect_dropped_total", "Work dropped, by stage.", ["stage"],
                               registry=r)
        self.frames = Counter("affect_audio_frames_total", "Audio frames received.", registry=r)
        self.unscored = Counter("affect_windows_unscored_total",
                                "Speech windows not scored, by reason (unvoiced: too little "
                                "periodic voicing, e.g. steady noise the VAD passed).",
                                ["reason"], registry=r)
        self.unscored.labels("unvoiced")
        self.webhook_deliveries = Counter(
            "affect_webhook_deliveries_total", "Webhook delivery attempts by outcome.",
            ["endpoint", "outcome"], registry=r)
        self.webhook_seconds = Histogram(
            "affect_webhook_delivery_seconds", "Webhook request duration.", ["endpoint"],
            buckets=LATENCY_BUCKETS, registry=r)
        self.outbox_pending = Gauge("affect_webhook_outbox_pending",
                                    "Rows waiting in the webhook outbox.", registry=r)
        for stage in DROP_STAGES:
            self.dropped.labels(stage)
        # process_cpu_seconds_total, process_resident_memory_bytes, ... (Linux)
        ProcessCollector(registry=r)
        self._calls: set[str] = set()
        self._speakers: dict[tuple[str, str], _Speaker] = {}
        self._lock = threading.Lock()  # record() may come from the inference thread
        self._live = _LiveCollector(self)
        r.register(self._live)

    def webhook_endpoint(self, endpoint: str) -> None:
        """Export an endpoint's delivery counters at 0 from the start."""
        for outcome in ("delivered", "retry", "failed", "disabled"):
            self.webhook_deliveries.labels(endpoint, outcome)

    # --- events ----------------------------------------------------------------------------

    async def emit(self, event: ev.Event) -> None:
        self.on_event(event)

    def on_event(self, event: Any) -> None:
        kind = event.type
        call = event.call.id if event.call is not None else None
        key = (call, event.speaker.id) if call is not None and event.speaker is not None else None
        with self._lock:
            if kind == "call.joined" and call is not None:
                self._calls.add(call)
            elif kind == "call.left" and call is not None:
                self._calls.discard(call)
                for k in [k for k in self._speakers if k[0] == call]:
                    del self._speakers[k]  # speaker.left came first; never leave series behind
            elif key is None:
                return
            elif kind == "speaker.joined":
                self._add(key)
            elif kind == "speaker.left":
                self._speakers.pop(key, None)
            elif (s := self._speakers.get(key)) is None:
                return
            elif kind == "affect.sample":
                d = event.data
                s.index = d.stress.index
                # An emotion estimate: categorical (emotion, arousal, valence) or dimensional
                # (arousal, valence, maybe dominance; no emotion). It replaces the last one; a
                # sample without one (before the speaker's first) leaves the series as they are.
                dims = (d.arousal, d.valence, d.dominance)
                if d.emotion is not None or any(v is not None for v in dims):
                    s.emotion, s.arousal, s.valence, s.dominance = (
                        d.emotion, d.arousal, d.valence, d.dominance)
            elif kind == "stress.spike.started":
                s.spikes += 1
            elif kind == "speaker.idle":
                s.idle = True
            elif kind == "speaker.resumed":
                s.idle = False

    def _add(self, key: tuple[str, str]) -> None:
        exported = sum(s.exported for s in self._speakers.values())
        speaker = self._speakers[key] = _Speaker(exported=exported < self.max_speakers)
        if not speaker.exported:
            self.dropped.labels("metrics").inc()

    # --- statistics --------------------------------------------------------------------------

    def record(self, stat: stats.Stat) -> None:
        """A :data:`bridge.stats.Record`: thread-safe, never raises for a known stat."""
        if isinstance(stat, stats.FramesReceived):
            self.frames.inc(stat.n)
        elif isinstance(stat, stats.SpeechHeard):
            with self._lock:
                s = self._speakers.get((stat.call, stat.speaker))
                if s is not None:
                    s.speech_s += stat.seconds
        elif isinstance(stat, stats.WindowLatency):
            self.pipeline_latency.observe(stat.seconds)
        elif isinstance(stat, stats.Dropped):
            self.dropped.labels(stat.stage).inc(stat.n)
        elif isinstance(stat, stats.WindowUnscored):
            self.unscored.labels(stat.reason).inc()
        elif isinstance(stat, stats.InferenceBatch):
            if stat.size == 0:  # an item its full queue turned away
                self.dropped.labels(f"inference_{stat.analyzer}").inc()
            else:
                self.inference_seconds.labels(stat.analyzer).observe(stat.seconds)
                self.inference_batch.labels(stat.analyzer).observe(stat.size)

    def close(self) -> None:
        self.registry.unregister(self._live)

    def snapshot(self) -> tuple[int, list[tuple[tuple[str, str], _Speaker]]]:
        with self._lock:
            return len(self._calls), [(k, _Speaker(**vars(s))) for k, s in self._speakers.items()]


class _LiveCollector(Collector):
    def __init__(self, sink: PrometheusSink) -> None:
        self.sink = sink

    def collect(self) -> Iterator[Metric]:
        labels = ["call", "speaker"]
        calls = GaugeMetricFamily("affect_calls_active", "Calls the bridge is in.")
        speakers = GaugeMetricFamily("affect_speakers_active", "Speakers being analysed.")
        stress = GaugeMetricFamily("affect_stress_index", "Relative vocal stress index, 0..1.",
                                   labels=labels)
        arousal = GaugeMetricFamily("affect_arousal", "Arousal from the emotion model, -1..1.",
                                    labels=labels)
        valence = GaugeMetricFamily("affect_valence", "Valence from the emotion model, -1..1.",
                                    labels=labels)
        dominance = GaugeMetricFamily("affect_dominance",
                                      "Dominance from a dimensional emotion model, -1..1.",
                                      labels=labels)
        emotion = GaugeMetricFamily("affect_emotion_probability",
                                    "Emotion class probability.", labels=[*labels, "emotion"])
        speech = CounterMetricFamily("affect_speech_seconds", "Voiced seconds heard.",
                                     labels=labels)
        spikes = CounterMetricFamily("affect_stress_spikes", "Stress spikes started.",
                                     labels=labels)
        idle = GaugeMetricFamily("affect_speakers_idle",
                                 "Speakers without audio frames for live.silence_timeout_s.")
        failed = CounterMetricFamily("affect_task_failures",
                                     "Tasks that died of an unexpected error, by kind.",
                                     labels=["task"])
        for kind, n in sorted(failures().items()):
            failed.add_metric([kind], n)
        n_calls, live = self.sink.snapshot()
        calls.add_metric([], n_calls)
        speakers.add_metric([], len(live))
        idle.add_metric([], sum(s.idle for _, s in live))
        for key, s in live:
            if not s.exported:
                continue
            k = list(key)
            if s.index is not None:
                stress.add_metric(k, s.index)
            if s.arousal is not None:
                arousal.add_metric(k, s.arousal)
            if s.valence is not None:
                valence.add_metric(k, s.valence)
            if s.dominance is not None:
                dominance.add_metric(k, s.dominance)
            for name, p in (s.emotion or {}).items():
                emotion.add_metric([*k, name], p)
            speech.add_metric(k, s.speech_s)
            spikes.add_metric(k, s.spikes)
        yield from (calls, speakers, idle, failed, stress, arousal, valence, dominance, emotion,
                    speech, spikes)
