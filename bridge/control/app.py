"""The control API (aiohttp): health, readiness, and joining/leaving calls on demand.

``/v1/*`` needs ``Authorization: Bearer <token>`` (the token from ``AFFECT_BRIDGE_API_TOKEN``;
without one configured, ``/v1/*`` refuses every request). Every bad request gets a JSON error
``{"error": ..., "reason": ...}`` and changes nothing.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import re
import time
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from pydantic import ValidationError

from bridge.config import Settings, describe_errors
from bridge.connectors import load_connectors
from bridge.connectors.base import Connector, ConnectorError, JoinContext
from bridge.connectors.http import AllowList, OutboundLimits
from bridge.connectors.janus import JanusAuth, server_key
from bridge.control.autojoin import JanusAutoJoin
from bridge.control.openapi import openapi_document
from bridge.control.routing import ROUTER, Router, forward_to_owner
from bridge.control.runtime import Runtime
from bridge.delivery.webhook import WebhookSink
from bridge.live.calls import CallHost, JoinRequest
from bridge.logsafe import client_error
from bridge.logsafe import install as install_log_hygiene
from bridge.pipeline.analysis import AnalysisEngine, Emit
from bridge.tasks import failures, recent_failures
from bridge.workers.pool import WorkerPool

__all__ = ["AUTOJOIN", "ENGINE", "MANAGER", "TOKEN", "build_app", "create_app", "join_context",
           "metrics_app"]

log = logging.getLogger(__name__)

ENGINE = web.AppKey("engine", AnalysisEngine)
MANAGER = web.AppKey("manager", CallHost)  # a CallManager, or a WorkerPool
POOL = web.AppKey("pool", WorkerPool)
TOKEN = web.AppKey("token", str)
JOIN = web.AppKey("join_context", JoinContext)
METRICS_TOKEN = web.AppKey("metrics_token", str)
CONNECTORS = web.AppKey("connectors", dict)
AUTOJOIN = web.AppKey("autojoin", list)
REGISTRY = web.AppKey("registry", CollectorRegistry)
CREATED_AT = web.AppKey("created_at", float)
FAILED_TASKS_WINDOW_S = 300.0  # /readyz is "degraded" (503) this long after a task died
WEBHOOKS = web.AppKey("webhooks", WebhookSink)


def _error(status: int, error: str, reason: str) -> web.Response:
    return web.json_response({"error": error, "reason": reason}, status=status)


_ERROR_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
                405: "method_not_allowed", 408: "timeout", 411: "length_required",
                413: "too_large", 415: "unsupported_media_type", 422: "invalid_request",
                429: "too_many_requests"}


@web.middleware
async def _errors(request: web.Request, handler: Any) -> web.StreamResponse:
    """Every 4xx/5xx as ``{"error", "reason"}`` JSON: aiohttp's own (404 unknown path, 405,
    413 body too large, ...) too. A client error is one log line at INFO (rate-limited, the
    path only: no query string, no headers); a bug in the bridge is a 500 with its traceback
    in the log, never in the response."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        client_error(log, "%s %s: %d %s", request.method, request.path[:200], exc.status,
                     exc.reason)
        return _error(exc.status, _ERROR_CODES.get(exc.status, "bad_request"), exc.reason)
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("internal error on %s %s", request.method, request.path[:200])
        return _error(500, "internal_error", "the bridge failed on this request (see its log)")


@web.middleware
async def _auth(request: web.Request, handler: Any) -> web.StreamResponse:
    if request.path.startswith("/v1/"):
        token = request.app[TOKEN]
        given = request.headers.get("Authorization", "")
        if not token:
            return _error(401, "unauthorized",
                          "no API token is configured (set AFFECT_BRIDGE_API_TOKEN)")
        # Headers may carry any bytes (aiohttp keeps them as surrogates): compare bytes.
        if not hmac.compare_digest(given.encode("utf-8", "surrogateescape"),
                                   f"Bearer {token}".encode()):
            return _error(401, "unauthorized", "missing or wrong bearer token")
    return await handler(request)


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


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    pool = request.app.get(POOL)
    extra: dict[str, Any] = {}
    if pool is not None:  # worker processes: each loads the analyzers
        analyzers = pool.analyzers()
        extra = pool.readiness()
        started = any(w["state"] == "ready" for w in extra["workers"])
        all_up = all(w["state"] == "ready" for w in extra["workers"])
    else:
        engine = request.app[ENGINE]
        analyzers = {a.name: "ready" for a in engine.analyzers}
        analyzers |= {name: f"degraded: {reason}" for name, reason in engine.degraded.items()}
        started = all_up = engine.started
    sinks = {"console": "started"}
    webhooks = request.app.get(WEBHOOKS)
    if webhooks is not None:
        sinks["webhooks"] = "started" if webhooks.started else "starting"
    since = time.time() - request.app[CREATED_AT]
    recent = recent_failures(min(FAILED_TASKS_WINDOW_S, since))
    ready = started and all(v == "started" for v in sinks.values())
    status = "starting" if not ready else "degraded" if recent or not all_up else "ready"
    manager = request.app[MANAGER]
    body = {"status": status, "analyzers": analyzers, "sinks": sinks,
            "calls": len(manager.joined()),
            "joining": len(manager.calls) - len(manager.joined()),
            "failed_tasks": {"total": failures(),
                             "recent": [{"task": f.task, "error": f.error,
                                         "at": datetime.fromtimestamp(f.at, UTC).isoformat()}
                                        for f in recent]}, **extra}
    return web.json_response(body, status=200 if status == "ready" else 503)


