"""The control API's OpenAPI document, built from models instead of written out.

Request bodies are the connectors' ``Request`` models; the answers are the pydantic models below
(what the handlers in :mod:`bridge.control.app` return, written down once); the routes are
:data:`ROUTES`, a table. :func:`openapi_document` puts them together, each schema from pydantic's
``model_json_schema`` and shared under ``components/schemas``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import JsonSchemaMode, models_json_schema

if TYPE_CHECKING:
    from bridge.connectors.base import Connector

__all__ = ["ROUTES", "Call", "CallCreated", "CallLeft", "CallList", "Error", "FailedDeliveries",
           "Health", "Ready", "Replayed", "Route", "Speaker", "SpeakerList", "openapi_document"]

REF = "#/components/schemas/{model}"


class Error(BaseModel):
    """Every 4xx and 5xx answer."""

    error: str = Field(description="a code: invalid_request, unauthorized, not_found, ...")
    reason: str = Field(description="one line for a person")


class Health(BaseModel):
    status: Literal["ok"]


class FailedTask(BaseModel):
    task: str
    error: str
    at: str = Field(description="when it failed, ISO 8601 UTC")


class FailedTasks(BaseModel):
    total: dict[str, int] = Field(description="background tasks that died since start, by kind")
    recent: list[FailedTask] = Field(description="those of the last five minutes")


class Ready(BaseModel):
    """``/readyz``: 200 when ``ready``, else 503 with the same body. With worker processes it
    says more about each (further keys)."""

    model_config = ConfigDict(extra="allow")

    status: Literal["starting", "degraded", "ready"]
    analyzers: dict[str, str] = Field(description='"ready" or "degraded: <reason>", by name')
    sinks: dict[str, str] = Field(description='"started" or "starting", by name')
    calls: int = Field(description="calls joined")
    joining: int = Field(description="calls still being joined")
    failed_tasks: FailedTasks


class Speaker(BaseModel):
    id: str
    display: str | None
    state: Literal["active", "idle"]
    stress_index: float | None = Field(description="the latest, 0..1; null before the first")
    speech_s: float = Field(description="seconds of speech so far")


class Call(BaseModel):
    id: str
    connector: str
    room: str | None
    worker: int | None = Field(None, description="the worker process holding the call "
                                                 "(run --workers N > 1 only)")
    state: Literal["joining", "joined"]
    speakers: list[Speaker]


class CallList(BaseModel):
    calls: list[Call]


class SpeakerList(BaseModel):
    speakers: list[Speaker]


class CallCreated(BaseModel):
    id: str = Field(description="the call's id, for GET and DELETE /v1/calls/{call_id}")


class CallLeft(BaseModel):
    id: str
    left: Literal[True]
    was_joined: bool = Field(description="false when the call was still being joined")


class FailedDeliveries(BaseModel):
    failed: list[dict[str, Any]] = Field(description="webhook deliveries whose retries ran out")


class Replayed(BaseModel):
    id: int
    replayed: Literal[True]


#: What a route answers, by status: a model (a JSON body) or a description (any other body).
Answer = type[BaseModel] | str


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    summary: str
    responses: Mapping[int, Answer]
    secured: bool = True  # needs the API's bearer token
    body: bool = False  # takes one of the connectors' request bodies
    params: Mapping[str, str] = field(default_factory=dict)  # path parameter -> JSON type


_CALL_ID = {"call_id": "string"}

ROUTES: tuple[Route, ...] = (
    Route("get", "/healthz", "liveness", {200: Health}, secured=False),
    Route("get", "/readyz", "readiness: analyzers loaded or degraded", {200: Ready, 503: Ready},
          secured=False),
    Route("get", "/v1/calls", "calls with their speakers and latest stress index",
          {200: CallList, 401: Error}),
    Route("post", "/v1/calls", "join a call",
          {201: CallCreated, 400: Error, 401: Error, 403: Error, 409: Error, 422: Error},
          body=True),
    Route("get", "/v1/calls/{call_id}", "one call", {200: Call, 401: Error, 404: Error},
          params=_CALL_ID),
    Route("delete", "/v1/calls/{call_id}", "leave a call", {200: CallLeft, 401: Error, 404: Error},
          params=_CALL_ID),
    Route("get", "/v1/calls/{call_id}/speakers", "a call's speakers",
          {200: SpeakerList, 401: Error, 404: Error}, params=_CALL_ID),
    Route("get", "/metrics", "Prometheus metrics (bearer token when [metrics] sets one)",
          {200: "text exposition", 401: Error}, secured=False),
    Route("get", "/v1/webhooks/failed", "webhook deliveries whose retries ran out",
          {200: FailedDeliveries, 401: Error}),
    Route("post", "/v1/webhooks/failed/{row_id}/replay",
          "send a failed delivery again (re-enables its endpoint)",
          {202: Replayed, 400: Error, 401: Error, 404: Error}, params={"row_id": "integer"}),
    Route("get", "/openapi.json", "this document", {200: "the OpenAPI document"}, secured=False),
)


def openapi_document(connectors: Mapping[str, type[Connector]] | None = None) -> dict[str, Any]:
    """The OpenAPI 3.1 document of the control API; ``POST /v1/calls`` takes any of
    ``connectors``' request bodies (default: the installed connectors)."""
    if connectors is None:
        from bridge.connectors import load_connectors

        connectors = load_connectors()
    requests = [cls.Request for cls in connectors.values()]
    answers = {a for route in ROUTES for a in route.responses.values() if isinstance(a, type)}
    models: list[tuple[type[BaseModel], JsonSchemaMode]] = [(m, "validation") for m in requests]
    models += [(m, "serialization") for m in sorted(answers, key=lambda m: m.__name__)]
    refs, defs = models_json_schema(models, ref_template=REF)

    def ref(model: type[BaseModel], mode: JsonSchemaMode = "serialization") -> dict[str, Any]:
        return dict(refs[(model, mode)])

    paths: dict[str, dict[str, Any]] = {}
    for route in ROUTES:
        op: dict[str, Any] = {"summary": route.summary,
                              "responses": {str(status): _response(answer, ref)
                                            for status, answer in route.responses.items()}}
        if route.secured:
            op["security"] = [{"bearer": []}]
        if route.params:
            op["parameters"] = [{"name": name, "in": "path", "required": True,
                                 "schema": {"type": kind}} for name, kind in route.params.items()]
        if route.body:
            op["requestBody"] = {"required": True, "content": {"application/json": {"schema": {
                "oneOf": [ref(m, "validation") for m in requests]}}}}
        paths.setdefault(route.path, {})[route.method] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": "affect-bridge control API", "version": "1"},
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": defs.get("$defs", {}),
        },
        "paths": paths,
    }


def _response(answer: Answer, ref: Callable[[type[BaseModel]], dict[str, Any]]
              ) -> dict[str, Any]:
    if isinstance(answer, str):
        return {"description": answer}
    return {"description": answer.__name__,
            "content": {"application/json": {"schema": ref(answer)}}}
