"""Live calls as they really are, over real aiortc peers on loopback: senders that stop sending
for stretches (RTP timestamps jump, as with DTX or a muted sender), speakers who go quiet past
``silence_timeout_s`` and come back, and a speaker whose drain fails."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest

from bridge import events as ev
from bridge import stats
from bridge.config import load_settings
from bridge.connectors.whep import WhepConnector
from bridge.live.calls import CallManager, Join
from bridge.pipeline.analysis import AnalysisEngine, SpeakerAnalysis
from bridge.tasks import record_failures
from tests.bridge_proc import Bridge
from tests.conftest import until
from tests.media_helpers import ScriptedTrack, ScriptedWhep, speech_48k

pytestmark = pytest.mark.usefixtures("loopback_ice")


def rss_mb() -> float:
    """Resident set size of this process (the bridge runs in it)."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


class Recorder:
    """Events with the loop time they were emitted at."""

    def __init__(self) -> None:
        self.events: list[tuple[float, Any]] = []

    async def emit(self, event: Any) -> None:
        self.events.append((asyncio.get_running_loop().time(), event))

    def of(self, kind: str, speaker: str | None = None) -> list[tuple[float, Any]]:
        return [(t, e) for t, e in self.events if e.type == kind
                and (speaker is None or (e.speaker is not None and e.speaker.id == speaker))]


async def _bridge(**settings: Any) -> tuple[CallManager, Recorder]:
    engine = AnalysisEngine(load_settings(None, analyzers=["prosody"], **settings))
    await engine.start()
    rec = Recorder()
    return CallManager(engine, rec.emit, silence_timeout_s=5.0, gone_timeout_s=None), rec


async def test_gaps_keep_wall_time_and_quiet_speakers_come_back(tmp_path: Path) -> None:
    """Speaker A sends with gaps (10 s talk, 10 s nothing, 10 s talk, 10 s nothing, 20 s talk):
    after 60 s its timeline is within 0.5 s of wall time, and windows reaching into a gap show
    the pause. Meanwhile speaker B, heard by an ``affect-bridge run`` process of its own (so
    that process's memory is B's alone), talks, sends nothing for 34 s (idle after
    silence_timeout_s), and talks again: the same speaker, baseline kept, analysed again within
    1 s, and the bridge's RSS flat while B is silent. (Before: gaps vanished from the timeline,
    offsets fell 20 s behind, and a speaker silent past the timeout was dropped for good.)"""
    pcm = speech_48k()
    gappy = [("talk", 10.0), ("gap", 10.0), ("talk", 10.0), ("gap", 10.0), ("talk", 20.0)]
    quiet = [("talk", 14.0), ("gap", 34.0), ("talk", 12.0)]  # as long as A's script
    sender_a = ScriptedTrack(pcm, gappy)
    sender_b = ScriptedTrack(pcm, quiet)
    server_a = ScriptedWhep(lambda: [sender_a])
    server_b = ScriptedWhep(lambda: [sender_b])
    await server_a.start()
    await server_b.start()
    process = Bridge(tmp_path, live="silence_timeout_s = 5.0\ngone_timeout_s = 3600.0",
                     extra="[stress]\ncalibration_s = 6.0")
    manager, rec = await _bridge()
    loop = asyncio.get_running_loop()
    info = ev.CallInfo(id="whep:timeline", connector="whep")
    a = f"{info.id}:0"
    rss: list[float] = []
    drift: list[float] = []  # speaker A's timeline minus wall time, once a second
    try:
        await process.start()
        call = await manager.join(Join(info, lambda i, s, left: WhepConnector(i, s, left,
                                                                         url=server_a.url)))
        await process.join([server_b.url])
        await until(lambda: sender_a.started and sender_b.started, "audio sent")
        assert sender_b.started is not None
        while loop.time() < sender_b.started + sender_b.length_s + 3.0:
            t = loop.time() - sender_b.started
            clock = call.speakers[a].clock if a in call.speakers else None
            if clock is not None and t < 60.0:
                drift.append(clock.end_s - (loop.time() - call.started))
            if quiet[0][1] + 10.0 < t < quiet[0][1] + quiet[1][1] - 1.0:  # B silent, idle
                rss.append(process.rss_mb())
            await asyncio.sleep(1.0)
    finally:
        await manager.aclose()
        await manager.engine.aclose()
        process.kill()
        await process.wait()
        await server_a.aclose()
        await server_b.aclose()

    def call_time(track: ScriptedTrack, t: float) -> float:
        """Sender time ``t`` (seconds into its script) on the in-process bridge's call clock."""
        assert track.started is not None
        return track.started + t - call.started

    # Speaker A: the timeline follows wall time through the gaps.
    assert len(drift) >= 50 and max(abs(x) for x in drift) < 0.5, drift
    samples_a = rec.of("affect.sample", a)
    assert len(samples_a) >= 15
    late = [emitted - call.started - e.data.window_end_s for emitted, e in samples_a
            if e.data.window_end_s > call_time(sender_a, 40.0)]
    assert late and max(abs(x) for x in late) < 0.5, late  # after both gaps: on time
    last_end = samples_a[-1][1].data.window_end_s
    assert last_end == pytest.approx(call_time(sender_a, 60.0), abs=2.5)  # a hop at most
    # Windows reaching into a gap show it as pause (they used to span the gap with speech).
    gaps = [(call_time(sender_a, 10.0), call_time(sender_a, 20.0)),
            (call_time(sender_a, 30.0), call_time(sender_a, 40.0))]
    across = []
    for _, e in samples_a:
        d = e.data
        silent = sum(max(0.0, min(d.window_end_s, g1) - max(d.window_start_s, g0))
                     for g0, g1 in gaps)
        if silent >= 1.5:
            across.append(e)
            assert d.prosody.pause_ratio >= silent / (d.window_end_s - d.window_start_s) - 0.05
    assert across, "no window reached into a gap"
    assert len(rec.of("speaker.joined", a)) == 1  # one speaker throughout, idle or not
    assert len(rec.of("speaker.resumed", a)) == 2
    assert [e.data.reason for _, e in rec.of("speaker.left", a)] == ["call left"]

    # Speaker B (the other process): idle, then back: same id, analysed again at once,
    # baseline kept. Its offsets are on that process's call clock: measure from its call.joined.
    events = process.events()
    b_events = [e for e in events if e.get("speaker")]
    assert {e["speaker"]["id"] for e in b_events} == {b_events[0]["speaker"]["id"]}
    assert [e["type"] for e in events].count("speaker.joined") == 1
    [idle] = [e for e in events if e["type"] == "speaker.idle"]
    [back] = [e for e in events if e["type"] == "speaker.resumed"]
    samples_b = [e for e in events if e["type"] == "affect.sample"]
    assert back["data"]["idle_s"] == pytest.approx(quiet[1][1], abs=1.0)
    assert idle["data"]["silent_s"] >= 5.0
    before = [e for e in samples_b if e["data"]["window_end_s"] < idle["data"]["offset_s"]]
    after = [e for e in samples_b if e["data"]["window_end_s"] > back["data"]["offset_s"]]
    assert before and after, "samples before the silence and after it"
    assert not before[-1]["data"]["stress"]["calibrating"]
    assert not after[0]["data"]["stress"]["calibrating"]  # the baseline was kept
    # Analysed again at once: the resumed audio sits where the silence ended on the timeline
    # (speech 14 s + silence 34 s after the first audio), and the next window follows it.
    resumed_at = back["data"]["offset_s"]
    [joined] = [e for e in events if e["type"] == "speaker.joined"]
    started_at = joined["data"]["offset_s"]  # its track came just before its first frame
    assert resumed_at - started_at == pytest.approx(quiet[0][1] + quiet[1][1], abs=1.0)
    assert after[0]["data"]["window_end_s"] - resumed_at < 4.5
    # B's bridge process while B was silent: memory flat.
    print(f"RSS of B's bridge over {len(rss)} s of silence: {min(rss):.1f}..{max(rss):.1f} MB")
    assert len(rss) >= 20 and max(rss) - min(rss) < 5.0, rss
    # B never left while silent (the process was killed at the end, so no speaker.left).
    assert not [e for e in events if e["type"] == "speaker.left"]


