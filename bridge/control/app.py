"""The control API (aiohttp): health, readiness, and joining/leaving calls on demand.

``/v1/*`` needs ``Authorization: Bearer <token>`` (the token from ``AFFECT_BRIDGE_API_TOKEN``;
without one configured, ``/v1/*`` refuses every request). Every bad request gets a JSON error
``{"error": ..., "reason": ...}`` and changes nothing.
"""

from __future__ import annotations

import hmac
import logging
import re
import time
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from bridge.allowlist import AllowList
from bridge.config import Settings, ShardSettings
from bridge.connectors import load_connectors
from bridge.connectors.context import JoinContext, join_context
from bridge.control.autojoin import JanusAutoJoin
from bridge.control.errors import error, errors
from bridge.control.joining import CONNECTORS, JOIN_CONTEXT, parsed_join
from bridge.control.openapi import openapi_document
from bridge.control.routing import ROUTER, Router, forward_to_owner
from bridge.control.runtime import Runtime
from bridge.delivery.webhook import WebhookSink
from bridge.live.calls import CallHost
from bridge.logsafe import install as install_log_hygiene
from bridge.pipeline.analysis import AnalysisEngine, Emit
from bridge.tasks import TaskFailures
from bridge.workers.pool import WorkerPool

__all__ = ["ENGINE", "MANAGER", "TOKEN", "build_app", "create_app", "metrics_app"]

log = logging.getLogger(__name__)

ENGINE = web.AppKey("engine", AnalysisEngine)
MANAGER = web.AppKey("manager", CallHost)  # a CallManager, or a WorkerPool
POOL = web.AppKey("pool", WorkerPool)
TOKEN = web.AppKey("token", str)
METRICS_TOKEN = web.AppKey("metrics_token", str)
REGISTRY = web.AppKey("registry", CollectorRegistry)
CREATED_AT = web.AppKey("created_at", float)
FAILURES = web.AppKey("task_failures", TaskFailures)
FAILED_TASKS_WINDOW_S = 300.0  # /readyz is "degraded" (503) this long after a task died
WEBHOOKS = web.AppKey("webhooks", WebhookSink)


@web.middleware
async def _auth(request: web.Request, handler: Any) -> web.StreamResponse:
    if request.path.startswith("/v1/"):
        token = request.app[TOKEN]
        if not token:
            return error(401, "unauthorized",
                         "no API token is configured (set AFFECT_BRIDGE_API_TOKEN)")
        if not _bearer(request, token):
            return error(401, "unauthorized", "missing or wrong bearer token")
    return await handler(request)


def _bearer(request: web.Request, token: str) -> bool:
    """Whether the request carries ``Authorization: Bearer <token>`` (in constant time; headers
    may carry any bytes, which aiohttp keeps as surrogates: bytes are compared)."""
    given = request.headers.get("Authorization", "").encode("utf-8", "surrogateescape")
    return hmac.compare_digest(given, f"Bearer {token}".encode())


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
    failures = request.app[FAILURES]
    recent = failures.recent(min(FAILED_TASKS_WINDOW_S, since))
    ready = started and all(v == "started" for v in sinks.values())
    status = "starting" if not ready else "degraded" if recent or not all_up else "ready"
    manager = request.app[MANAGER]
    body = {"status": status, "analyzers": analyzers, "sinks": sinks,
            "calls": len(manager.joined()),
            "joining": len(manager.calls) - len(manager.joined()),
            "failed_tasks": {"total": dict(failures.counts),
                             "recent": [{"task": f.task, "error": f.error,
                                         "at": datetime.fromtimestamp(f.at, UTC).isoformat()}
                                        for f in recent]}, **extra}
    return web.json_response(body, status=200 if status == "ready" else 503)


async def list_calls(request: web.Request) -> web.Response:
    return web.json_response({"calls": [c.summary() for c in request.app[MANAGER].calls.values()]})


async def get_call(request: web.Request) -> web.Response:
    call = request.app[MANAGER].calls.get(request.match_info["call_id"])
    if call is None:
        return error(404, "not_found", f"no call {request.match_info['call_id']!r}")
    return web.json_response(call.summary())


