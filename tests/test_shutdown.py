"""Shutdown of ``affect-bridge run`` with many live calls and a webhook receiver that refuses
every delivery: SIGTERM leaves all calls at once and exits well inside a 30 s grace period with
every emitted event committed to the outbox; SIGKILL loses nothing that was already printed
(an event is durable before it is shown)."""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from pathlib import Path

import pytest

from tests.bridge_proc import Bridge
from tests.conftest import until
from tests.media_helpers import ScriptedTrack, ScriptedWhep, speech_48k

pytestmark = pytest.mark.usefixtures("loopback_ice")
log = logging.getLogger(__name__)

async def _source(calls: int, script: list[tuple[str, float]]) -> tuple[ScriptedWhep, list[str]]:
    pcm = speech_48k()
    server = ScriptedWhep(lambda: [ScriptedTrack(pcm, script)])
    await server.start()
    return server, [f"{server.url}?call={i}" for i in range(calls)]  # 50 distinct calls


async def test_sigterm_with_50_calls_leaves_them_all_in_time_and_keeps_every_event(
        tmp_path: Path) -> None:
    server, urls = await _source(50, [("talk", 5.0), ("gap", 600.0)])
    bridge = Bridge(tmp_path, webhook=True)
    try:
        await bridge.start()
        await bridge.join(urls)
        await until(lambda: bridge.count("speaker.joined") == 50, "50 speakers", limit_s=120,
                    step_s=0.2)
        await until(lambda: bridge.count("affect.sample") >= 50, "samples", limit_s=60,
                    step_s=0.2)
        assert bridge.proc is not None
        sent = time.monotonic()
        bridge.proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(bridge.wait(), 30)  # the grace period
        took = time.monotonic() - sent
    finally:
        bridge.kill()
        await server.aclose()
    log.warning("SIGTERM to exit with 50 calls: %.1f s", took)
    print(f"SIGTERM to exit with 50 calls: {took:.1f} s")
    assert code == 0
    assert bridge.count("call.joined") == 50 and bridge.count("call.left") == 50
    assert bridge.count("speaker.left") == 50
    printed = {e["id"] for e in bridge.events()}
    assert printed <= bridge.outbox_ids()  # nothing emitted was lost
    assert server.deleted == 50 and server.sessions == 0


async def test_sigkill_loses_no_event_that_was_printed(tmp_path: Path) -> None:
    server, urls = await _source(5, [("talk", 60.0)])
    bridge = Bridge(tmp_path, webhook=True)
    try:
        await bridge.start()
        await bridge.join(urls)
        await until(lambda: bridge.count("affect.sample") >= 20, "samples", limit_s=60,
                    step_s=0.1)
        bridge.kill()  # SIGKILL while events flow
        await bridge.wait()
    finally:
        bridge.kill()
        await server.aclose()
    printed = {e["id"] for e in bridge.events()}
    assert len(printed) >= 30
    assert printed <= bridge.outbox_ids()
