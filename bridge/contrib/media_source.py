"""The demo's media source: a WHEP endpoint on loopback that plays recordings as audio tracks.

It is the other side of the demo call (and of the WHEP tests): each WHEP session gets one track
per clip, in order, played in real time by aiortc's ``MediaPlayer``. Bad requests get a 4xx with
a reason and change nothing.
"""

from __future__ import annotations

import logging
import secrets
from pathlib import Path

from aiohttp import web
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.contrib.media import MediaPlayer

from bridge.connectors.base import close_peer_connection, ice_configuration

__all__ = ["DemoSource"]

log = logging.getLogger(__name__)


class DemoSource:
    """``await start()`` serves ``http://127.0.0.1:<port>/whep``; ``await aclose()`` stops it."""

    def __init__(self, clips: list[Path], *, loop: bool = False, token: str | None = None,
                 host: str = "127.0.0.1", port: int = 0) -> None:
        if not clips:
            raise ValueError("the demo source needs at least one clip")
        self.clips = clips
        self.loop = loop
        self._token = token
        self._host, self._port = host, port
        self._sessions: dict[str, tuple[RTCPeerConnection, list[MediaPlayer]]] = {}
        self._runner: web.AppRunner | None = None
        self.url = ""

    @property
    def sessions(self) -> int:
        return len(self._sessions)

    async def start(self) -> str:
        app = web.Application(client_max_size=256 * 1024)
        app.router.add_post("/whep", self._create)
        app.router.add_delete("/whep/{session}", self._delete)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://{self._host}:{port}/whep"
        return self.url

    def _authorised(self, request: web.Request) -> bool:
        return self._token is None or request.headers.get("Authorization") == f"Bearer {self._token}"

    async def _create(self, request: web.Request) -> web.Response:
        if not self._authorised(request):
            return web.Response(status=401, text="missing or wrong bearer token")
        if request.content_type != "application/sdp":
            return web.Response(status=415, text="WHEP offers must be application/sdp")
        offer = await request.text()
        if "m=audio" not in offer:
            return web.Response(status=400, text="the offer has no audio m-line")
        pc = RTCPeerConnection(ice_configuration())
        players: list[MediaPlayer] = []
        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=offer, type="offer"))
            audio = [t for t in pc.getTransceivers() if t.kind == "audio"]
            for transceiver, clip in zip(audio, self.clips, strict=False):
                player = MediaPlayer(str(clip), loop=self.loop)
                players.append(player)
                assert player.audio is not None
                transceiver.sender.replaceTrack(player.audio)
                transceiver.direction = "sendonly"
            await pc.setLocalDescription(await pc.createAnswer())
        except Exception as exc:  # malformed SDP and the like: the caller's fault, one line
            await _close(pc, players)
            return web.Response(status=400, text=f"cannot answer this offer: {exc}")
        session = secrets.token_urlsafe(12)
        self._sessions[session] = (pc, players)
        return web.Response(status=201, text=pc.localDescription.sdp,
                            content_type="application/sdp",
                            headers={"Location": f"/whep/{session}"})

    async def _delete(self, request: web.Request) -> web.Response:
        if not self._authorised(request):
            return web.Response(status=401, text="missing or wrong bearer token")
        entry = self._sessions.pop(request.match_info["session"], None)
        if entry is None:
            return web.Response(status=404, text="no such session")
        await _close(*entry)
        return web.Response(status=200)

    async def aclose(self) -> None:
        for pc, players in list(self._sessions.values()):
            await _close(pc, players)
        self._sessions.clear()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


async def _close(pc: RTCPeerConnection, players: list[MediaPlayer]) -> None:
    for player in players:
        if player.audio is not None:
            player.audio.stop()
    await close_peer_connection(pc)
