"""The shared per-speaker pipeline with fake analyzers that implement the real plugin interface."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from analyzers.plugins import PluginError, available, load_analyzers
from analyzers.types import AudioChunk, SpeechWindow
from bridge import events as ev
from bridge.config import load_settings
from bridge.pipeline.analysis import AnalysisEngine, SpeakerAnalysis
from bridge.pipeline.audio import read_file
from tests.conftest import CALM


@dataclass(frozen=True)
class Loudness:
    peak: float


class LoudnessAnalyzer:
    """A third-party style plugin: its result lands in ``data.extra``."""

    name = "loudness"

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> LoudnessAnalyzer:
        return cls()

    def load(self) -> None:
        pass

    async def analyze(self, window: SpeechWindow, *, wait: bool = False) -> Loudness:
        return Loudness(float(np.abs(window.samples).max()))

    def close(self) -> None:
        pass


class BrokenAnalyzer(LoudnessAnalyzer):
    name = "broken"

    async def analyze(self, window: SpeechWindow, *, wait: bool = False) -> Loudness:
        raise RuntimeError("kaput")


class SlowAnalyzer(LoudnessAnalyzer):
    name = "slow"

    def __init__(self) -> None:
        self.release = asyncio.Event()

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> SlowAnalyzer:
        return cls()

    async def analyze(self, window: SpeechWindow, *, wait: bool = False) -> Loudness:
        await self.release.wait()
        return Loudness(0.0)


REGISTRY: dict[str, type] = {"loudness": LoudnessAnalyzer, "broken": BrokenAnalyzer,
                             "slow": SlowAnalyzer}


def chunks(seconds: float = 30.0) -> list[AudioChunk]:
    out = []
    for c in read_file(CALM):
        if c[0].start_s >= seconds:
            break
        out.append(c[0])
    return out


async def start_speaker(names: list[str], *, offline: bool = True, queue_size: int = 4,
                        ) -> tuple[list[Any], SpeakerAnalysis]:
    """A started speaker on an engine with ``names`` loaded; events collect in the list."""
    engine = AnalysisEngine(load_settings(None, analyzers=names), REGISTRY)
    await engine.start()
    got: list[Any] = []

    async def emit(e: Any) -> None:
        got.append(e)

    sp = SpeakerAnalysis(engine, ev.CallInfo(id="t:1", connector="test"),
                         ev.SpeakerInfo(id="t:1:a", display="A"), emit, offline=offline,
                         queue_size=queue_size)
    await sp.start()
    return got, sp


async def run_speaker(names: list[str]) -> tuple[list[Any], SpeakerAnalysis]:
    got, sp = await start_speaker(names)
    for c in chunks():
        await sp.feed(c)
    await sp.finish("test over")
    await sp.engine.aclose()
    return got, sp


def test_builtin_plugins_are_registered_as_entry_points() -> None:
    found = available()
    assert found["prosody"] == "analyzers.prosody:ProsodyAnalyzer"
    assert found["emotion"] == "analyzers.emotion:EmotionAnalyzer"


def test_only_configured_plugins_are_loaded_and_bad_options_fail() -> None:
    [p] = load_analyzers(["prosody"])
    assert p.name == "prosody"
    with pytest.raises(PluginError, match="unknown analyzer 'nope'"):
        load_analyzers(["nope"])
    with pytest.raises(PluginError, match="bad options for analyzer 'prosody'"):
        load_analyzers(["prosody"], {"prosody": {"fmin": 3}})


async def test_plugin_results_go_to_extra() -> None:
    got, _ = await run_speaker(["prosody", "loudness"])
    samples = [e for e in got if isinstance(e, ev.AffectSample)]
    assert samples and all(0 < s.data.extra["loudness"]["peak"] <= 1 for s in samples)
    assert all(s.data.prosody.f0_hz for s in samples[2:])


async def test_a_failing_analyzer_does_not_stop_the_speaker(caplog: pytest.LogCaptureFixture) -> None:
    got, _ = await run_speaker(["prosody", "broken"])
    samples = [e for e in got if isinstance(e, ev.AffectSample)]
    assert len(samples) > 8
    assert sum("kaput" in r.getMessage() for r in caplog.records) == 1  # logged once, not per window
    assert isinstance(got[-1], ev.SpeakerLeft) and got[-1].data.reason == "test over"


async def test_live_mode_drops_oldest_windows_when_analysis_stalls() -> None:
    got, sp = await start_speaker(["slow"], offline=False, queue_size=2)
    for c in chunks():
        await sp.feed(c)  # never blocks, although the analyzer never finishes
    assert sp.dropped > 5
    assert sp._queue.qsize() == 2
    await sp.finish("gone")
    await sp.engine.aclose()
    assert isinstance(got[-1], ev.SpeakerLeft)
    assert not [e for e in got if isinstance(e, ev.AffectSample)]


async def test_no_analyzers_still_gives_stress_from_nothing_and_no_crash() -> None:
    got, sp = await run_speaker([])
    samples = [e for e in got if isinstance(e, ev.AffectSample)]
    assert samples and all(s.data.stress.index == 0.0 for s in samples)
    assert sp.windower.speech_s > 10
