"""What a join takes, written once for a control-API request and for config alike.

:data:`HttpUrl` is an http(s) URL as requests and config accept it; :class:`JanusJoinOptions`
is how the bridge joins rooms on a Janus server (the server, the name it shows, when it leaves
an empty room): a join request (:class:`~bridge.connectors.janus.JanusJoin`) and a server in
config (``[[janus]]``, :class:`~bridge.config.JanusSettings`) both extend it. Pydantic only: config
imports this without aiortc.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["DEFAULT_DISPLAY", "HttpUrl", "JanusJoinOptions"]

#: An ``http://`` or ``https://`` URL of at most 2048 characters (whether the bridge may reach
#: it is the outbound allow-list's call, bridge/allowlist.py).
HttpUrl = Annotated[str, Field(pattern=r"^https?://", max_length=2048)]

DEFAULT_DISPLAY = "affect-bridge (monitoring)"


class JanusJoinOptions(BaseModel):
    """The Janus server and how the bridge appears in, and leaves, its rooms."""

    model_config = ConfigDict(extra="forbid")

    url: HttpUrl = Field(description="the Janus HTTP API, e.g. http://janus:8088/janus")
    display_name: str = Field(DEFAULT_DISPLAY, min_length=1, max_length=128,
                              description="the name the bridge joins rooms under")
    leave_when_empty: float | None = Field(
        30.0, ge=0, description="leave after nobody else has been in the room this long; "
        "null: stay")
