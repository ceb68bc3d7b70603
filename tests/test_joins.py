"""Joins that are cancelled midway: DELETE /v1/calls/{id} while the media server is still
answering tears down everything the join made remotely, and the join request gets a JSON 4xx.
(The Janus case, counted on a real Janus, is in test_janus.py.)"""

from __future__ import annotations

import asyncio

import pytest

from tests.conftest import api_client, until
from tests.media_helpers import ScriptedTrack, ScriptedWhep, speech_48k

pytestmark = pytest.mark.usefixtures("loopback_ice")

TOKEN = "join-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


async def test_delete_during_a_slow_whep_join_cancels_it_and_deletes_the_session() -> None:
    pcm = speech_48k()
    server = ScriptedWhep(lambda: [ScriptedTrack(pcm, [("talk", 30.0)])], answer_delay_s=2.0)
    await server.start()
    try:
        async with api_client(TOKEN, outbound={"allow": ["127.0.0.1"]}) as client:
            got = client.events
            join = asyncio.create_task(client.post("/v1/calls", headers=AUTH, json={
                "connector": "whep", "url": server.url}))
            # the offer is at the server, its answer 2 s away
            await until(lambda: server.posts, "the offer at the server")
            calls = (await (await client.get("/v1/calls", headers=AUTH)).json())["calls"]
            assert [c["state"] for c in calls] == ["joining"]
            call_id = calls[0]["id"]
            resp = await client.delete(f"/v1/calls/{call_id}", headers=AUTH)
            assert resp.status == 200
            assert await resp.json() == {"id": call_id, "left": True, "was_joined": False}
            answer = await join
            body = await answer.json()
            assert answer.status == 409 and body["error"] == "join_cancelled", body
            assert (await (await client.get("/v1/calls", headers=AUTH)).json())["calls"] == []
            # The session the server made while the bridge was leaving was DELETEd.
            assert (server.created, server.deleted, server.sessions) == (1, 1, 0)
            assert [e.type for e in got] == []  # no call.joined, so no call.left either
            # A join that is not cancelled still works afterwards.
            server.answer_delay_s = 0.0
            resp = await client.post("/v1/calls", headers=AUTH, json={
                "connector": "whep", "url": server.url})
            assert resp.status == 201
            assert [c["state"] for c in (await (await client.get(
                "/v1/calls", headers=AUTH)).json())["calls"]] == ["joined"]
        # leaving the API's block left that call: its session was DELETEd too
        assert (server.deleted, server.sessions) == (2, 0)
    finally:
        await server.aclose()
    types = [e.type for e in got]
    assert types[0] == "call.joined" and types[-1] == "call.left"
