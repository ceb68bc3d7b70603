"""affect-bridge: the service (connectors, pipelines, events, sinks, CLI)."""

__version__ = "0.1.0"