async def test_a_drain_that_fails_ends_that_speaker_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """An unexpected error while draining one speaker (here: in its analysis) ends that speaker
    with speaker.left reason "error"; the other speaker of the call goes on, and the failure is
    counted (affect_task_failures_total, /readyz)."""
    pcm = speech_48k()
    feed = SpeakerAnalysis.feed

    async def failing_feed(self: SpeakerAnalysis, chunk: Any) -> None:
        if self.speaker.id.endswith(":1") and self.windower.audio_s > 3.0:
            raise RuntimeError("analysis bug")
        await feed(self, chunk)

    monkeypatch.setattr(SpeakerAnalysis, "feed", failing_feed)
    server = ScriptedWhep(lambda: [ScriptedTrack(pcm, [("talk", 30.0)]) for _ in range(2)])
    await server.start()
    manager, rec = await _bridge()
    info = ev.CallInfo(id="whep:failing", connector="whep")
    failed: list[stats.Stat] = []
    recording = record_failures(failed.append)
    recording.__enter__()
    call = await manager.join(Join(info, lambda i, s, left: WhepConnector(i, s, left, url=server.url,
                                                                     tracks=2)))
    ok, bad = f"{info.id}:0", f"{info.id}:1"
    try:
        for _ in range(200):  # until the failing speaker is gone and the other went on
            if rec.of("speaker.left", bad) and len(rec.of("affect.sample", ok)) >= 4:
                break
            await asyncio.sleep(0.1)
        assert list(call.speakers) == [ok]
    finally:
        await manager.aclose()
        await manager.engine.aclose()
        await server.aclose()
        recording.__exit__(None, None, None)
    [(left_at, left)] = rec.of("speaker.left", bad)
    assert left.data.reason == "error"
    assert any(t > left_at for t, _ in rec.of("affect.sample", ok))
    assert [(f.task, f.error) for f in failed if isinstance(f, stats.TaskFailed)] == [
        ("speaker/drain", "RuntimeError: analysis bug")]
    assert [e.data.reason for _, e in rec.of("speaker.left", ok)] == ["call left"]
