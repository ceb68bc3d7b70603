"""Auto-join: poll each configured Janus server's room list and join the rooms this replica owns.

A room is joined when it matches the ``rooms`` setting, rendezvous hashing assigns it to this
replica (``shard.index`` of ``shard.count``), and someone is in it. Rooms that appear later are
joined on the next poll; a room the bridge left because it was empty is joined again when
someone comes back.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from bridge import events as ev
from bridge.allowlist import redact_url
from bridge.config import JanusSettings, ShardSettings
from bridge.connectors.base import Backoff
from bridge.connectors.context import JoinContext, server_key
from bridge.connectors.janus import JanusConnector, JanusJoin, janus_call_info
from bridge.connectors.janus_session import JanusSession
from bridge.control.shard import owns
from bridge.errors import BridgeError, ConnectorError
from bridge.live.calls import CallHost, Join
from bridge.tasks import TaskSet, report_failure

__all__ = ["JanusAutoJoin"]

log = logging.getLogger(__name__)


class JanusAutoJoin:
    """One per ``[[janus]]`` block; ``start`` spawns the poller, ``aclose`` stops it (the call
    manager leaves the calls)."""

    def __init__(self, manager: CallHost, cfg: JanusSettings, shard: ShardSettings,
                 join: JoinContext | None = None) -> None:
        self.manager = manager
        self.cfg = cfg
        self.shard = shard
        self._ctx = join or JoinContext()
        self._shown = redact_url(cfg.url)
        self._tasks = TaskSet(f"autojoin:{self._shown}")
        self._failed: dict[str, str] = {}  # call id -> last join error (logged once)
        self._backoff: dict[str, Backoff] = {}  # call id -> retry backoff after failures
        self._not_before: dict[str, float] = {}  # call id -> loop time of the next attempt
        self.polls = 0
        self.ended_in_error = 0

    def start(self) -> None:
        self._tasks.spawn(self._run(), name="poll")

    async def aclose(self) -> None:
        await self._tasks.aclose()

    async def _run(self) -> None:
        backoff = Backoff(cap_s=max(30.0, self.cfg.poll_s))
        while True:
            session = JanusSession(self.cfg.url, auth=self._ctx.janus_auth.get(
                server_key(self.cfg.url)), allow=self._ctx.allow, limits=self._ctx.limits)
            try:
                await session.create()
                handle = await session.attach(_ignore)
                backoff.reset()
                while not session.lost.is_set():
                    data, _ = await session.message(handle, {"request": "list"})
                    self.polls += 1
                    await self._reconcile(data.get("list", []))
                    await asyncio.sleep(self.cfg.poll_s)
            except ConnectorError as exc:
                log.warning("auto-join on %s: %s", self._shown, exc)
            except Exception as exc:  # an unexpected reply must not end auto-join for good
                report_failure("autojoin/poll", exc,
                               name=f"auto-join on {self._shown} (starting again)")
            finally:
                await session.close()
            await backoff.sleep()

    async def _reconcile(self, rooms: list[dict[str, Any]]) -> None:
        now = asyncio.get_running_loop().time()
        for room in rooms:
            room_id = room.get("room")
            if room_id is None or not self.cfg.wants(room_id, str(room.get("description", ""))):
                continue
            info = janus_call_info(room_id, self.cfg.name)
            if not owns(info.id, self.shard.index, self.shard.count):  # as the control API
                continue
            if info.id in self.manager.calls or int(room.get("num_participants", 0)) < 1:
                continue
            if now < self._not_before.get(info.id, 0.0):
                continue  # it failed lately: wait for its backoff
            self._not_before[info.id] = float("inf")  # one attempt at a time
            self._tasks.spawn(self._join(room_id, info), name=f"join:{info.id}")

    def _failed_once(self, call_id: str) -> None:
        """Retry ``call_id`` no sooner than its backoff says (1 s, 2 s, 4 s ... jittered)."""
        delay = self._backoff.setdefault(call_id, Backoff(cap_s=max(30.0, self.cfg.poll_s))
                                         ).next_delay()
        self._not_before[call_id] = asyncio.get_running_loop().time() + delay

    async def _join(self, room: int | str, info: ev.CallInfo) -> None:
        cfg = self.cfg
        if info.id in self.manager.calls:
            return
        try:
            request = JanusJoin(connector="janus", url=cfg.url, room=room,
                                display_name=cfg.display_name,
                                leave_when_empty=cfg.leave_when_empty)
            call = await self.manager.join(Join.of(JanusConnector, request, self._ctx))
        except (BridgeError, ValueError) as exc:  # ValueError: a room the request refuses
            if self._failed.get(info.id) != str(exc):
                log.warning("auto-join of room %s on %s failed: %s", room, self._shown, exc)
            self._failed[info.id] = str(exc)
            self._failed_once(info.id)
            return
        except BaseException:
            self._not_before.pop(info.id, None)
            raise
        self._failed.pop(info.id, None)
        self._not_before.pop(info.id, None)
        log.info("auto-joined room %s on %s as %s", room, self._shown, info.id)
        # Watch the call: one that ended in an error is joined again after a backoff.
        await call.ended.wait()
        if call.end_reason == "error":
            self.ended_in_error += 1
            self._failed_once(info.id)
            log.warning("room %s on %s: the call ended in an error; joining it again",
                        room, self._shown)
        else:
            self._backoff.pop(info.id, None)


async def _ignore(event: dict[str, Any]) -> None:
    """The list handle's events carry nothing auto-join needs."""
