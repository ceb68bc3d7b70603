"""Prometheus metrics (names and meanings: the README's Metrics section): a sink of the event bus.

Everything here is built from what is pushed to it: events (``emit``) and typed statistics
(``record``, :mod:`bridge.stats`). A speaker's series are created on ``speaker.joined``, updated
from its ``affect.sample``/``stress.spike.started``/``speaker.idle``/``speaker.resumed`` events
and removed on ``speaker.left``; calls are counted from ``call.joined``/``call.left``. Nothing
reaches back into the pipeline, so the same sink serves one process or a supervisor fed by
worker processes (whose events and statistics arrive over their channels).

At most ``max_speakers`` speakers are exported (the rest are counted in
``affect_dropped_total{stage="metrics"}``, once per speaker left out). A speaker's state is the
one fold of its events (:class:`bridge.delivery.summary.SpeakerState`). Webhook delivery
counters and the outbox gauge come as statistics from the webhook sink, like every other.
"""

from __future__ import annotations

import platform
import threading
from collections.abc import Iterator
from dataclasses import dataclass, replace

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from bridge import events as ev
from bridge import stats
from bridge.delivery.summary import SpeakerState
from bridge.tasks import TaskFailures

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
    state: SpeakerState
    exported: bool  # within max_speakers


class PrometheusSink:
    def __init__(self, registry: CollectorRegistry | None = None, *, max_speakers: int = 1000,
                 ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.max_speakers = max_speakers
        #: Tasks that died (``affect_task_failures_total``, ``/readyz``), recorded as stats.
        self.task_failures = TaskFailures()
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
        self.remote_failures = Counter(
            "affect_remote_inference_failures_total",
            "Requests to the inference server that failed, by analyzer and reason "
            "(unreachable, http_error, bad_response).", ["analyzer", "reason"], registry=r)
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

    # --- events ----------------------------------------------------------------------------

    async def emit(self, event: ev.Event) -> None:
        self.on_event(event)

    def on_event(self, event: ev.Event) -> None:
        if event.call is None:
            return
        call = event.call.id
        with self._lock:
            match event:
                case ev.CallJoined():
                    self._calls.add(call)
                case ev.CallLeft():
                    self._calls.discard(call)
                    for k in [k for k in self._speakers if k[0] == call]:
                        del self._speakers[k]  # speaker.left came first; never leave series behind
                case ev.SpeakerJoined(speaker=ev.SpeakerInfo() as info):
                    self._add((call, info.id), info)
                case ev.SpeakerLeft(speaker=ev.SpeakerInfo(id=sid)):
                    self._speakers.pop((call, sid), None)
                case _ if event.speaker is not None:
                    s = self._speakers.get((call, event.speaker.id))
                    if s is not None:
                        s.state.apply(event)

    def _add(self, key: tuple[str, str], info: ev.SpeakerInfo) -> None:
        exported = sum(s.exported for s in self._speakers.values())
        speaker = self._speakers[key] = _Speaker(SpeakerState(info),
                                                 exported=exported < self.max_speakers)
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
                    s.state.apply(stat)
        elif isinstance(stat, stats.WindowLatency):
            self.pipeline_latency.observe(stat.seconds)
        elif isinstance(stat, stats.Dropped):
            self.dropped.labels(stat.stage).inc(stat.n)
        elif isinstance(stat, stats.WindowUnscored):
            self.unscored.labels(stat.reason).inc()
        elif isinstance(stat, stats.TaskFailed):
            with self._lock:
                self.task_failures.add(stat)
        elif isinstance(stat, stats.InferenceBatch):
            if stat.size == 0:  # an item its full queue turned away
                self.dropped.labels(f"inference_{stat.analyzer}").inc()
            else:
                self.inference_seconds.labels(stat.analyzer).observe(stat.seconds)
                self.inference_batch.labels(stat.analyzer).observe(stat.size)
        elif isinstance(stat, stats.RemoteFailure):
            self.remote_failures.labels(stat.analyzer, stat.reason).inc()
        elif isinstance(stat, stats.WebhookDelivery):
            self.webhook_seconds.labels(stat.endpoint).observe(stat.seconds)
            self.webhook_deliveries.labels(stat.endpoint, stat.outcome).inc()
        elif isinstance(stat, stats.OutboxPending):
            self.outbox_pending.set(stat.n)
        elif isinstance(stat, stats.WebhookEndpoint):
            for outcome in ("delivered", "retry", "failed", "disabled"):
                self.webhook_deliveries.labels(stat.endpoint, outcome)

    def close(self) -> None:
        self.registry.unregister(self._live)

    def snapshot(self) -> tuple[int, list[tuple[tuple[str, str], _Speaker]]]:
        """The calls joined, and a copy of every speaker's state (exported or not)."""
        with self._lock:
            return len(self._calls), [(k, _Speaker(replace(s.state), s.exported))
                                      for k, s in self._speakers.items()]


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
        for kind, n in sorted(self.sink.task_failures.counts.items()):
            failed.add_metric([kind], n)
        n_calls, live = self.sink.snapshot()
        calls.add_metric([], n_calls)
        speakers.add_metric([], len(live))
        idle.add_metric([], sum(s.state.idle for _, s in live))
        for key, speaker in live:
            if not speaker.exported:
                continue
            s, k = speaker.state, list(key)
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
