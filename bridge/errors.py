"""What can go wrong with a call, as types: raised where it happens, turned into an HTTP status in
one place (:mod:`bridge.control.errors`), carried across the worker channel by name.

Every error has a ``code`` (the control API's ``error`` field: stable, for programs) and a
one-line reason (for people: never a secret, never an upstream's body). Nothing below the
control plane knows about HTTP.
"""

from __future__ import annotations

from typing import ClassVar

__all__ = ["AlreadyJoined", "BadJoinRequest", "BridgeError", "ConnectorError", "JoinCancelled",
           "NotAllowed", "Unavailable", "error_from_wire"]


class BridgeError(Exception):
    """A failure worth one line. ``code`` names the kind for programs; subclasses say what it
    means (and so which HTTP status it gets)."""

    code: ClassVar[str] = "error"

    def __init__(self, reason: str, *, code: str | None = None) -> None:
        super().__init__(reason)
        self.error = code or type(self).code

    @property
    def reason(self) -> str:
        return str(self)


class ConnectorError(BridgeError):
    """Joining failed at the media server: unreachable, refused, a bad answer, no such room. The
    code says which (``unreachable``, ``upstream_error``, ``bad_response``, ``room_not_found``,
    ``join_failed``)."""

    code = "join_failed"


class NotAllowed(ConnectorError):
    """The outbound allow-list does not admit the media server; nothing was sent to it."""

    code = "not_allowed"


class BadJoinRequest(BridgeError):
    """The join request itself is wrong (it names another call than the one it joins)."""

    code = "bad_request"


class AlreadyJoined(BridgeError):
    """The call is already joined (or being joined) here."""

    code = "already_joined"

    @classmethod
    def call(cls, call_id: str) -> AlreadyJoined:
        return cls(f"already in call {call_id}")


class JoinCancelled(BridgeError):
    """The call was left while it was still joining."""

    code = "join_cancelled"

    @classmethod
    def call(cls, call_id: str) -> JoinCancelled:
        return cls(f"call {call_id} was left while it was joining; nothing of the join was kept")


class Unavailable(BridgeError):
    """The bridge cannot take the request now: no worker is ready, it is shutting down, or the
    worker holding the request died (code ``worker_failed``). Worth retrying."""

    code = "unavailable"


_BY_NAME: dict[str, type[BridgeError]] = {cls.__name__: cls for cls in (
    BridgeError, ConnectorError, NotAllowed, BadJoinRequest, AlreadyJoined, JoinCancelled,
    Unavailable)}


def error_from_wire(kind: str, code: str, reason: str) -> BridgeError:
    """The error a worker process reported (its class name, code and reason) as raised there."""
    cls = _BY_NAME.get(kind, BridgeError)
    return cls(reason, code=code)
