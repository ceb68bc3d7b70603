"""The bridge against a real Janus 1.1.2 VideoRoom, in a network namespace this test makes.

Three aiortc publishers play fixtures into a room; the bridge, set to auto-join every room, finds
it by itself, hears each speaker under its display name, spots the stressed one, follows
publishers leaving and joining, rejoins after Janus is killed and restarted, and leaves the room
once it is empty.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientSession, web
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.contrib.media import MediaPlayer

from bridge import events as ev
from bridge.config import load_settings
from bridge.connectors.base import close_peer_connection, ice_configuration
from bridge.connectors.context import JanusAuth
from bridge.connectors.janus_session import JanusSession
from bridge.control.app import MANAGER, build_app
from bridge.demo.run import demo_clips
from bridge.errors import ConnectorError
from bridge.live.ice import restrict_host_addresses
from tests.conftest import until
from tests.janus_net import JanusNetns, janus_available
from tests.webhook_helpers import SECRET_A, Receiver

# Skipped only off CI (no root, no janus); in CI (.ci/setup installs janus) a missing part fails.
pytestmark = pytest.mark.skipif(janus_available() is not None and not os.environ.get("CI"),
                                reason=janus_available() or "")

ROOM, OTHER_ROOM = 1234, 5678
TOKEN = "janus-test-token"
log = logging.getLogger(__name__)


class Publisher:
    """A test participant: joins the room with a fixed feed id and publishes one clip."""

    def __init__(self, url: str, feed: int, display: str, clip: Path, *,
                 auth: JanusAuth | None = None, room: int = ROOM) -> None:
        self.url, self.feed, self.display, self.clip = url, feed, display, clip
        self.auth, self.room = auth or JanusAuth(), room
        self.session: JanusSession | None = None
        self.pc: RTCPeerConnection | None = None
        self.player: MediaPlayer | None = None
        self.handle = 0

    async def publish(self) -> None:
        self.session = JanusSession(self.url, auth=self.auth)
        await self.session.create()

        async def ignore(event: dict[str, Any]) -> None:
            return None

        self.handle = await self.session.attach(ignore)
        await self.session.message(self.handle, {"request": "join", "ptype": "publisher",
                                                 "room": self.room, "id": self.feed,
                                                 "display": self.display,
                                                 **({"pin": self.auth.pin} if self.auth.pin
                                                    else {})})
        self.pc = RTCPeerConnection(ice_configuration())
        self.player = MediaPlayer(str(self.clip))
        assert self.player.audio is not None
        self.pc.addTrack(self.player.audio)
        await self.pc.setLocalDescription(await self.pc.createOffer())
        _, answer = await self.session.message(
            self.handle, {"request": "publish"},
            {"type": "offer", "sdp": self.pc.localDescription.sdp})
        assert answer is not None
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"],
                                                                 type="answer"))
        await self.session.trickle_completed(self.handle)

    async def leave(self) -> None:
        if self.session is not None and not self.session.lost.is_set():
            with contextlib.suppress(Exception):
                await self.session.message(self.handle, {"request": "leave"})
        await self.drop()

    async def drop(self) -> None:
        """Forget everything without telling Janus (it was killed)."""
        if self.player is not None and self.player.audio is not None:
            self.player.audio.stop()
        if self.pc is not None:
            await close_peer_connection(self.pc, settle_s=1.0)
        if self.session is not None:
            await self.session.close()
        self.session = self.pc = self.player = None


class Recorder:
    """Collects the bridge's events and waits for the ones a step needs."""

    def __init__(self) -> None:
        self.events: list[ev.Event] = []
        self._changed = asyncio.Event()

    async def emit(self, event: ev.Event) -> None:
        self.events.append(event)
        self._changed.set()

    def since(self, mark: int) -> list[ev.Event]:
        return self.events[mark:]

    async def wait_for(self, what: str, pred: Callable[[ev.Event], bool], *, after: int = 0,
                       limit_s: float = 120.0) -> ev.Event:
        """The first event after index ``after`` that matches; a generous ``limit_s`` only keeps
        a broken bridge from hanging the suite (no test asserts on time)."""
        try:
            async with asyncio.timeout(limit_s):
                while True:
                    for event in self.events[after:]:
                        if pred(event):
                            return event
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            raise AssertionError(f"never saw {what}") from None


def _is(kind: str, display: str | None = None) -> Callable[[ev.Event], bool]:
    def pred(event: ev.Event) -> bool:
        if event.type != kind:
            return False
        return display is None or (event.speaker is not None and event.speaker.display == display)
    return pred


