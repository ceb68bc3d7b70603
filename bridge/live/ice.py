"""Which local addresses ICE may gather host candidates on.

aioice gathers on every interface except loopback and has no setting for it. A bridge that must
stay on one interface, and the demo and tests (which must stay on 127.0.0.1), restrict it here.
This is process-wide, like the library setting it replaces: call it once at start-up.
"""

from __future__ import annotations

import aioice.ice

__all__ = ["restrict_host_addresses"]

_ORIGINAL = aioice.ice.get_host_addresses


def restrict_host_addresses(addresses: list[str] | None) -> None:
    """Gather host candidates only on ``addresses`` (loopback allowed); ``None`` restores
    aioice's default (every interface but loopback)."""
    if addresses is None:
        aioice.ice.get_host_addresses = _ORIGINAL
        return
    allowed = list(addresses)

    def only(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        return [a for a in allowed if (":" in a and use_ipv6) or (":" not in a and use_ipv4)]

    aioice.ice.get_host_addresses = only
