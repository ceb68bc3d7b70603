"""The control API from any replica (bridge/control/routing.py): a call's requests are forwarded to the
replica that owns its id. Two real ``affect-bridge run`` processes on 127.0.0.1:P and 127.0.0.2:P
(shard 0 and 1 of 2) joining a WHEP source in the test; everything stays on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bridge.config import ConfigError, ShardSettings, load_settings
from bridge.control.routing import FORWARDED, OWNER, Router
from bridge.control.shard import owner
from tests.conftest import ROOT, api_client, until
from tests.media_helpers import ScriptedTrack, ScriptedWhep, speech_48k

TOKEN = "routing-token-5d1f"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def whep_id(url: str) -> str:
    """The call id the WHEP connector gives ``url`` (bridge/connectors/whep.py)."""
    return "whep:" + hashlib.sha256(url.encode()).hexdigest()[:12]


# --- configuration --------------------------------------------------------------------------


@pytest.mark.parametrize(("shard", "message"), [
    ({"count": 2, "peer_url": "http://ab-0.h.ns.svc:9464"}, "must contain {index}"),
    ({"count": 2, "peer_url": "http://ab-{ordinal}.h.ns.svc:9464"}, "only placeholder"),
    ({"count": 2, "peer_url": "http://user:pw@ab-{index}.h:9464"}, "must not carry credentials"),
    ({"count": 2, "peer_url": "http://ab-{index}.h:9464/api"}, "without a path"),
    ({"count": 2, "peers": ["http://127.0.0.1:1"]}, "peers names 1 replicas but count is 2"),
    ({"count": 1, "peers": ["ftp://127.0.0.1"]}, "must be http(s)://host[:port]"),
    ({"count": 2, "peers": ["http://a:1", "http://b:1"], "peer_url": "http://a-{index}:1"},
     "peer_url or peers, not both"),
])
def test_peer_addresses_are_validated(shard: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match="shard") as err:
        load_settings(None, shard=shard)
    assert message in str(err.value)
    assert "pw" not in str(err.value)


def test_peer_url_template_and_list() -> None:
    shard = ShardSettings(index=1, count=3, peer_url="http://ab-{index}.ab-headless.ns.svc:9464")
    assert shard.peer(2) == "http://ab-2.ab-headless.ns.svc:9464"
    listed = ShardSettings(index=0, count=2, peers=["http://127.0.0.1:5/", "http://127.0.0.2:5"])
    assert [listed.peer(0), listed.peer(1)] == ["http://127.0.0.1:5", "http://127.0.0.2:5"]
    # One replica, or no addresses: nothing is ever forwarded.
    assert Router(ShardSettings()).elsewhere("whep:abc") is None
    assert all(Router(ShardSettings(index=0, count=2)).elsewhere(f"janus:{r}") is None
               for r in range(50))


# --- in one process: what is answered here, and an owner that cannot be reached --------------


async def test_unroutable_posts_are_answered_here_and_an_unreachable_owner_is_a_502() -> None:
    dead = _free_port("127.0.0.2")  # nothing listens there
    shard = {"index": 0, "count": 2, "peers": ["http://127.0.0.1:1", f"http://127.0.0.2:{dead}"]}
    async with api_client(TOKEN, shard=shard, outbound={"allow": ["127.0.0.1"]}) as client:
        # The call id cannot be computed: the local handler's own errors.
        resp = await client.post("/v1/calls", headers=AUTH, data=b"{not json")
        assert (resp.status, (await resp.json())["error"]) == (400, "invalid_json")
        resp = await client.post("/v1/calls", headers=AUTH, json={"connector": "nope"})
        assert (resp.status, (await resp.json())["error"]) == (400, "unknown_connector")
        resp = await client.post("/v1/calls", headers=AUTH, json={"connector": "whep"})
        assert (resp.status, (await resp.json())["error"]) == (422, "invalid_request")
        # A call replica 1 owns: its owner is down, nothing joined here.
        url = next(u for u in (f"http://127.0.0.1:9/whep?c={i}" for i in range(100))
                   if owner(whep_id(u), 2) == 1)
        resp = await client.post("/v1/calls", headers=AUTH, json={"connector": "whep",
                                                                   "url": url})
        body = await resp.json()
        assert resp.status == 502 and body["error"] == "owner_unreachable", body
        assert "replica 1" in body["reason"] and TOKEN not in json.dumps(body)
        assert client.manager.calls == {}
        mine = next(f"janus:{r}" for r in range(100) if owner(f"janus:{r}", 2) == 0)
        theirs = next(f"janus:{r}" for r in range(100) if owner(f"janus:{r}", 2) == 1)
        resp = await client.get(f"/v1/calls/{theirs}", headers=AUTH)
        assert (resp.status, (await resp.json())["error"]) == (502, "owner_unreachable")
        # Its own ids, a forwarded request, and the list are answered here.
        resp = await client.get(f"/v1/calls/{mine}", headers=AUTH)
        assert (resp.status, OWNER in resp.headers) == (404, False)
        resp = await client.get(f"/v1/calls/{theirs}", headers={**AUTH, FORWARDED: "1"})
        assert (resp.status, (await resp.json())["error"]) == (404, "not_found")
        resp = await client.get("/v1/calls", headers=AUTH)
        assert (resp.status, await resp.json()) == (200, {"calls": []})
        # The token is checked before anything is forwarded.
        resp = await client.get(f"/v1/calls/{theirs}", headers={"Authorization": "Bearer no"})
        assert (resp.status, (await resp.json())["error"]) == (401, "unauthorized")


# --- two real replicas -------------------------------------------------------------------------


def _free_port(*also: str) -> int:
    """A port free on 127.0.0.1 and on each address in ``also``."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        try:
            for host in also:
                with socket.socket() as s:
                    s.bind((host, port))
        except OSError:
            continue
        return port
    raise AssertionError("no port free on every address")


