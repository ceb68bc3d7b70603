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


async def test_hostile_display_names_cannot_drive_the_terminal() -> None:
    """A publisher named with terminal escapes (clear screen, cursor moves, a bidi override, a
    newline) is shown escaped in the table and the event lines; the JSON event keeps the exact
    name."""
    hostile = ev.SpeakerInfo(id="c:9", display="\x1b[2J\x1b[HMallory\u202e\nroot# " + "x" * 100)
    joined = ev.SpeakerJoined(call=CALL, speaker=hostile, data=ev.SpeakerJoinedData(offset_s=1))
    lines = io.StringIO()
    sink = ConsoleSink("table", lines)  # not a terminal: one readable line per event
    await sink.emit(joined)
    table = sink.render()
    for shown in (lines.getvalue(), table):
        assert "\x1b" not in shown and "\u202e" not in shown
        assert "\\x1b[2J\\x1b[HMal" in shown  # the table shows 16 characters of a name
    assert "\\x1b[2J\\x1b[HMallory\\u202e\\x0aroot#" in lines.getvalue()
    assert lines.getvalue().count("\n") == 1
    assert max(len(line) for line in table.splitlines()) < 120  # capped, not 100+ characters
    raw = io.StringIO()
    await ConsoleSink("jsonl", raw).emit(joined)
    assert ev.parse_event(raw.getvalue()).speaker.display == hostile.display
