"""[emotion] backend = "remote" end to end, against a real MLServer (tests/serving.py) serving
what ``affect-bridge export-model`` wrote: the same estimates as the local model, the server
killed in the middle of a call and started again, a slow server."""

from __future__ import annotations

import asyncio
import json
import shutil
import urllib.error
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from analyzers.emotion import EmotionConfig, EmotionModel
from analyzers.types import SpeechWindow
from bridge import stats
from bridge.pipeline.remote import RemoteEmotionAnalyzer, RemoteUnavailable
from tests.conftest import CALM, SR, harmonic, run_cli
from tests.serving import ModelServer
from tests.test_remote_emotion import assert_outage_and_recovery, outage_in_a_call

NAME, SLOW, SMALL_QUEUE = "affect-emotion", "affect-emotion-slow", "affect-emotion-q2"
LABELS = ["neu", "hap", "ang", "sad"]  # build_tiny_emotion_model's, in order
SLOW_S = 1.5  # how long the slow copy waits before it answers

_SLOW_RUNTIME = f'''"""The exported runtime, answering {SLOW_S} s late (a server under load)."""
import asyncio

from affect_bridge_runtime import EmotionRuntime


class SlowRuntime(EmotionRuntime):
    async def predict(self, payload):
        await asyncio.sleep({SLOW_S})
        return await super().predict(payload)
'''


@pytest.fixture(scope="module")
def server(tiny_emotion_model: Path, tmp_path_factory: pytest.TempPathFactory,
           ) -> Iterator[ModelServer]:
    from bridge.offline.export import export_model

    root = tmp_path_factory.mktemp("serving") / "models"
    export_model(str(tiny_emotion_model), root, name=NAME)
    slow = root / SLOW
    shutil.copytree(root / NAME, slow)
    (slow / "slow_runtime.py").write_text(_SLOW_RUNTIME)
    settings = json.loads((slow / "model-settings.json").read_text())
    settings.update(name=SLOW, implementation="slow_runtime.SlowRuntime")
    (slow / "model-settings.json").write_text(json.dumps(settings))
    small = root / SMALL_QUEUE
    shutil.copytree(root / NAME, small)
    settings = json.loads((small / "model-settings.json").read_text())
    settings["name"] = SMALL_QUEUE
    settings["parameters"]["extra"]["max_queue"] = 2
    (small / "model-settings.json").write_text(json.dumps(settings))
    mlserver = ModelServer(root, tmp_path_factory.mktemp("mlserver"))
    mlserver.start()
    try:
        yield mlserver
    finally:
        mlserver.stop()


def remote(url: str, **more: Any) -> dict[str, Any]:
    return {"backend": "remote", "remote": {"url": url, "model": NAME, "labels": LABELS, **more}}


def voice(seconds: float, f0: float, seed: int) -> SpeechWindow:
    rng = np.random.default_rng(seed)
    wave = harmonic(f0, seconds, jitter=0.01, shimmer=0.05, seed=seed)
    speech = (wave + 0.01 * rng.standard_normal(len(wave))).astype(np.float32)
    return SpeechWindow(speech, 0.0, seconds, np.ones(int(seconds / 0.03), bool), 0.03, speech)


async def test_remote_estimates_are_the_local_models(server: ModelServer,
                                                     tiny_emotion_model: Path) -> None:
    local = EmotionModel(EmotionConfig(model=str(tiny_emotion_model), device="cpu",
                                       precision="fp32", threads=1, max_batch=1))
    local.load()
    analyzer = RemoteEmotionAnalyzer(EmotionConfig(**remote(server.url)))
    analyzer.load()
    await analyzer.check()
    windows = [voice(4.0, 120, 1), voice(2.5, 210, 2), voice(1.2, 300, 3)]
    got = await asyncio.gather(*(analyzer.analyze(w) for w in windows))  # concurrently
    for w, r in zip(windows, got, strict=True):
        [expected] = local.predict([w.new_speech])
        assert r is not None and r.probabilities.keys() == expected.probabilities.keys()
        for label, p in expected.probabilities.items():
            assert r.probabilities[label] == pytest.approx(p, abs=1e-4)
        assert (r.arousal, r.valence) == pytest.approx((expected.arousal, expected.valence),
                                                       abs=1e-4)
    await analyzer.aclose()


