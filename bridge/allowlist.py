"""Which media servers the bridge may reach: the outbound allow-list, and what a URL may show.

An :class:`AllowList` admits hosts by name (``example.org``, ``*.example.org``), address or
network (``10.0.0.0/8``, ``[fd00::1]``), each with an optional port; a URL is checked before any
connection is made, by its name and by every address the name resolves to
(:meth:`AllowList.check`), and the HTTP client checks every DNS answer again
(:mod:`bridge.outbound`). Config validates its ``outbound.allow`` entries here, without
any network code. :func:`redact_url` is what logs and error reasons show of a URL.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from collections.abc import Iterable
from dataclasses import dataclass

from yarl import URL

from bridge.errors import ConnectorError, NotAllowed

__all__ = ["AllowList", "AllowRule", "IPAddress", "parse_ip", "redact_url", "refused"]

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


def parse_ip(text: str) -> IPAddress | None:
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
            addr = parse_ip(host)
            rules.append(AllowRule(network=ipaddress.ip_network(addr), port=port)
                         if addr is not None else AllowRule(host=host, port=port))
        return cls(rules)

    def __add__(self, other: AllowList) -> AllowList:
        return AllowList(self.rules + other.rules)

    def __bool__(self) -> bool:
        return bool(self.rules)

    def admits_name(self, host: str, port: int) -> bool:
        addr = parse_ip(host)
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
            raise refused(url, "only http(s) URLs with a host are allowed")
        host, port = _host_port(parsed)
        if self.admits_name(host, port):
            return
        if parse_ip(host) is None and any(r.network is not None for r in self.rules):
            try:
                infos = await asyncio.get_running_loop().getaddrinfo(
                    host, port, type=socket.SOCK_STREAM)
            except OSError:
                raise ConnectorError(f"media server {redact_url(url)}: its host name does not "
                                     "resolve", code="unreachable") from None
            addrs = (parse_ip(str(info[4][0])) for info in infos)
            if any(a is not None and self.admits_ip(a, port) for a in addrs):
                return
        raise refused(url, "not in the outbound allow-list (config: outbound.allow)")


def refused(url: str, why: str) -> NotAllowed:
    return NotAllowed(f"media server {redact_url(url)}: {why}")
