"""Outbound HTTP to media servers (WHEP, Janus): one hardened client, one allow-list.

The control API lets an authenticated client name a media server; without limits that makes the
bridge a proxy into whatever network it runs in (SSRF). So every request to a media server goes
through a :class:`MediaServerClient`:

- to the **origin of the server's URL only** (a WHEP ``Location`` on another host is refused, so
  the bearer token only ever goes where the join went);
- to hosts the :class:`AllowList` admits, checked before any connection is made and again on
  every DNS answer (a name that resolves somewhere else later is refused then);
- **no redirects**, a time limit per request, a size limit per response;
- failures are :class:`~bridge.connectors.base.ConnectorError` with a reason code and at most the
  upstream's HTTP status: never the upstream's body, never the URL's user info or query string.
  The client maps them for every connector: a connection that fails or times out is
  ``unreachable``, a status the caller did not expect ``upstream_error``, an answer too large or
  of the wrong kind ``bad_response``.

:func:`redact_url` is what logs and error reasons show of a URL.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json as jsonlib
import re
import socket
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

from bridge.connectors.base import ConnectorError

__all__ = ["AllowList", "AllowRule", "MediaServerClient", "OutboundLimits", "Reply",
           "redact_url"]

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_HOST = re.compile(r"^(\*\.)?[a-z0-9_]([a-z0-9_-]{0,62})(\.[a-z0-9_]([a-z0-9_-]{0,62}))*$")


def redact_url(url: str | URL) -> str:
    """``url`` as logs and error reasons may show it: scheme, host, port and path; no user info,
    no query string, no fragment (any of them can carry a token)."""
    try:
        parsed = url if isinstance(url, URL) else URL(url)
        if not parsed.is_absolute():
            return "(relative URL)"
        shown = parsed.with_user(None).with_query(None).with_fragment(None)
        text = str(shown)
    except (ValueError, TypeError):
        return "(unparseable URL)"
    return text[:300]


def _ip(text: str) -> IPAddress | None:
    try:
        addr = ipaddress.ip_address(text.strip("[]").split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped  # ::ffff:10.0.0.1 is 10.0.0.1
    return addr


@dataclass(frozen=True, slots=True)
class AllowRule:
    """One allow-list entry: a host name (``*.`` prefix: any name below it) or an IP network,
    and a port (None: any port)."""

    host: str | None = None
    network: IPNetwork | None = None
    port: int | None = None

    @classmethod
    def parse(cls, entry: str) -> AllowRule:
        """``host``, ``host:port``, ``*.example.org[:port]``, ``10.0.0.5[:port]``,
        ``10.0.0.0/8[:port]``, ``[fd00::/8]:port``, ``fd00::/8``. Raises ValueError."""
        text = entry.strip().lower()
        port: int | None = None
        if text.startswith("["):
            inner, sep, rest = text[1:].partition("]")
            if not sep or (rest and not rest.startswith(":")):
                raise ValueError(f"{entry!r}: expected [IPv6 address or network]:port")
            text, port_text = inner, rest[1:] if rest else ""
        elif text.count(":") == 1:
            text, _, port_text = text.partition(":")
        else:
            port_text = ""  # a bare IPv6 address or network has no port
        if port_text:
            if not port_text.isdigit() or not 0 < int(port_text) < 65536:
                raise ValueError(f"{entry!r}: the port must be 1..65535")
            port = int(port_text)
        if not text:
            raise ValueError(f"{entry!r}: no host")
        try:
            network = ipaddress.ip_network(text, strict=False)
        except ValueError:
            network = None
        if network is not None:
            return cls(network=network, port=port)
        host = text.rstrip(".")
        if not _HOST.fullmatch(host):
            raise ValueError(f"{entry!r} is neither a host name nor an IP address or network")
        return cls(host=host, port=port)

    def admits_name(self, host: str, port: int) -> bool:
        if self.host is None or (self.port is not None and self.port != port):
            return False
        if self.host.startswith("*."):
            return host.endswith(self.host[1:])
        return host == self.host

    def admits_ip(self, addr: IPAddress, port: int) -> bool:
        if self.network is None or (self.port is not None and self.port != port):
            return False
        return addr.version == self.network.version and addr in self.network

    def __str__(self) -> str:
        where = self.host or str(self.network)
        if self.port is None:
            return where
        return f"[{where}]:{self.port}" if ":" in where else f"{where}:{self.port}"


def _host_port(url: URL) -> tuple[str, int]:
    host = (url.raw_host or "").lower().rstrip(".")
    port = url.port or (443 if url.scheme == "https" else 80)
    return host, port


class AllowList:
    """Which media servers the bridge may connect to. Empty: none (beyond what a client pins)."""

    def __init__(self, rules: Iterable[AllowRule] = ()) -> None:
        self.rules = tuple(rules)

    @classmethod
    def parse(cls, entries: Iterable[str]) -> AllowList:
        return cls(AllowRule.parse(e) for e in entries)

    @classmethod
    def origins(cls, urls: Iterable[str]) -> AllowList:
        """Exactly the hosts and ports of ``urls`` (servers named in config)."""
        rules = []
        for url in urls:
            host, port = _host_port(URL(url))
            addr = _ip(host)
            rules.append(AllowRule(network=ipaddress.ip_network(addr), port=port)
                         if addr is not None else AllowRule(host=host, port=port))
        return cls(rules)

    def __add__(self, other: AllowList) -> AllowList:
        return AllowList(self.rules + other.rules)

    def __bool__(self) -> bool:
        return bool(self.rules)

    def admits_name(self, host: str, port: int) -> bool:
        addr = _ip(host)
        if addr is not None:
            return self.admits_ip(addr, port)
        return any(r.admits_name(host, port) for r in self.rules)

    def admits_ip(self, addr: IPAddress, port: int) -> bool:
        return any(r.admits_ip(addr, port) for r in self.rules)

    async def check(self, url: str) -> None:
        """Raise ConnectorError ``not_allowed`` (403) unless a request to ``url`` may be made.
        A host name not admitted by name is resolved here: admitted when one of its addresses
        is (the client then connects only to admitted addresses). Connects to nothing."""
        parsed = URL(url)
        if parsed.scheme not in ("http", "https") or not parsed.raw_host:
            raise _refused(url, "only http(s) URLs with a host are allowed")
        host, port = _host_port(parsed)
        if self.admits_name(host, port):
            return
        if _ip(host) is None and any(r.network is not None for r in self.rules):
            try:
                infos = await asyncio.get_running_loop().getaddrinfo(
                    host, port, type=socket.SOCK_STREAM)
            except OSError:
                raise ConnectorError(f"media server {redact_url(url)}: its host name does not "
                                     "resolve", error="unreachable") from None
            addrs = (_ip(str(info[4][0])) for info in infos)
            if any(a is not None and self.admits_ip(a, port) for a in addrs):
                return
        raise _refused(url, "not in the outbound allow-list (config: outbound.allow)")


def _refused(url: str, why: str) -> ConnectorError:
    return ConnectorError(f"media server {redact_url(url)}: {why}", error="not_allowed",
                          status=403)


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
        kept = [i for i in infos if (a := _ip(i["host"])) is not None
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
                 limits: OutboundLimits | None = None) -> None:
        self.url = URL(url)
        self.origin = self.url.origin()
        self.what = what
        self.shown = redact_url(self.url)
        self._allow = allow if allow else AllowList.origins([url])
        self.limits = limits or OutboundLimits()
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
            raise _refused(str(url), f"not on the origin of the {self.what}")
        if self._http is None:
            await self._allow.check(str(target))
            self._http = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(resolver=_AllowListResolver(self._allow),
                                               limit=16),
                timeout=aiohttp.ClientTimeout(total=self.limits.timeout_s))
        timeout = aiohttp.ClientTimeout(total=timeout_s or self.limits.timeout_s)
        try:
            async with self._http.request(method, target, json=json, data=data,
                                          headers=headers, params=params, timeout=timeout,
                                          allow_redirects=False) as resp:
                reply = Reply(resp.status, resp.headers, await self._read(resp))
        except aiohttp.ClientError as exc:
            raise self.failure(f"unreachable ({type(exc).__name__})", error="unreachable"
                               ) from None
        except TimeoutError:
            raise self.failure("did not answer in time", error="unreachable") from None
        if ok is not None and reply.status not in ok:
            raise self.failure(f"answered HTTP {reply.status}", error="upstream_error")
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

    def failure(self, what_happened: str, *, error: str = "bad_response") -> ConnectorError:
        """A failure of this server as the control API reports it: ``"<what> <url as logs may
        show it> <what_happened>"``, with the error code ``error``."""
        return ConnectorError(f"{self.what} {self.shown} {what_happened}", error=error)

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
