"""Outbound requests to media servers (bridge/outbound.py): the control API joins only servers
the allow-list admits and connects nowhere else; no redirects; WHEP ``Location`` on the same
origin only (the token goes nowhere else); upstream bodies never echoed; size and time limits;
secrets in URLs never logged; a fuzz of WHEP answers. Every server here is on 127.0.0.x."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web

from bridge.allowlist import AllowList, AllowRule, redact_url
from bridge.config import ConfigError, load_settings
from tests.conftest import api_client, until
from tests.media_helpers import ScriptedTrack, ScriptedWhep, speech_48k

pytestmark = pytest.mark.usefixtures("loopback_ice")

TOKEN = "outbound-api-token-51d2"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
WHEP_TOKEN = "whep-bearer-token-9c0e"
SECRETS = (TOKEN, WHEP_TOKEN, "hunter2", "INTERNAL-ONLY", "url-password", "query-secret")


class Listener:
    """A TCP listener that only counts who connects and what they sent (answers nothing)."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.connections = 0
        self.received = b""
        self._server: asyncio.Server | None = None
        self.port = 0

    async def __aenter__(self) -> Listener:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.connections += 1
            try:
                self.received += await asyncio.wait_for(reader.read(65536), 0.5)
            except TimeoutError:
                pass
            writer.close()

        self._server = await asyncio.start_server(handle, self.host, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()


async def _app_server(routes: Callable[[web.Application], None], host: str = "127.0.0.1",
                      ) -> tuple[web.AppRunner, str]:
    app = web.Application()
    routes(app)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, 0).start()
    return runner, f"http://{host}:{runner.addresses[0][1]}"


def _no_secret_logged(caplog: pytest.LogCaptureFixture) -> None:
    text = "\n".join(r.getMessage() + (r.exc_text or "") for r in caplog.records)
    for secret in SECRETS:
        assert secret not in text, secret
    assert not any(r.levelno >= logging.ERROR for r in caplog.records), text


async def _error(resp: Any, status: int, error: str) -> str:
    body = await resp.json()
    assert (resp.status, body.get("error")) == (status, error), body
    for secret in SECRETS:
        assert secret not in body["reason"], body
    return str(body["reason"])


# --- the allow-list ------------------------------------------------------------------------


def test_allow_rules_parse_and_match() -> None:
    allow = AllowList.parse(["janus.internal:8088", "*.media.example.org", "10.0.0.0/8:8088",
                             "[fd00::/8]:443", "192.168.1.7"])
    assert allow.admits_name("janus.internal", 8088)
    assert not allow.admits_name("janus.internal", 8089)
    assert allow.admits_name("a.b.media.example.org", 1)
    assert not allow.admits_name("media.example.org.evil.net", 443)
    assert allow.admits_name("10.1.2.3", 8088) and not allow.admits_name("10.1.2.3", 80)
    assert allow.admits_name("[fd00::1]", 443) and not allow.admits_name("[fe80::1]", 443)
    assert allow.admits_name("::ffff:192.168.1.7", 80)  # IPv4-mapped is the IPv4 address
    assert not allow.admits_name("127.0.0.1", 8088)
    for bad in ["", "a b", "host:0", "host:99999", "[::1", "http://x", "10.0.0.0/33"]:
        with pytest.raises(ValueError):
            AllowRule.parse(bad)
    with pytest.raises(ConfigError, match=r"outbound\.allow"):
        load_settings(None, outbound={"allow": ["not a host"]})


def test_urls_in_logs_lose_user_info_and_query() -> None:
    shown = redact_url("https://user:url-password@janus.example:8089/janus?token=query-secret#x")
    assert shown == "https://janus.example:8089/janus"