class Replica:
    """``affect-bridge run`` as shard ``index`` of 2 on 127.0.0.<index+1>:``port``."""

    def __init__(self, tmp: Path, index: int, port: int) -> None:
        self.index = index
        self.host = f"127.0.0.{index + 1}"
        self.base = f"http://{self.host}:{port}"
        peers = [f"http://127.0.0.{i + 1}:{port}" for i in range(2)]
        self.config = tmp / f"replica-{index}.toml"
        self.config.write_text(
            'analyzers = ["prosody"]\nworkers = 1\n'
            '[live]\nice_host_addresses = ["127.0.0.1"]\n'
            '[outbound]\nallow = ["127.0.0.1"]\n'
            f'[outbox]\npath = "{tmp / f"outbox-{index}.sqlite3"}"\n'
            f'[shard]\nindex = {index}\ncount = 2\npeers = {json.dumps(peers)}\n')
        self.lines: list[str] = []
        self.proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AFFECT_BRIDGE_")}
        env |= {"AFFECT_BRIDGE_API_TOKEN": TOKEN, "AFFECT_BRIDGE_WORKERS": "1",
                "HF_HUB_OFFLINE": "1"}
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bridge.cli", "run", "--config", str(self.config),
            "--listen", self.base.removeprefix("http://"), cwd=ROOT, env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
        self._reader = asyncio.create_task(self._read())

    async def ready(self) -> None:
        async with aiohttp.ClientSession() as http:
            for _ in range(600):
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.get(self.base + "/readyz") as resp:
                        if resp.status == 200:
                            return
                await asyncio.sleep(0.1)
        raise AssertionError(f"replica {self.index} never became ready")

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        async for raw in self.proc.stdout:
            self.lines.append(raw.decode())

    def joined(self) -> set[str]:
        """Ids of the calls this replica emitted call.joined for."""
        out = set()
        for line in self.lines:
            with contextlib.suppress(ValueError, KeyError, TypeError):
                event = json.loads(line)
                if event["type"] == "call.joined":
                    out.add(event["call"]["id"])
        return out

    def left(self) -> set[str]:
        out = set()
        for line in self.lines:
            with contextlib.suppress(ValueError, KeyError, TypeError):
                event = json.loads(line)
                if event["type"] == "call.left":
                    out.add(event["call"]["id"])
        return out

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), 30)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        if self._reader is not None:
            await self._reader


