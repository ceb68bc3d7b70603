"""``affect-bridge run``: the control API and live calls until SIGTERM/SIGINT.

Events go to stdout as JSON lines (the console sink). On SIGTERM every call is left with a
``call.left`` event, output is flushed, and the process exits 0.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from pathlib import Path

from aiohttp import web

from bridge.config import ConfigError, Settings, read_secret, split_listen
from bridge.control.app import REGISTRY, build_app, metrics_app
from bridge.delivery.console import ConsoleSink
from bridge.live.ice import restrict_host_addresses

__all__ = ["api_token", "serve"]

log = logging.getLogger(__name__)


def api_token() -> str | None:
    """The control API's bearer token, read as every secret is (:func:`read_secret`): the first
    non-blank line of the file named by ``AFFECT_BRIDGE_API_TOKEN_FILE`` when that is set (the
    file wins), else ``AFFECT_BRIDGE_API_TOKEN``. Never from the config file, never logged."""
    file = os.environ.get("AFFECT_BRIDGE_API_TOKEN_FILE", "").strip()
    return read_secret("AFFECT_BRIDGE_API_TOKEN", Path(file) if file else None,
                       "AFFECT_BRIDGE_API_TOKEN_FILE")


async def serve(settings: Settings) -> None:
    host, port = settings.listen_address()
    token = api_token()
    restrict_host_addresses(settings.live.ice_host_addresses)

    console = ConsoleSink("jsonl")
    workers = settings.worker_count()
    app = build_app(settings, token=token, emit=console.emit, workers=workers)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    metrics_runner: web.AppRunner | None = None
    try:
        await web.TCPSite(runner, host, port).start()
        if settings.metrics.listen is not None:
            metrics_runner = web.AppRunner(metrics_app(app[REGISTRY],
                                                       token=settings.metrics.token()),
                                           access_log=None, handle_signals=False)
            await metrics_runner.setup()
            await web.TCPSite(metrics_runner, *split_listen(settings.metrics.listen)).start()
    except OSError as exc:
        if metrics_runner is not None:
            await metrics_runner.cleanup()
        await runner.cleanup()
        raise ConfigError(f"cannot listen: {exc.strerror or exc}") from exc
    log.info("control API on http://%s/ (token %s); metrics on http://%s/metrics (%s); %s",
             settings.listen, "set" if token else "NOT set: /v1/* refuses every request",
             settings.metrics.listen or settings.listen,
             "bearer token required" if settings.metrics.token() else "no token",
             f"{workers} worker processes" if workers > 1 else "one process")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
        log.info("stopping: leaving every call")
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        if metrics_runner is not None:
            await metrics_runner.cleanup()
        await runner.cleanup()  # leaves calls (call.left), closes analyzers
        sys.stdout.flush()