async def test_api_refuses_servers_outside_the_allow_list_and_connects_nowhere(
        caplog: pytest.LogCaptureFixture) -> None:
    """Default: only servers named in config. Every refused URL gets a JSON 403 and the
    listener it names sees no connection at all, whatever the spelling of its address."""
    caplog.set_level(logging.DEBUG)
    async with Listener() as target, Listener() as named:
        janus_url = f"http://127.0.0.1:{named.port}/janus"
        p = target.port
        urls = [f"http://127.0.0.1:{p}/whep", f"http://localhost:{p}/whep",
                f"http://127.1:{p}/whep", f"http://2130706433:{p}/whep",
                f"http://0x7f000001:{p}/whep", f"http://[::ffff:127.0.0.1]:{p}/whep",
                f"http://user:url-password@127.0.0.1:{p}/whep?token=query-secret",
                f"http://127.0.0.1:{p}/janus"]  # the configured server's path, another port
        async with api_client(TOKEN, janus=[{"url": janus_url}],
                              outbound={"allow": ["10.0.0.0/8", "*.example.org"]}) as api:
            for url in urls:
                for body in ({"connector": "whep", "url": url, "token": WHEP_TOKEN},
                             {"connector": "janus", "url": url, "room": 1}):
                    resp = await api.post("/v1/calls", headers=AUTH, json=body)
                    reason = await _error(resp, 403, "not_allowed")
                    assert "allow-list" in reason
            assert api.manager.calls == {} and api.events == []
            # The server named in config may be joined (here it answers nothing: unreachable).
            resp = await api.post("/v1/calls", headers=AUTH, json={
                "connector": "janus", "url": janus_url, "room": 1})
            await _error(resp, 422, "unreachable")
        await asyncio.sleep(0.2)
        assert target.connections == 0
        assert named.connections >= 1
    _no_secret_logged(caplog)


# --- the hardened client -------------------------------------------------------------------


@pytest.fixture
async def whep_api(caplog: pytest.LogCaptureFixture) -> AsyncIterator[Any]:
    caplog.set_level(logging.DEBUG)
    async with api_client(TOKEN, outbound={"allow": ["127.0.0.1"], "timeout_s": 1.0,
                                           "max_response_bytes": 65536}) as api:
        yield api


async def test_redirects_are_not_followed(whep_api: Any,
                                          caplog: pytest.LogCaptureFixture) -> None:
    async with Listener() as elsewhere:
        def routes(app: web.Application) -> None:
            async def redirect(request: web.Request) -> web.Response:
                raise web.HTTPTemporaryRedirect(f"http://127.0.0.1:{elsewhere.port}/whep")
            app.router.add_post("/whep", redirect)
            app.router.add_post("/janus", redirect)

        runner, base = await _app_server(routes)
        try:
            resp = await whep_api.post("/v1/calls", headers=AUTH, json={
                "connector": "whep", "url": base + "/whep", "token": WHEP_TOKEN})
            assert "307" in await _error(resp, 422, "upstream_error")
            resp = await whep_api.post("/v1/calls", headers=AUTH, json={
                "connector": "janus", "url": base + "/janus", "room": 1})
            assert "307" in await _error(resp, 422, "upstream_error")
        finally:
            await runner.cleanup()
        await asyncio.sleep(0.2)
        assert elsewhere.connections == 0
    assert whep_api.manager.calls == {}
    _no_secret_logged(caplog)


