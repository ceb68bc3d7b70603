"""What a connector joined on request takes from the service's config: ICE servers, the outbound
allow-list and limits (:mod:`bridge.outbound`), and the credentials of the media servers
named in config (Janus: :class:`JanusAuth`, by :func:`server_key`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from bridge.allowlist import AllowList, redact_url
from bridge.config import Settings
from bridge.outbound import OutboundLimits

__all__ = ["JanusAuth", "JoinContext", "join_context", "server_key"]


@dataclass(frozen=True, slots=True)
class JanusAuth:
    """Credentials for a protected Janus: the server's ``api_secret`` (sent as ``apisecret`` in
    every request), a stored token (``token_auth``), and the room ``pin``. Never logged."""

    apisecret: str | None = None
    token: str | None = None
    pin: str | None = None

    def __repr__(self) -> str:
        return "JanusAuth(...)"

    def over(self, fallback: JanusAuth | None) -> JanusAuth:
        """These credentials, with ``fallback``'s where these have none."""
        if fallback is None:
            return self
        return JanusAuth(self.apisecret or fallback.apisecret, self.token or fallback.token,
                         self.pin or fallback.pin)


def server_key(url: str) -> str:
    """How a Janus server named in config is recognised in a join request: its URL without user
    info, query or trailing slash."""
    return redact_url(url).rstrip("/")


@dataclass(frozen=True, slots=True)
class JoinContext:
    """What a connector joined on request takes from the service's config: ICE servers, the
    outbound allow-list (bridge/allowlist.py) and limits, and the credentials of the Janus
    servers named in config (by URL)."""

    ice_servers: list[str] = field(default_factory=list)
    #: Media servers the control API may join (None: only the request's own URL, for callers
    #: that chose the URL themselves: the demo, tests).
    allow: AllowList | None = None
    limits: OutboundLimits | None = None
    janus_auth: Mapping[str, JanusAuth] = field(default_factory=dict)


def join_context(settings: Settings) -> JoinContext:
    """What joins take from config: the control API may join the servers named in config and
    those ``outbound.allow`` admits."""
    out = settings.outbound
    return JoinContext(
        ice_servers=list(settings.live.ice_servers),
        allow=AllowList.parse(out.allow) + AllowList.origins(j.url for j in settings.janus),
        limits=OutboundLimits(out.timeout_s, out.max_response_bytes),
        janus_auth={server_key(j.url): JanusAuth(*j.credentials()) for j in settings.janus})