@pytest.fixture
def janus(tmp_path: Path) -> Iterator[JanusNetns]:
    with JanusNetns(tmp_path, {ROOM: "standup", OTHER_ROOM: "quiet room"}) as net:
        net.start()
        restrict_host_addresses([net.host_ip])  # bridge and publishers on the veth address
        try:
            yield net
        finally:
            restrict_host_addresses(None)


@pytest.fixture
async def bridge(janus: JanusNetns, monkeypatch: pytest.MonkeyPatch,
                 ) -> AsyncIterator[tuple[web.Application, Recorder, str]]:
    settings = load_settings(
        analyzers=["prosody"],
        janus=[{"url": janus.url, "rooms": "*", "poll_s": 1.0, "leave_when_empty": 3.0}],
        live={"silence_timeout_s": 60.0})
    async with served(settings) as bridge:
        yield bridge


@contextlib.asynccontextmanager
async def served(settings: Any, *, workers: int = 1,
                 ) -> AsyncIterator[tuple[web.Application, Recorder, str]]:
    """The service for ``settings`` on 127.0.0.1: its app, the events it emits, its base URL."""
    recorder = Recorder()
    app = build_app(settings, token=TOKEN, emit=recorder.emit, workers=workers)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield app, recorder, f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


async def test_bridge_in_a_real_janus_room(janus: JanusNetns, bridge: Any) -> None:
    app, rec, api = bridge
    manager = app[MANAGER]
    alice_clip, bob_clip, carol_clip = demo_clips()
    alice = Publisher(janus.url, 101, "Alice", alice_clip)
    bob = Publisher(janus.url, 102, "Bob", bob_clip)
    carol = Publisher(janus.url, 103, "Carol", carol_clip)
    loop = asyncio.get_running_loop()
    try:
        # Two publishers start the call; the bridge finds the room by itself.
        await alice.publish()
        await bob.publish()
        await rec.wait_for("call.joined", _is("call.joined"), limit_s=30)
        for name in ("Alice", "Bob"):
            joined = await rec.wait_for(f"{name} joined", _is("speaker.joined", name), limit_s=30)
            assert joined.call.id == f"janus:{ROOM}"
        assert {e.speaker.id for e in rec.events if e.type == "speaker.joined"
                and e.speaker is not None} == {f"janus:{ROOM}:101", f"janus:{ROOM}:102"}

        # Someone joins mid-call.
        await asyncio.sleep(5)
        await carol.publish()
        await rec.wait_for("Carol joined", _is("speaker.joined", "Carol"), limit_s=30)

        # Alice turns stressed about 45 s into her clip: a spike on her only.
        spike = await rec.wait_for("Alice's spike", _is("stress.spike.started"), limit_s=150)
        assert spike.speaker is not None and spike.speaker.display == "Alice"
        for name in ("Alice", "Bob", "Carol"):
            assert any(_is("affect.sample", name)(e) for e in rec.events), name

        # A publisher leaving: speaker.left from the room's signalling, not from silence.
        mark, left_at = len(rec.events), loop.time()
        await bob.leave()
        gone = await rec.wait_for("Bob left", _is("speaker.left", "Bob"), after=mark, limit_s=30)
        latency = loop.time() - left_at
        assert isinstance(gone.data, ev.SpeakerLeftData)
        assert gone.data.reason in ("left the room", "unpublished"), gone.data.reason
        log.warning("speaker.left %.2f s after the publisher left", latency)

        # Janus killed and restarted: the bridge rejoins and events resume.
        mark = len(rec.events)
        janus.kill()
        await alice.drop()
        await carol.drop()
        await rec.wait_for("speakers dropped", _is("speaker.left", "Alice"), after=mark,
                           limit_s=60)
        janus.start()
        restarted_at = loop.time()
        await alice.publish()
        await carol.publish()
        for name in ("Alice", "Carol"):
            await rec.wait_for(f"{name} back", _is("speaker.joined", name), after=mark,
                               limit_s=90)
            await rec.wait_for(f"{name}'s samples", _is("affect.sample", name), after=mark,
                               limit_s=60)
        log.warning("samples resumed %.1f s after Janus restarted", loop.time() - restarted_at)
        assert not any(e.type == "call.left" for e in rec.since(mark))
        connector = manager.calls[f"janus:{ROOM}"].connector
        assert getattr(connector, "rejoins", 0) >= 1

        # Joining on request: a room that does not exist is refused and changes nothing.
        auth = {"Authorization": f"Bearer {TOKEN}"}
        async with ClientSession() as http:
            async with http.post(f"{api}/v1/calls", headers=auth, data=json.dumps(
                    {"connector": "janus", "url": janus.url, "room": 9999})) as resp:
                body = await resp.json()
                assert resp.status == 422 and body["error"] == "room_not_found", body
            async with http.post(f"{api}/v1/calls", headers=auth, json={
                    "connector": "janus", "url": janus.url, "room": ROOM}) as resp:
                assert resp.status == 409
            async with http.get(f"{api}/v1/calls", headers=auth) as resp:
                calls = (await resp.json())["calls"]
        assert [c["id"] for c in calls] == [f"janus:{ROOM}"]
        assert {s["display"] for s in calls[0]["speakers"]} == {"Alice", "Carol"}

        # Everyone leaves: the emptied room is left, and the quiet room was never joined.
        mark = len(rec.events)
        await alice.leave()
        await carol.leave()
        left = await rec.wait_for("call.left", _is("call.left"), after=mark, limit_s=60)
        assert isinstance(left.data, ev.CallLeftData) and left.data.reason == "room empty"
        assert manager.calls == {}
        assert not any(e.call.id == f"janus:{OTHER_ROOM}" for e in rec.events)
        spikes = {e.speaker.display for e in rec.events
                  if e.type == "stress.spike.started" and e.speaker is not None}
        assert spikes == {"Alice"}
    finally:
        for pub in (alice, bob, carol):
            await pub.drop()


