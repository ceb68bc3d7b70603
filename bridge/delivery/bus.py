"""The event bus: every event goes to every sink, in the order they were given. The webhook
sink comes first and returns only once the event is committed to its outbox, so nothing shown
or exported can be lost by a crash; the metrics sink updates its series at once; the console
writes the line. A sink that raises is logged and the others still get the event."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from bridge import events as ev

__all__ = ["EventBus"]

log = logging.getLogger(__name__)

Sink = Callable[[ev.Event], Awaitable[None]]


class EventBus:
    def __init__(self, *sinks: Sink) -> None:
        self.sinks = list(sinks)

    async def emit(self, event: ev.Event) -> None:
        for sink in self.sinks:
            try:
                await sink(event)
            except Exception:
                log.exception("a sink failed on a %s event", event.type)
