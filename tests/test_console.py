import asyncio
import io

import pytest

from bridge import events as ev
from bridge.delivery.console import ConsoleSink

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


async def test_table_state_follows_the_speaker_to_its_end() -> None:
    """The row's state comes from the speaker's one fold: the spike ends, it idles, it leaves
    (its spike count then the analysis's own, from speaker.left)."""
    sink = ConsoleSink("table", io.StringIO())
    started = ev.SpikeStartedData(offset_s=10, started_s=8, index=0.8, peak=0.8,
                                  components=["f0"])

    def row() -> str:
        return next(line for line in sink.render().splitlines() if line.startswith("Alice"))

    for event in (sample(0.8, False), ev.SpikeStarted(call=CALL, speaker=ALICE, data=started),
                  ev.spike_ended(CALL, ALICE, started, offset_s=14, duration_s=6,
                                 reason="recovered")):
        await sink.emit(event)
    assert "listening" in row()
    await sink.emit(ev.SpeakerIdle(call=CALL, speaker=ALICE, data=ev.SpeakerIdleData(
        offset_s=20, silent_s=5)))
    assert "idle" in row()
    await sink.emit(ev.speaker_left(CALL, ALICE, offset_s=30, reason="left", speech_s=12.0,
                                    spikes=2))
    assert "left" in row() and row().split()[-2] == "2"


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


class FakeTerminal(io.StringIO):
    """What a terminal receives; ``isatty`` as a terminal's. ``frame()`` waits for the next
    flush (the console flushes once a frame)."""

    def __init__(self) -> None:
        super().__init__()
        self._flushed: asyncio.Event | None = None

    def isatty(self) -> bool:
        return True

    def flush(self) -> None:
        if self._flushed is not None:
            self._flushed.set()

    async def frame(self) -> None:
        self._flushed = asyncio.Event()
        await self._flushed.wait()


def screen(raw: str, width: int) -> list[str]:
    """The rows a terminal ``width`` columns wide shows after ``raw``: text wraps at the width,
    ``ESC [ n F`` moves the cursor up n rows to their start, ``ESC [ J`` clears below it."""
    import re

    rows: list[str] = []
    row = 0
    for token in re.split(r"(\x1b\[\d*[FJ])", raw):
        if token.startswith("\x1b["):
            if token.endswith("F"):
                row = max(0, row - int(token[2:-1] or 1))
            else:
                del rows[row:]
            continue
        for i, line in enumerate(token.split("\n")):
            if i:
                row += 1
            chunks = [line[k:k + width] for k in range(0, len(line), width)] or [""]
            for j, chunk in enumerate(chunks):
                while len(rows) <= row + j:
                    rows.append("")
                rows[row + j] = chunk
            row += len(chunks) - 1
    return rows


async def test_log_records_print_above_the_live_table(monkeypatch: pytest.MonkeyPatch) -> None:
    """The demo's screen: stdout and stderr are one terminal. A warning logged while the table
    is on screen (from the event loop or another thread) ends up above the table, whole; an
    analyzer.degraded event is one of the table's event lines."""
    import logging

    monkeypatch.setenv("COLUMNS", "100")
    term = FakeTerminal()
    handler = logging.StreamHandler(term)
    handler.setFormatter(logging.Formatter("affect-bridge: %(levelname)s: %(message)s"))
    logger = logging.getLogger("tests.console.terminal")
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.INFO)
    warning = ("analyzer emotion unavailable, continuing without it: cannot load emotion model "
               "'superb/wav2vec2-base-superb-er': it is not in the local model cache")
    try:
        sink = ConsoleSink("table", term, refresh_s=0.01)
        assert sink.live
        await sink.start()
        await sink.emit(ev.SpeakerJoined(call=CALL, speaker=ALICE,
                                         data=ev.SpeakerJoinedData(offset_s=0)))
        await sink.emit(ev.AnalyzerDegraded(call=CALL, data=ev.AnalyzerDegradedData(
            analyzer="emotion", reason="not in the local model cache")))
        while "Alice joined" not in term.getvalue():  # the table is on screen
            await term.frame()
        logger.warning(warning)
        await asyncio.to_thread(logger.info, "emotion model m loaded on cpu in int8 (a thread)")
        await sink.emit(sample(0.3, True))
        await term.frame()  # one more frame
        await sink.aclose()
        logger.warning("after the table")  # the handler writes to the terminal again
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
        logger.setLevel(logging.NOTSET)
    assert handler.stream is term
    shown = screen(term.getvalue(), 100)
    header = next(i for i, row in enumerate(shown) if row.startswith("speaker "))
    alice = next(i for i, row in enumerate(shown) if row.startswith("Alice "))
    assert alice == header + 1  # nothing between the table's header and its rows
    text = "".join(shown)
    assert text.count("continuing without it") == 1  # whole, once, not lost in a redraw
    warned = next(i for i, row in enumerate(shown) if "continuing without it" in row)
    loaded = next(i for i, row in enumerate(shown) if "loaded on cpu in int8" in row)
    assert warned < loaded < header
    assert "".join(shown[warned:loaded]).endswith("local model cache")  # wrapped, not cut
    note = next(i for i, row in enumerate(shown) if "analyzer emotion unavailable:" in row)
    assert note > alice  # the degraded event: an event line below the rows
    assert shown[-2] == "affect-bridge: WARNING: after the table" and shown[-1] == ""


async def test_log_handlers_stay_put_off_a_terminal() -> None:
    """Not a terminal: event lines, and no handler is touched. On a terminal, a handler whose
    stream is a file or a pipe (stderr redirected) is not touched either."""
    import logging

    term, redirected = FakeTerminal(), io.StringIO()
    to_term, to_file = logging.StreamHandler(term), logging.StreamHandler(redirected)
    logger = logging.getLogger("tests.console.handlers")
    logger.addHandler(to_term)
    logger.addHandler(to_file)
    try:
        plain = ConsoleSink("table", io.StringIO())
        await plain.start()
        assert to_term.stream is term
        await plain.emit(ev.AnalyzerDegraded(call=CALL, data=ev.AnalyzerDegradedData(
            analyzer="emotion", reason="weights refused")))
        assert "analyzer emotion unavailable: weights refused" in plain.stream.getvalue()
        await plain.aclose()

        live = ConsoleSink("table", FakeTerminal(), refresh_s=60)
        await live.start()
        assert to_term.stream is not term and to_file.stream is redirected
        await live.aclose()
        assert to_term.stream is term
    finally:
        logger.removeHandler(to_term)
        logger.removeHandler(to_file)


async def test_a_degraded_analyzer_stays_among_the_event_lines() -> None:
    """Unavailable or refused: the model's state stays on the table, above the latest events,
    however many come after it."""
    sink = ConsoleSink("table", FakeTerminal())
    await sink.emit(ev.AnalyzerDegraded(call=CALL, data=ev.AnalyzerDegradedData(
        analyzer="emotion", reason="checkpoint refused: pickled weights")))
    for i in range(10):
        await sink.emit(ev.SpeakerJoined(call=CALL, speaker=ev.SpeakerInfo(
            id=f"c:{i}", display=f"S{i}"), data=ev.SpeakerJoinedData(offset_s=i)))
    notes = sink.render().split("\n\n", 1)[1].splitlines()
    assert notes[0].endswith("analyzer emotion unavailable: checkpoint refused: pickled weights")
    assert [n.split()[1] for n in notes[1:]] == [f"S{i}" for i in range(4, 10)]