def _participants(janus: JanusNetns) -> Callable[[], Any]:
    async def names() -> list[str]:
        session = JanusSession(janus.url)
        await session.create()
        try:
            async def ignore(event: dict[str, Any]) -> None:
                return None
            handle = await session.attach(ignore)
            data, _ = await session.message(handle, {"request": "listparticipants", "room": ROOM})
            return [str(p.get("display")) for p in data.get("participants", [])]
        finally:
            await session.close()
    return names


async def test_delete_during_a_slow_janus_join_leaves_nothing_in_janus(janus: JanusNetns) -> None:
    """The room join is held 2 s by a proxy in front of the real Janus; DELETE comes meanwhile.
    The join request gets a JSON 409, no call event is emitted, and Janus holds no session of
    the bridge and no bridge participant afterwards (counted on Janus's admin API)."""
    from tests.conftest import api_client
    from tests.janus_net import JanusProxy

    proxy = JanusProxy(janus.url, delay=lambda msg: 2.0 if msg.get("body", {}).get(
        "request") == "join" else 0.0)
    await proxy.start()
    auth = {"Authorization": f"Bearer {TOKEN}"}
    try:
        async with api_client(TOKEN, outbound={"allow": ["127.0.0.1"]}) as client:
            assert janus.sessions() == []
            join = asyncio.create_task(client.post("/v1/calls", headers=auth, json={
                "connector": "janus", "url": proxy.url, "room": ROOM}))
            await until(lambda: proxy.held, "the room join held")  # the session exists
            assert len(janus.sessions()) == 1
            resp = await client.delete(f"/v1/calls/janus:{ROOM}", headers=auth)
            assert resp.status == 200 and (await resp.json())["was_joined"] is False
            answer = await join
            body = await answer.json()
            assert answer.status == 409 and body["error"] == "join_cancelled", body
            # the held join reaches Janus after all (and is refused)
            await until(lambda: not proxy.held, "the held join sent on")
            await asyncio.sleep(0.5)
            assert janus.sessions() == []
            assert await _participants(janus)() == []
            assert client.events == [] and client.manager.calls == {}
    finally:
        await proxy.aclose()


