import io

import pytest

from bridge import events as ev
from bridge.sinks.console import ConsoleSink

CALL = ev.CallInfo(id="c", connector="test")
ALICE = ev.SpeakerInfo(id="c:0", display="Alice")


def sample(index: float, calibrating: bool) -> ev.AffectSample:
    return ev.AffectSample(call=CALL, speaker=ALICE, data=ev.AffectSampleData(
        offset_s=4.0, window_start_s=0.0, window_end_s=4.0, voiced_s=3.0,
        emotion={"angry": 0.7, "neutral": 0.3}, arousal=0.5, valence=-0.4,
        prosody=ev.ProsodyData(f0_hz=200.0, f0_range_st=3.0, jitter=0.01, shimmer=0.05,
                               hnr_db=12.0, energy_db=-30.0, speech_rate=4.0, pause_ratio=0.2),
        stress=ev.StressData(index=index, components={}, calibrating=calibrating)))


async def test_jsonl_writes_every_event() -> None:
    out = io.StringIO()
    sink = ConsoleSink("jsonl", out)
    await sink.emit(sample(0.1, True))
    await sink.emit(ev.SpeakerJoined(call=CALL, speaker=ALICE, data=ev.SpeakerJoinedData(offset_s=0)))
    lines = out.getvalue().splitlines()
    assert [ev.parse_event(line).type for line in lines] == ["affect.sample", "speaker.joined"]


async def test_table_tracks_each_speaker_state() -> None:
    out = io.StringIO()  # not a terminal: event lines, plus a renderable table
    sink = ConsoleSink("table", out)
    await sink.start()
    await sink.emit(ev.SpeakerJoined(call=CALL, speaker=ALICE, data=ev.SpeakerJoinedData(offset_s=0)))
    await sink.emit(sample(0.2, True))
    assert "calibrating" in sink.render()
    await sink.emit(sample(0.8, False))
    await sink.emit(ev.SpikeStarted(call=CALL, speaker=ALICE, data=ev.SpikeStartedData(
        offset_s=10, started_s=8, index=0.8, peak=0.8, components=["f0"])))
    table = sink.render()
    row = next(line for line in table.splitlines() if line.startswith("Alice"))
    assert "0.80" in row and "SPIKE" in row and "#" * 16 in row and "angry" in row
    assert "STRESS SPIKE" in out.getvalue() and "Alice joined" in out.getvalue()
    await sink.aclose()


def test_bad_mode() -> None:
    with pytest.raises(ValueError):
        ConsoleSink("csv")
