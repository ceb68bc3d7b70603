"""Control API: auth, bad requests change nothing, join/leave a real WHEP call; `run` + SIGTERM."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from bridge.allowlist import AllowList
from bridge.config import load_settings
from bridge.connectors.context import JoinContext
from bridge.control.app import create_app
from bridge.demo.media_source import DemoSource
from bridge.live.calls import CallManager
from bridge.pipeline.analysis import AnalysisEngine
from tests.conftest import ROOT, SOURCE_TOKEN, free_port

TOKEN = "test-token-123"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


pytestmark = pytest.mark.usefixtures("loopback_ice")


@pytest.fixture
async def client() -> Any:
    engine = AnalysisEngine(load_settings(None, analyzers=["prosody", "emotion"],
                                          emotion={"model": "nobody/not-cached"}))
    await engine.start()
    got: list[Any] = []

    async def emit(e: Any) -> None:
        got.append(e)

    manager = CallManager(engine, emit, silence_timeout_s=2.0)
    app = create_app(engine, manager, token=TOKEN,
                     join=JoinContext(allow=AllowList.parse(["127.0.0.1"])))
    async with TestClient(TestServer(app)) as c:
        c.events = got
        yield c
    await manager.aclose()
    await engine.aclose()


async def _calls(client: TestClient) -> list[Any]:
    resp = await client.get("/v1/calls", headers=AUTH)
    assert resp.status == 200
    return (await resp.json())["calls"]


async def test_health_and_readiness_detail(client: TestClient) -> None:
    assert (await client.get("/healthz")).status == 200
    resp = await client.get("/readyz")
    body = await resp.json()
    assert resp.status == 200 and body["status"] == "ready"
    assert body["analyzers"]["prosody"] == "ready"
    assert body["analyzers"]["emotion"].startswith("degraded: cannot load emotion model")


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer nope"},
                                     {"Authorization": TOKEN}])
async def test_v1_needs_the_bearer_token(client: TestClient, headers: dict[str, str]) -> None:
    for method, path in [("GET", "/v1/calls"), ("POST", "/v1/calls"),
                         ("DELETE", "/v1/calls/x"), ("GET", "/v1/calls/x/speakers"),
                         ("GET", "/v1/webhooks/failed"),
                         ("POST", "/v1/webhooks/failed/1/replay")]:
        resp = await client.request(method, path, headers=headers)
        assert resp.status == 401
        assert (await resp.json())["error"] == "unauthorized"


async def test_no_configured_token_refuses_everything() -> None:
    engine = AnalysisEngine(load_settings(None, analyzers=[]))
    app = create_app(engine, CallManager(engine, _discard), token=None)
    async with TestClient(TestServer(app)) as c:
        resp = await c.get("/v1/calls", headers={"Authorization": "Bearer "})
        assert resp.status == 401
        assert "AFFECT_BRIDGE_API_TOKEN" in (await resp.json())["reason"]


async def _discard(e: Any) -> None:
    pass


@pytest.mark.parametrize(
    ("body", "status", "error"),
    [
        ("{not json", 400, "invalid_json"),
        ("[1, 2]", 400, "invalid_request"),
        (json.dumps({"connector": "zoom", "url": "http://x"}), 400, "unknown_connector"),
        (json.dumps({"connector": "whep"}), 422, "invalid_request"),
        (json.dumps({"connector": "whep", "url": "ftp://x"}), 422, "invalid_request"),
        (json.dumps({"connector": "whep", "url": "http://127.0.0.1:9/whep", "tracks": 0}), 422,
         "invalid_request"),
        (json.dumps({"connector": "whep", "url": "http://127.0.0.1:9/whep"}), 422, "unreachable"),
        (json.dumps({"connector": "janus", "url": "http://127.0.0.1:9/janus", "room": 1234}), 422,
         "unreachable"),
        (json.dumps({"connector": "janus", "url": "http://127.0.0.1:9/janus", "room": -5}), 422,
         "invalid_request"),
        (json.dumps({"connector": "janus", "url": "http://127.0.0.1:9/janus", "room": ""}), 422,
         "invalid_request"),
        (json.dumps({"connector": "janus", "url": "http://127.0.0.1:9/janus", "room": [1]}), 422,
         "invalid_request"),
        (json.dumps({"connector": None}), 400, "unknown_connector"),
    ],
)
async def test_bad_requests_get_a_reason_and_change_nothing(client: TestClient, body: str,
                                                            status: int, error: str) -> None:
    resp = await client.post("/v1/calls", data=body, headers=AUTH)
    assert resp.status == status
    payload = await resp.json()
    assert payload["error"] == error and payload["reason"]
    assert await _calls(client) == []
    assert client.events == []


async def test_join_list_and_leave_a_whep_call(client: TestClient, source: DemoSource) -> None:
    body = {"connector": "whep", "url": source.url, "token": SOURCE_TOKEN, "tracks": 3,
            "displays": ["Alice", "Bob", "Carol"]}
    resp = await client.post("/v1/calls", json=body, headers=AUTH)
    assert resp.status == 201
    call_id = (await resp.json())["id"]
    assert (await client.post("/v1/calls", json=body, headers=AUTH)).status == 409
    [call] = await _calls(client)
    assert call["id"] == call_id
    assert {s["display"] for s in call["speakers"]} == {"Alice", "Bob", "Carol"}
    assert all("stress_index" in s for s in call["speakers"])
    resp = await client.get(f"/v1/calls/{call_id}/speakers", headers=AUTH)
    assert len((await resp.json())["speakers"]) == 3
    assert (await client.get("/v1/calls/nope", headers=AUTH)).status == 404
    assert (await client.delete(f"/v1/calls/{call_id}", headers=AUTH)).status == 200
    assert (await client.delete(f"/v1/calls/{call_id}", headers=AUTH)).status == 404
    assert await _calls(client) == []
    assert source.sessions == 0
    types = [e.type for e in client.events]
    assert types[0] == "call.joined" and types[-1] == "call.left"
    assert types.count("speaker.left") == 3


async def test_openapi_document(client: TestClient) -> None:
    doc = await (await client.get("/openapi.json")).json()
    assert doc["openapi"].startswith("3.")
    assert {"/healthz", "/readyz", "/v1/calls", "/v1/calls/{call_id}",
            "/v1/calls/{call_id}/speakers"} <= set(doc["paths"])


async def test_run_joins_on_request_and_leaves_every_call_on_sigterm(tmp_path: Path,
                                                                     source: DemoSource) -> None:
    port = free_port()
    cfg = tmp_path / "run.toml"
    cfg.write_text('analyzers = ["prosody"]\n[live]\nice_host_addresses = ["127.0.0.1"]\n'
                   '[outbound]\nallow = ["127.0.0.1"]\n')
    env = {**os.environ, "AFFECT_BRIDGE_API_TOKEN": TOKEN, "HF_HUB_OFFLINE": "1"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bridge.cli", "run", "--config", str(cfg),
        "--listen", f"127.0.0.1:{port}", cwd=ROOT, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as http:
            for _ in range(300):  # up to 30 s for start-up
                try:
                    async with http.get(base + "/readyz") as resp:
                        if resp.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)
            async with http.post(base + "/v1/calls", headers=AUTH,
                                 json={"connector": "whep", "url": source.url,
                                       "token": SOURCE_TOKEN, "tracks": 2}) as r:
                assert r.status == 201, await r.text()
            await asyncio.sleep(1.0)
        proc.send_signal(signal.SIGTERM)
        raw_out, raw_err = await asyncio.wait_for(proc.communicate(), 60)
        out, err = raw_out.decode(), raw_err.decode()
    finally:
        if proc.returncode is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert TOKEN not in err and TOKEN not in out  # never logged
    types = [json.loads(line)["type"] for line in out.splitlines()]
    assert types[0] == "call.joined" and types[-1] == "call.left"
    assert types.count("speaker.joined") == 2 and types.count("speaker.left") == 2
    assert source.sessions == 0


async def test_webhook_failed_list_and_replay_without_webhooks(client: TestClient) -> None:
    resp = await client.get("/v1/webhooks/failed", headers=AUTH)
    assert resp.status == 200 and (await resp.json()) == {"failed": []}
    resp = await client.post("/v1/webhooks/failed/7/replay", headers=AUTH)
    assert resp.status == 404 and (await resp.json())["error"] == "not_found"
    resp = await client.post("/v1/webhooks/failed/x1/replay", headers=AUTH)
    assert resp.status == 400 and (await resp.json())["error"] == "invalid_request"


async def test_built_service_serves_metrics_and_webhook_readiness(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from bridge.control.app import build_app

    monkeypatch.setenv("AFFECT_BRIDGE_WEBHOOK_SECRET", "whsec_" + "QUJD" * 8)
    settings = load_settings(None, analyzers=["prosody"],
                             webhooks=[{"url": "http://127.0.0.1:9/hook"}],
                             outbox={"path": str(tmp_path / "outbox.sqlite3")})
    app = build_app(settings, token=TOKEN, emit=_discard)
    async with TestClient(TestServer(app)) as c:
        resp = await c.get("/metrics")
        text = await resp.text()
        assert resp.status == 200 and resp.content_type == "text/plain"
        assert 'affect_build_info{' in text and "affect_calls_active 0.0" in text
        assert "affect_webhook_outbox_pending 0.0" in text
        body = await (await c.get("/readyz")).json()
        assert body["sinks"] == {"console": "started", "webhooks": "started"}


async def test_failed_webhook_listed_and_replayed_over_the_api(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from bridge.control.app import WEBHOOKS, build_app
    from tests.webhook_helpers import SECRET_A, Receiver, spike

    monkeypatch.setenv("AFFECT_BRIDGE_WEBHOOK_SECRET", SECRET_A)
    down = await Receiver().start()
    port = down.port
    await down.stop()
    settings = load_settings(None, analyzers=[], webhooks=[
        {"url": f"http://127.0.0.1:{port}/hook", "retry_schedule_s": [], "name": "hook"}],
        outbox={"path": str(tmp_path / "outbox.sqlite3")})
    app = build_app(settings, token=TOKEN, emit=_discard)
    async with TestClient(TestServer(app)) as c:
        event = spike(3)
        await app[WEBHOOKS].emit(event)
        for _ in range(100):  # no retries configured: the first failure is final
            failed = (await (await c.get("/v1/webhooks/failed", headers=AUTH)).json())["failed"]
            if failed:
                break
            await asyncio.sleep(0.05)
        assert [(f["event_id"], f["endpoint"], f["attempts"]) for f in failed] == [
            (event.id, "hook", 1)]
        up = await Receiver(port=port).start()
        try:
            resp = await c.post(f"/v1/webhooks/failed/{failed[0]['id']}/replay", headers=AUTH)
            assert resp.status == 202
            await up.wait_for(lambda r: event.id in r.delivered_ids())
        finally:
            await up.stop()
        assert (await (await c.get("/v1/webhooks/failed", headers=AUTH)).json())["failed"] == []
