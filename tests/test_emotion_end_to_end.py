"""Every emotion family end to end on a recording (analyze), a dimensional model live over WebRTC,
through the report, and a refused checkpoint as a degradation that stops nothing else."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from bridge import events as ev
from bridge.config import load_settings
from bridge.offline.analyze import analyze_files
from tests.conftest import FIXTURES, build_tiny_classifier, build_tiny_whisper_classifier, run_cli

CALM = FIXTURES / "audio" / "alice_calm.flac"


def _settings(model: Path) -> Any:
    return load_settings(None, analyzers=["prosody", "emotion"],
                         emotion={"model": str(model), "device": "cpu", "precision": "fp32"})


async def _samples(model: Path) -> tuple[list[ev.AffectSampleData], dict[str, str]]:
    got: list[ev.AffectSampleData] = []

    def on_event(e: Any) -> None:
        if isinstance(e, ev.AffectSample):
            got.append(e.data)

    result = await analyze_files([CALM], _settings(model), on_event=on_event)
    assert len(got) > 15  # a sample every 2 s of the 47 s recording
    return got, result.degraded


@pytest.mark.parametrize("family", ["wav2vec2", "hubert", "wavlm", "data2vec-audio", "whisper"])
async def test_categorical_families_analyse_a_recording(family: str, tmp_path: Path) -> None:
    path = build_tiny_whisper_classifier(tmp_path / "m") if family == "whisper" else \
        build_tiny_classifier(tmp_path / "m", family, weighted=family in ("wav2vec2", "wavlm"))
    samples, degraded = await _samples(path)
    assert not degraded
    estimated = [s for s in samples if s.emotion is not None]
    assert len(estimated) >= len(samples) - 3  # from the first 4 s of speech on
    for s in estimated:
        assert s.affect_source == "labels" and s.dominance is None
        assert sum(s.emotion.values()) == pytest.approx(1.0, abs=1e-3)  # type: ignore[union-attr]
        assert s.arousal is not None and -1 <= s.arousal <= 1
    assert "emotion" in samples[-1].stress.components


async def test_a_dimensional_model_reaches_events_and_the_stress_score(
        tiny_dimensional_model: Path) -> None:
    samples, degraded = await _samples(tiny_dimensional_model)
    assert not degraded
    estimated = [s for s in samples if s.arousal is not None]
    assert len(estimated) >= len(samples) - 3
    for s in estimated:
        assert s.emotion is None and s.affect_source == "model"
        assert s.valence is not None and s.dominance is not None
        assert all(-1 <= v <= 1 for v in (s.arousal, s.valence, s.dominance))
    assert len({s.arousal for s in estimated}) > 1  # the model's own values, window by window
    assert "emotion" in samples[-1].stress.components


def test_dimensional_analyze_cli_with_report_and_table(
        tiny_dimensional_model: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[emotion]\nmodel = "{tiny_dimensional_model}"\n')
    report = tmp_path / "r.html"
    proc = run_cli("analyze", str(CALM), "--config", str(cfg), "--report", str(report),
                   "--format", "table")
    assert proc.returncode == 0, proc.stderr
    assert "dimensional" in proc.stderr  # the model's state, logged once at load
    html = report.read_text()
    assert 'class="arousal"' in html  # the model's own arousal over time


def test_a_refused_checkpoint_is_one_degradation_and_analysis_goes_on(tmp_path: Path) -> None:
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    from tests.conftest import TINY_ENCODER

    Wav2Vec2Model(Wav2Vec2Config(**TINY_ENCODER)).save_pretrained(tmp_path / "bare")
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[emotion]\nmodel = "{tmp_path / "bare"}"\n')
    proc = run_cli("analyze", str(CALM), "--config", str(cfg))
    assert proc.returncode == 0, proc.stderr
    evs = [json.loads(line) for line in proc.stdout.splitlines()]
    degraded = [e for e in evs if e["type"] == "analyzer.degraded"]
    assert len(degraded) == 1 and "refused" in degraded[0]["data"]["reason"]
    assert "bare encoder" in degraded[0]["data"]["reason"]
    samples = [e["data"] for e in evs if e["type"] == "affect.sample"]
    assert samples and all(s["emotion"] is None and s["arousal"] is None for s in samples)
    assert all(s["prosody"]["f0_hz"] is not None for s in samples)
    assert sum("refused" in line for line in proc.stderr.splitlines()) == 1


@pytest.mark.usefixtures("loopback_ice")
async def test_a_dimensional_model_live_through_the_demo_whep_path(
        source: Any, tiny_dimensional_model: Path) -> None:
    from bridge.connectors.whep import WhepConnector
    from bridge.live.calls import CallManager, Join
    from bridge.pipeline.analysis import AnalysisEngine

    engine = AnalysisEngine(_settings(tiny_dimensional_model))
    await engine.start()
    assert engine.has("emotion")
    got: list[Any] = []

    async def emit(e: Any) -> None:
        got.append(e)

    manager = CallManager(engine, emit)
    info = ev.CallInfo(id="whep:dimensional", connector="whep")
    await manager.join(Join(info, lambda i, on_sp, on_left: WhepConnector(
        i, on_sp, on_left, url=source.url, token="s3cret", tracks=1, displays=["Alice"])))

    def estimated() -> list[ev.AffectSampleData]:
        return [e.data for e in got if isinstance(e, ev.AffectSample) and e.data.arousal is not None]

    for _ in range(300):  # until a sample carries the model's dimensions (bounded: 30 s)
        if estimated():
            break
        await asyncio.sleep(0.1)
    await manager.aclose()
    await engine.aclose()
    [first, *_] = estimated()
    assert first.affect_source == "model" and first.emotion is None
    assert first.dominance is not None and -1 <= first.dominance <= 1
