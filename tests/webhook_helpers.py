"""Helpers for the webhook tests: events, a real aiohttp receiver on loopback, secrets."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from bridge import events as ev

SECRET_A = "whsec_" + base64.b64encode(b"first secret, 32 bytes long!!!!!").decode()
SECRET_B = "whsec_" + base64.b64encode(b"second secret rotates the first.").decode()

CALL = ev.CallInfo(id="janus:1234", connector="janus", room="1234")
SPEAKER = ev.SpeakerInfo(id="janus:1234:7", display="Alice")


def spike(n: int = 0) -> ev.Event:
    return ev.SpikeStarted(call=CALL, speaker=SPEAKER, data=ev.SpikeStartedData(
        offset_s=float(n), started_s=float(n), index=0.8, peak=0.8, components=["f0"]))


def sample(n: int = 0) -> ev.Event:
    return ev.AffectSample(call=CALL, speaker=SPEAKER, data=ev.AffectSampleData(
        offset_s=float(n), window_start_s=float(n), window_end_s=n + 4.0, voiced_s=3.0,
        emotion=None, arousal=None, valence=None,
        prosody=ev.ProsodyData(f0_hz=120.0, f0_range_st=3.0, jitter=0.01, shimmer=0.05,
                               hnr_db=15.0, energy_db=-20.0, speech_rate=4.0, pause_ratio=0.2),
        stress=ev.StressData(index=0.3, components={"f0": 0.5}, calibrating=False)))


def joined(n: int = 0) -> ev.Event:
    return ev.SpeakerJoined(call=CALL, speaker=SPEAKER,
                            data=ev.SpeakerJoinedData(offset_s=float(n)))


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes

    @property
    def id(self) -> str:
        return self.headers["webhook-id"]

    @property
    def type(self) -> str:
        return str(json.loads(self.body)["type"])


@dataclass
class Receiver:
    """An aiohttp webhook receiver on 127.0.0.1. ``respond`` decides each answer (status,
    headers) from the number of requests so far; ``delay_s`` slows every answer."""

    port: int = 0
    respond: Callable[[int], tuple[int, dict[str, str]]] = lambda n: (200, {})
    delay_s: float = 0.0
    got: list[Received] = field(default_factory=list)  # every request, answered 2xx or not
    delivered: list[Received] = field(default_factory=list)  # those answered 2xx
    _runner: web.AppRunner | None = None
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def start(self) -> Receiver:
        app = web.Application()
        app.router.add_post("/hook", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        self.port = self._runner.addresses[0][1]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        item = Received(dict(request.headers), body)
        status, headers = self.respond(len(self.got))
        self.got.append(item)
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if 200 <= status < 300:
            self.delivered.append(item)
        self._changed.set()
        return web.Response(status=status, headers=headers)

    def delivered_ids(self) -> set[str]:
        return {r.id for r in self.delivered}

    async def wait_for(self, pred: Callable[[Receiver], bool], limit_s: float = 60.0) -> None:
        """Until ``pred`` holds (a generous bound only stops a broken sink hanging the suite)."""
        try:
            async with asyncio.timeout(limit_s):
                while not pred(self):
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            raise AssertionError(f"receiver never got there: {len(self.got)} requests, "
                                 f"{len(self.delivered)} delivered") from None


def endpoint(url: str, **kw: Any) -> dict[str, Any]:
    return {"url": url, "events": ["*"], "retry_schedule_s": [0.2] * 20, **kw}
