"""No voice, no verdict: room noise with nobody speaking is never scored, never a stress spike
(generated noise, fixed seeds: tests/noise.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from bridge import events as ev
from bridge import stats
from bridge.config import load_settings
from bridge.offline.analyze import analyze_files
from tests.noise import SR, noise


async def _analyze(tmp_path: Path, audio: Any, **settings: Any) -> tuple[list[Any], list[Any]]:
    path = tmp_path / "room.wav"
    sf.write(path, audio, SR, subtype="PCM_16")
    events: list[Any] = []
    await analyze_files([path], load_settings(None, analyzers=["prosody"], **settings),
                        on_event=events.append)
    return events, [e for e in events if isinstance(e, ev.AffectSample)]


@pytest.mark.parametrize("engine", ["silero", "webrtc"])
@pytest.mark.parametrize(("kind", "dbfs"), [("pink", -26.0), ("brown", -24.0), ("white", -30.0)])
async def test_noise_alone_is_never_scored_nor_a_spike(kind: str, dbfs: float, engine: str,
                                                       tmp_path: Path) -> None:
    """Either engine: webrtcvad passes this noise as speech, the voicing test then refuses it."""
    events, samples = await _analyze(tmp_path, noise(kind, 60.0, dbfs, seed=11),
                                     vad={"engine": engine})
    assert samples == []
    assert not [e for e in events if isinstance(e, ev.SpikeStarted)]
    [left] = [e for e in events if isinstance(e, ev.SpeakerLeft)]
    assert left.data.spikes == 0


@pytest.mark.parametrize("kind", ["white", "pink", "brown", "fan", "clicks", "music"])
@pytest.mark.parametrize("dbfs", [-45.0, -20.0])
async def test_the_default_vad_hears_no_speech_in_room_noise(kind: str, dbfs: float,
                                                             tmp_path: Path) -> None:
    """At most 2 % of noise alone counted as speech, every kind, quiet and loud (a fan's hum is
    periodic: the voicing test alone would score it; the VAD must not pass it)."""
    events, samples = await _analyze(tmp_path, noise(kind, 60.0, dbfs, seed=13))
    [left] = [e for e in events if isinstance(e, ev.SpeakerLeft)]
    assert left.data.speech_s <= 0.02 * 60.0
    assert samples == [] and left.data.spikes == 0


async def test_speech_then_room_noise_counts_the_speech_only(tmp_path: Path) -> None:
    """A speaker's 47 s, then 150 s of room noise 10 dB under the speech: the speech seconds
    within 10 % of the speech alone, no spike."""
    from bridge.pipeline.audio import read_file
    from tests.conftest import CALM
    from tests.noise import at_level

    speech = np.concatenate([c.samples for [c] in read_file(CALM)])
    level = 10 * np.log10(np.mean(np.square(speech[np.abs(speech) > 1e-3])))
    alone, _ = await _analyze(tmp_path, speech)
    for kind in ("pink", "fan"):
        room = at_level(noise(kind, 150.0, 0.0, seed=17), level - 10)
        mixed, _ = await _analyze(tmp_path, np.concatenate([speech, room]))
        [a] = [e for e in alone if isinstance(e, ev.SpeakerLeft)]
        [m] = [e for e in mixed if isinstance(e, ev.SpeakerLeft)]
        assert m.data.speech_s == pytest.approx(a.data.speech_s, rel=0.10), kind
        assert m.data.spikes == 0


async def test_an_unscored_window_is_logged_once_per_speaker(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    import logging

    with caplog.at_level(logging.INFO, logger="bridge.pipeline.analysis"):
        await _analyze(tmp_path, noise("pink", 30.0, -26.0, seed=5), vad={"engine": "webrtc"})
    lines = [r.getMessage() for r in caplog.records if "not scored" in r.getMessage()]
    assert len(lines) == 1 and "periodic voicing" in lines[0]


def test_unscored_windows_are_counted_in_metrics_and_cross_the_worker_channel() -> None:
    from prometheus_client import CollectorRegistry

    from bridge.delivery.prometheus import PrometheusSink

    sink = PrometheusSink(registry=CollectorRegistry())
    stat = stats.from_wire(stats.to_wire(stats.WindowUnscored("unvoiced")))
    sink.record(stat)
    sink.record(stat)
    value = sink.registry.get_sample_value("affect_windows_unscored_total", {"reason": "unvoiced"})
    assert value == 2
