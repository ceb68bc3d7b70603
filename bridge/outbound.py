"""Outbound HTTP to media servers (WHEP, Janus) and to an inference server: one hardened client,
one allow-list.

The control API lets an authenticated client name a media server; without limits that makes the
bridge a proxy into whatever network it runs in (SSRF). So every request to a media server, and
to the configured inference server (``[emotion] backend = "remote"``), goes through a
:class:`MediaServerClient`:

- to the **origin of the server's URL only** (a WHEP ``Location`` on another host is refused, so
  the bearer token only ever goes where the join went);
- to hosts the :class:`AllowList` admits, checked before any connection is made and again on
  every DNS answer (a name that resolves somewhere else later is refused then);
- **no redirects**, a time limit per request, a size limit per response;
- failures are :class:`~bridge.errors.ConnectorError` with a reason code and at most the
  upstream's HTTP status: never the upstream's body, never the URL's user info or query string.
  The client maps them for every connector: a connection that fails or times out is
  ``unreachable``, a status the caller did not expect ``upstream_error``, an answer too large or
  of the wrong kind ``bad_response``.

The allow-list itself, and :func:`~bridge.allowlist.redact_url` (what logs and error reasons show
of a URL), are :mod:`bridge.allowlist`: config checks its entries without this client.
"""

from __future__ import annotations

import json as jsonlib
import socket
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from ssl import SSLContext
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

from bridge.allowlist import AllowList, parse_ip, redact_url, refused
from bridge.errors import ConnectorError

__all__ = ["MediaServerClient", "OutboundLimits", "Reply"]

class _AllowListResolver(AbstractResolver):
    """DNS answers filtered by the allow-list: the client connects only to admitted addresses,
    whatever a name resolves to by the time it connects."""

    def __init__(self, allow: AllowList) -> None:
        self._allow = allow
        self._inner = aiohttp.ThreadedResolver()

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        infos = await self._inner.resolve(host, port, family)
        if self._allow.admits_name(host.lower().rstrip("."), port):
            return infos
        kept = [i for i in infos if (a := parse_ip(i["host"])) is not None
                and self._allow.admits_ip(a, port)]
        if not kept:
            raise OSError(f"{host} resolves to no address the outbound allow-list admits")
        return kept

    async def close(self) -> None:
        await self._inner.close()


@dataclass(frozen=True, slots=True)
class OutboundLimits:
    timeout_s: float = 10.0
    max_response_bytes: int = 1 << 20


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    headers: Mapping[str, str]
    body: bytes


class MediaServerClient:
    """HTTP to one media server: requests only to the origin of ``url``, which ``allow`` must
    admit (default: that origin alone); no redirects; ``limits`` on time and size. ``what``
    names the server in error reasons ("WHEP endpoint", "Janus")."""

    def __init__(self, url: str, *, what: str, allow: AllowList | None = None,
                 limits: OutboundLimits | None = None, ssl: SSLContext | None = None,
                 connections: int = 16) -> None:
        self.url = URL(url)
        self.origin = self.url.origin()
        self.what = what
        self.shown = redact_url(self.url)
        self._allow = allow if allow else AllowList.origins([url])
        self.limits = limits or OutboundLimits()
        self._ssl = ssl  # None: the system's CA store
        self._connections = connections
        self._http: aiohttp.ClientSession | None = None

    def same_origin(self, url: str) -> URL | None:
        """``url`` (absolute, or relative to the server's URL) if it is on the server's origin."""
        try:
            target = self.url.join(URL(url))
        except (ValueError, TypeError):
            return None
        if target.scheme not in ("http", "https") or target.origin() != self.origin:
            return None
        return target

    async def request(self, method: str, url: str | URL, *, json: Any = None,
                      data: str | bytes | None = None, headers: Mapping[str, str] | None = None,
                      params: Mapping[str, str] | None = None, timeout_s: float | None = None,
                      ok: Collection[int] | None = None) -> Reply:
        """One request and its whole (size-limited) body. Raises ConnectorError: ``not_allowed``
        (another origin or not admitted: nothing was sent), ``unreachable`` (connection failed
        or timed out), ``bad_response`` (body over the limit), ``upstream_error`` (a status not
        in ``ok``, when ``ok`` is given)."""
        target = self.same_origin(str(url))
        if target is None:
            raise refused(str(url), f"not on the origin of the {self.what}")
        if self._http is None:
            await self._allow.check(str(target))
            self._http = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(resolver=_AllowListResolver(self._allow),
                                               limit=self._connections,
                                               ssl=self._ssl or True),
                timeout=aiohttp.ClientTimeout(total=self.limits.timeout_s))
        timeout = aiohttp.ClientTimeout(total=timeout_s or self.limits.timeout_s)
        try:
            async with self._http.request(method, target, json=json, data=data,
                                          headers=headers, params=params, timeout=timeout,
                                          allow_redirects=False) as resp:
                reply = Reply(resp.status, resp.headers, await self._read(resp))
        except aiohttp.ClientError as exc:
            raise self.failure(f"unreachable ({type(exc).__name__})", code="unreachable"
                               ) from None
        except TimeoutError:
            raise self.failure("did not answer in time", code="unreachable") from None
        if ok is not None and reply.status not in ok:
            raise self.failure(f"answered HTTP {reply.status}", code="upstream_error")
        return reply

    def json_object(self, reply: Reply) -> dict[str, Any]:
        """``reply``'s body as a JSON object; ConnectorError ``bad_response`` when it is not
        one (not JSON, not UTF-8, a number too long to read, or another JSON value)."""
        try:
            value = jsonlib.loads(reply.body)
        except ValueError:
            raise self.failure("sent something that is not JSON") from None
        if not isinstance(value, dict):
            raise self.failure("sent a reply that is not a JSON object")
        return value

    def failure(self, what_happened: str, *, code: str = "bad_response") -> ConnectorError:
        """A failure of this server as the control API reports it: ``"<what> <url as logs may
        show it> <what_happened>"``, with the error code ``code``."""
        return ConnectorError(f"{self.what} {self.shown} {what_happened}", code=code)

    async def _read(self, resp: aiohttp.ClientResponse) -> bytes:
        limit = self.limits.max_response_bytes
        if (resp.content_length or 0) > limit:
            raise self._too_large(resp.status)
        body = bytearray()
        async for chunk in resp.content.iter_chunked(64 * 1024):
            body += chunk
            if len(body) > limit:
                raise self._too_large(resp.status)
        return bytes(body)

    def _too_large(self, status: int) -> ConnectorError:
        return self.failure(f"answered HTTP {status} with more than "
                            f"{self.limits.max_response_bytes} bytes")

    async def aclose(self) -> None:
        http, self._http = self._http, None
        if http is not None:
            await http.close()