async def test_a_foreign_location_never_gets_the_token_a_same_origin_one_does(
        whep_api: Any, caplog: pytest.LogCaptureFixture) -> None:
    pcm = speech_48k()
    async with Listener("127.0.0.2") as foreign:
        for location in (f"http://127.0.0.2:{foreign.port}/whep/{{s}}",
                         f"//127.0.0.2:{foreign.port}/whep/{{s}}"):
            server = ScriptedWhep(lambda: [ScriptedTrack(pcm, [("talk", 30.0)])],
                                  location=lambda s, loc=location: loc.format(s=s))
            await server.start()
            try:
                resp = await whep_api.post("/v1/calls", headers=AUTH, json={
                    "connector": "whep", "url": server.url, "token": WHEP_TOKEN})
                assert resp.status == 201, await resp.text()
                call_id = (await resp.json())["id"]
                assert (await whep_api.delete(f"/v1/calls/{call_id}", headers=AUTH)).status == 200
            finally:
                await server.aclose()
        await asyncio.sleep(0.2)
        assert foreign.connections == 0 and WHEP_TOKEN.encode() not in foreign.received
    assert any("another origin" in r.getMessage() for r in caplog.records)
    # A relative Location (same origin) gets its DELETE with the token.
    server = ScriptedWhep(lambda: [ScriptedTrack(pcm, [("talk", 30.0)])])
    await server.start()
    try:
        resp = await whep_api.post("/v1/calls", headers=AUTH, json={
            "connector": "whep", "url": server.url, "token": WHEP_TOKEN})
        call_id = (await resp.json())["id"]
        await whep_api.delete(f"/v1/calls/{call_id}", headers=AUTH)
        assert server.delete_auth == [f"Bearer {WHEP_TOKEN}"] and server.sessions == 0
    finally:
        await server.aclose()
    _no_secret_logged(caplog)


async def test_upstream_bodies_are_never_echoed_and_limits_hold(
        whep_api: Any, caplog: pytest.LogCaptureFixture) -> None:
    """An error body with secrets in it: only the status comes back. An answer over the size
    limit (declared or chunked) and one slower than the time limit fail the join cleanly."""
    def routes(app: web.Application) -> None:
        async def leaky(request: web.Request) -> web.Response:
            return web.Response(status=500, text="INTERNAL-ONLY db_password=hunter2")

        async def huge(request: web.Request) -> web.Response:
            return web.Response(status=201, body=b"v=0\r\n" * 40000,
                                content_type="application/sdp")

        async def chunked(request: web.Request) -> web.StreamResponse:
            resp = web.StreamResponse(status=201, headers={"Content-Type": "application/sdp"})
            resp.enable_chunked_encoding()
            await resp.prepare(request)
            for _ in range(100):
                await resp.write(b"a=x\r\n" * 1000)
            return resp

        async def slow(request: web.Request) -> web.Response:
            await asyncio.sleep(5)
            return web.Response(status=201)

        for path, handler in (("/leaky", leaky), ("/huge", huge), ("/chunked", chunked),
                              ("/slow", slow)):
            app.router.add_post(path, handler)

    runner, base = await _app_server(routes)
    try:
        for path, status, error in (("/leaky", 422, "upstream_error"),
                                    ("/huge", 422, "bad_response"),
                                    ("/chunked", 422, "bad_response"),
                                    ("/slow", 422, "unreachable")):
            resp = await whep_api.post("/v1/calls", headers=AUTH, json={
                "connector": "whep", "url": base + path + "?token=query-secret",
                "token": WHEP_TOKEN})
            reason = await _error(resp, status, error)
            if path == "/leaky":
                assert "500" in reason and "db_password" not in reason
    finally:
        await runner.cleanup()
    assert whep_api.manager.calls == {} and whep_api.events == []
    _no_secret_logged(caplog)


