"""The control API against hostile clients and hostile media servers: every answer is a JSON
4xx (never a 5xx), nothing changes, the log gets one line per client mistake and never a token
or a traceback. Media servers here are fakes on 127.0.0.1; nothing leaves loopback."""

from __future__ import annotations

import asyncio
import json
import logging
import random
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from tests.conftest import api_client

TOKEN = "hardening-token-7f3a9c"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
CLOSED = "http://127.0.0.1:9/x"  # nothing listens on the discard port: refused at once


@pytest.fixture
async def api(caplog: pytest.LogCaptureFixture) -> Any:
    caplog.set_level(logging.DEBUG)
    async with api_client(TOKEN, outbound={"allow": ["127.0.0.1"]}) as client:
        yield client


async def _json_error(resp: Any) -> dict[str, Any]:
    assert resp.status < 500, (resp.status, await resp.text())
    assert resp.content_type == "application/json", await resp.text()
    body = await resp.json()
    assert set(body) == {"error", "reason"} and body["reason"], body
    return body


async def _raw(client: TestClient, data: bytes, *, close_early: bool = False) -> bytes:
    """Send raw bytes to the server (what an HTTP client library would refuse to send)."""
    reader, writer = await asyncio.open_connection(client.host, client.port)
    writer.write(data)
    await writer.drain()
    if close_early:
        writer.close()
        await writer.wait_closed()
        return b""
    answer = await asyncio.wait_for(reader.read(65536), 10)
    writer.close()
    return answer


def _clean_log(caplog: pytest.LogCaptureFixture) -> None:
    text = "\n".join(r.getMessage() + (r.exc_text or "") for r in caplog.records)
    assert TOKEN not in text
    assert not any(r.exc_info for r in caplog.records), [r.getMessage() for r in caplog.records
                                                         if r.exc_info]
    assert not any(r.levelno >= logging.ERROR for r in caplog.records), text


@pytest.mark.parametrize(("method", "path", "kwargs", "status"), [
    ("POST", "/v1/calls", {"data": b'{"connector": "whep"}',
                           "headers": {"Content-Type": "application/json; charset=bogus"}}, 400),
    ("POST", "/v1/calls", {"data": b"1" * 5000}, 400),
    ("POST", "/v1/calls", {"data": (f'{{"connector": "janus", "url": "{CLOSED}", '
                                    f'"room": {"9" * 5000}}}').encode()}, 400),
    ("POST", "/v1/calls", {"data": b"[" * 10000 + b"]" * 10000}, 400),
    ("POST", "/v1/calls", {"data": b'{"connector": "janus", "room": NaN}'}, 400),
    ("POST", "/v1/calls", {"data": b"\xff\xfe{}"}, 400),
    ("POST", "/v1/calls", {"data": b"x" * 100_000}, 413),
    ("POST", "/v1/webhooks/failed/%C2%B2/replay", {}, 400),
    ("POST", "/v1/webhooks/failed/" + "9" * 5000 + "/replay", {}, 400),
    ("POST", "/v1/webhooks/failed/99999999999999999999999/replay", {}, 400),
    ("GET", "/v1/nothing-here", {}, 404),
    ("PATCH", "/v1/calls", {}, 405),
    ("GET", "/nothing", {}, 404),
])
async def test_bad_requests_are_json_4xx_and_change_nothing(
        api: TestClient, caplog: pytest.LogCaptureFixture, method: str, path: str,
        kwargs: dict[str, Any], status: int) -> None:
    headers = {**AUTH, **kwargs.pop("headers", {})}
    resp = await api.request(method, path, headers=headers, **kwargs)
    body = await _json_error(resp)
    assert resp.status == status, body
    assert api.manager.calls == {} and api.events == []
    _clean_log(caplog)