async def test_a_supervision_task_that_dies_ends_the_call_and_the_room_is_rejoined(
        janus: JanusNetns) -> None:
    """Janus (through a proxy) answers one ``listparticipants`` with garbage: the call's
    supervision task dies on it. The call is left with reason "error", /readyz and the
    affect_task_failures_total metric show the dead task, and auto-join joins the room again,
    so its speaker is heard again. (Before: a zombie call nobody supervised, /readyz green.)"""
    from tests.janus_net import JanusProxy

    def corrupt_once(msg: dict[str, Any], reply: Any) -> Any:
        if msg.get("body", {}).get("request") == "listparticipants" and not proxy.rewritten:
            data = reply.get("plugindata", {}).get("data", {})
            return {**reply, "plugindata": {**reply.get("plugindata", {}),
                                            "data": {**data, "participants": "garbage"}}}
        return reply

    proxy = JanusProxy(janus.url, rewrite=corrupt_once)
    await proxy.start()
    settings = load_settings(
        analyzers=["prosody"], janus=[{"url": proxy.url, "rooms": [ROOM], "poll_s": 1.0}])
    alice = Publisher(janus.url, 101, "Alice", demo_clips()[0])
    try:
        async with served(settings) as (_, rec, api):
            try:
                await alice.publish()
                await rec.wait_for("call.joined", _is("call.joined"), limit_s=30)
                await rec.wait_for("Alice joined", _is("speaker.joined", "Alice"), limit_s=30)
                left = await rec.wait_for("call.left", _is("call.left"), limit_s=60)
                assert isinstance(left.data, ev.CallLeftData) and left.data.reason == "error"
                assert proxy.rewritten == 1
                mark = rec.events.index(left)
                async with ClientSession() as http:
                    async with http.get(f"{api}/readyz") as resp:
                        ready = await resp.json()
                    async with http.get(f"{api}/metrics") as resp:
                        metrics = await resp.text()
                assert resp.status == 200
                assert ready["status"] == "degraded", ready
                assert "janus/supervise" in [f["task"] for f in ready["failed_tasks"]["recent"]]
                assert 'affect_task_failures_total{task="janus/supervise"}' in metrics
                await rec.wait_for("call rejoined", _is("call.joined"), after=mark, limit_s=60)
                await rec.wait_for("Alice heard again", _is("affect.sample", "Alice"), after=mark,
                                   limit_s=60)
                assert len(janus.sessions()) >= 2  # Alice's, and the bridge's new one
            finally:
                await alice.drop()
    finally:
        await proxy.aclose()


async def test_a_protected_janus_with_an_api_secret_and_room_pins(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
        ) -> None:
    """A real Janus with ``api_secret`` set and pinned rooms: auto-join with the configured
    secret and pin hears the publisher; an API join of another pinned room is refused without
    its pin (JSON 422) and works with it; a client without the secret is refused by Janus.
    Neither secret reaches the log."""
    caplog.set_level(logging.DEBUG)
    secret, pin, other_pin = "api-s3cret-77", "pin-4321", "pin-8765"
    monkeypatch.setenv("T_JANUS_APISECRET", secret)
    monkeypatch.setenv("T_JANUS_PIN", pin)
    with JanusNetns(tmp_path, {ROOM: "locked", OTHER_ROOM: "also locked"}, api_secret=secret,
                    pins={ROOM: pin, OTHER_ROOM: other_pin}) as net:
        net.start()
        restrict_host_addresses([net.host_ip])
        settings = load_settings(analyzers=["prosody"], janus=[{
            "url": net.url, "rooms": [ROOM], "poll_s": 1.0,
            "apisecret_env": "T_JANUS_APISECRET", "pin_env": "T_JANUS_PIN"}])
        alice = Publisher(net.url, 101, "Alice", demo_clips()[0],
                          auth=JanusAuth(apisecret=secret, pin=pin))
        try:
            with pytest.raises(ConnectorError, match="403"):  # Janus: unauthorized request
                await JanusSession(net.url).create()
            await alice.publish()
            async with served(settings) as (_, rec, api), ClientSession() as http:
                await rec.wait_for("Alice joined", _is("speaker.joined", "Alice"), limit_s=30)
                await rec.wait_for("Alice's samples", _is("affect.sample", "Alice"), limit_s=60)
                auth = {"Authorization": f"Bearer {TOKEN}"}
                async with http.post(f"{api}/v1/calls", headers=auth, json={
                        "connector": "janus", "url": net.url, "room": OTHER_ROOM}) as resp:
                    body = await resp.json()
                    # the configured pin is ROOM's, not OTHER_ROOM's: Janus refuses it
                    assert resp.status == 422 and body["error"] == "join_failed", body
                async with http.post(f"{api}/v1/calls", headers=auth, json={
                        "connector": "janus", "url": net.url, "room": OTHER_ROOM,
                        "pin": other_pin}) as resp:
                    assert resp.status == 201, await resp.text()
                async with http.delete(f"{api}/v1/calls/janus:{OTHER_ROOM}",
                                       headers=auth) as resp:
                    assert resp.status == 200
        finally:
            await alice.drop()
            restrict_host_addresses(None)
    text = "\n".join(r.getMessage() for r in caplog.records)
    for value in (secret, pin, other_pin):
        assert value not in text


