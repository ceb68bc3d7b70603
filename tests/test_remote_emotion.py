"""[emotion] backend = "remote": the bridge's Open Inference Protocol client, against an aiohttp
endpoint this test controls (malformed answers, error statuses, a server that holds requests,
one that goes away). The same client against a real MLServer serving an exported model:
tests/test_remote_serving.py."""

from __future__ import annotations

import asyncio
import math
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
import pytest
from aiohttp import web

from analyzers.emotion import EmotionConfig
from analyzers.loading import ModelUnavailable
from analyzers.types import SpeechWindow
from bridge import events as ev
from bridge import stats
from bridge.config import ConfigError, load_settings
from bridge.pipeline.analysis import AnalysisEngine, SpeakerAnalysis
from bridge.pipeline.remote import RemoteEmotionAnalyzer, RemoteUnavailable
from tests.conftest import SR
from tests.test_analysis import chunks

LABELS = ["neu", "hap", "ang", "sad"]


@dataclass
class Fake:
    """An OIP endpoint: ``mode`` says how it answers ``/infer``; ``gate`` holds requests."""

    mode: str = "ok"
    requests: list[dict[str, Any]] = field(default_factory=list)
    served: list[str] = field(default_factory=list)  # the mode each request was answered in
    headers: list[dict[str, str]] = field(default_factory=list)
    gate: asyncio.Event | None = None
    outputs: list[dict[str, Any]] = field(default_factory=lambda: [
        {"name": "scores", "datatype": "FP32", "shape": [-1, 4]}])

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 << 20)
        app.router.add_get("/v2/models/emo", self.metadata)
        app.router.add_post("/v2/models/emo/infer", self.infer)
        return app

    async def metadata(self, request: web.Request) -> web.Response:
        return web.json_response({"name": "emo", "inputs": [
            {"name": "waveform", "datatype": "FP32", "shape": [-1, -1]}], "outputs": self.outputs})

    async def infer(self, request: web.Request) -> web.Response:
        body = orjson.loads(await request.read())
        self.requests.append(body)
        self.headers.append(dict(request.headers))
        if self.gate is not None:
            await self.gate.wait()
        self.served.append(self.mode)
        n = body["inputs"][0]["shape"][1]
        row = [0.1, 0.2, 0.3, 0.4] if n % 2 == 0 else [0.4, 0.3, 0.2, 0.1]
        answers: dict[str, Any] = {
            "ok": {"outputs": [{"name": "scores", "shape": [1, 4], "datatype": "FP32",
                                "data": row}]},
            "nested": {"outputs": [{"name": "scores", "shape": [1, 4], "datatype": "FP32",
                                    "data": [row]}]},
            "short": {"outputs": [{"name": "scores", "shape": [1, 3], "data": row[:3]}]},
            "nan": {"outputs": [{"name": "scores", "shape": [1, 4], "data": [*row[:3], "NaN"]}]},
            "other-name": {"outputs": [{"name": "logits", "shape": [1, 4], "data": row}]},
            "strings": {"outputs": [{"name": "scores", "shape": [1, 4], "data": ["a"] * 4}]},
            "outputs-not-a-list": {"outputs": 5},
            "mixed-nesting": {"outputs": [{"name": "scores", "shape": [1, 4],
                                           "data": [[0.1], 0.2, 0.3, 0.4]}]},
        }
        if self.mode == "500":
            return web.json_response({"error": "model failed"}, status=500)
        if self.mode == "not-json":
            return web.Response(text="<html>busy</html>")
        return web.json_response(answers[self.mode])