def test_analyze_with_the_remote_model_gives_the_local_results(
        server: ModelServer, tiny_emotion_model: Path, tmp_path: Path) -> None:
    """The whole `affect-bridge analyze`, once local (fp32) and once remote: every sample's
    emotion equal within the events' rounding."""
    local_cfg, remote_cfg = tmp_path / "local.toml", tmp_path / "remote.toml"
    local_cfg.write_text(f'[emotion]\nmodel = "{tiny_emotion_model}"\ndevice = "cpu"\n'
                         'precision = "fp32"\n')
    remote_cfg.write_text(f'[emotion]\nbackend = "remote"\n[emotion.remote]\nurl = '
                          f'"{server.url}"\nmodel = "{NAME}"\nlabels = {json.dumps(LABELS)}\n')

    def samples(config: Path) -> list[dict[str, Any]]:
        out = tmp_path / f"{config.stem}.jsonl"
        cli = run_cli("analyze", "--config", str(config), "--format", "jsonl", "--out",
                      str(out), str(CALM), env={"AFFECT_BRIDGE_CACHE_DIR": str(tmp_path)})
        assert cli.returncode == 0, cli.stderr
        events = [json.loads(line) for line in out.read_text().splitlines()]
        assert not [e for e in events if e["type"] == "analyzer.degraded"]
        return [e["data"] for e in events if e["type"] == "affect.sample"]

    local, far = samples(local_cfg), samples(remote_cfg)
    assert len(local) == len(far) and sum(s["emotion"] is not None for s in far) >= 5
    for a, b in zip(local, far, strict=True):
        assert (a["emotion"] is None) == (b["emotion"] is None)
        if a["emotion"] is not None:
            for label in a["emotion"]:
                assert b["emotion"][label] == pytest.approx(a["emotion"][label], abs=2e-4)
        assert b["stress"]["index"] == pytest.approx(a["stress"]["index"], abs=2e-3)


async def test_the_server_killed_mid_call_and_started_again(server: ModelServer) -> None:
    def back() -> None:
        if not server.running:
            server.start()  # on the same port

    got, seen, engine = await outage_in_a_call(
        remote(server.url), go_down=server.kill,  # SIGKILL, the server and its workers
        failed=lambda seen: any(isinstance(s, stats.RemoteFailure) for s in seen),
        come_back=back)
    assert_outage_and_recovery(got, seen, engine, "unreachable")
    assert stats.RemoteFailure("emotion", "unreachable") in seen


async def test_a_slow_server_turns_live_chunks_away_and_times_out(server: ModelServer) -> None:
    seen: list[stats.Stat] = []
    slow = RemoteEmotionAnalyzer(EmotionConfig(**remote(server.url, model=SLOW,
                                                        max_in_flight=1, timeout_s=10)),
                                 record=seen.append)
    slow.load()
    await slow.check()
    first = asyncio.create_task(slow.analyze(voice(2.0, 150, 1)))
    await asyncio.sleep(0.2)
    # Live: the one slot is taken, so the next chunk is turned away at once, counted.
    assert await slow.analyze(voice(2.0, 180, 2)) is None
    assert not first.done()  # it did not wait for the slow one
    assert stats.InferenceBatch("emotion", 0, 0.0) in seen
    assert (await first) is not None
    await slow.aclose()

    hurried = RemoteEmotionAnalyzer(EmotionConfig(**remote(server.url, model=SLOW,
                                                           timeout_s=0.5)), record=seen.append)
    hurried.load()
    with pytest.raises(RemoteUnavailable, match="did not answer in time"):
        await hurried.analyze(voice(2.0, 150, 3))
    assert stats.RemoteFailure("emotion", "unreachable") in seen
    await hurried.aclose()


def test_export_names_what_the_bridge_needs(server: ModelServer) -> None:
    meta = json.loads((server.repository / NAME / "affect-bridge.json").read_text())
    assert meta["labels"] == LABELS and meta["kind"] == "categorical"
    assert SR == meta["sample_rate"]


def test_a_server_past_its_queue_says_so_at_once(server: ModelServer) -> None:
    """The runtime's queue is bounded (max_queue): more rows than it holds are answered 503
    before any waits; the model goes on serving."""
    rows = [voice(1.0, 150 + 20 * i, i).new_speech for i in range(3)]
    body = {"inputs": [{"name": "waveform", "shape": [3, len(rows[0])], "datatype": "FP32",
                        "data": np.concatenate(rows).tolist()}]}
    with pytest.raises(urllib.error.HTTPError) as err:
        server.post(f"/v2/models/{SMALL_QUEUE}/infer", body)
    assert err.value.code == 503 and b"max_queue 2" in err.value.read()
    assert server.infer(SMALL_QUEUE, rows[:2]).shape == (2, len(LABELS))