async def list_calls(request: web.Request) -> web.Response:
    return web.json_response({"calls": [c.summary() for c in request.app[MANAGER].calls.values()]})


async def get_call(request: web.Request) -> web.Response:
    call = request.app[MANAGER].calls.get(request.match_info["call_id"])
    if call is None:
        return _error(404, "not_found", f"no call {request.match_info['call_id']!r}")
    return web.json_response(call.summary())


async def get_speakers(request: web.Request) -> web.Response:
    call = request.app[MANAGER].calls.get(request.match_info["call_id"])
    if call is None:
        return _error(404, "not_found", f"no call {request.match_info['call_id']!r}")
    return web.json_response({"speakers": call.summary()["speakers"]})


async def join_call(request: web.Request) -> web.Response:
    try:
        body = await _json_body(request)
    except ValueError as exc:
        return _error(400, "invalid_json", str(exc))
    if not isinstance(body, dict):
        return _error(400, "invalid_request", "the request body must be a JSON object")
    connectors: dict[str, type[Connector]] = request.app[CONNECTORS]
    name = body.get("connector")
    if not isinstance(name, str) or name not in connectors:
        return _error(400, "unknown_connector",
                      f"unknown connector {name!r}; available: {', '.join(sorted(connectors))}")
    cls = connectors[name]
    try:
        req = cls.Request.model_validate(body)
    except ValidationError as exc:
        return _error(422, "invalid_request", describe_errors(exc))
    ctx = request.app[JOIN]
    manager = request.app[MANAGER]
    try:
        url = getattr(req, "url", None)
        if isinstance(url, str):  # refused before any connection is made
            await (ctx.allow or AllowList()).check(url)
        info, factory = cls.from_request(req, ctx)
        if info.id in manager.calls:
            return _error(409, "already_joined", f"already in call {info.id}")
        await manager.join(info, factory, request=JoinRequest(name, req))
    except ConnectorError as exc:
        return _error(exc.status, exc.error, str(exc))
    except ValueError as exc:  # joined concurrently by another request or by auto-join
        return _error(409, "already_joined", str(exc))
    return web.json_response({"id": info.id}, status=201)


async def leave_call(request: web.Request) -> web.Response:
    call_id = request.match_info["call_id"]
    manager = request.app[MANAGER]
    if call_id not in manager.calls:
        return _error(404, "not_found", f"no call {call_id!r}")
    joined = manager.calls[call_id].state == "joined"
    await manager.leave(call_id, "left on request")
    return web.json_response({"id": call_id, "left": True, "was_joined": joined})


async def metrics(request: web.Request) -> web.Response:
    """Every speaker's stress index is in here: protect it with a token or its own address
    (config ``[metrics]``), or keep the listener private."""
    token = request.app[METRICS_TOKEN]
    if token and not hmac.compare_digest(
            request.headers.get("Authorization", "").encode("utf-8", "surrogateescape"),
            f"Bearer {token}".encode()):
        return _error(401, "unauthorized", "/metrics needs its bearer token")
    return web.Response(body=generate_latest(request.app[REGISTRY]),
                        headers={"Content-Type": CONTENT_TYPE_LATEST})


def metrics_app(registry: CollectorRegistry, *, token: str | None = None) -> web.Application:
    """``/metrics`` alone (the demo's listener, or ``metrics.listen``), same errors and token."""
    app = web.Application(middlewares=[_errors], client_max_size=1024)
    app[REGISTRY] = registry
    app[METRICS_TOKEN] = token or ""
    app.router.add_get("/metrics", metrics)
    return app


