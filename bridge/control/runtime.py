"""What `run` and `demo` share: metrics, the webhook sink, the event bus, and who holds the
calls (the analysis engine and call manager in this process, or a pool of worker processes),
wired once and started and stopped in the right order.

Start: webhooks first (so ``analyzer.degraded`` reaches them), then the analyzers (or the
workers). Stop: leave every call (``call.left``), close the analyzers (stop the workers), then
the sinks, so the last events still get out. The bus gives every event to the webhook sink
first, then to the metrics sink, then to the sinks the caller adds (the console).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry

from bridge import events as ev
from bridge.config import Settings
from bridge.delivery.bus import EventBus, Sink
from bridge.delivery.prometheus import PrometheusSink
from bridge.delivery.webhook import WebhookSink
from bridge.live.calls import CallManager
from bridge.pipeline.analysis import AnalysisEngine
from bridge.tasks import record_failures
from bridge.workers.pool import WorkerPool

__all__ = ["Runtime"]


@dataclass
class Runtime:
    metrics: PrometheusSink
    webhooks: WebhookSink | None
    bus: EventBus
    engine: AnalysisEngine | None  # None with worker processes (each has its own)
    manager: CallManager | WorkerPool
    _failures: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)

    @classmethod
    def build(cls, settings: Settings, *sinks: Sink, registry: CollectorRegistry | None = None,
              silence_timeout_s: float | None = None,
              gone_timeout_s: float | None = None, workers: int = 1) -> Runtime:
        """``workers`` > 1: calls are held by that many worker processes. Raises ConfigError
        for an unusable webhook secret."""
        metrics = PrometheusSink(registry, max_speakers=settings.metrics.max_speakers)
        webhooks = (WebhookSink(settings.webhooks, settings.outbox, record=metrics.record)
                    if settings.webhooks else None)
        # Webhooks first: their emit returns once the event is durable, so nothing is printed
        # or exported that a crash right then could lose.
        bus = EventBus(*([webhooks.emit] if webhooks is not None else []), metrics.emit, *sinks)
        if workers > 1:
            pool = WorkerPool(settings, workers, bus.emit, record=metrics.record)
            return cls(metrics, webhooks, bus, None, pool)
        engine = AnalysisEngine(settings, record=metrics.record)
        timeout = settings.live.silence_timeout_s if silence_timeout_s is None else silence_timeout_s
        gone = settings.live.gone_timeout_s if gone_timeout_s is None else gone_timeout_s
        manager = CallManager(engine, bus.emit, silence_timeout_s=timeout, gone_timeout_s=gone)
        return cls(metrics, webhooks, bus, engine, manager)

    async def start(self, call: ev.CallInfo | None = None) -> None:
        """Start the sinks and load the analyzers; report degraded ones (for ``call``, if any).
        From here until :meth:`aclose`, tasks that die are counted in the metrics."""
        self._failures.enter_context(record_failures(self.metrics.record))
        if self.webhooks is not None:
            await self.webhooks.start()
        if isinstance(self.manager, WorkerPool):
            await self.manager.start()  # each worker reports its degraded analyzers
            return
        assert self.engine is not None
        await self.engine.start(warm_up=True)
        await self.engine.service_ready()  # one process: nothing else is starting
        for event in self.engine.degraded_events(call):
            await self.bus.emit(event)

    async def aclose(self, reason: str = "shutting down") -> None:
        await self.manager.aclose(reason)
        if self.engine is not None:
            await self.engine.aclose()
        if self.webhooks is not None:
            await self.webhooks.aclose()
        self._failures.close()
        self.metrics.close()