async def test_fuzzed_whep_answers_never_give_a_5xx(whep_api: Any,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    """A fixed seed, 300 answers from a hostile WHEP endpoint: random statuses, content types,
    Location headers (other origins, garbage, schemes), bodies (garbage SDP, non-UTF-8, half an
    SDP, huge). Every join is a JSON 4xx or a clean 201; nothing is left joined, no secret in
    the log."""
    rng = random.Random(1202)
    pcm = speech_48k()
    real = ScriptedWhep(lambda: [ScriptedTrack(pcm, [("talk", 30.0)])])
    await real.start()
    locations = ["", "/whep/x", "http://127.0.0.2:1/x", "javascript:alert(1)", "//evil/x",
                 "http://[::1", "\x00", "ftp://127.0.0.1/x", "/" + "a" * 5000, "?token=x"]
    bodies: list[Callable[[str], Awaitable[bytes]]] = [
        lambda offer: asyncio.sleep(0, b""),
        lambda offer: asyncio.sleep(0, b"v=0\r\n"),
        lambda offer: asyncio.sleep(0, rng.randbytes(rng.randrange(1, 3000))),
        lambda offer: asyncio.sleep(0, b"v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n"),
        lambda offer: asyncio.sleep(0, b"\xff\xfe" * 100),
        lambda offer: asyncio.sleep(0, offer.encode()),  # the offer echoed back as an answer
    ]

    async def handler(request: web.Request) -> web.Response:
        offer = await request.text()
        status = rng.choice([200, 201, 201, 201, 202, 204, 301, 400, 404, 500, 503])
        body = await rng.choice(bodies)(offer)
        headers = {"Location": rng.choice(locations)}
        ctype = rng.choice(["application/sdp", "application/sdp; charset=x", "text/html",
                            "application/json"])
        return web.Response(status=status, body=body, headers=headers, content_type=ctype)

    runner, base = await _app_server(lambda app: app.router.add_post("/whep", handler))
    try:
        for _ in range(300):
            resp = await whep_api.post("/v1/calls", headers=AUTH, json={
                "connector": "whep", "url": base + "/whep", "token": WHEP_TOKEN})
            assert resp.status < 500, await resp.text()
            body = await resp.json()
            if resp.status == 201:  # a plausible answer: leave again
                await whep_api.delete(f"/v1/calls/{body['id']}", headers=AUTH)
            else:
                assert set(body) == {"error", "reason"}
        # still joins a real endpoint afterwards
        resp = await whep_api.post("/v1/calls", headers=AUTH, json={
            "connector": "whep", "url": real.url})
        assert resp.status == 201
        await until(lambda: any(e.type == "speaker.joined" for e in whep_api.events),
                    "the real endpoint's speaker")
        await whep_api.delete(f"/v1/calls/{(await resp.json())['id']}", headers=AUTH)
    finally:
        await runner.cleanup()
        await real.aclose()
    assert whep_api.manager.calls == {}
    _no_secret_logged(caplog)


async def test_janus_credentials_go_in_every_request_and_never_in_the_log(
        caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """A fake Janus that records what it is sent: a configured server's apisecret and token
    ride every POST body and the long poll's query; the request's pin rides the room join;
    none of them reaches the log, also when the join fails."""
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("JANUS_APISECRET", "hunter2")
    monkeypatch.setenv("JANUS_TOKEN", "query-secret")
    seen: list[tuple[str, Any]] = []

    async def handler(request: web.Request) -> web.Response:
        if request.method == "GET":
            seen.append(("GET", dict(request.query)))
            await asyncio.sleep(0.2)
            return web.json_response([])
        msg = await request.json()
        seen.append(("POST", msg))
        tx = msg.get("transaction")
        if msg.get("janus") in ("create", "attach"):
            return web.json_response({"janus": "success", "transaction": tx,
                                      "data": {"id": 42}})
        if msg.get("janus") == "message":  # the room refuses the pin
            return web.json_response({"janus": "success", "transaction": tx, "plugindata": {
                "plugin": "janus.plugin.videoroom",
                "data": {"error_code": 433, "error": "Unauthorized (wrong pin)"}}})
        return web.json_response({"janus": "success", "transaction": tx})

    runner, base = await _app_server(
        lambda app: app.router.add_route("*", "/janus{tail:.*}", handler))
    url = base + "/janus"
    try:
        async with api_client(TOKEN, janus=[{"url": url, "apisecret_env": "JANUS_APISECRET",
                                             "token_env": "JANUS_TOKEN"}]) as api:
            resp = await api.post("/v1/calls", headers=AUTH, json={
                "connector": "janus", "url": url, "room": 7, "pin": "url-password"})
            reason = await _error(resp, 422, "join_failed")
            assert "433" in reason
    finally:
        await runner.cleanup()
    posts = [m for kind, m in seen if kind == "POST"]
    assert posts and all(m.get("apisecret") == "hunter2" and m.get("token") == "query-secret"
                         for m in posts)
    joins = [m for m in posts if m.get("janus") == "message"
             and m["body"].get("request") == "join"]
    assert joins and all(m["body"]["pin"] == "url-password" for m in joins)
    polls = [q for kind, q in seen if kind == "GET"]
    assert polls and all(q.get("apisecret") == "hunter2" and q.get("token") == "query-secret"
                         for q in polls)
    _no_secret_logged(caplog)


def test_janus_credentials_that_are_named_but_missing_are_a_config_error(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    monkeypatch.delenv("NOT_SET_ANYWHERE", raising=False)
    with pytest.raises(ConfigError, match="NOT_SET_ANYWHERE"):
        load_settings(None, janus=[{"url": "http://janus:8088/janus",
                                    "apisecret_env": "NOT_SET_ANYWHERE"}])
    with pytest.raises(ConfigError, match="unreadable"):
        load_settings(None, janus=[{"url": "http://janus:8088/janus",
                                    "pin_file": str(tmp_path / "missing")}])
    (tmp_path / "pin").write_text("1234\n")
    settings = load_settings(None, janus=[{"url": "http://janus:8088/janus",
                                           "pin_file": str(tmp_path / "pin")}])
    assert settings.janus[0].credentials() == (None, None, "1234")


# --- /metrics protection -------------------------------------------------------------------


async def test_metrics_can_require_a_bearer_token() -> None:
    from aiohttp.test_utils import TestClient, TestServer
    from prometheus_client import CollectorRegistry

    from bridge.control.app import metrics_app

    async with TestClient(TestServer(metrics_app(CollectorRegistry(), token="m-tok"))) as c:
        for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "m-tok"}):
            resp = await c.get("/metrics", headers=headers)
            assert resp.status == 401 and (await resp.json())["error"] == "unauthorized"
        resp = await c.get("/metrics", headers={"Authorization": "Bearer m-tok"})
        assert resp.status == 200
    async with TestClient(TestServer(metrics_app(CollectorRegistry()))) as c:
        assert (await c.get("/metrics")).status == 200


async def test_run_serves_metrics_on_its_own_address_with_a_token(tmp_path: Any) -> None:
    """``[metrics] listen`` moves /metrics off the control API's listener; the token from
    AFFECT_BRIDGE_METRICS_TOKEN guards it there."""
    import os
    import sys

    import aiohttp

    from tests.conftest import ROOT, free_port

    api_port, metrics_port = free_port(), free_port()
    cfg = tmp_path / "run.toml"
    cfg.write_text(f'analyzers = ["prosody"]\n[metrics]\nlisten = "127.0.0.1:{metrics_port}"\n')
    env = {**os.environ, "AFFECT_BRIDGE_API_TOKEN": TOKEN, "HF_HUB_OFFLINE": "1",
           "AFFECT_BRIDGE_METRICS_TOKEN": "metrics-tok"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bridge.cli", "run", "--config", str(cfg),
        "--listen", f"127.0.0.1:{api_port}", cwd=ROOT, env=env,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    try:
        async with aiohttp.ClientSession() as http:
            for _ in range(300):
                try:
                    async with http.get(f"http://127.0.0.1:{api_port}/readyz") as resp:
                        if resp.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)
            async with http.get(f"http://127.0.0.1:{api_port}/metrics") as resp:
                assert resp.status == 404
            base = f"http://127.0.0.1:{metrics_port}/metrics"
            async with http.get(base) as resp:
                assert resp.status == 401
            async with http.get(base, headers={"Authorization": "Bearer metrics-tok"}) as resp:
                assert resp.status == 200 and "affect_build_info" in await resp.text()
    finally:
        proc.terminate()
        _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()[-2000:]
    assert "metrics-tok" not in err.decode()
