"""How a call is joined and its speakers found: the connector interface.

A connector joins one call and reports speakers as they come and go (each with its audio track);
the call manager runs a :class:`~bridge.live.speaker.LiveSpeaker` for each. Connectors are plugins
(entry-point group ``affect_bridge.connectors``).
pyee/aiortc string events stay inside the connector; what crosses this boundary is typed.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import random
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCRtpReceiver,
)
from aiortc.mediastreams import MediaStreamError
from pydantic import BaseModel

from bridge import events as ev
from bridge.connectors.context import JoinContext
from bridge.errors import ConnectorError

T = TypeVar("T")

# ConnectorError and JoinContext are named here for connector plugins (their home is
# bridge.errors and bridge.connectors.context).
__all__ = ["Backoff", "Connector", "ConnectorError", "ConnectorFactory", "JoinContext",
           "SpeakerTrack",
           "close_peer_connection", "discard_track", "finish_on_cancel", "ice_configuration",
           "receiver_of"]


@dataclass(frozen=True, slots=True)
class SpeakerTrack:
    """A speaker found in a call: stable id, display name, and the audio track to drain."""

    speaker: ev.SpeakerInfo
    track: MediaStreamTrack
    #: The track's receiver, when the connector knows it: a track nobody analyses any more is
    #: switched off there (no decoding), see :func:`discard_track`.
    receiver: RTCRtpReceiver | None = None


OnSpeaker = Callable[[SpeakerTrack], Coroutine[Any, Any, None]]
OnSpeakerLeft = Callable[[str, str], Coroutine[Any, Any, None]]  # speaker id, reason
ConnectorFactory = Callable[[ev.CallInfo, OnSpeaker, OnSpeakerLeft], "Connector"]


class Connector(abc.ABC):
    """Join one call. ``on_speaker`` is awaited for each speaker found (its track must be drained
    from the first frame); ``on_speaker_left`` when the signalling says a speaker went; ``end``
    when the call is over by itself (the call manager then leaves it)."""

    name: ClassVar[str] = "base"
    #: The body of ``POST /v1/calls`` that joins a call through this connector.
    Request: ClassVar[type[BaseModel]]

    def __init__(self, call: ev.CallInfo, on_speaker: OnSpeaker, on_speaker_left: OnSpeakerLeft,
                 ) -> None:
        self.call = call
        self._on_speaker = on_speaker
        self._on_speaker_left = on_speaker_left
        self.ended = asyncio.Event()
        self.end_reason = ""

    def end(self, reason: str) -> None:
        """The call is over by itself (room destroyed or empty): the call manager leaves it."""
        if not self.ended.is_set():
            self.end_reason = reason
            self.ended.set()

    @classmethod
    def from_request(cls, req: Any, ctx: JoinContext) -> tuple[ev.CallInfo, ConnectorFactory]:
        """The call a validated ``Request`` names, and how to build its connector. The URL it
        names is checked against ``ctx.allow`` when the connector first connects."""
        raise NotImplementedError(f"connector {cls.name!r} cannot be joined on request")

    @abc.abstractmethod
    async def join(self) -> None:
        """Connect; raise :class:`ConnectorError` with a one-line reason when that fails."""

    @abc.abstractmethod
    async def leave(self) -> None:
        """Disconnect and release everything (idempotent)."""


def ice_configuration(urls: list[str] | None = None) -> RTCConfiguration:
    """ICE servers come from config and default to none (aiortc's own default contacts a public
    STUN server, which a bridge on a private network must not do)."""
    return RTCConfiguration(iceServers=[RTCIceServer(urls=u) for u in urls or []])


@dataclass
class Backoff:
    """Exponential backoff with full jitter for reconnects: 1 s, 2 s, 4 s ... capped."""

    base_s: float = 1.0
    cap_s: float = 30.0
    attempt: int = 0

    def next_delay(self) -> float:
        delay = min(self.cap_s, self.base_s * 2**self.attempt)
        self.attempt += 1
        return random.uniform(0, delay)

    def reset(self) -> None:
        self.attempt = 0

    async def sleep(self) -> None:
        await asyncio.sleep(self.next_delay())


async def finish_on_cancel(request: Awaitable[T]) -> T:
    """Await a signalling request that makes something remotely (a WHEP session, a Janus
    session). When the caller is cancelled meanwhile (the call was left while joining), the
    request still runs to its end, bounded by its own timeout, so its result (the session's
    location or id) is known and whatever it made can be torn down; then the cancellation goes
    on. Call the connector's ``leave`` in the cancellation path."""
    task = asyncio.ensure_future(request)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            await task
        raise


def receiver_of(pc: RTCPeerConnection, track: MediaStreamTrack) -> RTCRtpReceiver | None:
    return next((r for r in pc.getReceivers() if r.track is track), None)


async def discard_track(track: MediaStreamTrack, receiver: RTCRtpReceiver | None = None) -> None:
    """Read ``track`` until it ends, throwing the frames away.

    aiortc decodes every received track into an unbounded queue whether anyone reads it or not
    (``track.stop()`` does not stop that; aiortc issue #554: ~190 KB/s of audio, far more for
    video). A track the bridge does not analyse (video, a duplicate, a speaker gone for good)
    is drained here for as long as its connection lives; its receiver is switched off first
    where known, so its packets are dropped before decoding. Run it as an owned task.
    """
    if receiver is not None and hasattr(receiver, "_enabled"):
        receiver._enabled = False  # aiortc drops packets of a disabled receiver on arrival
    with contextlib.suppress(MediaStreamError):
        while True:
            await track.recv()


async def close_peer_connection(pc: RTCPeerConnection, settle_s: float = 5.0) -> None:
    """Close ``pc``, first letting a connection attempt in progress finish (at most ``settle_s``).

    Closing while ICE checks are still running leaves aioice's consent-freshness tasks behind
    (seen here: 41 stray tasks after 20 join/leave cycles without the wait).
    """
    if pc.connectionState in ("new", "connecting") and pc.remoteDescription is not None:
        settled = asyncio.Event()

        @pc.on("connectionstatechange")
        def _changed() -> None:
            if pc.connectionState not in ("new", "connecting"):
                settled.set()

        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(settled.wait(), settle_s)
    await pc.close()
