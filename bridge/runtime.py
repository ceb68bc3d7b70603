"""What `run` and `demo` share: metrics, the webhook sink, the event bus, the analysis engine and
the call manager, wired once and started and stopped in the right order.

Start: webhooks first (so ``analyzer.degraded`` reaches them), then the analyzers. Stop: leave
every call (``call.left``), close the analyzers, then the sinks, so the last events still get out.
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry

from bridge import events as ev
from bridge.analysis import AnalysisEngine
from bridge.bus import EventBus, Sink
from bridge.calls import CallManager
from bridge.config import Settings
from bridge.metrics import Metrics
from bridge.sinks.webhook import WebhookSink

__all__ = ["Runtime"]


@dataclass
class Runtime:
    metrics: Metrics
    webhooks: WebhookSink | None
    bus: EventBus
    engine: AnalysisEngine
    manager: CallManager

    @classmethod
    def build(cls, settings: Settings, *sinks: Sink, registry: CollectorRegistry | None = None,
              silence_timeout_s: float | None = None,
              gone_timeout_s: float | None = None) -> Runtime:
        """Raises ConfigError for an unusable webhook secret."""
        metrics = Metrics(registry, max_speakers=settings.metrics.max_speakers)
        webhooks = (WebhookSink(settings.webhooks, settings.outbox, metrics=metrics)
                    if settings.webhooks else None)
        # Webhooks first: their emit returns once the event is durable, so nothing is printed
        # or exported that a crash right then could lose.
        bus = EventBus(*([webhooks.emit] if webhooks is not None else []), *sinks)
        engine = AnalysisEngine(settings)
        engine.metrics = metrics
        timeout = settings.live.silence_timeout_s if silence_timeout_s is None else silence_timeout_s
        gone = settings.live.gone_timeout_s if gone_timeout_s is None else gone_timeout_s
        manager = CallManager(engine, bus.emit, silence_timeout_s=timeout, gone_timeout_s=gone)
        metrics.watch(manager)
        return cls(metrics, webhooks, bus, engine, manager)

    async def start(self, call: ev.CallInfo | None = None) -> None:
        """Start the sinks and load the analyzers; report degraded ones (for ``call``, if any)."""
        if self.webhooks is not None:
            await self.webhooks.start()
        await self.engine.start()
        for event in self.engine.degraded_events(call):
            await self.bus.emit(event)

    async def aclose(self, reason: str = "shutting down") -> None:
        await self.manager.aclose(reason)
        await self.engine.aclose()
        if self.webhooks is not None:
            await self.webhooks.aclose()
        self.metrics.close()