async def failed_webhooks(request: web.Request) -> web.Response:
    sink = request.app.get(WEBHOOKS)
    return web.json_response({"failed": await sink.failed() if sink is not None else []})


async def replay_webhook(request: web.Request) -> web.Response:
    sink = request.app.get(WEBHOOKS)
    raw = request.match_info["row_id"]
    if not re.fullmatch(r"[0-9]{1,18}", raw):
        return _error(400, "invalid_request", f"{raw[:40]!r} is not a failed delivery id")
    if sink is None or not await sink.replay(int(raw)):
        return _error(404, "not_found", f"no failed delivery {raw}")
    return web.json_response({"id": int(raw), "replayed": True}, status=202)


async def openapi_doc(request: web.Request) -> web.Response:
    return web.json_response(openapi_document(request.app[CONNECTORS]))


def join_context(settings: Settings) -> JoinContext:
    """What joins take from config: the control API may join the servers named in config and
    those ``outbound.allow`` admits."""
    out = settings.outbound
    return JoinContext(
        ice_servers=list(settings.live.ice_servers),
        allow=AllowList.parse(out.allow) + AllowList.origins(j.url for j in settings.janus),
        limits=OutboundLimits(out.timeout_s, out.max_response_bytes),
        janus_auth={server_key(j.url): JanusAuth(*j.credentials()) for j in settings.janus})


def create_app(engine: AnalysisEngine | None, manager: CallHost, *, token: str | None,
               join: JoinContext | None = None, registry: CollectorRegistry | None = None,
               metrics_token: str | None = None, serve_metrics: bool = True,
               ) -> web.Application:
    """``join``: what API joins may reach (default: nothing). ``serve_metrics`` False when
    /metrics has a listener of its own."""
    install_log_hygiene()
    app = web.Application(middlewares=[_errors, _auth, forward_to_owner],
                          client_max_size=64 * 1024)
    app[REGISTRY] = registry if registry is not None else CollectorRegistry()
    app[METRICS_TOKEN] = metrics_token or ""
    app[CREATED_AT] = time.time()
    if engine is not None:
        app[ENGINE] = engine
    if isinstance(manager, WorkerPool):
        app[POOL] = manager
    app[MANAGER] = manager
    app[TOKEN] = token or ""
    app[JOIN] = join if join is not None else JoinContext(allow=AllowList())
    app[CONNECTORS] = load_connectors()
    app[AUTOJOIN] = []
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/openapi.json", openapi_doc)
    if serve_metrics:
        app.router.add_get("/metrics", metrics)
    app.router.add_get("/v1/webhooks/failed", failed_webhooks)
    app.router.add_post("/v1/webhooks/failed/{row_id}/replay", replay_webhook)
    app.router.add_get("/v1/calls", list_calls)
    app.router.add_post("/v1/calls", join_call)
    app.router.add_get("/v1/calls/{call_id}", get_call)
    app.router.add_delete("/v1/calls/{call_id}", leave_call)
    app.router.add_get("/v1/calls/{call_id}/speakers", get_speakers)
    return app


def build_app(settings: Settings, *, token: str | None, emit: Emit,
              registry: CollectorRegistry | None = None, workers: int = 1) -> web.Application:
    """The service: sinks, engine and call manager (a :class:`Runtime`) started and stopped with
    the app (cleanup_ctx); auto-join stops first, so stopping leaves every call (``call.left``)
    before the analyzers and then the sinks close."""
    runtime = Runtime.build(settings, emit, registry=registry, workers=workers)
    join = join_context(settings)
    app = create_app(runtime.engine, runtime.manager, token=token, join=join,
                     registry=runtime.metrics.registry, metrics_token=settings.metrics.token(),
                     serve_metrics=settings.metrics.listen is None)
    app[ROUTER] = Router(settings.shard)  # who owns which call (replicas forward to it)
    if runtime.webhooks is not None:
        app[WEBHOOKS] = runtime.webhooks
    autojoins = [JanusAutoJoin(runtime.manager, cfg, settings.shard, join)
                 for cfg in settings.janus]
    app[AUTOJOIN] = autojoins

    async def lifecycle(app: web.Application) -> Any:
        await runtime.start()
        for autojoin in autojoins:
            autojoin.start()
        yield
        for autojoin in autojoins:
            await autojoin.aclose()
        await runtime.aclose("shutting down")

    app.cleanup_ctx.append(lifecycle)
    return app