async def test_two_workers_share_the_rooms_and_a_killed_worker_loses_no_spike(
        janus: JanusNetns, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """run --workers 2 (the supervisor in this process, two worker processes): rooms spread over
    both, one /metrics with every speaker's series (gone when they leave), every event delivered
    once to one webhook from one outbox; the worker holding the stressed speaker is SIGKILLed
    right after her spike: the spike is delivered, she is back on the other worker."""
    monkeypatch.setenv("AFFECT_BRIDGE_WEBHOOK_SECRET", SECRET_A)
    receiver = await Receiver().start()
    settings = load_settings(
        analyzers=["prosody"],
        janus=[{"url": janus.url, "rooms": "*", "poll_s": 1.0, "leave_when_empty": 3.0}],
        live={"silence_timeout_s": 60.0, "ice_host_addresses": [janus.host_ip]},
        webhooks=[{"url": receiver.url, "events": ["*"]}],
        outbox={"path": str(tmp_path / "outbox.sqlite3")})
    alice_clip, bob_clip, carol_clip = demo_clips()
    alice = Publisher(janus.url, 101, "Alice", alice_clip)
    bob = Publisher(janus.url, 102, "Bob", bob_clip)
    carol = Publisher(janus.url, 201, "Carol", carol_clip, room=OTHER_ROOM)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    loop = asyncio.get_running_loop()
    try:
        async with served(settings, workers=2) as (_, rec, api), ClientSession() as http:
            for pub in (alice, bob, carol):
                await pub.publish()
            for name in ("Alice", "Bob", "Carol"):
                await rec.wait_for(f"{name} joined", _is("speaker.joined", name), limit_s=60)
            async with http.get(f"{api}/v1/calls", headers=auth) as resp:
                calls = {c["id"]: c for c in (await resp.json())["calls"]}
            assert {c["worker"] for c in calls.values()} == {0, 1}  # one room on each
            await rec.wait_for("Bob's samples", _is("affect.sample", "Bob"), limit_s=60)
            async with http.get(f"{api}/metrics") as resp:
                text = await resp.text()
            for e in rec.events:
                if e.type == "speaker.joined" and e.call is not None and e.speaker is not None:
                    assert (f'affect_speech_seconds_total{{call="{e.call.id}",'
                            f'speaker="{e.speaker.id}"}}') in text
            await bob.leave()
            await rec.wait_for("Bob left", _is("speaker.left", "Bob"), limit_s=30)
            async with http.get(f"{api}/metrics") as resp:
                assert f'speaker="janus:{ROOM}:102"' not in await resp.text()

            # Alice turns stressed ~45 s into her clip; her worker dies right after the spike.
            spike = await rec.wait_for("Alice's spike", _is("stress.spike.started", "Alice"),
                                       limit_s=150)
            async with http.get(f"{api}/readyz") as resp:
                workers = {w["index"]: w for w in (await resp.json())["workers"]}
            victim = workers[calls[f"janus:{ROOM}"]["worker"]]
            mark, killed_at = len(rec.events), loop.time()
            os.kill(victim["pid"], signal.SIGKILL)
            back = await rec.wait_for("Alice back", _is("speaker.joined", "Alice"), after=mark,
                                      limit_s=60)
            log.warning("Alice back %.1f s after her worker was killed", loop.time() - killed_at)
            left = [e for e in rec.since(mark) if e.type == "speaker.left"]
            assert [(e.speaker.display if e.speaker else None, getattr(e.data, "reason", None))
                    for e in left] == [("Alice", "worker failed")]
            assert back.call is not None and back.call.id == f"janus:{ROOM}"
            await rec.wait_for("Alice's samples", _is("affect.sample", "Alice"), after=mark,
                               limit_s=60)
            async with http.get(f"{api}/v1/calls", headers=auth) as resp:
                now = {c["id"]: c for c in (await resp.json())["calls"]}
            assert now[f"janus:{ROOM}"]["worker"] != victim["index"]
            assert not [e for e in rec.since(mark) if e.type in ("call.joined", "call.left")]
            published = {e.id for e in rec.events}
            await receiver.wait_for(lambda r: published <= r.delivered_ids(), limit_s=60)
            assert spike.id in receiver.delivered_ids()
    finally:
        for pub in (alice, bob, carol):
            await pub.drop()
        await receiver.stop()
    ids = [r.id for r in receiver.delivered]
    assert len(ids) == len(set(ids))  # once per event id
