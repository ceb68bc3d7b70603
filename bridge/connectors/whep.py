"""WHEP (WebRTC-HTTP Egress Protocol, IETF wish WG): subscribe to a media server's session.

POST an SDP offer (``application/sdp``, optional bearer token), read the answer and the session
``Location``; DELETE that location on leave (the token and the DELETE go to the endpoint's
origin only). Every audio track of the session is a speaker; display names come from the join's
``displays``, in track order (``track N`` past its end). Requests go through one
:class:`~bridge.outbound.MediaServerClient`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from typing import Literal

from aiortc import MediaStreamTrack, RTCPeerConnection, RTCSessionDescription
from pydantic import BaseModel, ConfigDict, Field, SecretStr
from yarl import URL

from bridge import events as ev
from bridge.connectors.base import (
    Connector,
    ConnectorFactory,
    OnSpeaker,
    OnSpeakerLeft,
    SpeakerTrack,
    close_peer_connection,
    finish_on_cancel,
    ice_configuration,
    receiver_of,
)
from bridge.connectors.context import JoinContext
from bridge.errors import ConnectorError
from bridge.join_options import HttpUrl
from bridge.outbound import MediaServerClient
from bridge.tasks import TaskSet

__all__ = ["WhepConnector", "WhepJoin"]

log = logging.getLogger(__name__)


class WhepJoin(BaseModel):
    """Join a WHEP session: every audio track is a speaker."""

    model_config = ConfigDict(extra="forbid")
    connector: Literal["whep"]
    url: HttpUrl
    token: SecretStr | None = Field(None, max_length=4096,
                                    description="bearer token, sent to the endpoint's origin only")
    tracks: int = Field(1, ge=1, le=64)
    displays: list[str] = Field(default_factory=list, max_length=64)


class WhepConnector(Connector):
    """One WHEP session with ``tracks`` receive-only audio transceivers. ``join`` raises
    :class:`ConnectorError` when the endpoint refuses, cannot be reached, or answers with
    something that is not a usable SDP answer."""

    name = "whep"
    Request = WhepJoin

    @classmethod
    def from_request(cls, req: WhepJoin, ctx: JoinContext) -> tuple[ev.CallInfo, ConnectorFactory]:
        call_id = "whep:" + hashlib.sha256(req.url.encode()).hexdigest()[:12]
        info = ev.CallInfo(id=call_id, connector="whep", room=None)
        token = req.token.get_secret_value() if req.token is not None else None

        def factory(i: ev.CallInfo, on_sp: OnSpeaker, on_left: OnSpeakerLeft) -> Connector:
            return cls(i, on_sp, on_left, url=req.url, token=token, tracks=req.tracks,
                       displays=req.displays, ice_servers=ctx.ice_servers,
                       http=MediaServerClient(req.url, what="WHEP endpoint", allow=ctx.allow,
                                              limits=ctx.limits))
        return info, factory

    def __init__(
        self,
        call: ev.CallInfo,
        on_speaker: OnSpeaker,
        on_speaker_left: OnSpeakerLeft,
        *,
        url: str,
        token: str | None = None,
        tracks: int = 1,
        displays: list[str] | None = None,
        ice_servers: list[str] | None = None,
        http: MediaServerClient | None = None,
    ) -> None:
        super().__init__(call, on_speaker, on_speaker_left)
        if tracks < 1:
            raise ValueError("a WHEP session needs at least one audio track")
        self.url = url
        self._token = token
        self._tracks = tracks
        self._displays = displays or []
        self._ice_servers = ice_servers
        self._http = http or MediaServerClient(url, what="WHEP endpoint")
        self._pc: RTCPeerConnection | None = None
        self._location: URL | None = None
        self._tasks = TaskSet(f"whep:{call.id}")
        self._speakers: list[str] = []

    def _headers(self, content_type: str | None = None) -> dict[str, str]:
        headers = {}
        if content_type:
            headers["Content-Type"] = content_type
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        return headers

    async def join(self) -> None:
        pc = RTCPeerConnection(ice_configuration(self._ice_servers))
        self._pc = pc
        for _ in range(self._tracks):
            pc.addTransceiver("audio", direction="recvonly")

        @pc.on("track")
        def _on_track(track: MediaStreamTrack) -> None:
            if track.kind != "audio":
                return
            index = len(self._speakers)
            speaker_id = f"{self.call.id}:{index}"
            self._speakers.append(speaker_id)
            display = self._displays[index] if index < len(self._displays) else f"track {index}"
            speaker = SpeakerTrack(ev.SpeakerInfo(id=speaker_id, display=display), track,
                                   receiver_of(pc, track))
            self._tasks.spawn(self._on_speaker(speaker), name=f"speaker-found:{speaker_id}")

        @pc.on("connectionstatechange")
        async def _on_state() -> None:
            if pc.connectionState == "failed":
                log.warning("WHEP session %s: connection failed", self.call.id)
                for speaker_id in list(self._speakers):
                    await self._on_speaker_left(speaker_id, "connection failed")

        try:
            await pc.setLocalDescription(await pc.createOffer())
            answer = await finish_on_cancel(self._post(pc.localDescription.sdp))
            await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
        except ConnectorError:
            await self.leave()
            raise
        except (ValueError, AssertionError) as exc:  # aiortc rejects a malformed answer
            await self.leave()
            raise self._http.failure(f"sent an unusable SDP answer ({type(exc).__name__})"
                                     ) from None

    async def _post(self, offer: str) -> str:
        """POST the offer; the answer's SDP. The session's ``Location`` is kept for the DELETE
        on leave only when it is on the endpoint's origin (the token goes nowhere else)."""
        http = self._http
        reply = await http.request("POST", self.url, data=offer,
                                   headers=self._headers("application/sdp"), ok=(200, 201))
        location = reply.headers.get("Location")
        if location:
            self._location = http.same_origin(location)
            if self._location is None:
                log.warning("WHEP endpoint %s named a session Location on another origin; "
                            "it will not be sent the token or a DELETE", http.shown)
        if "application/sdp" not in reply.headers.get("Content-Type", ""):
            raise http.failure("did not answer with SDP")
        try:
            return reply.body.decode("utf-8")
        except UnicodeDecodeError:
            raise http.failure("sent an SDP answer that is not UTF-8") from None

    async def leave(self) -> None:
        location, self._location = self._location, None
        if location is not None:
            with contextlib.suppress(ConnectorError):
                await self._http.request("DELETE", location, headers=self._headers())
        pc, self._pc = self._pc, None
        if pc is not None:
            await close_peer_connection(pc)
        await self._tasks.aclose()
        await self._http.aclose()
        await asyncio.sleep(0)
