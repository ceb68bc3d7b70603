"""Where events go (each a sink of :class:`bridge.bus.EventBus`): webhooks with their durable
outbox (``webhook``, ``outbox``), Prometheus metrics built from events and statistics
(``prometheus``), and the console (``console``: JSON lines or a live table)."""
