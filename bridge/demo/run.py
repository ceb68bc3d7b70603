"""``affect-bridge demo``: a local call of three bundled speakers over real WebRTC on loopback.

The demo's media source (a WHEP endpoint playing the recordings) is the other side of the call;
the bridge joins it through the same WHEP connector production uses, drains each track, and
analyses each speaker live. It ends when every speaker has left (their clips ended), unless
``loop`` keeps the clips playing. The analyzers are loaded before the live table is first
drawn, so what loading logs stands above the table.
"""

from __future__ import annotations

import logging
import os
import sys
from importlib.resources import files
from pathlib import Path
from typing import IO, Any

from aiohttp import web

from bridge import events as ev
from bridge.config import Settings
from bridge.connectors.whep import WhepConnector
from bridge.control.app import metrics_app
from bridge.control.runtime import Runtime
from bridge.delivery.console import ConsoleSink
from bridge.delivery.prometheus import PrometheusSink
from bridge.delivery.summary import SpeakerSummaries
from bridge.demo.media_source import DemoSource
from bridge.live.calls import CallManager, Join
from bridge.live.ice import restrict_host_addresses
from bridge.offline.analyze import AnalyzeResult, format_table

__all__ = ["DEMO_SPEAKERS", "demo_clips", "demo_state_dir", "run_demo"]

log = logging.getLogger(__name__)

DEMO_SPEAKERS = ("Alice", "Bob", "Carol")
# The demo's clips end cleanly (the source then sends nothing): a speaker without frames this
# long has finished, so the demo can end. A live call waits far longer (live.gone_timeout_s).
GONE_TIMEOUT_S = 3.0


def demo_clips() -> list[Path]:
    root = files("bridge") / "assets" / "demo"
    return [Path(str(root / name)) for name in
            ("alice_calm_then_stressed.flac", "bob_calm.flac", "carol_calm.flac")]


async def run_demo(settings: Settings, *, json_out: bool, loop: bool = False,
                   stream: IO[str] | None = None) -> AnalyzeResult:
    """Play the demo call and analyse it. Events go to ``stream`` (stdout) as JSON lines with
    ``json_out``, else as a live speaker table (on a terminal) or readable event lines.
    Returns the per-speaker summary."""
    restrict_host_addresses(["127.0.0.1"])  # test traffic stays on loopback
    settings = _demo_outbox(settings)
    summaries = SpeakerSummaries()
    console = ConsoleSink("jsonl" if json_out else "table", stream)

    async def summarise(event: Any) -> None:
        summaries.apply(event)

    runtime = Runtime.build(settings, summarise, console.emit, silence_timeout_s=GONE_TIMEOUT_S,
                            gone_timeout_s=GONE_TIMEOUT_S)
    manager = runtime.manager
    assert isinstance(manager, CallManager)  # the demo is one process
    source = DemoSource(demo_clips(), loop=loop)
    info = ev.CallInfo(id="demo:local", connector="whep", room="demo")
    metrics_site: web.AppRunner | None = None
    try:
        # Models load before the table's first frame: their log lines (loaded on which device,
        # in which precision; or unavailable) stand above the table, and an analyzer.degraded
        # event is shown among the table's event lines.
        log.info("loading the analyzers: %s", ", ".join(settings.analyzers))
        await runtime.start(info)
        metrics_site = await _serve_metrics(runtime.metrics, settings)
        await console.start()  # from here on, log lines are printed above the live table
        url = await source.start()
        call = await manager.join(Join(info, lambda i, on_sp, on_left: WhepConnector(
            i, on_sp, on_left, url=url, tracks=len(DEMO_SPEAKERS), displays=list(DEMO_SPEAKERS))))
        while True:  # until every speaker that came has gone again
            await call.empty.wait()
            if call.seen_speakers >= len(DEMO_SPEAKERS):
                break
            call.empty.clear()
        await manager.leave(info.id, "demo finished")
    finally:
        await runtime.aclose()
        await source.aclose()
        if metrics_site is not None:
            await metrics_site.cleanup()
        await console.aclose()
        restrict_host_addresses(None)
    return AnalyzeResult(list(summaries.values()),
                         dict(runtime.engine.degraded) if runtime.engine is not None else {})


def demo_state_dir() -> Path:
    """Where the demo keeps state: ``$XDG_STATE_HOME/affect-bridge`` (``~/.local/state/...``)."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "affect-bridge"


def _demo_outbox(settings: Settings) -> Settings:
    """The demo writes nothing into the working directory: without a webhook there is no
    outbox at all; with one, its outbox goes to the user's state directory unless
    ``outbox.path`` is configured."""
    if not settings.webhooks or "path" in settings.outbox.model_fields_set:
        return settings
    path = demo_state_dir() / "demo-outbox.sqlite3"
    log.info("webhook outbox: %s", path)
    return settings.model_copy(update={"outbox": settings.outbox.model_copy(
        update={"path": path})})


async def _serve_metrics(metrics: PrometheusSink, settings: Settings) -> web.AppRunner | None:
    """``/metrics`` on ``listen`` (127.0.0.1:9464 by default); the demo goes on without it when
    the address is taken."""

    runner = web.AppRunner(metrics_app(metrics.registry, token=settings.metrics.token()),
                           access_log=None)
    await runner.setup()
    listen = settings.listen
    try:
        await web.TCPSite(runner, *settings.listen_address()).start()
    except OSError as exc:
        log.warning("metrics not served: cannot listen on %s (%s)", listen,
                    exc.strerror or exc)
        await runner.cleanup()
        return None
    log.info("metrics on http://%s/metrics", listen)
    return runner


def print_summary(result: AnalyzeResult, *, to_stderr: bool) -> None:
    stream = sys.stderr if to_stderr else sys.stdout
    print(("" if to_stderr else "\n") + format_table(result), file=stream)
