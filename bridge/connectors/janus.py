"""Janus 1.x VideoRoom: join a room as a silent, visible participant (the ``janus`` connector).

The bridge joins as a ``publisher`` with a display name (default ``affect-bridge (monitoring)``)
and never publishes, so it receives the room's events (``publishers``, ``unpublished``,
``leaving``, ``destroyed``). Each publisher's audio is received on its own subscriber handle and
PeerConnection (one per feed): a feed that fails is re-subscribed alone, and aiortc never has to
renegotiate a shared connection. The API session under it (requests, long poll, keepalive,
credentials) is :class:`~bridge.connectors.janus_session.JanusSession`.

On session loss (Janus restarted, session timed out, API unreachable) every speaker leaves and
the connector rejoins with backoff on a new session and new PeerConnections (aiortc has no ICE
restart). The call ends by itself when the room is destroyed or nobody else has been in it for
``leave_when_empty`` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import Any, Literal

from aiortc import MediaStreamTrack, RTCPeerConnection, RTCSessionDescription
from pydantic import Field, SecretStr, field_validator

from bridge import events as ev
from bridge.allowlist import AllowList, redact_url
from bridge.connectors.base import (
    Backoff,
    Connector,
    ConnectorFactory,
    OnSpeaker,
    OnSpeakerLeft,
    SpeakerTrack,
    close_peer_connection,
    discard_track,
    ice_configuration,
    receiver_of,
)
from bridge.connectors.context import JanusAuth, JoinContext, server_key
from bridge.connectors.janus_session import NO_SUCH_ROOM, EventHandler, JanusError, JanusSession, plugin_data
from bridge.errors import ConnectorError
from bridge.join_options import DEFAULT_DISPLAY, JanusJoinOptions
from bridge.outbound import OutboundLimits
from bridge.tasks import TaskSet

__all__ = ["JanusConnector", "JanusJoin", "janus_call_info"]

log = logging.getLogger(__name__)


@dataclass
class _Publisher:
    """A Janus publisher (feed) in the room: its handle and peer connection once subscribed."""

    feed: str
    display: str
    handle: int | None = None
    pc: RTCPeerConnection | None = None
    speaker_id: str = ""


def janus_call_info(room: int | str, name: str | None = None) -> ev.CallInfo:
    """Call id ``janus:<room>`` (``janus:<name>:<room>`` for a named server)."""
    prefix = f"janus:{name}" if name else "janus"
    return ev.CallInfo(id=f"{prefix}:{room}", connector="janus", room=str(room))


class JanusJoin(JanusJoinOptions):
    """Join one VideoRoom room on a Janus server (``url``, ``display_name`` and
    ``leave_when_empty`` as in :class:`~bridge.join_options.JanusJoinOptions`)."""

    connector: Literal["janus"]
    room: int | str = Field(description="room id: a number, or a string when the server uses "
                                        "string_ids")
    pin: SecretStr | None = Field(None, max_length=256, description="the room's pin, if it has one")
    token: SecretStr | None = Field(None, max_length=4096,
                                    description="a Janus stored token (token_auth)")
    apisecret: SecretStr | None = Field(None, max_length=4096,
                                        description="the server's api_secret; for a server named "
                                                    "in config, its configured one is used")

    def auth(self) -> JanusAuth:
        def reveal(v: SecretStr | None) -> str | None:
            return v.get_secret_value() if v is not None else None
        return JanusAuth(reveal(self.apisecret), reveal(self.token), reveal(self.pin))

    @field_validator("room")
    @classmethod
    def _room(cls, room: int | str) -> int | str:
        if isinstance(room, int) and not 0 < room < 2**63:
            raise ValueError("must be a positive 64-bit number")
        if isinstance(room, str) and not (0 < len(room) <= 128 and room.isprintable()):
            raise ValueError("must be 1..128 printable characters")
        return room


class JanusConnector(Connector):
    """One VideoRoom room. ``join`` raises :class:`JanusError` (``room_not_found``) for a room
    that does not exist and :class:`ConnectorError` when the server cannot be reached."""

    name = "janus"
    Request = JanusJoin

    @classmethod
    def from_request(cls, req: JanusJoin, ctx: JoinContext) -> tuple[ev.CallInfo, ConnectorFactory]:
        """A server named in config lends the join its credentials (the request's win)."""
        auth = req.auth().over(ctx.janus_auth.get(server_key(req.url)))

        def factory(i: ev.CallInfo, on_sp: OnSpeaker, on_left: OnSpeakerLeft) -> Connector:
            return cls(i, on_sp, on_left, url=req.url, room=req.room,
                       display_name=req.display_name, leave_when_empty=req.leave_when_empty,
                       ice_servers=ctx.ice_servers, auth=auth, allow=ctx.allow,
                       limits=ctx.limits)
        return janus_call_info(req.room), factory

    def __init__(
        self,
        call: ev.CallInfo,
        on_speaker: OnSpeaker,
        on_speaker_left: OnSpeakerLeft,
        *,
        url: str,
        room: int | str,
        display_name: str = DEFAULT_DISPLAY,
        leave_when_empty: float | None = 30.0,
        ice_servers: list[str] | None = None,
        auth: JanusAuth | None = None,
        allow: AllowList | None = None,
        limits: OutboundLimits | None = None,
        timeout_s: float = 10.0,
        participants_poll_s: float = 5.0,
    ) -> None:
        super().__init__(call, on_speaker, on_speaker_left)
        self.url = url
        self.shown = redact_url(url)
        self._auth = auth or JanusAuth()
        self._allow = allow
        self._limits = limits
        self.room = room
        self.display_name = display_name
        self.leave_when_empty = leave_when_empty
        self._ice_servers = ice_servers
        self._timeout_s = timeout_s
        self._participants_poll_s = participants_poll_s
        self._session: JanusSession | None = None
        self._handle: int | None = None
        self._own_id: str | None = None
        self._feeds: dict[str, _Publisher] = {}
        self._publishers: dict[str, dict[str, Any]] = {}  # feed id -> as the room announced it
        # Resubscription backoff per publisher: outlives the failed attempts' feed state.
        self._feed_backoff: dict[str, Backoff] = {}
        self._tasks = TaskSet(f"janus:{call.id}")
        self._backoff = Backoff()
        self.rejoins = 0

    # --- lifecycle -------------------------------------------------------------------------

    async def join(self) -> None:
        await self._connect()
        self._tasks.spawn(self._supervise(), name="supervise", on_failure=self._supervision_died)

    def _supervision_died(self, exc: BaseException) -> None:
        """Nobody watches the session or the room any more: the call ends (the call manager
        leaves it, ``call.left`` reason ``error``; auto-join joins the room again)."""
        log.error("Janus room %s on %s: supervision failed (%s: %s); leaving the call",
                  self.room, self.shown, type(exc).__name__, exc)
        self.end("error")

    async def leave(self) -> None:
        await self._tasks.aclose()
        await self._disconnect("call left", announce=False)
        self.end("left")

    async def _connect(self) -> None:
        session = JanusSession(self.url, auth=self._auth, allow=self._allow, limits=self._limits,
                               timeout_s=self._timeout_s)
        await session.create()
        self._session = session
        try:
            self._handle = await session.attach(self._on_room_event)
            data, _ = await session.message(self._handle, self._with_pin({
                "request": "join", "ptype": "publisher", "room": self.room,
                "display": self.display_name}))
        except BaseException:
            self._session = None
            await session.close()
            raise
        if data.get("videoroom") != "joined" or data.get("id") is None:
            self._session = None
            await session.close()
            raise ConnectorError(f"Janus {self.shown} answered the room join without saying "
                                 "it joined", code="bad_response")
        self._own_id = str(data.get("id"))
        log.info("joined Janus room %s on %s as %r", self.room, self.shown, self.display_name)
        await self._on_publishers(data.get("publishers", []))

    def _with_pin(self, request: dict[str, Any]) -> dict[str, Any]:
        """A room join (publisher or subscriber) with the room's pin, when it has one."""
        return {**request, "pin": self._auth.pin} if self._auth.pin else request

    async def _disconnect(self, reason: str, *, announce: bool = True) -> None:
        """Drop every feed (``speaker.left`` with ``reason`` when ``announce``), leave the room
        and destroy the session."""
        await asyncio.gather(*(self._drop_feed(feed, reason, announce=announce)
                               for feed in list(self._feeds)))  # each closes a connection
        self._publishers.clear()
        self._feed_backoff.clear()
        session, self._session = self._session, None
        if session is None:
            return
        if not session.lost.is_set() and self._handle is not None:
            with contextlib.suppress(ConnectorError):
                await session.message(self._handle, {"request": "leave"})
        await session.close()

    async def _supervise(self) -> None:
        """Rejoin after session loss; watch the room for emptiness and destruction."""
        while True:
            session = self._session
            assert session is not None
            watch = asyncio.create_task(self._watch_room(session), name="watch-room")
            lost = asyncio.create_task(session.lost.wait(), name="session-lost")
            try:
                await asyncio.wait({watch, lost}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in (watch, lost):
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
            if self.ended.is_set():
                return  # the call manager leaves the call (and calls leave())
            reason = session.lost_reason
            log.warning("Janus room %s on %s: %s; rejoining", self.room, self.shown, reason)
            await self._disconnect(f"janus session lost: {reason}")
            while True:
                await self._backoff.sleep()
                try:
                    await self._connect()
                except JanusError as exc:
                    if exc.janus_code == NO_SUCH_ROOM:
                        self.end("room destroyed")
                        return
                    log.warning("rejoining Janus room %s failed: %s", self.room, exc)
                except ConnectorError as exc:
                    log.warning("rejoining Janus room %s failed: %s", self.room, exc)
                else:
                    self._backoff.reset()
                    self.rejoins += 1
                    break

    async def _watch_room(self, session: JanusSession) -> None:
        """Poll ``listparticipants``: end when the room is gone or empty long enough."""
        loop = asyncio.get_running_loop()
        empty_since: float | None = None
        while not self.ended.is_set():
            await asyncio.sleep(self._participants_poll_s)
            assert self._handle is not None
            try:
                data, _ = await session.message(self._handle, {"request": "listparticipants",
                                                               "room": self.room})
            except JanusError as exc:
                if exc.janus_code == NO_SUCH_ROOM:
                    self.end("room destroyed")
                continue
            except ConnectorError:
                continue  # the long poll decides whether the session is lost
            # A reply of the wrong shape fails here: the supervision task's death is reported
            # (call.left reason error, /readyz) and auto-join joins the room again.
            others = [p for p in data.get("participants", []) if str(p.get("id")) != self._own_id]
            if others or self.leave_when_empty is None:
                empty_since = None
            elif empty_since is None:
                empty_since = loop.time()
            elif loop.time() - empty_since >= self.leave_when_empty:
                self.end("room empty")

    # --- room events -----------------------------------------------------------------------

    async def _on_room_event(self, event: dict[str, Any]) -> None:
        data = plugin_data(event)
        if data.get("videoroom") == "destroyed":
            self.end("room destroyed")
            return
        if "publishers" in data:
            await self._on_publishers(data["publishers"])
        for key, reason in (("unpublished", "unpublished"), ("leaving", "left the room")):
            feed = data.get(key)
            if feed is not None and feed != "ok" and str(feed) != self._own_id:
                self._publishers.pop(str(feed), None)
                self._feed_backoff.pop(str(feed), None)
                await self._drop_feed(str(feed), reason)

    async def _on_publishers(self, publishers: Any) -> None:
        for pub in publishers if isinstance(publishers, list) else []:
            if not isinstance(pub, dict) or pub.get("id") is None:
                continue
            feed = str(pub.get("id"))
            if feed == self._own_id or pub.get("dummy"):
                continue
            streams = pub.get("streams")
            if streams is not None and not isinstance(streams, list):
                continue
            if streams is not None and not any(isinstance(s, dict) and s.get("type") == "audio"
                                               and not s.get("disabled") for s in streams):
                continue  # video only: nothing to hear
            self._publishers[feed] = pub
            if feed not in self._feeds:
                self._tasks.spawn(self._subscribe(feed), name=f"subscribe:{feed}")

    # --- feeds -----------------------------------------------------------------------------

    async def _subscribe(self, feed: str) -> None:
        session = self._session
        pub = self._publishers.get(feed)
        if session is None or feed in self._feeds or pub is None:
            return
        state = _Publisher(feed, str(pub.get("display") or f"feed {feed}"),
                      speaker_id=f"{self.call.id}:{feed}")
        self._feeds[feed] = state
        audio_mids = [s["mid"] for s in pub.get("streams") or []
                      if isinstance(s, dict) and s.get("type") == "audio"
                      and isinstance(s.get("mid"), str)]
        streams = [{"feed": pub.get("id"), "mid": mid} for mid in audio_mids[:1]] or [
            {"feed": pub.get("id")}]
        try:
            state.handle = await session.attach(self._on_feed_event(feed))
            _, offer = await session.message(state.handle, self._with_pin({
                "request": "join", "ptype": "subscriber", "room": self.room, "streams": streams}))
            if offer is None:
                raise ConnectorError("Janus sent no offer for the subscription")
            pc = RTCPeerConnection(ice_configuration(self._ice_servers))
            state.pc = pc
            self._watch_pc(feed, pc)

            @pc.on("track")
            def _on_track(track: MediaStreamTrack) -> None:
                receiver = receiver_of(pc, track)
                if track.kind != "audio":  # the all-streams fallback brings video too
                    self._tasks.spawn(discard_track(track, receiver),
                                      name=f"discard:{feed}:{track.kind}")
                    return
                found = SpeakerTrack(ev.SpeakerInfo(id=state.speaker_id, display=state.display),
                                     track, receiver)
                self._tasks.spawn(self._on_speaker(found), name=f"speaker-found:{feed}")

            await pc.setRemoteDescription(RTCSessionDescription(sdp=str(offer.get("sdp", "")),
                                                                type="offer"))
            await pc.setLocalDescription(await pc.createAnswer())
            await session.message(state.handle, {"request": "start"},
                                  {"type": "answer", "sdp": pc.localDescription.sdp})
            await session.trickle_completed(state.handle)
        except (ConnectorError, ValueError) as exc:
            log.warning("Janus room %s: subscribing to feed %s failed: %s", self.room, feed, exc)
            await self._drop_feed(feed, "subscription failed", announce=False)
            self._retry(feed)
            return
        self._feed_backoff.pop(feed, None)

    def _retry(self, feed: str) -> None:
        """Subscribe to ``feed`` again after its backoff delay, if it is still published."""
        backoff = self._feed_backoff.setdefault(feed, Backoff())

        async def later() -> None:
            await backoff.sleep()
            if feed in self._publishers and feed not in self._feeds:
                await self._subscribe(feed)
        self._tasks.spawn(later(), name=f"resubscribe:{feed}")

    def _on_feed_event(self, feed: str) -> EventHandler:
        async def handler(event: dict[str, Any]) -> None:
            if event.get("janus") == "hangup":
                log.info("Janus hung up feed %s in room %s: %s", feed, self.room,
                         event.get("reason"))
        return handler

    def _watch_pc(self, feed: str, pc: RTCPeerConnection) -> None:
        @pc.on("connectionstatechange")
        async def _changed() -> None:
            if pc.connectionState != "failed":
                return
            state = self._feeds.get(feed)
            if state is None or state.pc is not pc:
                return
            log.warning("Janus room %s: connection to feed %s failed; resubscribing",
                        self.room, feed)
            await self._drop_feed(feed, "connection failed")
            if feed in self._publishers:
                self._retry(feed)

    async def _drop_feed(self, feed: str, reason: str, *, announce: bool = True) -> None:
        state = self._feeds.pop(feed, None)
        if state is None:
            return
        if announce:
            await self._on_speaker_left(state.speaker_id, reason)
        if state.pc is not None:
            await close_peer_connection(state.pc, settle_s=1.0)
        if state.handle is not None and self._session is not None:
            await self._session.detach(state.handle)