async def get_speakers(request: web.Request) -> web.Response:
    call = request.app[MANAGER].calls.get(request.match_info["call_id"])
    if call is None:
        return error(404, "not_found", f"no call {request.match_info['call_id']!r}")
    return web.json_response({"speakers": call.summary()["speakers"]})


async def join_call(request: web.Request) -> web.Response:
    join = await parsed_join(request)  # BridgeError -> its status (bridge.control.errors)
    ctx = request.app[JOIN_CONTEXT]
    url = getattr(join.request, "url", None)
    if isinstance(url, str):  # refused before any connection is made
        await (ctx.allow or AllowList()).check(url)
    await request.app[MANAGER].join(join)
    return web.json_response({"id": join.info.id}, status=201)


async def leave_call(request: web.Request) -> web.Response:
    call_id = request.match_info["call_id"]
    manager = request.app[MANAGER]
    if call_id not in manager.calls:
        return error(404, "not_found", f"no call {call_id!r}")
    joined = manager.calls[call_id].state == "joined"
    await manager.leave(call_id, "left on request")
    return web.json_response({"id": call_id, "left": True, "was_joined": joined})


async def metrics(request: web.Request) -> web.Response:
    """Every speaker's stress index is in here: protect it with a token or its own address
    (config ``[metrics]``), or keep the listener private."""
    token = request.app[METRICS_TOKEN]
    if token and not _bearer(request, token):
        return error(401, "unauthorized", "/metrics needs its bearer token")
    return web.Response(body=generate_latest(request.app[REGISTRY]),
                        headers={"Content-Type": CONTENT_TYPE_LATEST})


def metrics_app(registry: CollectorRegistry, *, token: str | None = None) -> web.Application:
    """``/metrics`` alone (the demo's listener, or ``metrics.listen``), same errors and token."""
    app = web.Application(middlewares=[errors], client_max_size=1024)
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
        return error(400, "invalid_request", f"{raw[:40]!r} is not a failed delivery id")
    if sink is None or not await sink.replay(int(raw)):
        return error(404, "not_found", f"no failed delivery {raw}")
    return web.json_response({"id": int(raw), "replayed": True}, status=202)


async def openapi_doc(request: web.Request) -> web.Response:
    return web.json_response(openapi_document(request.app[CONNECTORS]))


def create_app(engine: AnalysisEngine | None, manager: CallHost, *, token: str | None,
               join: JoinContext | None = None, registry: CollectorRegistry | None = None,
               metrics_token: str | None = None, serve_metrics: bool = True,
               failures: TaskFailures | None = None, shard: ShardSettings | None = None,
               ) -> web.Application:
    """``join``: what API joins may reach (default: nothing). ``serve_metrics`` False when
    /metrics has a listener of its own. ``failures``: the task failures ``/readyz`` reports
    (the metrics sink's). ``shard``: this replica among its peers (a call's requests are
    forwarded to the replica that owns it; default: one replica)."""
    install_log_hygiene()
    app = web.Application(middlewares=[errors, _auth, forward_to_owner],
                          client_max_size=64 * 1024)
    app[REGISTRY] = registry if registry is not None else CollectorRegistry()
    app[METRICS_TOKEN] = metrics_token or ""
    app[CREATED_AT] = time.time()
    app[FAILURES] = failures if failures is not None else TaskFailures()
    if engine is not None:
        app[ENGINE] = engine
    if isinstance(manager, WorkerPool):
        app[POOL] = manager
    app[MANAGER] = manager
    app[TOKEN] = token or ""
    app[JOIN_CONTEXT] = join if join is not None else JoinContext(allow=AllowList())
    app[CONNECTORS] = load_connectors()
    app[ROUTER] = Router(shard if shard is not None else ShardSettings())
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
                     serve_metrics=settings.metrics.listen is None,
                     failures=runtime.metrics.task_failures, shard=settings.shard)
    if runtime.webhooks is not None:
        app[WEBHOOKS] = runtime.webhooks
    autojoins = [JanusAutoJoin(runtime.manager, cfg, settings.shard, join)
                 for cfg in settings.janus]

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
