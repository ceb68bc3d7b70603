"""The control API from any replica: a call's requests are forwarded to the replica that owns it.

Every replica computes the owner of a call id the same way auto-join does (rendezvous hashing,
bridge/control/shard.py, over ``shard.count``), so ``POST /v1/calls`` joins on the owner and
``GET``/``DELETE /v1/calls/{id}`` (and ``/speakers``) reach the replica that holds the call,
whichever replica a load-balanced Service sent the request to. The request (method, path, body,
``Authorization``) is forwarded to the owner's address (``shard.peer_url`` or ``shard.peers``)
and the owner's answer (status, JSON body) returned as it is, with ``X-Affect-Bridge-Owner``
naming the replica that answered.

* The bearer token is checked here before anything is forwarded (the app's ``_auth`` middleware
  runs first), and again by the owner.
* A forwarded request carries ``X-Affect-Bridge-Forwarded`` and is answered where it lands, never
  forwarded again (replicas that disagree on the count while they roll cannot ping-pong).
* An owner that cannot be reached: 502 ``owner_unreachable``, nothing changed. One reached that
  does not answer in ``shard.forward_timeout_s``: 504 ``owner_timeout``, or that drops the
  connection: 502 ``owner_failed`` (in both it may have carried the request out).
* Nothing is forwarded with ``shard.count`` 1 or without peer addresses, and a ``POST`` whose call
  id cannot be computed (bad JSON, unknown connector, invalid request) is answered here, with the
  same error the owner would give (the join is parsed once, :mod:`bridge.control.joining`).
* ``GET /v1/calls`` lists this replica's calls only.

Forwarding rather than redirecting: pod addresses resolve only inside the cluster, and clients
need not resend bodies or bearer tokens to a second host.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web

from bridge.config import ShardSettings
from bridge.control.errors import error
from bridge.control.joining import parsed_join
from bridge.control.shard import owner
from bridge.logsafe import client_error

__all__ = ["FORWARDED", "OWNER", "ROUTER", "Router", "forward_to_owner"]

log = logging.getLogger(__name__)

FORWARDED = "X-Affect-Bridge-Forwarded"  # on a forwarded request: the replica that sent it
OWNER = "X-Affect-Bridge-Owner"  # on a forwarded answer: the replica that answered
_CALL_ROUTES = {"/v1/calls/{call_id}": ("GET", "DELETE"), "/v1/calls/{call_id}/speakers": ("GET",)}
_CONNECT_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class Router:
    """Who owns a call id, and where that replica listens."""

    shard: ShardSettings

    def owner(self, call_id: str) -> int:
        return owner(call_id, self.shard.count)

    def elsewhere(self, call_id: str) -> tuple[int, str] | None:
        """(owner index, its base URL) when another replica owns ``call_id`` and its address is
        known; None when this replica answers."""
        if self.shard.count == 1:
            return None
        index = self.owner(call_id)
        if index == self.shard.index:
            return None
        url = self.shard.peer(index)
        return None if url is None else (index, url)


ROUTER = web.AppKey("router", Router)


def _route(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else ""


@web.middleware
async def forward_to_owner(request: web.Request, handler: Any) -> web.StreamResponse:
    """Answer a call's request on the replica that owns the call (see the module's doc)."""
    route = _route(request)
    if not route.startswith("/v1/calls") or FORWARDED in request.headers:
        return await handler(request)
    router = request.app[ROUTER]
    if router.shard.count == 1:
        return await handler(request)
    call_id: str | None = None
    if route == "/v1/calls" and request.method == "POST":
        call_id = (await parsed_join(request)).info.id  # refused here as on the owner
    elif request.method in _CALL_ROUTES.get(route, ()):
        call_id = request.match_info.get("call_id")
    target = router.elsewhere(call_id) if call_id is not None else None
    if target is None:
        return await handler(request)
    return await _forward(request, router, *target)


async def _forward(request: web.Request, router: Router, index: int, base: str
                   ) -> web.StreamResponse:
    body = await request.read()  # kept by aiohttp once read (the POST's call id was)
    headers = {FORWARDED: str(router.shard.index)}
    for name in ("Authorization", "Content-Type"):
        if name in request.headers:
            headers[name] = request.headers[name]
    timeout = aiohttp.ClientTimeout(total=router.shard.forward_timeout_s,
                                    connect=_CONNECT_TIMEOUT_S)
    where = f"replica {index}"
    try:
        async with aiohttp.ClientSession(timeout=timeout, auto_decompress=False) as http:
            async with http.request(request.method, base + request.raw_path, data=body or None,
                                    headers=headers, allow_redirects=False) as resp:
                payload = await resp.read()
                content_type = resp.headers.get("Content-Type", "application/json")
                status = resp.status
    except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
        # Nothing reached the owner: nothing changed anywhere.
        client_error(log, "%s %s: owner %s unreachable (%s)", request.method,
                     request.path[:200], where, type(exc).__name__)
        return error(502, "owner_unreachable",
                           f"the call's owner ({where}) cannot be reached "
                           f"({type(exc).__name__}); nothing was changed")
    except (aiohttp.ClientError, TimeoutError) as exc:
        # The request may have reached the owner: it may have been carried out.
        timed_out = isinstance(exc, TimeoutError)
        client_error(log, "%s %s: owner %s %s", request.method, request.path[:200], where,
                     "did not answer in time" if timed_out else
                     f"failed mid-request ({type(exc).__name__})")
        return error(504 if timed_out else 502,
                           "owner_timeout" if timed_out else "owner_failed",
                           f"the call's owner ({where}) "
                           + ("did not answer in time" if timed_out else
                              f"failed mid-request ({type(exc).__name__})")
                           + "; it may still have carried the request out")
    return web.Response(body=payload, status=status, headers={
        "Content-Type": content_type, OWNER: str(index)})
