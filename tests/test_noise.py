"""No voice, no verdict: room noise with nobody speaking is never scored, never a stress spike
(generated noise, fixed seeds: tests/noise.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import soundfile as sf

from bridge import events as ev
from bridge import stats
from bridge.analyze import analyze_files
from bridge.config import load_settings
from tests.noise import SR, noise


async def _analyze(tmp_path: Path, audio: Any, **settings: Any) -> tuple[list[Any], list[Any]]:
    path = tmp_path / "room.wav"
    sf.write(path, audio, SR, subtype="PCM_16")
    events: list[Any] = []
    await analyze_files([path], load_settings(None, analyzers=["prosody"], **settings),
                        on_event=events.append)
    return events, [e for e in events if isinstance(e, ev.AffectSample)]


@pytest.mark.parametrize(("kind", "dbfs"), [("pink", -26.0), ("brown", -24.0), ("white", -30.0)])
async def test_noise_alone_is_never_scored_nor_a_spike(kind: str, dbfs: float,
                                                       tmp_path: Path) -> None:
    events, samples = await _analyze(tmp_path, noise(kind, 180.0, dbfs, seed=11))
    assert samples == []
    assert not [e for e in events if isinstance(e, ev.SpikeStarted)]
    [left] = [e for e in events if isinstance(e, ev.SpeakerLeft)]
    assert left.data.spikes == 0


async def test_an_unscored_window_is_logged_once_per_speaker(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    import logging

    with caplog.at_level(logging.INFO, logger="bridge.analysis"):
        await _analyze(tmp_path, noise("pink", 30.0, -26.0, seed=5), vad={"engine": "webrtc"})
    lines = [r.getMessage() for r in caplog.records if "not scored" in r.getMessage()]
    assert len(lines) == 1 and "periodic voicing" in lines[0]


def test_unscored_windows_are_counted_in_metrics_and_cross_the_worker_channel() -> None:
    from prometheus_client import CollectorRegistry

    from bridge.sinks.prometheus import PrometheusSink

    sink = PrometheusSink(registry=CollectorRegistry())
    stat = stats.from_wire(stats.to_wire(stats.WindowUnscored("unvoiced")))
    sink.record(stat)
    sink.record(stat)
    value = sink.registry.get_sample_value("affect_windows_unscored_total", {"reason": "unvoiced"})
    assert value == 2
