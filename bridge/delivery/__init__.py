"""Where events go: the event bus and its sinks (webhooks with their durable outbox, Prometheus
metrics from events and statistics, the console), and per-speaker summaries folded from events."""
