"""Prometheus metrics (names in ARCHITECTURE.md) on an injected ``CollectorRegistry``.

Per-speaker series (labels ``call``, ``speaker``) are read from the live pipelines at scrape
time, so a speaker's series disappear with the speaker and nothing has to be removed by hand;
at most ``max_speakers`` speakers are exported (the rest are counted in
``affect_dropped_total{stage="metrics"}``). Histograms and counters of things that happen
(inference batches, pipeline latency, webhook deliveries) are updated where they happen.
"""

from __future__ import annotations

import platform
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from analyzers import batching
from bridge.tasks import failures

if TYPE_CHECKING:
    from bridge.calls import CallManager

__all__ = ["Metrics"]

# Known stages are exported at 0 from the start, so rates and dashboards have series to show.
DROP_STAGES = ("window_queue", "webhook_outbox", "metrics")

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("affect-bridge")
    except PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        return "0+unknown"


class Metrics:
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
        self._live: _LiveCollector | None = None
        batching.add_batch_observer(self._on_batch)

    def webhook_endpoint(self, endpoint: str) -> None:
        """Export an endpoint's delivery counters at 0 from the start."""
        for outcome in ("delivered", "retry", "failed", "disabled"):
            self.webhook_deliveries.labels(endpoint, outcome)

    def _on_batch(self, scheduler: str, size: int, seconds: float) -> None:
        analyzer = scheduler.removesuffix("-inference")
        if size == 0:
            self.dropped.labels(f"inference_{analyzer}").inc()
            return
        self.inference_seconds.labels(analyzer).observe(seconds)
        self.inference_batch.labels(analyzer).observe(size)

    def watch(self, manager: CallManager) -> None:
        """Export the calls, speakers and per-speaker series of ``manager``."""
        self._live = _LiveCollector(manager, self)
        self.registry.register(self._live)

    def close(self) -> None:
        batching.remove_batch_observer(self._on_batch)
        if self._live is not None:
            self.registry.unregister(self._live)
            self._live = None


class _LiveCollector(Collector):
    def __init__(self, manager: CallManager, metrics: Metrics) -> None:
        self.manager = manager
        self.metrics = metrics
        self.capped = 0

    def collect(self) -> Iterator[Metric]:
        labels = ["call", "speaker"]
        calls = GaugeMetricFamily("affect_calls_active", "Calls the bridge is in.")
        speakers = GaugeMetricFamily("affect_speakers_active", "Speakers being analysed.")
        frames = CounterMetricFamily("affect_audio_frames", "Audio frames received.")
        stress = GaugeMetricFamily("affect_stress_index", "Relative vocal stress index, 0..1.",
                                   labels=labels)
        arousal = GaugeMetricFamily("affect_arousal", "Arousal from the emotion model, -1..1.",
                                    labels=labels)
        valence = GaugeMetricFamily("affect_valence", "Valence from the emotion model, -1..1.",
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
        joined = self.manager.joined()
        live = [(call.info.id, p) for call in joined for p in list(call.speakers.values())]
        idle.add_metric([], sum(p.idle for _, p in live))
        calls.add_metric([], len(joined))
        speakers.add_metric([], len(live))
        frames.add_metric([], self.manager.frames_total())
        for call_id, pipeline in live[: self.metrics.max_speakers]:
            a = pipeline.analysis
            key = [call_id, pipeline.speaker.id]
            if a.latest_index is not None:
                stress.add_metric(key, a.latest_index)
            if a.last_emotion is not None:
                arousal.add_metric(key, a.last_emotion.arousal)
                valence.add_metric(key, a.last_emotion.valence)
                for name, p in a.last_emotion.probabilities.items():
                    emotion.add_metric([*key, name], p)
            speech.add_metric(key, a.windower.speech_s)
            spikes.add_metric(key, a.stress.spikes)
        over = max(0, len(live) - self.metrics.max_speakers)
        if over > self.capped:  # count each speaker left out once per scrape peak
            self.metrics.dropped.labels("metrics").inc(over - self.capped)
        self.capped = over
        yield from (calls, speakers, idle, failed, frames, stress, arousal, valence, emotion, speech, spikes)
