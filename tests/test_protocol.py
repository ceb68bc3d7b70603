"""The worker protocol's messages on the wire, and typed errors as the control API answers them."""

from __future__ import annotations

import json
from typing import Any

import pytest

from bridge import stats
from bridge.connectors.whep import WhepJoin
from bridge.control.errors import BadRequest, InvalidRequest, status_of
from bridge.errors import (
    AlreadyJoined,
    BadJoinRequest,
    BridgeError,
    ConnectorError,
    JoinCancelled,
    NotAllowed,
    Unavailable,
)
from bridge.workers import protocol as proto


def _wire(msg: proto.Message) -> Any:
    """Through JSON, as the channel carries it."""
    return json.loads(json.dumps(proto.encode(msg)))


def test_every_message_survives_the_wire() -> None:
    join = WhepJoin.model_validate({"connector": "whep", "url": "http://127.0.0.1:9/whep",
                                    "token": "s3cret", "tracks": 2})
    messages: list[proto.Message] = [
        proto.Configure({"listen": "127.0.0.1:9464"}, "INFO"),
        proto.JoinCall(7, "whep:abc", "whep", join),
        proto.LeaveCall(8, "whep:abc", "left on request"),
        proto.Ping(3), proto.Stop("shutting down"),
        proto.Ready(1234, ["prosody"], {"emotion": "no weights"}),
        proto.Joined(7, "whep:abc"),
        proto.JoinFailed.of(7, NotAllowed("media server http://x/: not in the allow-list")),
        proto.Left(8, "whep:abc", True), proto.Pong(3),
        proto.Published({"type": "call.joined", "id": "evt_1"}),
        proto.StatsReport([stats.FramesReceived(5), stats.SpeechHeard("c", "s", 1.5),
                           stats.TaskFailed("janus/supervise", "RuntimeError: x", 1.0),
                           stats.RemoteFailure("emotion", "unreachable"),
                           stats.AnalyzerState("emotion", "inference server unreachable"),
                           stats.AnalyzerState("emotion")]),
    ]
    for msg in messages:
        assert proto.decode(_wire(msg)) == msg, msg.op
    # The validated request travels as it was, secrets included, without being validated again.
    back = proto.decode(_wire(proto.JoinCall(7, "whep:abc", "whep", join)))
    assert isinstance(back, proto.JoinCall) and isinstance(back.request, WhepJoin)
    assert back.request.token is not None and back.request.token.get_secret_value() == "s3cret"


def test_a_failed_join_is_raised_again_as_its_type() -> None:
    for exc in (ConnectorError("unreachable", code="unreachable"), NotAllowed("no"),
                AlreadyJoined.call("whep:abc"), JoinCancelled.call("whep:abc"),
                Unavailable("worker 1 stopped", code="worker_failed"), BadJoinRequest("x")):
        again = proto.decode(_wire(proto.JoinFailed.of(1, exc)))
        assert isinstance(again, proto.JoinFailed)
        raised = again.error()
        assert type(raised) is type(exc) and raised.error == exc.error
        assert str(raised) == str(exc)


@pytest.mark.parametrize("raw", [{"op": "nope"}, {"op": "ping"}, {"op": "join", "req": 1},
                                 {"op": "join", "req": 1, "call": "c", "connector": "whep",
                                  "request": "bm90IGEgcGlja2xl"},
                                 {"op": "join", "req": 1, "call": "c", "connector": "whep",
                                  "request": "gARdlC4="}])  # a pickled list, not a model
def test_what_is_no_message_is_a_value_error(raw: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        proto.decode(raw)


def test_one_unknown_stat_does_not_lose_the_others() -> None:
    wire = _wire(proto.StatsReport([stats.FramesReceived(2)]))
    wire["stats"].insert(0, ["NoSuchStat", 1])
    assert proto.decode(wire) == proto.StatsReport([stats.FramesReceived(2)])


def test_each_error_has_one_status() -> None:
    expected: list[tuple[BridgeError, int]] = [
        (BadRequest("not json", code="invalid_json"), 400), (BadJoinRequest("x"), 400),
        (NotAllowed("no"), 403), (AlreadyJoined.call("c"), 409), (JoinCancelled.call("c"), 409),
        (InvalidRequest("bad url"), 422), (ConnectorError("down", code="unreachable"), 422),
        (Unavailable("no worker"), 503), (BridgeError("?"), 500)]
    for exc, status in expected:
        assert status_of(exc) == status, type(exc).__name__
    assert AlreadyJoined.call("c").error == "already_joined"
    assert Unavailable("x", code="worker_failed").error == "worker_failed"


async def test_a_workers_remote_model_down_and_back_reaches_the_supervisors_readiness() -> None:
    """With --workers, /readyz is the pool's view: a worker's remote emotion model that stops
    answering (and comes back) arrives as AnalyzerState stats; any ready worker's outage shows."""
    from bridge.config import load_settings
    from bridge.workers.pool import WorkerPool

    recorded: list[stats.Stat] = []

    async def emit(event: object) -> None:
        pass

    pool = WorkerPool(load_settings(None), 2, emit, record=recorded.append)
    second = pool.workers[1]
    for w in pool.workers:
        await pool._on_message(w, proto.Ready(1, ["prosody", "emotion"], {}))
    assert pool.analyzers() == {"prosody": "ready", "emotion": "ready"}
    await pool._on_message(second, proto.StatsReport([stats.AnalyzerState(
        "emotion", "inference server http://s:8000 unreachable")]))
    assert pool.analyzers()["emotion"] == "degraded: inference server http://s:8000 unreachable"
    assert pool.analyzers()["prosody"] == "ready"
    await pool._on_message(second, proto.StatsReport([stats.AnalyzerState("emotion")]))
    assert pool.analyzers() == {"prosody": "ready", "emotion": "ready"}
    assert stats.AnalyzerState("emotion") in recorded  # still forwarded to the metrics sink
