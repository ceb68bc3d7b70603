"""``affect-bridge run --workers 2``: calls spread over two worker processes under one control
plane (one API, one /metrics, one outbox, each webhook once); a worker SIGKILLed mid-call has its
speakers back on the other worker, and nothing it had emitted is lost. The channel's own
guarantees are tested with a real process killed right after it sent."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bridge.workers.channel import MAX_LINE, OutChannel, read_message
from tests.bridge_proc import AUTH, Bridge
from tests.conftest import ROOT, free_port, until
from tests.media_helpers import ScriptedTrack, ScriptedWhep, speech_48k
from tests.webhook_helpers import Receiver

pytestmark = pytest.mark.usefixtures("loopback_ice")
log = logging.getLogger(__name__)

SENDER = """
import asyncio, os, signal, socket, sys
from bridge.workers.channel import OutChannel

async def main():
    sock = socket.socket(fileno=int(sys.argv[1]))
    _, writer = await asyncio.open_unix_connection(sock=sock)
    out = OutChannel(writer, maxsize=8)
    for i in range(300):
        # samples may be dropped when the channel is full; spikes never
        await out.send({"op": "event", "kind": "affect.sample", "i": i}, droppable=True)
        await out.send({"op": "event", "kind": "stress.spike.started", "i": i})
    os.kill(os.getpid(), signal.SIGKILL)  # at once: nothing gets a chance to flush

