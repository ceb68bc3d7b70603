"""The demo's media source: a WHEP endpoint on loopback that plays recordings as audio tracks.

It is the other side of the demo call (and of the WHEP tests): each WHEP session gets one track
per clip, in order, played in real time (:class:`ClipTrack`). Bad requests get a 4xx with a
reason and change nothing.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from aiohttp import web
from aiortc import MediaStreamTrack, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError

from bridge.connectors.base import close_peer_connection, ice_configuration
from bridge.pipeline.audio import read_file

__all__ = ["ClipTrack", "DemoSource", "TrackFactory"]

log = logging.getLogger(__name__)

CLIP_RATE = 16000  # what the bridge analyses; aiortc's encoder resamples for Opus
FRAME = CLIP_RATE // 50  # 20 ms

#: Makes the track that plays ``clip`` (``loop``: again and again).
TrackFactory = Callable[[Path, bool], MediaStreamTrack]


class ClipTrack(MediaStreamTrack):
    """A recording as a live audio track: decoded once into memory (16 kHz mono, 16-bit: about
    2 MB a minute), sent in 20 ms frames in real time, and looped by starting the array again,
    so timestamps run on and memory stays what the clip takes however long it plays (aiortc's
    ``MediaPlayer(loop=True)`` seeks the file and restarts its timestamps, and its decoding
    thread then ran ahead of real time into an unbounded queue: about 1.1 MB/s with three
    tracks)."""

    kind = "audio"

    def __init__(self, path: Path, loop: bool = False) -> None:
        super().__init__()
        pcm = np.concatenate([chunk.samples for [chunk] in read_file(path)])
        self._pcm = (np.clip(pcm, -1.0, 1.0) * 32767).astype(np.int16)
        self._repeat = loop
        self._pos = 0
        self._pts = 0
        self._start: float | None = None

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._pos >= len(self._pcm):
            if not self._repeat or not len(self._pcm):
                self.stop()
                raise MediaStreamError
            self._pos = 0
        chunk = self._pcm[self._pos:self._pos + FRAME]
        if len(chunk) < FRAME:
            chunk = np.pad(chunk, (0, FRAME - len(chunk)))
        self._pos += FRAME
        if self._start is None:
            self._start = time.monotonic()
        wait = self._start + self._pts / CLIP_RATE - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        frame = av.AudioFrame.from_ndarray(chunk[None, :], format="s16", layout="mono")
        frame.sample_rate = CLIP_RATE
        frame.pts = self._pts
        frame.time_base = Fraction(1, CLIP_RATE)
        self._pts += FRAME
        return frame


class DemoSource:
    """``await start()`` serves ``http://127.0.0.1:<port>/whep``; ``await aclose()`` stops it."""

    def __init__(self, clips: list[Path], *, loop: bool = False, token: str | None = None,
                 host: str = "127.0.0.1", port: int = 0,
                 track: TrackFactory = ClipTrack) -> None:
        if not clips:
            raise ValueError("the demo source needs at least one clip")
        self.clips = clips
        self.loop = loop
        self._track = track
        self._token = token
        self._host, self._port = host, port
        self._sessions: dict[str, tuple[RTCPeerConnection, list[MediaStreamTrack]]] = {}
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
        tracks: list[MediaStreamTrack] = []
        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=offer, type="offer"))
            audio = [t for t in pc.getTransceivers() if t.kind == "audio"]
            for transceiver, clip in zip(audio, self.clips, strict=False):
                track = self._track(clip, self.loop)
                tracks.append(track)
                transceiver.sender.replaceTrack(track)
                transceiver.direction = "sendonly"
            await pc.setLocalDescription(await pc.createAnswer())
        except Exception as exc:  # malformed SDP and the like: the caller's fault, one line
            await _close(pc, tracks)
            return web.Response(status=400, text=f"cannot answer this offer: {exc}")
        session = secrets.token_urlsafe(12)
        self._sessions[session] = (pc, tracks)
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
        for pc, tracks in list(self._sessions.values()):
            await _close(pc, tracks)
        self._sessions.clear()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


async def _close(pc: RTCPeerConnection, tracks: list[MediaStreamTrack]) -> None:
    for track in tracks:
        track.stop()
    await close_peer_connection(pc)