@pytest.mark.usefixtures("loopback_ice")
async def test_two_replicas_answer_for_each_others_calls(tmp_path: Path) -> None:
    port = _free_port("127.0.0.2")
    replicas = [Replica(tmp_path, 0, port), Replica(tmp_path, 1, port)]
    pcm = speech_48k()
    server = ScriptedWhep(lambda: [ScriptedTrack(pcm, [("talk", 600.0)])])
    await server.start()
    # Two calls each replica owns: a{i} is posted to the other replica, b{i} to the owner.
    urls: dict[int, list[str]] = {0: [], 1: []}
    for i in range(200):
        url = f"{server.url}?call={i}"
        urls[owner(whep_id(url), 2)].append(url)
    to_other = {0: urls[1][0], 1: urls[0][0]}  # posted to replica i, owned by 1 - i
    try:
        for replica in replicas:
            await replica.start()
        for replica in replicas:
            await replica.ready()
        async with aiohttp.ClientSession() as http:
            async def call(replica: Replica, method: str, path: str, *,
                           headers: dict[str, str] | None = None, body: Any = None,
                           ) -> tuple[int, dict[str, Any], str | None]:
                async with http.request(method, replica.base + path, json=body,
                                        headers=AUTH if headers is None else headers) as resp:
                    return resp.status, await resp.json(), resp.headers.get(OWNER)

            async def local_ids(replica: Replica) -> set[str]:
                _, body, _ = await call(replica, "GET", "/v1/calls",
                                        headers={**AUTH, FORWARDED: "test"})
                return {c["id"] for c in body["calls"]}

            # POST /v1/calls to the replica that does not own the call: joined on its owner.
            for i, replica in enumerate(replicas):
                url = to_other[i]
                status, body, answered_by = await call(
                    replica, "POST", "/v1/calls", body={"connector": "whep", "url": url})
                assert (status, body, answered_by) == (201, {"id": whep_id(url)}, str(1 - i))
            # ... and to the owner itself: answered there, nothing forwarded.
            status, body, answered_by = await call(
                replicas[0], "POST", "/v1/calls", body={"connector": "whep", "url": urls[0][1]})
            assert (status, answered_by) == (201, None)
            a0, a1 = whep_id(to_other[0]), whep_id(to_other[1])  # owned by 1, by 0
            assert await local_ids(replicas[0]) == {a1, whep_id(urls[0][1])}
            assert await local_ids(replicas[1]) == {a0}
            await until(lambda: replicas[1].joined() == {a0}, "call.joined on replica 1")
            assert replicas[0].joined() == {a1, whep_id(urls[0][1])}  # each call joined once
            # The same call again, from either replica: the owner's 409.
            for replica in replicas:
                status, body, _ = await call(replica, "POST", "/v1/calls",
                                             body={"connector": "whep", "url": to_other[0]})
                assert (status, body["error"]) == (409, "already_joined")

            # GET one call and its speakers from the replica that does not hold it.
            status, body, answered_by = await call(replicas[0], "GET", f"/v1/calls/{a0}")
            assert (status, body["id"], body["connector"], answered_by) == (200, a0, "whep", "1")
            status, body, answered_by = await call(replicas[0], "GET",
                                                   f"/v1/calls/{a0}/speakers")
            assert (status, answered_by) == (200, "1") and isinstance(body["speakers"], list)
            # An unknown id: the owner's JSON 404.
            unknown = next(f"whep:{i:012x}" for i in range(100) if owner(f"whep:{i:012x}", 2) == 1)
            status, body, answered_by = await call(replicas[0], "GET", f"/v1/calls/{unknown}")
            assert (status, body["error"], answered_by) == (404, "not_found", "1")
            assert unknown in body["reason"]
            # A wrong token: 401 where it arrived, never forwarded; nothing joined.
            bad = {"Authorization": "Bearer wrong"}
            status, body, answered_by = await call(replicas[0], "GET", f"/v1/calls/{a0}",
                                                   headers=bad)
            assert (status, body["error"], answered_by) == (401, "unauthorized", None)
            status, body, answered_by = await call(
                replicas[0], "POST", "/v1/calls", headers=bad,
                body={"connector": "whep", "url": urls[1][1]})
            assert (status, answered_by) == (401, None)
            assert whep_id(urls[1][1]) not in await local_ids(replicas[1])

            # DELETE from the replica that does not hold the call: its owner leaves it.
            status, body, answered_by = await call(replicas[0], "DELETE", f"/v1/calls/{a0}")
            assert (status, body["id"], body["left"], answered_by) == (200, a0, True, "1")
            await until(lambda: a0 in replicas[1].left(), "call.left on replica 1")
            assert await local_ids(replicas[1]) == set()
            status, _, answered_by = await call(replicas[0], "GET", f"/v1/calls/{a0}")
            assert (status, answered_by) == (404, "1")

            # The owner is down: 502 owner_unreachable, and nothing changes here.
            await replicas[1].stop()
            posts = server.posts
            status, body, _ = await call(replicas[0], "POST", "/v1/calls",
                                         body={"connector": "whep", "url": urls[1][2]})
            assert (status, body["error"]) == (502, "owner_unreachable"), body
            for method in ("GET", "DELETE"):
                status, body, _ = await call(replicas[0], method, f"/v1/calls/{a0}")
                assert (status, body["error"]) == (502, "owner_unreachable"), body
            assert server.posts == posts
            assert await local_ids(replicas[0]) == {a1, whep_id(urls[0][1])}
            # Calls it owns still work.
            status, body, answered_by = await call(replicas[0], "GET", f"/v1/calls/{a1}")
            assert (status, body["id"], answered_by) == (200, a1, None)
    finally:
        for replica in replicas:
            await replica.stop()
        await server.aclose()
    assert not any(TOKEN in line for replica in replicas for line in replica.lines)