asyncio.run(main())
"""


async def test_what_a_worker_sent_survives_its_sigkill_and_only_samples_are_dropped() -> None:
    ours, theirs = socket.socketpair()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", SENDER, str(theirs.fileno()), pass_fds=(theirs.fileno(),), cwd=ROOT)
    theirs.close()
    reader, writer = await asyncio.open_unix_connection(sock=ours)
    got: list[dict[str, Any]] = []
    while (msg := await read_message(reader)) is not None:
        got.append(msg)
        if len(got) % 50 == 0:
            await asyncio.sleep(0.05)  # a slow reader: the sender's channel fills up
    assert await proc.wait() == -signal.SIGKILL
    writer.close()
    spikes = [m["i"] for m in got if m["kind"] == "stress.spike.started"]
    assert spikes == list(range(300))  # every one, in order, though the sender was killed


async def test_a_full_channel_drops_samples_first() -> None:
    ours, theirs = socket.socketpair()
    reader, keep = await asyncio.open_unix_connection(sock=ours, limit=MAX_LINE)
    _, writer = await asyncio.open_unix_connection(sock=theirs)
    out = OutChannel(writer, maxsize=4)
    big = "x" * 300_000  # fills the socket buffer: the writer has to wait for the reader
    sends = [asyncio.create_task(out.send({"op": "event", "k": "sample", "i": i, "pad": big},
                                          droppable=True)) for i in range(50)]
    spike = asyncio.create_task(out.send({"op": "event", "k": "spike"}))
    await asyncio.gather(*sends)
    got: list[str] = []
    while "spike" not in got:
        msg = await read_message(reader)
        assert msg is not None
        got.append(msg["k"])
    await spike
    assert got[-1] == "spike" and out.dropped > 0  # samples went, the spike did not
    assert len(got) - 1 + out.dropped == 50
    await out.aclose(flush=False)
    keep.close()


async def _readyz(http: aiohttp.ClientSession, base: str) -> dict[str, Any]:
    async with http.get(base + "/readyz") as resp:
        body: dict[str, Any] = await resp.json()
        return body


async def _calls(http: aiohttp.ClientSession, base: str) -> list[dict[str, Any]]:
    async with http.get(base + "/v1/calls", headers=AUTH) as resp:
        assert resp.status == 200
        calls: list[dict[str, Any]] = (await resp.json())["calls"]
        return calls


async def test_two_workers_share_the_calls_and_a_killed_worker_loses_nothing(
        tmp_path: Path) -> None:
    pcm = speech_48k()
    server = ScriptedWhep(lambda: [ScriptedTrack(pcm, [("talk", 600.0)]) for _ in range(2)])
    await server.start()
    receiver = await Receiver().start()
    urls = [f"{server.url}?call={i}" for i in range(4)]  # 4 calls of 2 speakers
    bridge = Bridge(tmp_path, workers=2,
                    extra=f'[[webhooks]]\nurl = "{receiver.url}"\nevents = ["*"]\n')
    try:
        await bridge.start()
        async with aiohttp.ClientSession() as http:
            for url in urls:
                async with http.post(bridge.base + "/v1/calls", headers=AUTH, json={
                        "connector": "whep", "url": url, "tracks": 2}) as resp:
                    assert resp.status == 201, await resp.text()
        await until(lambda: bridge.count("speaker.joined") == 8, "8 speakers", step_s=0.2)
        await until(lambda: bridge.count("affect.sample") >= 8, "samples", step_s=0.2)
        async with aiohttp.ClientSession() as http:
            calls = await _calls(http, bridge.base)
            ready = await _readyz(http, bridge.base)
            assert ready["status"] == "ready", ready
            assert {w["state"] for w in ready["workers"]} == {"ready"}
            assert {c["worker"] for c in calls} == {0, 1}  # spread over both
            async with http.get(bridge.base + "/metrics") as resp:
                text = await resp.text()
            speakers = {(e["call"]["id"], e["speaker"]["id"]) for e in bridge.events()
                        if e["type"] == "speaker.joined"}
            for call_id, speaker_id in speakers:  # one /metrics with every speaker's series
                assert f'affect_speech_seconds_total{{call="{call_id}",speaker="{speaker_id}"}}' \
                    in text
            victim = next(w for w in ready["workers"] if w["index"] == calls[0]["worker"])
            moved = {c["id"] for c in calls if c["worker"] == victim["index"]}
            lost = {(c, s) for c, s in speakers if c in moved}
            mark = len(bridge.events())
            killed_at = time.monotonic()
            os.kill(victim["pid"], signal.SIGKILL)

            def back() -> bool:
                later = bridge.events()[mark:]
                return {(e["call"]["id"], e["speaker"]["id"]) for e in later
                        if e["type"] == "speaker.joined"} >= lost
            await until(back, "the lost speakers back on the other worker", step_s=0.05)
            took = time.monotonic() - killed_at
            later = bridge.events()[mark:]
            assert {(e["call"]["id"], e["speaker"]["id"]) for e in later
                    if e["type"] == "speaker.left"} == lost
            assert {e["data"]["reason"] for e in later if e["type"] == "speaker.left"} == {
                "worker failed"}
            assert not [e for e in later if e["type"] in ("call.joined", "call.left")]
            calls = await _calls(http, bridge.base)
            assert {c["worker"] for c in calls if c["id"] in moved} == {
                1 - victim["index"]}
            await until(lambda: bridge.count("affect.sample") >= mark + 8, "samples again",
                        step_s=0.2)
            ready = await _readyz(http, bridge.base)
            replaced = next(w for w in ready["workers"] if w["index"] == victim["index"])
            assert replaced["pid"] != victim["pid"] and replaced["restarts"] == 1
            assert ready["failed_tasks"]["total"].get("workers/exit") == 1
            async with http.get(bridge.base + "/metrics") as resp:
                text = await resp.text()
            for call_id, speaker_id in lost:  # their series are back
                assert f'affect_stress_index{{call="{call_id}",speaker="{speaker_id}"}}' in text
        so_far = {e["id"] for e in bridge.events()}  # the killed worker's last events included
        await receiver.wait_for(lambda r: so_far <= r.delivered_ids())
        assert bridge.proc is not None
        bridge.proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(bridge.wait(), 60) == 0
    finally:
        bridge.kill()
        await server.aclose()
    print(f"killed worker's speakers back after {took:.1f} s")
    log.warning("killed worker's speakers back after %.1f s", took)
    printed = [e["id"] for e in bridge.events()]
    assert len(printed) == len(set(printed))
    assert bridge.count("call.left") == 4 and bridge.count("call.joined") == 4
    await receiver.stop()
    ids = [r.id for r in receiver.delivered]
    assert len(ids) == len(set(ids))  # every webhook once per event id
    assert set(ids) <= set(printed)
    # One outbox: every event was delivered from it or still waits in it for the next start.
    assert set(printed) <= set(ids) | bridge.outbox_ids()


def test_workers_share_the_model_threads_out() -> None:
    """threads = 0 is half the cores for one process; N workers each get half of their share
    (at least 1); a number set in config is kept."""
    from analyzers.loading import usable_cpus
    from bridge import stats
    from bridge.config import load_settings
    from bridge.workers.pool import WorkerPool

    async def emit(_: Any) -> None:
        return None

    pool = WorkerPool(load_settings(None), 2, emit, record=stats.ignore)
    dump = pool._worker_settings()
    assert dump["emotion"]["threads"] == dump["semantic"]["threads"] == max(
        1, usable_cpus() // 4)
    assert dump["workers"] == "auto" and dump["analyzers"] == ["prosody", "emotion"]
    fixed = WorkerPool(load_settings(None, emotion={"threads": 3}), 8, emit, record=stats.ignore)
    assert fixed._worker_settings()["emotion"]["threads"] == 3


async def test_run_takes_workers_on_the_command_line(tmp_path: Path) -> None:
    """`affect-bridge run --workers 2`, as the README writes it, over a config that says 1."""
    bridge = Bridge(tmp_path, workers=1, args=("--workers", "2"))
    try:
        await bridge.start()
        async with aiohttp.ClientSession() as http:
            ready = await _readyz(http, bridge.base)
        assert len(ready["workers"]) == 2 and {w["state"] for w in ready["workers"]} == {"ready"}
        assert bridge.proc is not None
        bridge.proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(bridge.wait(), 60) == 0
    finally:
        bridge.kill()
    from tests.conftest import run_cli

    bad = run_cli("run", "--workers", "two", "--listen", "127.0.0.1:1")
    assert bad.returncode == 2 and "workers" in bad.stderr


class _FakeWorker:
    def __init__(self, state: str) -> None:
        self.state, self.told_service_ready, self.sent = state, False, []

    async def send(self, msg: Any) -> None:
        self.sent.append(msg.op)


async def test_workers_are_told_the_service_is_ready_once_none_is_starting() -> None:
    """What a worker leaves until the service is ready (the emotion batch measurement, the
    background preparation) starts once no worker is still loading; a worker that died does
    not hold the others back; a restarted one is told once it is ready."""
    from bridge.config import load_settings
    from bridge.workers.pool import WorkerPool

    pool = WorkerPool(load_settings(None), 3, lambda e: None, record=lambda s: None)
    a, b, c = _FakeWorker("ready"), _FakeWorker("starting"), _FakeWorker("starting")
    pool.workers = [a, b, c]  # type: ignore[list-item]
    await pool._service_ready()
    assert a.sent == [] and b.sent == []
    b.state = "ready"
    await pool._service_ready()
    assert a.sent == [] and b.sent == []  # c still loading
    c.state = "dead"  # died while starting
    await pool._service_ready()
    assert a.sent == ["service_ready"] and b.sent == ["service_ready"] and c.sent == []
    c.state, c.told_service_ready = "starting", False  # restarted (launch resets the flag)
    await pool._service_ready()
    c.state = "ready"
    await pool._service_ready()
    assert a.sent == b.sent == c.sent == ["service_ready"]  # once each
    d = _FakeWorker("starting")  # one that hangs while loading
    a.told_service_ready, a.sent = False, []
    pool.workers = [a, d]  # type: ignore[list-item]
    await pool._service_ready()
    assert a.sent == []
    await pool._service_ready(force=True)  # after START_WAIT_S
    assert a.sent == ["service_ready"] and d.sent == []


def test_run_measures_the_emotion_batch_after_every_worker_is_ready(
        tiny_emotion_model: Path, tmp_path: Path) -> None:
    """A first start with a checkpoint: each worker measures its batch size and one starts the
    background preparation only once both are ready, not beside the other's model load."""
    config = tmp_path / "run.toml"
    config.write_text(f'analyzers = ["prosody", "emotion"]\n[emotion]\nmodel = '
                      f'"{tiny_emotion_model}"\ndevice = "cpu"\n')
    log_path = tmp_path / "run.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1",
           "AFFECT_BRIDGE_CACHE_DIR": str(tmp_path / "cache")}
    with log_path.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "bridge.cli", "run", "--config",
                                 str(config), "--listen", f"127.0.0.1:{free_port()}",
                                 "--workers", "2"], cwd=ROOT, env=env,
                                stdout=subprocess.DEVNULL, stderr=out)
        try:
            deadline = time.monotonic() + 180
            while time.monotonic() < deadline and (
                    log_path.read_text().count("emotion batch ") < 2
                    or "in the background" not in log_path.read_text()):
                assert proc.poll() is None, log_path.read_text()
                time.sleep(0.1)
        finally:
            proc.terminate()
            proc.wait(60)
    lines = log_path.read_text().splitlines()

    def first(text: str) -> int:
        return next(i for i, line in enumerate(lines) if text in line)

    # each worker measured (or, when the other's measurement was cached first, read) its size
    assert sum("emotion batch " in line for line in lines) == 2, lines
    both_ready = max(first("worker 0 ready"), first("worker 1 ready"))
    assert both_ready < first("emotion batch "), lines
    assert both_ready < first("in the background"), lines
    assert both_ready < first("after its load"), lines  # the precision chosen after, too
    from tests.test_prepare_background import _wait_for_jobs

    _wait_for_jobs(tmp_path / "cache")
