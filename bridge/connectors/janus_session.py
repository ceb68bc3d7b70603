"""A Janus 1.x API session over HTTP: what every Janus plugin client needs, no room logic.

:class:`JanusSession` creates the session, attaches plugin handles, sends plugin messages (their
answers come in the POST's reply or, when Janus acks first, on the long poll), trickles, keeps the
session alive and destroys it. Every request carries the :class:`JanusAuth` credentials and goes
through one :class:`~bridge.outbound.MediaServerClient`. Janus's refusals are
:class:`JanusError`; the VideoRoom room connector (:mod:`bridge.connectors.janus`) builds on this.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
from collections.abc import Callable, Coroutine
from dataclasses import replace
from typing import Any

from bridge.allowlist import AllowList, redact_url
from bridge.connectors.base import finish_on_cancel
from bridge.connectors.context import JanusAuth
from bridge.errors import ConnectorError
from bridge.outbound import MediaServerClient, OutboundLimits
from bridge.tasks import TaskSet

__all__ = ["NO_SUCH_ROOM", "NO_SUCH_SESSION", "VIDEOROOM", "EventHandler", "JanusError",
           "JanusSession", "plugin_data"]

log = logging.getLogger(__name__)

VIDEOROOM = "janus.plugin.videoroom"
NO_SUCH_SESSION = 458
NO_SUCH_ROOM = 426

EventHandler = Callable[[dict[str, Any]], Coroutine[Any, Any, None]]


class JanusError(ConnectorError):
    """Janus refused a request (``janus_code`` is Janus's or the VideoRoom plugin's error
    code)."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"Janus error {code}: {reason}",
                         code="room_not_found" if code == NO_SUCH_ROOM else "join_failed")
        self.janus_code = code