@pytest.fixture
async def fake() -> AsyncIterator[tuple[Fake, str]]:
    f = Fake()
    runner = web.AppRunner(f.app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield f, f"http://127.0.0.1:{port}"
    await runner.cleanup()


def config(url: str, **remote: Any) -> EmotionConfig:
    return EmotionConfig(backend="remote", remote={"url": url, "model": "emo",
                                                   "labels": LABELS, **remote})


def window(seconds: float = 2.0, seed: int = 0) -> SpeechWindow:
    rng = np.random.default_rng(seed)
    speech = (0.1 * rng.standard_normal(int(seconds * SR))).astype(np.float32)
    return SpeechWindow(speech, 0.0, seconds, np.ones(int(seconds / 0.03), bool), 0.03, speech)


async def loaded(cfg: EmotionConfig, record: stats.Record = stats.ignore) -> RemoteEmotionAnalyzer:
    a = RemoteEmotionAnalyzer(cfg, record=record)
    a.load()
    await a.check()
    return a


async def test_a_chunk_goes_out_as_a_waveform_tensor_and_comes_back_as_scores(
        fake: tuple[Fake, str], monkeypatch: pytest.MonkeyPatch) -> None:
    f, url = fake
    monkeypatch.setenv("EMO_TOKEN", "s3cret")
    seen: list[stats.Stat] = []
    a = await loaded(config(url, token_env="EMO_TOKEN"), seen.append)
    w = window(2.0)
    scores = await a.analyze(w)
    [req] = f.requests
    [tensor] = req["inputs"]
    assert (tensor["name"], tensor["datatype"], tensor["shape"]) == ("waveform", "FP32", [1, 2 * SR])
    np.testing.assert_array_equal(np.asarray(tensor["data"], np.float32), w.new_speech)
    assert f.headers[0]["Authorization"] == "Bearer s3cret"
    assert scores is not None and scores.probabilities == pytest.approx(
        {"neutral": 0.1, "happy": 0.2, "angry": 0.3, "sad": 0.4})
    assert scores.audio_s == 2.0
    [batch] = [s for s in seen if isinstance(s, stats.InferenceBatch)]
    assert batch.size == 1 and batch.seconds > 0  # the round trip
    f.mode = "nested"  # [[...]] instead of flat data: the protocol allows both
    assert (await a.analyze(window(2.0))).probabilities["sad"] == pytest.approx(0.4)
    await a.aclose()


@pytest.mark.parametrize(("mode", "reason", "message"), [
    ("500", "http_error", "answered HTTP 500"),
    ("not-json", "bad_response", "not JSON"),
    ("short", "bad_response", "not 4 finite numbers"),
    ("nan", "bad_response", "not 4 finite numbers"),
    ("strings", "bad_response", "not 4 finite numbers"),
    ("other-name", "bad_response", "no 'scores' output"),
    ("outputs-not-a-list", "bad_response", "no 'scores' output"),
    ("mixed-nesting", "bad_response", "not 4 finite numbers"),
])
async def test_a_bad_answer_fails_that_chunk_and_is_counted(
        fake: tuple[Fake, str], mode: str, reason: str, message: str) -> None:
    f, url = fake
    seen: list[stats.Stat] = []
    a = await loaded(config(url), seen.append)
    f.mode = mode
    with pytest.raises(RemoteUnavailable, match=message) as err:
        await a.analyze(window())
    assert url.split("//")[1] in str(err.value)  # which server, never a body
    assert [s for s in seen if isinstance(s, stats.RemoteFailure)] == [
        stats.RemoteFailure("emotion", reason)]
    f.mode = "ok"
    assert await a.analyze(window()) is not None  # the next chunk is fine
    await a.aclose()


async def test_a_server_that_is_not_there_is_unreachable_not_a_crash() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    seen: list[stats.Stat] = []
    a = RemoteEmotionAnalyzer(config(f"http://127.0.0.1:{port}"), record=seen.append)
    a.load()
    with pytest.raises(RemoteUnavailable, match="unreachable"):
        await a.check()
    with pytest.raises(RemoteUnavailable, match="unreachable"):
        await a.analyze(window())
    assert stats.RemoteFailure("emotion", "unreachable") in seen
    await a.aclose()


@pytest.mark.parametrize(("outputs", "message"), [
    ([{"name": "logits", "shape": [-1, 4]}], "export it with affect-bridge export-model"),
    ([{"name": "scores", "shape": [-1, 7]}], "gives 7 scores, the configured labels are 4"),
    (5, "export it with affect-bridge export-model"),  # not even a list
])
async def test_the_wrong_model_on_the_server_is_a_configuration_error(
        fake: tuple[Fake, str], outputs: Any, message: str) -> None:
    f, url = fake
    f.outputs = outputs
    a = RemoteEmotionAnalyzer(config(url))
    a.load()
    with pytest.raises(ModelUnavailable, match=message) as err:
        await a.check()
    assert not isinstance(err.value, RemoteUnavailable)  # no retry fixes it
    await a.aclose()


async def test_live_chunks_beyond_max_in_flight_are_dropped_and_counted_offline_waits(
        fake: tuple[Fake, str]) -> None:
    f, url = fake
    f.gate = asyncio.Event()
    seen: list[stats.Stat] = []
    a = await loaded(config(url, max_in_flight=2), seen.append)
    held = [asyncio.create_task(a.analyze(window(seed=i))) for i in range(2)]
    for _ in range(500):  # until both wait on the server
        if len(f.requests) == 2:
            break
        await asyncio.sleep(0.01)
    assert await a.analyze(window(seed=3)) is None  # live: turned away at once, no stall
    assert stats.InferenceBatch("emotion", 0, 0.0) in seen
    offline = asyncio.create_task(a.analyze(window(seed=4), wait=True))
    await asyncio.sleep(0.1)
    assert not offline.done() and len(f.requests) == 2  # waits for a slot, sends nothing yet
    f.gate.set()
    results = await asyncio.gather(*held, offline)
    assert all(r is not None for r in results) and len(f.requests) == 3
    await a.aclose()


def test_remote_needs_a_url_and_labels_and_a_consistent_token() -> None:
    with pytest.raises(ConfigError, match=r"needs \[emotion.remote\] url"):
        load_settings(None, emotion={"backend": "remote"})
    with pytest.raises(ConfigError, match="labels"):
        load_settings(None, emotion={"backend": "remote", "remote": {"url": "http://h:1"}})
    with pytest.raises(ConfigError, match=r"emotion\.remote\.url"):
        load_settings(None, emotion={"backend": "remote", "remote": {
            "url": "http://user:pw@h:1", "labels": LABELS}})
    with pytest.raises(ConfigError, match="token_env or token_file"):
        load_settings(None, emotion={"backend": "remote", "remote": {
            "url": "http://h:1", "labels": LABELS, "token_env": "A", "token_file": "/t"}})
    s = load_settings(None, emotion={"backend": "remote", "remote": {
        "url": "https://triton.internal:8000/prefix", "labels": LABELS, "version": "3"}})
    assert s.emotion.remote.version == "3" and s.emotion.backend == "remote"


def test_a_missing_token_fails_at_load_without_showing_anything_secret(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    monkeypatch.delenv("EMO_TOKEN", raising=False)
    with pytest.raises(ModelUnavailable, match="EMO_TOKEN is not set"):
        RemoteEmotionAnalyzer(config("http://127.0.0.1:1", token_env="EMO_TOKEN")).load()
    empty = tmp_path / "token"
    empty.write_text("\n")
    with pytest.raises(ModelUnavailable, match="is empty"):
        RemoteEmotionAnalyzer(config("http://127.0.0.1:1", token_file=str(empty))).load()
    two_lines = tmp_path / "token2"
    two_lines.write_text("s3cret\nmore\n")
    with pytest.raises(ModelUnavailable, match="control characters") as err:
        RemoteEmotionAnalyzer(config("http://127.0.0.1:1", token_file=str(two_lines))).load()
    assert "s3cret" not in str(err.value)


async def outage_in_a_call(emotion: dict[str, Any], *, go_down: Callable[[], None],
                           failed: Callable[[list[stats.Stat]], bool],
                           come_back: Callable[[], None],
                           ) -> tuple[list[Any], list[stats.Stat], AnalysisEngine]:
    """One speaker through the real per-speaker pipeline with the remote backend: a third of
    30 s of speech, ``go_down``, a third, until ``failed(stats)`` (windows wait in the speaker's
    queue), ``come_back`` (also when that fails), the rest. The events, stats and engine."""
    seen: list[stats.Stat] = []
    engine = AnalysisEngine(load_settings(None, analyzers=["prosody", "emotion"],
                                          emotion=emotion), record=seen.append)
    await engine.start()
    assert engine.has("emotion") and not engine.degraded
    got: list[Any] = []

    async def emit(e: Any) -> None:
        got.append(e)

    sp = SpeakerAnalysis(engine, ev.CallInfo(id="t:1", connector="test"),
                         ev.SpeakerInfo(id="t:1:a", display="A"), emit, offline=True)
    await sp.start()
    parts = chunks(30.0)
    third = len(parts) // 3
    try:
        for c in parts[:third]:
            await sp.feed(c)
        go_down()
        for c in parts[third:2 * third]:
            await sp.feed(c)
        for _ in range(600):
            if failed(seen):
                break
            await asyncio.sleep(0.05)
        assert "emotion" in engine.degraded  # what /readyz shows
    finally:
        come_back()
    for c in parts[2 * third:]:
        await sp.feed(c)
    await sp.finish("test over")
    await engine.aclose()
    return got, seen, engine


def assert_outage_and_recovery(got: list[Any], seen: list[stats.Stat], engine: AnalysisEngine,
                               reason: str) -> list[ev.AffectSample]:
    """While the server failed, windows went out with prosody and stress and no emotion, one
    analyzer.degraded said ``reason``; when it answered again, emotion resumed and the marks
    (engine.degraded: /readyz; AnalyzerState: --workers' /readyz) cleared."""
    samples = [e for e in got if isinstance(e, ev.AffectSample)]
    degraded = [e for e in got if isinstance(e, ev.AnalyzerDegraded)]
    assert len(degraded) == 1 and degraded[0].data.analyzer == "emotion"
    assert reason in degraded[0].data.reason
    with_emotion = [s.data.emotion is not None for s in samples]
    gap = with_emotion.index(False, with_emotion.index(True))
    assert any(with_emotion[gap:]), "emotion never resumed"
    assert all(s.data.prosody is not None and s.data.stress is not None for s in samples)
    assert "emotion" not in engine.degraded
    states = [st for st in seen if isinstance(st, stats.AnalyzerState)]
    assert [st.reason != "" for st in states] == [True, False]
    return samples


async def test_server_down_then_back_in_a_call(fake: tuple[Fake, str]) -> None:
    f, url = fake

    def mode(m: str) -> Callable[[], None]:
        return lambda: setattr(f, "mode", m)

    got, seen, engine = await outage_in_a_call(
        {"backend": "remote", "min_audio_s": 1.0,
         "remote": {"url": url, "model": "emo", "labels": LABELS}},
        go_down=mode("500"), failed=lambda _: "500" in f.served, come_back=mode("ok"))
    assert f.served[0] == "ok" and "500" in f.served and f.served[-1] == "ok"
    samples = assert_outage_and_recovery(got, seen, engine, "answered HTTP 500")
    assert not math.isnan(samples[-1].data.stress.index)
