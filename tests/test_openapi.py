"""The OpenAPI document built from models (bridge/control/openapi.py) describes what the running control
API answers: real answers validate against the generated schemas, and every route is in it."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp import ClientResponse
from jsonschema import Draft202012Validator

from bridge.control.openapi import ROUTES, openapi_document
from tests.conftest import SOURCE_TOKEN, api_client, until

TOKEN = "openapi-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}

pytestmark = pytest.mark.usefixtures("loopback_ice")


async def conforms(doc: dict[str, Any], method: str, path: str, resp: ClientResponse) -> Any:
    """``resp``'s JSON body, after checking it against the schema the document gives for this
    route and status."""
    answer = doc["paths"][path][method]["responses"][str(resp.status)]
    schema = answer["content"]["application/json"]["schema"]
    body = await resp.json()
    Draft202012Validator({**schema, "components": doc["components"]}).validate(body)
    return body


def test_document_is_valid_json_schema_and_names_every_request_body() -> None:
    doc = openapi_document()
    for schema in doc["components"]["schemas"].values():
        Draft202012Validator.check_schema(schema)  # raises naming what is wrong
    body = doc["paths"]["/v1/calls"]["post"]["requestBody"]["content"]["application/json"]
    assert {r["$ref"].rsplit("/", 1)[1] for r in body["schema"]["oneOf"]} >= {"WhepJoin",
                                                                             "JanusJoin"}


async def test_every_route_of_the_app_is_in_the_route_table() -> None:
    async with api_client(TOKEN) as client:
        served = {(r.method.lower(), r.resource.canonical)
                  for r in client.app.router.routes() if r.method != "HEAD"}
    assert served == {(r.method, r.path) for r in ROUTES}


async def test_real_answers_validate_against_the_generated_schemas(source: Any) -> None:
    doc = openapi_document()
    async with api_client(TOKEN, outbound={"allow": ["127.0.0.1"]}) as client:
        await conforms(doc, "get", "/healthz", await client.get("/healthz"))
        await conforms(doc, "get", "/readyz", await client.get("/readyz"))
        await conforms(doc, "get", "/v1/calls", await client.get("/v1/calls"))  # 401
        await conforms(doc, "post", "/v1/calls", await client.post(
            "/v1/calls", json={"connector": "whep", "url": "ftp://x"}, headers=AUTH))  # 422
        body = {"connector": "whep", "url": source.url, "token": SOURCE_TOKEN, "tracks": 2,
                "displays": ["Alice", "Bob"]}
        resp = await client.post("/v1/calls", json=body, headers=AUTH)
        assert resp.status == 201
        call_id = (await conforms(doc, "post", "/v1/calls", resp))["id"]
        await until(lambda: len(client.manager.calls[call_id].speakers) == 2, "both speakers")
        calls = await conforms(doc, "get", "/v1/calls", await client.get("/v1/calls",
                                                                         headers=AUTH))
        assert [len(c["speakers"]) for c in calls["calls"]] == [2]
        one = f"/v1/calls/{call_id}"
        await conforms(doc, "get", "/v1/calls/{call_id}", await client.get(one, headers=AUTH))
        await conforms(doc, "get", "/v1/calls/{call_id}/speakers",
                       await client.get(f"{one}/speakers", headers=AUTH))
        await conforms(doc, "get", "/v1/webhooks/failed",
                       await client.get("/v1/webhooks/failed", headers=AUTH))
        left = await conforms(doc, "delete", "/v1/calls/{call_id}",
                              await client.delete(one, headers=AUTH))
        assert left == {"id": call_id, "left": True, "was_joined": True}
        await conforms(doc, "get", "/v1/calls/{call_id}", await client.get(one, headers=AUTH))
