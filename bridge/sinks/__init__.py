"""Where events go: console (more to come: webhooks, Prometheus)."""
