"""Live calls over real WebRTC on loopback: the WHEP connector against the demo's media source."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiortc import RTCPeerConnection

from bridge import events as ev
from bridge.config import load_settings
from bridge.connectors.whep import WhepConnector
from bridge.demo.media_source import DemoSource
from bridge.errors import ConnectorError
from bridge.live.calls import CallManager, Join
from bridge.pipeline.analysis import AnalysisEngine

pytestmark = pytest.mark.usefixtures("loopback_ice")


async def _manager(metrics: Any = None) -> tuple[CallManager, list[Any]]:
    """A call manager over a prosody-only engine; its events are collected (and, with
    ``metrics``, given to that Prometheus sink, as the service's bus does)."""
    from bridge import stats

    engine = AnalysisEngine(load_settings(None, analyzers=["prosody"]),
                            record=metrics.record if metrics is not None else stats.ignore)
    await engine.start()
    got: list[Any] = []

    async def emit(e: Any) -> None:
        got.append(e)
        if metrics is not None:
            await metrics.emit(e)

    return CallManager(engine, emit, silence_timeout_s=2.0), got


def _whep(url: str, **kw: Any) -> Any:
    return lambda info, on_sp, on_left: WhepConnector(info, on_sp, on_left, url=url, **kw)


async def test_whep_call_drains_every_track_and_leaves_cleanly(source: DemoSource) -> None:
    manager, got = await _manager()
    info = ev.CallInfo(id="whep:test", connector="whep")
    call = await manager.join(Join(info, _whep(source.url, token="s3cret", tracks=3,
                                          displays=["Alice", "Bob", "Carol"])))
    assert source.sessions == 1
    for _ in range(100):  # until audio flows (bounded: 10 s)
        if call.speakers and all(p.frames > 100 for p in call.speakers.values()):
            break
        await asyncio.sleep(0.1)
    assert {p.speaker.display for p in call.speakers.values()} == {"Alice", "Bob", "Carol"}
    assert all(p.frames > 100 for p in call.speakers.values())  # 20 ms frames: > 2 s each
    await manager.leave(info.id, "test over")
    assert source.sessions == 0  # the WHEP session was DELETEd
    types = [e.type for e in got]
    assert types.count("speaker.joined") == 3 and types.count("speaker.left") == 3
    assert types[0] == "call.joined" and types[-1] == "call.left"
    await manager.aclose()
    await manager.engine.aclose()


async def test_wrong_token_unreachable_and_bad_answers_are_connector_errors(
    source: DemoSource,
) -> None:
    manager, got = await _manager()
    info = ev.CallInfo(id="whep:bad", connector="whep")
    with pytest.raises(ConnectorError, match="401"):
        await manager.join(Join(info, _whep(source.url, token="wrong")))
    with pytest.raises(ConnectorError, match="unreachable"):
        await manager.join(Join(info, _whep("http://127.0.0.1:9/whep")))
    with pytest.raises(ConnectorError, match="404"):
        await manager.join(Join(info, _whep(source.url.replace("/whep", "/nope"), token="s3cret")))
    assert manager.calls == {} and got == [] and source.sessions == 0
    await manager.engine.aclose()


async def test_source_rejects_bad_offers_and_changes_nothing(source: DemoSource) -> None:
    auth = {"Authorization": "Bearer s3cret"}
    async with aiohttp.ClientSession() as http:
        async with http.post(source.url, data="v=0\r\nnonsense", headers={
                **auth, "Content-Type": "application/sdp"}) as resp:
            assert resp.status == 400
        async with http.post(source.url, data="{}", headers={
                **auth, "Content-Type": "application/json"}) as resp:
            assert resp.status == 415
        async with http.post(source.url, data="x", headers={"Content-Type": "application/sdp"}
                             ) as resp:
            assert resp.status == 401
        async with http.delete(source.url + "/nosuch", headers=auth) as resp:
            assert resp.status == 404
        # A valid offer still works afterwards.
        pc = RTCPeerConnection()
        pc.addTransceiver("audio", direction="recvonly")
        await pc.setLocalDescription(await pc.createOffer())
        async with http.post(source.url, data=pc.localDescription.sdp, headers={
                **auth, "Content-Type": "application/sdp"}) as resp:
            assert resp.status == 201 and resp.headers["Location"].startswith("/whep/")
        await pc.close()
    assert source.sessions == 1


async def test_demo_over_webrtc_spike_only_for_the_stressed_speaker(tmp_path: Path) -> None:
    """The README's main job, `affect-bridge demo --json`, here with `--webhook` to a real
    receiver and its metrics endpoint scraped while it runs."""
    import json
    import os
    import sys

    import aiohttp
    from standardwebhooks.webhooks import Webhook

    from tests.conftest import ROOT, free_port
    from tests.webhook_helpers import SECRET_A, Receiver

    receiver = await Receiver().start()
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "AFFECT_BRIDGE_WEBHOOK_SECRET": SECRET_A,
           "AFFECT_BRIDGE_OUTBOX__PATH": str(tmp_path / "outbox.sqlite3")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bridge.cli", "demo", "--json", "--webhook", receiver.url,
        "--listen", f"127.0.0.1:{port}", stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env=env, cwd=ROOT)
    scraped = ""
    try:
        async with aiohttp.ClientSession() as http:
            while proc.returncode is None and "affect_stress_index{" not in scraped:
                await asyncio.sleep(1.0)
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.get(f"http://127.0.0.1:{port}/metrics") as resp:
                        scraped = await resp.text()
        out, err = await asyncio.wait_for(proc.communicate(), 300)
    finally:
        if proc.returncode is None:
            proc.kill()
        await receiver.stop()
    assert proc.returncode == 0, err.decode()
    assert "affect_stress_index{" in scraped and "affect_speakers_active" in scraped
    evs = [json.loads(line) for line in out.decode().splitlines()]
    joined = {e["speaker"]["display"] for e in evs if e["type"] == "speaker.joined"}
    assert joined == {"Alice", "Bob", "Carol"}
    spiking = {e["speaker"]["display"] for e in evs if e["type"] == "stress.spike.started"}
    assert spiking == {"Alice"}
    for e in evs:
        if e["type"] == "stress.spike.started":
            assert e["data"]["started_s"] > 46.0  # in the stressed part of Alice's clip
    left = [e for e in evs if e["type"] == "speaker.left"]
    assert len(left) == 3 and evs[-1]["type"] == "call.left"
    # The webhook got the default event types (no affect.sample), each signed, all of them.
    hooks = [Webhook(SECRET_A).verify(r.body, r.headers) for r in receiver.delivered]
    wanted = {e["id"] for e in evs if e["type"] != "affect.sample"}
    assert {h["id"] for h in hooks} == wanted
    assert {h["speaker"]["display"] for h in hooks if h["type"] == "stress.spike.started"} == {
        "Alice"}


