"""A join request as the control API takes it: read, parsed and validated once.

``POST /v1/calls`` is parsed where it first matters (the forwarding middleware needs the call
id; the handler needs the rest) and the result kept on the request, so the body is decoded and
the connector's model validated once; the :class:`~bridge.live.calls.Join` made here is what
the call host joins, in this process or in a worker.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from bridge.config import describe_errors
from bridge.connectors.base import Connector
from bridge.connectors.context import JoinContext
from bridge.control.errors import BadRequest, InvalidRequest
from bridge.live.calls import Join

__all__ = ["CONNECTORS", "JOIN_CONTEXT", "parsed_join"]

CONNECTORS = web.AppKey("connectors", dict)
JOIN_CONTEXT = web.AppKey("join_context", JoinContext)
_PARSED = web.RequestKey("parsed_join", Join)  # the request's parsed join, once made


async def parsed_join(request: web.Request) -> Join:
    """The call ``POST /v1/calls`` asks to join (no connection is made). Raises BadRequest
    (not JSON, not an object, an unknown connector) or InvalidRequest (the connector's model
    refuses it)."""
    parsed = request.get(_PARSED)
    if parsed is not None:
        return parsed
    try:
        body = await _json_body(request)
    except ValueError as exc:
        raise BadRequest(str(exc), code="invalid_json") from None
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object", code="invalid_request")
    connectors: dict[str, type[Connector]] = request.app[CONNECTORS]
    name = body.get("connector")
    if not isinstance(name, str) or name not in connectors:
        raise BadRequest(f"unknown connector {name!r}; available: "
                         f"{', '.join(sorted(connectors))}", code="unknown_connector")
    cls = connectors[name]
    try:
        req = cls.Request.model_validate(body)
    except ValidationError as exc:
        raise InvalidRequest(describe_errors(exc)) from None
    join = request[_PARSED] = Join.of(cls, req, request.app[JOIN_CONTEXT])
    return join


async def _json_body(request: web.Request) -> Any:
    """The body as JSON, strictly: UTF-8 (a ``charset`` other than utf-8 is refused), numbers
    of at most 20 digits, nesting at most 32 deep. Raises ValueError with a reason."""
    charset = (request.charset or "utf-8").lower()
    if charset not in ("utf-8", "utf8"):
        raise ValueError(f"the body must be UTF-8 JSON, not {charset[:40]!r}")
    raw = await request.read()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("the request body is not UTF-8") from None
    if _depth(text) > 32:
        raise ValueError("the request body is nested too deeply")
    try:
        return json.loads(text, parse_int=_small_int, parse_float=_small_float,
                          parse_constant=_no_constant)
    except json.JSONDecodeError:
        raise ValueError("the request body is not valid JSON") from None


def _small_int(s: str) -> int:
    if len(s.lstrip("-")) > 20:
        raise ValueError("a number in the request body is too long")
    return int(s)


def _small_float(s: str) -> float:
    if len(s) > 40:
        raise ValueError("a number in the request body is too long")
    return float(s)


def _no_constant(s: str) -> float:
    raise ValueError(f"{s} is not JSON")


def _depth(text: str) -> int:
    """Deepest nesting of arrays/objects, strings skipped (a linear scan, no recursion)."""
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest
