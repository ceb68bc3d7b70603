"""The event bus: every event goes to every sink. Sinks queue and return at once (each has its
own bounded queue and overflow policy), so no sink can slow analysis or another sink down; a
sink that raises is logged and the others still get the event."""

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
