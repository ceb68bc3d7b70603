"""Test-side media: aiortc sender tracks that talk and go quiet on a script, and a small WHEP
server in the test that plays them, counts sessions and DELETEs, and can answer slowly.

Everything stays on loopback (the tests restrict ICE to 127.0.0.1). Audio comes from the
committed speech fixture; nothing is written anywhere.
"""

from __future__ import annotations

import asyncio
import fractions
import secrets
from collections.abc import Callable
from pathlib import Path

import av
import numpy as np
from aiohttp import web
from aiortc import MediaStreamTrack, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError

from bridge.connectors.base import close_peer_connection, ice_configuration
from tests.conftest import FIXTURES

__all__ = ["ScriptedTrack", "ScriptedWhep", "speech_48k"]

FRAME = 960  # 20 ms at 48 kHz
TIME_BASE = fractions.Fraction(1, 48000)


def speech_48k(path: Path = FIXTURES / "audio" / "alice_calm.flac") -> np.ndarray:
    """The fixture as 48 kHz mono s16 (what a browser's capture would give aiortc)."""
    with av.open(str(path)) as container:
        resampler = av.AudioResampler(format="s16", layout="mono", rate=48000)
        parts = [f.to_ndarray().reshape(-1) for frame in container.decode(audio=0)
                 for f in resampler.resample(frame)]
    return np.concatenate(parts).astype(np.int16)


class ScriptedTrack(MediaStreamTrack):
    """Plays ``pcm`` in real time following ``script``: ("talk", s) sends frames, ("gap", s)
    sends nothing and lets the RTP timestamps jump over the gap, as a DTX sender or a muted one
    does. After the script the track ends. ``started`` is the loop time of the first frame."""

    kind = "audio"

    def __init__(self, pcm: np.ndarray, script: list[tuple[str, float]]) -> None:
        super().__init__()
        self._pcm = pcm
        self._segments: list[tuple[float, float, bool]] = []
        t = 0.0
        for kind, seconds in script:
            if kind not in ("talk", "gap"):
                raise ValueError(kind)
            self._segments.append((t, t + seconds, kind == "talk"))
            t += seconds
        self.length_s = t
        self.started: float | None = None
        self._n = 0  # frame index on the sender's timeline (gaps included)
        self._played = 0  # samples of pcm played

    def talking_at(self, t: float) -> bool:
        return any(a <= t < b and talk for a, b, talk in self._segments)

    async def recv(self) -> av.AudioFrame:
        loop = asyncio.get_running_loop()
        if self.started is None:
            self.started = loop.time()
        while not self.talking_at(self._n * FRAME / 48000):
            self._n += 1
            if self._n * FRAME / 48000 >= self.length_s:
                self.stop()
                raise MediaStreamError
        due = self.started + (self._n + 1) * FRAME / 48000
        if (wait := due - loop.time()) > 0:
            await asyncio.sleep(wait)
        start = self._played % (len(self._pcm) - FRAME)
        samples = self._pcm[start:start + FRAME]
        self._played += FRAME
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = 48000
        frame.pts = self._n * FRAME
        frame.time_base = TIME_BASE
        self._n += 1
        return frame


class ScriptedWhep:
    """A WHEP endpoint on 127.0.0.1 whose sessions send ``tracks()`` (one per audio m-line).

    ``answer_delay_s`` holds each answer back (a slow media server); ``location(session)`` is
    the ``Location`` each answer names (default ``/whep/<session>``); ``posts``, ``created``,
    ``deleted`` count what clients did (``delete_auth``: the Authorization each DELETE carried);
    ``sessions`` is how many are alive now.
    """

    def __init__(self, tracks: Callable[[], list[MediaStreamTrack]], *,
                 answer_delay_s: float = 0.0,
                 location: Callable[[str], str] | None = None) -> None:
        self._tracks = tracks
        self.answer_delay_s = answer_delay_s
        self._location = location or (lambda session: f"/whep/{session}")
        self.delete_auth: list[str] = []
        self._sessions: dict[str, RTCPeerConnection] = {}
        self.sent: list[list[MediaStreamTrack]] = []
        self.posts = 0
        self.created = 0
        self.deleted = 0
        self.url = ""
        self._runner: web.AppRunner | None = None

    @property
    def sessions(self) -> int:
        return len(self._sessions)

    async def start(self) -> str:
        app = web.Application()
        app.router.add_post("/whep", self._create)
        app.router.add_delete("/whep/{session}", self._delete)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}/whep"
        return self.url

    async def _create(self, request: web.Request) -> web.Response:
        self.posts += 1
        offer = await request.text()
        if self.answer_delay_s:
            await asyncio.sleep(self.answer_delay_s)
        pc = RTCPeerConnection(ice_configuration())
        await pc.setRemoteDescription(RTCSessionDescription(sdp=offer, type="offer"))
        tracks = self._tracks()
        for transceiver, track in zip([t for t in pc.getTransceivers() if t.kind == "audio"],
                                      tracks, strict=False):
            transceiver.sender.replaceTrack(track)
            transceiver.direction = "sendonly"
        self.sent.append(tracks)
        await pc.setLocalDescription(await pc.createAnswer())
        session = secrets.token_urlsafe(8)
        self._sessions[session] = pc
        self.created += 1
        return web.Response(status=201, text=pc.localDescription.sdp,
                            content_type="application/sdp",
                            headers={"Location": self._location(session)})

    async def _delete(self, request: web.Request) -> web.Response:
        self.delete_auth.append(request.headers.get("Authorization", ""))
        pc = self._sessions.pop(request.match_info["session"], None)
        if pc is None:
            return web.Response(status=404)
        self.deleted += 1
        await close_peer_connection(pc)
        return web.Response(status=200)

    async def aclose(self) -> None:
        for pc in list(self._sessions.values()):
            await close_peer_connection(pc)
        self._sessions.clear()
        if self._runner is not None:
            await self._runner.cleanup()