class JanusSession:
    """One Janus API session over HTTP: requests, a long poll for events, and a keepalive.

    ``lost`` is set (with ``lost_reason``) when the session is gone: Janus answered "no such
    session", or the API stopped answering. Requests go through one
    :class:`~bridge.outbound.MediaServerClient` (``allow``: the hosts it may reach, default the
    URL's own; ``limits``: time and size), with ``auth``'s ``apisecret`` and ``token``.
    """

    def __init__(self, url: str, *, auth: JanusAuth | None = None,
                 allow: AllowList | None = None, limits: OutboundLimits | None = None,
                 timeout_s: float = 10.0, keepalive_s: float = 25.0) -> None:
        self.url = url.rstrip("/")
        self.shown = redact_url(self.url)
        self._auth = auth or JanusAuth()
        self._allow = allow
        self._limits = replace(limits or OutboundLimits(), timeout_s=timeout_s)
        self._timeout_s = timeout_s
        self._keepalive_s = keepalive_s
        self._http: MediaServerClient | None = None
        self.id: int | None = None
        self.handlers: dict[int, EventHandler] = {}
        self._pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._tasks = TaskSet(f"janus-session:{self.shown}")
        self.lost = asyncio.Event()
        self.lost_reason = ""

    async def create(self) -> None:
        self._http = MediaServerClient(self.url, what="Janus", allow=self._allow,
                                       limits=self._limits)
        request: asyncio.Future[dict[str, Any]] = asyncio.ensure_future(
            self._post(self.url, {"janus": "create"}))
        try:
            reply = await finish_on_cancel(request)
            self.id = _reply_id(reply, "create")
        except BaseException:
            if request.done() and not request.cancelled() and request.exception() is None:
                with contextlib.suppress(ConnectorError):  # made, then cancelled: destroy it
                    self.id = _reply_id(request.result(), "create")
            await self.close()
            raise
        self._tasks.spawn(self._poll(), name="poll")
        self._tasks.spawn(self._keepalive(), name="keepalive")

    async def attach(self, handler: EventHandler, plugin: str = VIDEOROOM) -> int:
        """Attach a handle to ``plugin``; its events go to ``handler``. Returns the handle id."""
        reply = await self._post(f"{self.url}/{self.id}", {"janus": "attach", "plugin": plugin})
        handle = _reply_id(reply, "attach")
        self.handlers[handle] = handler
        return handle

    async def detach(self, handle: int) -> None:
        self.handlers.pop(handle, None)
        if not self.lost.is_set():
            with contextlib.suppress(ConnectorError):
                await self._post(f"{self.url}/{self.id}/{handle}", {"janus": "detach"})

    async def message(self, handle: int, body: dict[str, Any], jsep: dict[str, Any] | None = None,
                      ) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """Send a plugin request; return the plugin's data and any JSEP. Synchronous requests
        answer in the POST's reply; asynchronous ones are acked and answered on the long poll."""
        msg: dict[str, Any] = {"janus": "message", "body": body}
        if jsep is not None:
            msg["jsep"] = jsep
        transaction = secrets.token_hex(8)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[transaction] = future
        try:
            reply = await self._post(f"{self.url}/{self.id}/{handle}", msg, transaction)
            if reply.get("janus") == "ack":
                async with asyncio.timeout(self._timeout_s):
                    reply = await future
        except TimeoutError as exc:
            raise ConnectorError(f"Janus {self.shown} did not answer "
                                 f"{str(body.get('request'))[:40]!r} in time") from exc
        finally:
            self._pending.pop(transaction, None)
        data = plugin_data(reply)
        if "error_code" in data:
            try:
                code = int(data["error_code"])
            except (TypeError, ValueError):
                code = 0
            raise JanusError(code, str(data.get("error", ""))[:200])
        jsep = reply.get("jsep")
        return data, jsep if isinstance(jsep, dict) else None

    async def trickle_completed(self, handle: int) -> None:
        await self._post(f"{self.url}/{self.id}/{handle}",
                         {"janus": "trickle", "candidate": {"completed": True}})

    async def close(self) -> None:
        """Destroy the session (best effort) and stop polling; idempotent."""
        if self.id is not None and not self.lost.is_set() and self._http is not None:
            with contextlib.suppress(ConnectorError):
                await self._post(f"{self.url}/{self.id}", {"janus": "destroy"})
        self._mark_lost("closed")
        await self._tasks.aclose()
        for future in self._pending.values():
            future.cancel()
        http, self._http = self._http, None
        if http is not None:
            await http.aclose()

    def _mark_lost(self, reason: str) -> None:
        if not self.lost.is_set():
            self.lost_reason = reason
            self.lost.set()

    async def _post(self, url: str, msg: dict[str, Any], transaction: str | None = None,
                    ) -> dict[str, Any]:
        if self._http is None:
            raise ConnectorError("Janus session is closed")
        msg = {**msg, "transaction": transaction or secrets.token_hex(8)}
        if self._auth.apisecret:
            msg["apisecret"] = self._auth.apisecret
        if self._auth.token:
            msg["token"] = self._auth.token
        http = self._http
        reply = http.json_object(await http.request("POST", url, json=msg, ok=(200,)))
        if reply.get("janus") == "error":
            error = _obj(reply.get("error"))
            try:
                code = int(error.get("code", 0))
            except (TypeError, ValueError):
                code = 0
            if code == NO_SUCH_SESSION:
                self._mark_lost("session gone")
            raise JanusError(code, str(error.get("reason", ""))[:200])
        return reply

    async def _poll(self) -> None:
        """The long poll: Janus holds it up to 30 s and answers with events or a keepalive."""
        http = self._http
        assert http is not None
        failures = 0
        params = {"maxev": "10"}  # a GET carries the credentials in its query, as janus.js does
        params |= {k: v for k, v in (("apisecret", self._auth.apisecret),
                                     ("token", self._auth.token)) if v}
        while not self.lost.is_set():
            try:
                answer = await http.request("GET", f"{self.url}/{self.id}", params=params,
                                            timeout_s=60.0)
                body = json.loads(answer.body)
            except (ConnectorError, ValueError) as exc:
                failures += 1
                if failures >= 2:
                    self._mark_lost("Janus API unreachable" if isinstance(exc, ConnectorError)
                                    else "Janus API sent something that is not JSON")
                    return
                await asyncio.sleep(1.0)
                continue
            failures = 0
            for event in body if isinstance(body, list) else [body]:
                if not isinstance(event, dict):
                    continue  # not an event: nothing in it to act on
                try:
                    await self._dispatch(event)
                except (TypeError, ValueError, AttributeError) as exc:
                    log.warning("Janus %s: an event that could not be read was skipped (%s)",
                                self.shown, type(exc).__name__)

    async def _dispatch(self, event: dict[str, Any]) -> None:
        kind = event.get("janus")
        if kind == "error" and int(event.get("error", {}).get("code", 0)) == NO_SUCH_SESSION:
            self._mark_lost("session gone")
            return
        if kind in ("keepalive", "ack"):
            return
        future = self._pending.get(event.get("transaction", ""))
        if future is not None and not future.done() and kind in ("event", "success", "error"):
            future.set_result(event)
            return
        handler = self.handlers.get(int(event.get("sender", 0) or 0))
        if handler is not None:
            try:
                await handler(event)
            except Exception:
                log.exception("Janus event handler failed on a %r event", kind)

    async def _keepalive(self) -> None:
        while not self.lost.is_set():
            await asyncio.sleep(self._keepalive_s)
            with contextlib.suppress(ConnectorError):
                await self._post(f"{self.url}/{self.id}", {"janus": "keepalive"})


def plugin_data(message: dict[str, Any]) -> dict[str, Any]:
    """``plugindata.data`` of a Janus message (a reply or an event), or an empty object."""
    return _obj(_obj(message.get("plugindata")).get("data"))


def _obj(value: Any) -> dict[str, Any]:
    """``value`` if it is a JSON object, else an empty one (Janus replies are not trusted)."""
    return value if isinstance(value, dict) else {}


def _reply_id(reply: dict[str, Any], request: str) -> int:
    """``data.id`` of a Janus ``success`` reply; a reply without one is a ConnectorError."""
    data = reply.get("data") if isinstance(reply, dict) else None
    value = data.get("id") if isinstance(data, dict) else None
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ConnectorError(f"Janus answered {request!r} without a usable data.id")
    try:
        return int(value)
    except ValueError:
        raise ConnectorError(f"Janus answered {request!r} without a usable data.id") from None