async def test_join_leave_cycles_leave_nothing_behind(source: DemoSource) -> None:
    """100 join/leave cycles: tasks, tracks, peer connections, threads and calls all return to
    where they started (counted, not timed)."""
    import gc
    import threading

    from aiortc.rtcrtpreceiver import RemoteStreamTrack

    from bridge.delivery.prometheus import PrometheusSink

    metrics = PrometheusSink()

    def series() -> int:
        """Per-speaker metric series exported now."""
        return sum(1 for family in metrics.registry.collect() for sample in family.samples
                   if "speaker" in sample.labels)

    def census() -> dict[str, int]:
        gc.collect()
        objects = gc.get_objects()
        return {
            "metric_series": series(),
            "tasks": len(asyncio.all_tasks()),
            # The default executor's workers come and go as needed; media players must not stay.
            "threads": sum(not t.name.startswith(("ThreadPoolExecutor", "asyncio_"))
                           for t in threading.enumerate()),
            "tracks": sum(type(o) is RemoteStreamTrack for o in objects),
            "peer_connections": sum(type(o) is RTCPeerConnection for o in objects),
        }

    manager, got = await _manager(metrics)
    info = ev.CallInfo(id="whep:cycle", connector="whep")
    peak_series = 0

    async def cycle() -> None:
        nonlocal peak_series
        call = await manager.join(Join(info, _whep(source.url, token="s3cret", tracks=2)))
        for _ in range(250):  # until audio flows on both tracks (bounded: 5 s)
            if len(call.speakers) == 2 and all(p.frames for p in call.speakers.values()):
                break
            await asyncio.sleep(0.02)
        assert len(call.speakers) == 2 and all(p.frames for p in call.speakers.values())
        peak_series = max(peak_series, series())
        await manager.leave(info.id, "cycle")

    await cycle()  # warm-up: first-use allocations are not growth
    await asyncio.sleep(0.2)  # the same settling time as before the second census
    before = census()
    for _ in range(100):
        await cycle()
    await asyncio.sleep(0.2)
    after = census()
    assert manager.calls == {} and source.sessions == 0
    assert after == before, (before, after)
    assert before["metric_series"] == 0 and peak_series > 0  # series came and went each cycle
    assert [e.type for e in got].count("speaker.left") == 2 * 101
    metrics.close()
    await manager.aclose()
    await manager.engine.aclose()


async def test_leaving_while_still_connecting_leaves_no_tasks(source: DemoSource) -> None:
    manager, _ = await _manager()
    info = ev.CallInfo(id="whep:hasty", connector="whep")
    await manager.join(Join(info, _whep(source.url, token="s3cret", tracks=2)))
    await manager.leave(info.id, "hasty")
    before = len(asyncio.all_tasks())
    for _ in range(20):
        await manager.join(Join(info, _whep(source.url, token="s3cret", tracks=2)))
        await manager.leave(info.id, "hasty")  # at once: ICE checks still running
    await asyncio.sleep(0.2)
    assert len(asyncio.all_tasks()) == before
    assert source.sessions == 0
    await manager.aclose()
    await manager.engine.aclose()


async def test_live_calls_use_the_semantic_stream_when_enabled(source: DemoSource,
                                                                tiny_whisper: Path) -> None:
    engine = AnalysisEngine(load_settings(None, analyzers=["prosody", "semantic"], semantic={
        "asr_model": str(tiny_whisper), "max_new_tokens": 4}))
    await engine.start()
    assert engine.has("semantic")
    got: list[Any] = []

    async def emit(e: Any) -> None:
        got.append(e)

    manager = CallManager(engine, emit)
    info = ev.CallInfo(id="whep:semantic", connector="whep")
    await manager.join(Join(info, _whep(source.url, token="s3cret", tracks=1, displays=["Alice"])))
    for _ in range(300):  # until a sample carries sentiment (bounded: 30 s)
        if any(isinstance(e, ev.AffectSample) and "semantic" in e.data.extra for e in got):
            break
        await asyncio.sleep(0.1)
    await manager.aclose()
    await engine.aclose()
    with_sentiment = [e for e in got if isinstance(e, ev.AffectSample) and "semantic" in e.data.extra]
    assert with_sentiment
    sentiment = with_sentiment[0].data.extra["semantic"]["sentiment"]
    assert -1 <= sentiment["score"] <= 1 and "transcript" not in with_sentiment[0].data.extra["semantic"]