async def test_raw_protocol_abuse_never_logs_the_token_or_a_traceback(
        api: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    """Non-UTF-8 bytes in Authorization, a control byte in a header next to the token, a body
    cut off mid-way: answered or dropped, one line at most, no token, no traceback."""
    answer = await _raw(api, b"GET /v1/calls HTTP/1.1\r\nHost: x\r\n"
                             b"Authorization: Bearer \xff\xfe\xc3(\r\nConnection: close\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 401"), answer[:80]
    assert b'"error"' in answer
    answer = await _raw(api, b"GET /v1/calls?x=\x01 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                             + TOKEN.encode() + b"\r\nX-Bad: a\x01b\r\nConnection: close\r\n\r\n")
    # refused in aiohttp's HTTP parser, before any handler (its own plain-text 400)
    assert answer.split(b"\r\n", 1)[0].endswith(b" 400 Bad Request"), answer[:80]
    await _raw(api, b"POST /v1/calls HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                    + TOKEN.encode() + b"\r\nContent-Type: application/json\r\n"
                    b"Content-Length: 1000\r\n\r\n{\"conn", close_early=True)
    await asyncio.sleep(0.3)
    resp = await api.get("/v1/calls", headers=AUTH)  # still serving, unchanged
    assert resp.status == 200 and (await resp.json()) == {"calls": []}
    _clean_log(caplog)


def _fuzz_value(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(9 if depth < 3 else 6)
    if kind == 0:
        return rng.choice([None, True, False])
    if kind == 1:
        return rng.choice([0, -1, 2**63, -(2**63), 10**19, 1.5, -0.0, 1e308])
    if kind == 2:
        return "".join(chr(rng.choice([rng.randrange(32, 127), rng.randrange(0, 32),
                                       rng.randrange(0x80, 0x3000), 0x202E]))
                       for _ in range(rng.randrange(0, 40)))
    if kind == 3:
        return rng.choice(["janus", "whep", "file", "", "JANUS", CLOSED, "ftp://127.0.0.1/",
                           "http://", "http://127.0.0.1:9/" + "a" * 3000])
    if kind == 4:
        return rng.choice([CLOSED, "http://[::1", "http://127.0.0.1:9/x?token=secret"])
    if kind == 5:
        return "x" * rng.choice([0, 1, 129, 5000])
    if kind == 6:
        return [_fuzz_value(rng, depth + 1) for _ in range(rng.randrange(0, 4))]
    return {rng.choice(["connector", "url", "room", "token", "tracks", "displays",
                        "display_name", "leave_when_empty", "x"]): _fuzz_value(rng, depth + 1)
            for _ in range(rng.randrange(0, 5))}


async def test_fuzzed_control_api_never_answers_5xx(api: TestClient,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    """A fixed seed, 2000 requests: random methods, paths, bodies and content types. Joins can
    only point at the closed port on 127.0.0.1. Never a 5xx, always JSON errors, no call left
    joined, no token or traceback in the log."""
    rng = random.Random(20261202)
    paths = ["/v1/calls", "/v1/calls/janus:1", "/v1/calls/%00", "/v1/calls/x/speakers",
             "/v1/webhooks/failed", "/v1/webhooks/failed/1/replay", "/readyz", "/openapi.json",
             "/v1/" + "a" * 300, "/v1/calls/\u202e"]
    for _ in range(2000):
        method = rng.choice(["GET", "POST", "POST", "POST", "DELETE", "PUT"])
        path = rng.choice(paths)
        body = {"connector": rng.choice(["janus", "whep"]), "url": CLOSED} if rng.random() < .3 \
            else {}
        body.update(v if isinstance(v := _fuzz_value(rng), dict) else {"x": v})
        data = json.dumps(body).encode() if rng.random() < 0.9 else rng.randbytes(
            rng.randrange(0, 200))
        headers = dict(AUTH) if rng.random() < 0.9 else {"Authorization": "Bearer nope"}
        headers["Content-Type"] = rng.choice(["application/json", "text/plain",
                                              "application/json; charset=latin-1", ""])
        resp = await api.request(method, path, data=data, headers=headers)
        assert resp.status < 500, (method, path, data[:200], await resp.text())
        if resp.status >= 400:
            await _json_error(resp)
    assert api.manager.calls == {}
    _clean_log(caplog)


async def test_malformed_janus_replies_are_a_4xx_and_leave_nothing(
        api: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    """A fake Janus on 127.0.0.1 answers create/attach/join with garbage (a fixed seed, 300
    replies: {}, lists, wrong types, missing ids, non-JSON, "abc" as an id): every join is a
    JSON 422, never a 500 or a misleading 409, and nothing stays registered."""
    rng = random.Random(7)
    garbage: list[Any] = [{}, [1, 2], {"data": {"id": "abc"}}, {"janus": "success"},
                          {"janus": "success", "data": []}, {"janus": "error", "error": "x"},
                          {"janus": "error", "error": {"code": "x"}}, "not json", None, 7,
                          {"janus": "success", "data": {"id": True}}]
    replies: list[Any] = []

    async def handler(request: web.Request) -> web.Response:
        msg = await request.json()
        reply = replies.pop(0) if replies else {}
        if reply == "not json":
            return web.Response(text="<html>", content_type="text/html")
        if isinstance(reply, dict) and reply.get("janus") == "success" and "data" not in reply:
            reply = {**reply, "data": {"id": rng.randrange(1, 10**6)}}
        if isinstance(reply, dict):
            reply = {**reply, "transaction": msg.get("transaction")}
        return web.json_response(reply)

    app = web.Application()
    app.router.add_route("*", "/janus{tail:.*}", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/janus"
    try:
        for _ in range(100):
            # create, attach, join: each may be garbage or a plausible success
            replies[:] = [rng.choice(garbage + [{"janus": "success"}] * 3) for _ in range(3)]
            resp = await api.post("/v1/calls", headers=AUTH, json={
                "connector": "janus", "url": url, "room": 1234})
            body = await _json_error(resp)
            assert resp.status == 422, body
        assert api.manager.calls == {} and api.events == []
    finally:
        await runner.cleanup()
    _clean_log(caplog)
