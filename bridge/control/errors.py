"""Errors as the control API answers them, in one place: every error is ``{"error", "reason"}``
JSON, and each kind of :class:`~bridge.errors.BridgeError` has one HTTP status here (nothing
below the control plane knows HTTP statuses).

aiohttp's own errors (404 unknown path, 405, 413 body too large, ...) get the same shape from the
:func:`errors` middleware; a bug in the bridge is a 500 with its traceback in the log, never in
the response.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiohttp import web

from bridge.errors import (
    AlreadyJoined,
    BadJoinRequest,
    BridgeError,
    ConnectorError,
    JoinCancelled,
    NotAllowed,
    Unavailable,
)
from bridge.logsafe import client_error

__all__ = ["BadRequest", "InvalidRequest", "error", "error_response", "errors", "status_of"]

log = logging.getLogger(__name__)


class BadRequest(BridgeError):
    """The request is malformed (not JSON, not an object, an unknown connector): 400."""

    code = "bad_request"


class InvalidRequest(BridgeError):
    """The request is well-formed but its values are not valid (the connector's model): 422."""

    code = "invalid_request"


#: The HTTP status of each kind of error; a subclass takes its nearest listed ancestor's.
STATUS: dict[type[BridgeError], int] = {
    BadRequest: 400,
    BadJoinRequest: 400,
    NotAllowed: 403,
    AlreadyJoined: 409,
    JoinCancelled: 409,
    InvalidRequest: 422,
    ConnectorError: 422,
    Unavailable: 503,
    BridgeError: 500,
}

_HTTP_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
               405: "method_not_allowed", 408: "timeout", 411: "length_required",
               413: "too_large", 415: "unsupported_media_type", 422: "invalid_request",
               429: "too_many_requests"}


def status_of(exc: BridgeError) -> int:
    return next(STATUS[cls] for cls in type(exc).__mro__ if cls in STATUS)


def error(status: int, code: str, reason: str) -> web.Response:
    return web.json_response({"error": code, "reason": reason}, status=status)


def error_response(exc: BridgeError) -> web.Response:
    return error(status_of(exc), exc.error, exc.reason)


@web.middleware
async def errors(request: web.Request, handler: Any) -> web.StreamResponse:
    """Every 4xx/5xx as ``{"error", "reason"}`` JSON. A client error is one log line at INFO
    (rate-limited, the path only: no query string, no headers)."""
    try:
        return await handler(request)
    except BridgeError as exc:
        return error_response(exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        client_error(log, "%s %s: %d %s", request.method, request.path[:200], exc.status,
                     exc.reason)
        return error(exc.status, _HTTP_CODES.get(exc.status, "bad_request"), exc.reason)
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("internal error on %s %s", request.method, request.path[:200])
        return error(500, "internal_error", "the bridge failed on this request (see its log)")
