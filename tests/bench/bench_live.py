#!/usr/bin/env python
"""Benchmark: how many concurrent live speakers one bridge process keeps up with in real time.

The full live path without the emotion model (``analyzers = ["prosody"]``; with it:
``--emotion MODEL``, ``base`` for a random-initialised wav2vec2-base): WebRTC receive
(aiortc: UDP, SRTP, jitter buffer), Opus decode (aiortc's decoder thread per track), PyAV resample
to 16 kHz mono, VAD + windowing, prosody (default executor), stress, events (counted, not
written anywhere).

For each N (default 1, 8, 16, 32, 48, 64) two fresh child processes are started:

* the **source**: the demo's ``DemoSource`` on 127.0.0.1 with N clips (one ``MediaPlayer`` per
  track), plus a small ``/stats`` endpoint (packets sent, its own event-loop lag). By default
  (``--source opus``) the clips are the three demo clips pre-encoded once as Ogg Opus exactly as
  aiortc's sender would encode them (48 kHz stereo, 96 kb/s, 20 ms frames) and played with
  ``MediaPlayer(decode=False)``, so the source only packetizes and sends: with the demo's source
  as is (``--source encode``: FLAC decode + live Opus encode per track, ``loop=True``) the
  source alone costs ~30 ms per speaker-second and, sharing 2 cores with the bridge, cannot feed
  64 speakers in real time. The bridge's work is the same either way (a comparison row at N=16
  shows it);
* the **bridge** (the measured process): ``AnalysisEngine`` + ``CallManager`` joining the source
  over WHEP, ``--per-call`` speakers per WHEP session (default 8: a bridge in several calls).
  Before its memory baseline it runs ~10 s of a clip through the pipeline once, so the
  one-off lazy imports of the first prosody window (~140 MB) are not charged to the speakers.

A fresh bridge per N keeps the memory figures clean (no allocator high-water mark or caches left
over from a larger N). The bridge waits until every speaker's frames flow, lets things settle,
then measures over a fixed window: its CPU time (``time.process_time()``, all threads, also split
per thread kind), wall time, frames received per speaker (50/s expected: 20 ms Opus frames),
windows dropped because analysis fell behind, event-loop lag (a task sleeping 50 ms in a loop),
RSS, the source's CPU time, and what the rest of the machine used (``/proc/stat``).

Kept up in real time = every speaker received >= 0.95 x 50 frames/s, no window dropped, and the
event loop's p99 lag under 200 ms; with ``--emotion``, also no emotion inference turned away (every
window's estimate made). Its rows add the inferences made, those dropped, and the latency from a
window's end to its event.

All traffic stays on 127.0.0.1 (``restrict_host_addresses`` in both children). The source runs
on the same machine and competes with the bridge for the cores, so figures understate what the
bridge alone could do; its CPU is reported next to the bridge's.

This is not a test (pytest does not collect it) and no figure fails anything: it prints figures,
and PASS/FAIL against the project's targets for information.

    .venv/bin/python tests/bench/bench_live.py [--quick] [--json OUT.json]
        [--speakers 1,8,16,32,48,64] [--seconds S] [--per-call K] [--source opus|encode]
        [--no-split] [--compare-encode N] [--profile N] [--keep-going]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from procstat import machine_busy_s, process_tree, tree_cpu  # tests/bench/, beside this script

os.environ["HF_HUB_OFFLINE"] = "1"  # nothing here may reach a model hub

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # run as a script: make ``bridge`` importable from the checkout
    sys.path.insert(0, str(ROOT))

DEMO = ROOT / "bridge" / "assets" / "demo"
CLIPS = (DEMO / "alice_calm_then_stressed.flac", DEMO / "bob_calm.flac", DEMO / "carol_calm.flac")
LOOPBACK = "127.0.0.1"

FRAME_RATE = 50.0  # 20 ms Opus frames per second per speaker
KEPT_UP_RATE = 0.95  # of FRAME_RATE, for the slowest speaker
KEPT_UP_LAG_MS = 200.0  # event-loop p99 lag
LAG_TICK_S = 0.05
TARGET_PER_CORE = 40  # speakers kept in real time per core
TARGET_MB_PER_SPEAKER = 5.0
FLOW_FRAMES = 50  # each speaker has received this many frames (1 s) before the clock starts
FLOW_TIMEOUT_S = 90.0

FULL_SPEAKERS = (1, 8, 16, 32, 48, 64)
QUICK_SPEAKERS = (1, 16, 64)


# --------------------------------------------------------------------------------------------
# Shared helpers (all three processes)
# --------------------------------------------------------------------------------------------


def rss_mb() -> float:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def die_with_parent(parent: int) -> None:
    """A child started by this benchmark goes when the benchmark goes, however it ends."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]


class LagMonitor:
    """How late a task that sleeps ``LAG_TICK_S`` in a loop wakes up (ms); ``take`` returns the
    samples since the last ``take``."""

    def __init__(self) -> None:
        self._samples: list[float] = []
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="lag-monitor")

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            t = loop.time()
            await asyncio.sleep(LAG_TICK_S)
            self._samples.append(max(0.0, (loop.time() - t - LAG_TICK_S) * 1000))

    def take(self) -> list[float]:
        samples, self._samples = self._samples, []
        return samples

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


def lag_summary(samples: list[float]) -> dict[str, float]:
    return {"p50_ms": percentile(samples, 50), "p99_ms": percentile(samples, 99),
            "max_ms": max(samples) if samples else float("nan"), "samples": len(samples)}


async def _serve_until_signalled() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


# --------------------------------------------------------------------------------------------
# The source child
# --------------------------------------------------------------------------------------------


def build_opus(directory: Path, min_s: float) -> list[Path]:
    """The demo clips pre-encoded as Ogg Opus the way aiortc's sender encodes live (48 kHz
    stereo, 96 kb/s, 20 ms frames), one file per rotation of the three clips (so neighbouring
    tracks say different things), each repeated to at least ``min_s`` seconds."""
    paths = []
    for k in range(len(CLIPS)):
        paths.append(directory / f"demo-rot{k}.ogg")
        _encode_opus(CLIPS[k:] + CLIPS[:k], paths[-1], min_s)
    return paths


def _encode_opus(order: tuple[Path, ...], path: Path, min_s: float) -> None:
    import fractions

    import av

    out = av.open(str(path), "w", format="ogg")
    stream = out.add_stream("libopus", rate=48000, layout="stereo")
    stream.bit_rate = 96000
    resampler = av.AudioResampler(format="s16", layout="stereo", rate=48000, frame_size=960)
    samples = 0

    def encode(frames: list[Any]) -> None:
        nonlocal samples
        for f in frames:
            f.pts, f.time_base = samples, fractions.Fraction(1, 48000)
            samples += f.samples
            for packet in stream.encode(f):
                out.mux(packet)

    while samples < min_s * 48000:
        for clip in order:
            with av.open(str(clip)) as inp:
                for frame in inp.decode(audio=0):
                    frame.pts = None
                    encode(resampler.resample(frame))
    encode(resampler.resample(None))
    for packet in stream.encode(None):
        out.mux(packet)
    out.close()


async def source_main(speakers: int, opus: list[str]) -> None:
    from aiohttp import web

    from bridge.demo.media_source import DemoSource
    from bridge.live.ice import restrict_host_addresses

    restrict_host_addresses([LOOPBACK])
    if opus:
        # Passthrough: the source's players hand aiortc ready Opus packets, which its sender
        # only packetizes (no FLAC decode, resample, Opus encode per track in this process).
        # The bridge receives exactly what it would from the encoding source. No looping:
        # aiortc's demuxing player restarts timestamps at a loop and would then burst, so the
        # files are long enough for the whole run instead.
        from aiortc.contrib.media import MediaPlayer

        def passthrough(clip: Path, loop: bool) -> Any:
            audio = MediaPlayer(str(clip), decode=False).audio
            assert audio is not None
            return audio

        clips = [Path(opus[i % len(opus)]) for i in range(speakers)]
        source = DemoSource(clips, loop=False, host=LOOPBACK, track=passthrough)
    else:  # the demo's own source: decodes the FLAC clips and Opus-encodes each track live
        clips = [CLIPS[i % len(CLIPS)] for i in range(speakers)]
        source = DemoSource(clips, loop=True, host=LOOPBACK)
    url = await source.start()
    lag = LagMonitor()
    lag.start()
    asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, dump_tasks)

    async def stats(_: web.Request) -> web.Response:
        sent = senders = 0
        for pc, _players in list(source._sessions.values()):  # benchmark: peeks at the source
            for sender in pc.getSenders():
                report = await sender.getStats()
                for s in report.values():
                    if getattr(s, "type", "") == "outbound-rtp":
                        sent += s.packetsSent
                        senders += 1
        return web.json_response({"packets_sent": sent, "senders": senders,
                                  "sessions": source.sessions, "lag_ms": lag.take()})

    app = web.Application()
    app.router.add_get("/stats", stats)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, LOOPBACK, 0)
    await site.start()
    port = runner.addresses[0][1]
    print(json.dumps({"whep": url, "stats": f"http://{LOOPBACK}:{port}/stats"}), flush=True)
    try:
        await _serve_until_signalled()
    finally:
        await lag.stop()
        await source.aclose()
        await runner.cleanup()


# --------------------------------------------------------------------------------------------
# The bridge child (the measured process)
# --------------------------------------------------------------------------------------------


def thread_kind(name: str) -> str:
    if name == "MainThread":
        return "event loop"
    if name.endswith("-decoder"):
        return "opus decode"
    if name.startswith(("asyncio_", "ThreadPoolExecutor")):
        return "executor"
    return "other"


def thread_cpu() -> dict[int, tuple[str, float]]:
    """CPU seconds so far of each live thread, with its kind."""
    import psutil

    names = {t.native_id: t.name for t in threading.enumerate()}
    return {t.id: (thread_kind(names.get(t.id, "?")), t.user_time + t.system_time)
            for t in psutil.Process().threads()}


def split_by_kind(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]],
                  total: float) -> dict[str, float]:
    out: dict[str, float] = {}
    for tid, (kind, cpu) in after.items():
        out[kind] = out.get(kind, 0.0) + cpu - (before[tid][1] if tid in before else 0.0)
    out["exited threads"] = total - sum(out.values())  # threads that ended within the window
    return {k: round(v, 3) for k, v in out.items()}


def dump_tasks() -> None:
    """Every thread's Python stack and every asyncio task's, to stderr (for a hung child)."""
    import faulthandler

    faulthandler.dump_traceback(sys.stderr, all_threads=True)
    for task in asyncio.all_tasks():
        print(f"--- task {task.get_name()}:", file=sys.stderr)
        task.print_stack(limit=8, file=sys.stderr)
    sys.stderr.flush()


async def warm_up(engine: Any) -> None:
    from bridge import events as ev
    from bridge.pipeline.analysis import SpeakerAnalysis
    from bridge.pipeline.audio import read_file

    async def discard(_: Any) -> None:
        return None

    analysis = SpeakerAnalysis(engine, ev.CallInfo(id="warm-up", connector="whep"),
                               ev.SpeakerInfo(id="warm-up:0", display="warm-up"), discard,
                               offline=True)
    await analysis.start()
    frames = read_file(CLIPS[1])
    try:
        for chunks in frames:
            for chunk in chunks:
                await analysis.feed(chunk)
            if chunks and chunks[0].start_s > 10.0:
                break
    finally:
        getattr(frames, "close", lambda: None)()  # a generator: closes the file
    await analysis.finish("warm-up over")


class EmotionTally:
    """The bridge's statistics as they are recorded (any thread): emotion inferences made and
    turned away, and every window's latency from its end to its event."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.items = self.batches = self.dropped = 0
        self.latencies: list[float] = []

    def record(self, stat: Any) -> None:
        from bridge import stats

        with self._lock:
            if isinstance(stat, stats.InferenceBatch) and stat.analyzer == "emotion":
                if stat.size == 0:  # an item its full queue turned away
                    self.dropped += 1
                else:
                    self.items += stat.size
                    self.batches += 1
            elif isinstance(stat, stats.Dropped) and stat.stage.startswith("inference_emotion"):
                self.dropped += stat.n
            elif isinstance(stat, stats.WindowLatency):
                self.latencies.append(stat.seconds)

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return {"items": self.items, "batches": self.batches, "dropped": self.dropped,
                    "latencies": len(self.latencies)}

    def latencies_between(self, start: int, end: int) -> list[float]:
        with self._lock:
            return self.latencies[start:end]


async def bridge_main(args: argparse.Namespace) -> dict[str, Any]:
    import aiohttp
    import psutil

    from bridge import events as ev
    from bridge.config import load_settings
    from bridge.connectors.whep import WhepConnector
    from bridge.live.calls import Call, CallManager, Join
    from bridge.live.ice import restrict_host_addresses
    from bridge.pipeline.analysis import AnalysisEngine

    restrict_host_addresses([LOOPBACK])
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGUSR1, dump_tasks)  # the orchestrator asks when we hang
    n = int(args.speakers)
    analyzers = [a for a in args.analyzers.split(",") if a]
    tally = EmotionTally()
    overrides: dict[str, Any] = {"analyzers": analyzers}
    if args.emotion_model:
        overrides["emotion"] = {"model": args.emotion_model}
    engine = AnalysisEngine(load_settings(None, **overrides), record=tally.record)
    await engine.start()
    if args.emotion_model and "emotion" in engine.degraded:
        raise RuntimeError(f"the emotion model did not load: {engine.degraded['emotion']}")
    events: Counter[str] = Counter()

    async def emit(event: Any) -> None:
        events[event.type] += 1
        if isinstance(event, ev.AffectSample) and event.data.arousal is not None:
            events["affect.sample with emotion"] += 1

    manager = CallManager(engine, emit)
    source = psutil.Process(args.source_pid)
    http = aiohttp.ClientSession()
    lag = LagMonitor()
    profiler = None
    if args.profile:
        import cProfile

        # The main thread's CPU time, not wall time: C calls that release the GIL (PyAV's
        # resampler, socket reads) would otherwise be charged the time spent waiting to get it
        # back from the decoder and executor threads.
        profiler = cProfile.Profile(time.thread_time)

    # Warm-up, before the baseline: the first window analysed pulls in lazily imported modules
    # and caches (once per process, not per speaker) and starts the
    # executor's threads. ~10 s of a clip through the offline pipeline, events discarded.
    await warm_up(engine)
    import gc

    gc.collect()
    await asyncio.sleep(0.5)
    rss_base = rss_mb()
    lag.start()

    def pipelines() -> dict[str, Any]:
        return {sid: p for call in manager.calls.values() for sid, p in call.speakers.items()}

    async def rtp_stats() -> tuple[int, int]:
        received = lost = 0
        for call in manager.calls.values():
            pc = getattr(call.connector, "_pc", None)  # benchmark: peeks at the connector
            if pc is None:
                continue
            for receiver in pc.getReceivers():
                for s in (await receiver.getStats()).values():
                    if getattr(s, "type", "") == "inbound-rtp":
                        received += s.packetsReceived
                        lost += s.packetsLost
        return received, lost

    async def source_stats() -> dict[str, Any]:
        async with http.get(args.source_stats) as resp:
            data: dict[str, Any] = await resp.json()
            return data

    def source_cpu() -> float:
        t = source.cpu_times()
        return float(t.user + t.system)

    def snapshot() -> dict[str, Any]:
        pipes = pipelines()
        return {
            "wall": time.perf_counter(), "cpu": time.process_time(), "threads": thread_cpu(),
            "source_cpu": source_cpu(), "machine": machine_busy_s(),
            "frames": {sid: p.frames for sid, p in pipes.items()},
            "dropped": {sid: p.analysis.dropped for sid, p in pipes.items()},
            "audio_s": {sid: p.analysis.windower.audio_s for sid, p in pipes.items()},
            "events": sum(v for k, v in events.items() if " " not in k),
            "emotion": tally.snapshot(),
            "samples": events["affect.sample"],
            "samples_emotion": events["affect.sample with emotion"],
        }

    async def leave_all() -> None:
        """Leave every call. Stops the tracks first and lets the drain loops end by themselves:
        on Python 3.11, ``asyncio.wait_for`` (which ``LiveSpeaker._drain`` wraps around
        ``track.recv()``) swallows a cancellation that arrives just as a frame is ready, and
        ``CallManager.aclose`` then waits forever for that speaker (seen here ~1 in 7 cancels
        with frames flowing). Bounded, with a stack dump if it still hangs."""
        pipes = list(pipelines().values())
        for p in pipes:
            p.track.stop()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*(p.ended.wait() for p in pipes)), 10)

        async def close() -> None:
            await manager.aclose("benchmark over")
            await engine.aclose()
            await http.close()

        try:
            await asyncio.wait_for(close(), 60)
        except TimeoutError:
            print("bench_live: leaving the calls took over 60 s; where it hung:", file=sys.stderr)
            dump_tasks()

    calls: list[Call] = []
    try:
        join_started = time.perf_counter()
        sizes = [min(args.per_call, n - i) for i in range(0, n, args.per_call)]
        for c, tracks in enumerate(sizes):
            info = ev.CallInfo(id=f"bench:{c}", connector="whep", room="bench")

            def factory(i: Any, on_sp: Any, on_left: Any, tracks: int = tracks) -> WhepConnector:
                return WhepConnector(i, on_sp, on_left, url=args.source_whep, tracks=tracks)

            calls.append(await manager.join(Join(info, factory)))
        deadline = loop.time() + FLOW_TIMEOUT_S
        while True:  # until every speaker's audio flows
            pipes = pipelines()
            flowing = sum(p.frames >= FLOW_FRAMES for p in pipes.values())
            if len(pipes) == n and flowing == n:
                break
            if loop.time() > deadline:
                frames = sorted(p.frames for p in pipes.values())
                raise RuntimeError(f"only {flowing} of {n} speakers flowing after "
                                   f"{FLOW_TIMEOUT_S:.0f} s ({len(pipes)} found; frames {frames})")
            await asyncio.sleep(0.1)
        flowing_after = time.perf_counter() - join_started
        await asyncio.sleep(args.settle)

        rtp0 = await rtp_stats()
        src0 = await source_stats()
        lag.take()
        a = snapshot()
        if profiler is not None:
            profiler.enable()
        rss_samples = []
        end = a["wall"] + args.seconds
        while (left := end - time.perf_counter()) > 0:
            await asyncio.sleep(min(1.0, left))
            rss_samples.append(rss_mb())
        if profiler is not None:
            profiler.disable()
        b = snapshot()
        lags = lag.take()
        src1 = await source_stats()
        rtp1 = await rtp_stats()
        rss_end = rss_mb()
    except BaseException:
        await lag.stop()
        await leave_all()
        raise
    await lag.stop()

    wall = b["wall"] - a["wall"]
    cpu = b["cpu"] - a["cpu"]
    rates = [(b["frames"][sid] - a["frames"].get(sid, 0)) / wall for sid in b["frames"]]
    audio_rates = [(b["audio_s"][sid] - a["audio_s"].get(sid, 0.0)) / wall for sid in b["audio_s"]]
    dropped = sum(b["dropped"][sid] - a["dropped"].get(sid, 0) for sid in b["dropped"])
    source_cpu_s = b["source_cpu"] - a["source_cpu"]
    other = None
    if a["machine"] is not None and b["machine"] is not None:
        other = max(0.0, (b["machine"] - a["machine"]) - cpu - source_cpu_s)
    speakers_seen = len(b["frames"])
    lag_stats = lag_summary(lags)
    min_rate = min(rates) if rates and speakers_seen == n else 0.0
    emo = {k: b["emotion"][k] - a["emotion"][k] for k in ("items", "batches", "dropped")}
    latencies = tally.latencies_between(a["emotion"]["latencies"], b["emotion"]["latencies"])
    kept_up = (min_rate >= KEPT_UP_RATE * FRAME_RATE and dropped == 0
               and lag_stats["p99_ms"] < KEPT_UP_LAG_MS
               and (not args.emotion_model or emo["dropped"] == 0))
    sent = src1["packets_sent"] - src0["packets_sent"]
    result: dict[str, Any] = {
        "speakers": n, "analyzers": analyzers, "per_call": args.per_call, "calls": len(sizes),
        "speakers_at_end": speakers_seen, "join_to_flowing_s": round(flowing_after, 2),
        "wall_s": round(wall, 3), "bridge_cpu_s": round(cpu, 3),
        "bridge_cpu_ms_per_speaker_s": round(1000 * cpu / (n * wall), 3),
        "bridge_cores": round(cpu / wall, 3),
        # per second of audio the bridge actually consumed (differs when it falls behind)
        "bridge_cpu_ms_per_audio_s": round(1000 * cpu / max(sum(audio_rates) * wall, 1e-9), 3),
        "bridge_cpu_by_thread_s": split_by_kind(a["threads"], b["threads"], cpu),
        "source_cpu_s": round(source_cpu_s, 3),
        "source_cpu_ms_per_speaker_s": round(1000 * source_cpu_s / (n * wall), 3),
        "other_procs_cpu_s": None if other is None else round(other, 3),
        "frames_per_s_min": round(min_rate, 2),
        "frames_per_s_mean": round(statistics.fmean(rates), 2) if rates else 0.0,
        "audio_s_per_s_mean": round(statistics.fmean(audio_rates), 4) if audio_rates else 0.0,
        "source_packets_per_s_per_speaker": round(sent / (n * wall), 2),
        "packets_received_per_s_per_speaker": round((rtp1[0] - rtp0[0]) / (n * wall), 2),
        "packets_lost": rtp1[1] - rtp0[1],
        "dropped_windows": dropped,
        "emotion": None if not args.emotion_model else {
            "model": args.emotion_model, "inferences": emo["items"], "batches": emo["batches"],
            "dropped": emo["dropped"],
            "samples": b["samples"] - a["samples"],
            "samples_with_emotion": b["samples_emotion"] - a["samples_emotion"],
            "latency_p50_s": (round(statistics.median(latencies), 3) if latencies else None),
            "latency_max_s": round(max(latencies), 3) if latencies else None},
        "dropped_windows_since_join": sum(b["dropped"].values()),
        "events_in_window": b["events"] - a["events"], "events_by_type": dict(events),
        "loop_lag": {k: round(v, 2) for k, v in lag_stats.items()},
        "source_loop_lag": {k: round(v, 2) for k, v in lag_summary(src1["lag_ms"]).items()},
        "rss_base_mb": round(rss_base, 2), "rss_end_mb": round(rss_end, 2),
        "rss_max_in_window_mb": round(max(rss_samples, default=rss_end), 2),
        "mb_per_speaker": round((rss_end - rss_base) / n, 3),
        "kept_up": kept_up,
    }
    if profiler is not None:
        import io
        import pstats

        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(30)
        result["profile_main_thread"] = out.getvalue()
    print(json.dumps(result), flush=True)  # before leaving: a hang there cannot lose the figures
    await leave_all()
    return result


# --------------------------------------------------------------------------------------------
# The orchestrator
# --------------------------------------------------------------------------------------------


class Children:
    """Every child process this benchmark starts; ``kill_all`` in a ``finally``."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[str]] = []

    def start(self, argv: list[str], log: Path) -> subprocess.Popen[str]:
        with open(log, "w", encoding="utf-8") as err:
            proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), *argv],
                                    stdout=subprocess.PIPE, stderr=err, text=True, cwd=ROOT,
                                    env={**os.environ, "HF_HUB_OFFLINE": "1"})
        self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[str]) -> None:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
        if proc in self.procs:
            self.procs.remove(proc)

    def kill_all(self) -> None:
        for proc in list(self.procs):
            self.stop(proc)


def _read_line(proc: subprocess.Popen[str], timeout: float, what: str, log: Path) -> str:
    """The child's next stdout line, or RuntimeError (with its stderr tail) if none comes."""
    box: list[str] = []
    reader = threading.Thread(target=lambda: box.append(proc.stdout.readline() if proc.stdout
                                                        else ""), daemon=True)
    reader.start()
    reader.join(timeout)
    if not box or not box[0].strip():
        if reader.is_alive() and proc.poll() is None:  # hung: ask it where (bridge only)
            with contextlib.suppress(OSError):
                proc.send_signal(signal.SIGUSR1)
            time.sleep(2)
        tail = log.read_text(encoding="utf-8", errors="replace")[-6000:]
        state = "timed out" if reader.is_alive() else f"exited {proc.poll()}"
        raise RuntimeError(f"{what} gave no result ({state}); its stderr ends:\n{tail}")
    return box[0]


def run_one(children: Children, logs: Path, n: int, args: argparse.Namespace, opus: list[Path],
            *, source_mode: str, analyzers: str = "prosody", profile: bool = False,
            ) -> dict[str, Any]:
    tag = f"{n}-{analyzers or 'none'}-{source_mode}{'-profile' if profile else ''}"
    src_log, br_log = logs / f"source-{tag}.log", logs / f"bridge-{tag}.log"
    src_argv = ["--_source", "--speakers", str(n), "--_parent", str(os.getpid())]
    if source_mode == "opus":
        src_argv += ["--_opus", *map(str, opus)]
    source = children.start(src_argv, src_log)
    try:
        urls = json.loads(_read_line(source, 60, "the source", src_log))
        argv = ["--_bridge", "--speakers", str(n), "--_parent", str(os.getpid()),
                "--_source-pid", str(source.pid), "--_source-whep", urls["whep"],
                "--_source-stats", urls["stats"], "--_analyzers", analyzers,
                "--seconds", str(args.seconds), "--_settle", str(args.settle),
                "--per-call", str(args.per_call)]
        if profile:
            argv.append("--_profile")
        if args.emotion_model and "emotion" in analyzers:
            argv += ["--_emotion-model", args.emotion_model]
        bridge = children.start(argv, br_log)
        try:
            timeout = FLOW_TIMEOUT_S + args.settle + args.seconds + 120
            result: dict[str, Any] = json.loads(_read_line(bridge, timeout, "the bridge", br_log))
            result["source"] = source_mode
            try:
                bridge.wait(90)
            except subprocess.TimeoutExpired:
                result["warning"] = "the bridge hung leaving the calls (killed); figures unaffected"
        finally:
            children.stop(bridge)
    finally:
        children.stop(source)
    return result


# --------------------------------------------------------------------------------------------
# --workers: the service as deployed (`affect-bridge run --workers W`), measured from outside
# --------------------------------------------------------------------------------------------

SERVICE_TOKEN = "bench-token"


def _metric(text: str, name: str, labels: str = "") -> float:
    """Sum of the samples of ``name`` whose label set contains ``labels``."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and (line[len(name)] in " {") and labels in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def _tree_mem_mb(root: Any) -> tuple[float, float]:
    """(RSS, PSS) of the process tree in MB (PSS shares pages fairly between the workers)."""
    rss = pss = 0.0
    for p in process_tree(root):
        try:
            m = p.memory_full_info()
            rss += m.rss
            pss += m.pss
        except Exception:
            pass
    return rss / 2**20, pss / 2**20


def run_service(children: Children, logs: Path, n: int, workers: int, args: argparse.Namespace,
                opus: list[Path]) -> dict[str, Any]:
    """One source child + ``affect-bridge run --workers W`` joining it over the control API
    (``--per-call`` speakers per WHEP session). Kept up: every frame the source sent arrived
    (>= 0.95 x 50/s per speaker on average), no analysis window dropped, nothing dropped on a
    worker channel, and the pipeline latency's mean under 1 s."""
    import psutil
    import requests

    tag = f"{n}-workers{workers}"
    src_log, br_log = logs / f"source-{tag}.log", logs / f"service-{tag}.log"
    src_argv = ["--_source", "--speakers", str(n), "--_parent", str(os.getpid()),
                "--_opus", *map(str, opus)]
    source = children.start(src_argv, src_log)
    service: subprocess.Popen[str] | None = None
    try:
        urls = json.loads(_read_line(source, 60, "the source", src_log))
        port = _free_port()
        cfg = logs / f"service-{tag}.toml"
        emotion = getattr(args, "emotion_model", None)
        analyzers = '["prosody", "emotion"]' if emotion else '["prosody"]'
        cfg.write_text(f'analyzers = {analyzers}\nworkers = {workers}\nlog_level = "INFO"\n'
                       f'[live]\nice_host_addresses = ["{LOOPBACK}"]\n'
                       f'[outbound]\nallow = ["{LOOPBACK}"]\n'
                       + (_emotion_toml(emotion, args) if emotion else ""),
                       encoding="utf-8")
        with open(br_log, "w", encoding="utf-8") as err:
            service = subprocess.Popen(
                [sys.executable, "-m", "bridge.cli", "run", "--config", str(cfg), "--listen",
                 f"{LOOPBACK}:{port}"], stdout=subprocess.DEVNULL, stderr=err, cwd=ROOT,
                env={**os.environ, "HF_HUB_OFFLINE": "1",
                     "AFFECT_BRIDGE_API_TOKEN": SERVICE_TOKEN,
                     # one cache for every run: the first service start measures the
                     # precision and the batch size, later ones read them (as deployed)
                     "AFFECT_BRIDGE_CACHE_DIR": str(logs / "cache")})
        children.procs.append(service)  # type: ignore[arg-type]
        base = f"http://{LOOPBACK}:{port}"
        auth = {"Authorization": f"Bearer {SERVICE_TOKEN}"}
        deadline = time.monotonic() + 120
        while True:  # ready: every worker up and its analyzers loaded
            with contextlib.suppress(requests.RequestException):
                if requests.get(base + "/readyz", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline or service.poll() is not None:
                raise RuntimeError("the service never became ready; its log ends:\n"
                                   + br_log.read_text()[-3000:])
            time.sleep(0.2)
        root = psutil.Process(service.pid)
        if emotion and not getattr(args, "serving", None):
            # the first start measures the batch size once ready: not in the figures
            cache = logs / "cache" / "precision.json"
            deadline = time.monotonic() + 180
            while not (cache.is_file() and json.loads(cache.read_text()).get("batches")):
                if time.monotonic() > deadline:
                    raise RuntimeError("no emotion batch size was measured in 180 s")
                time.sleep(0.5)
        time.sleep(2.0)
        base_rss, base_pss = _tree_mem_mb(root)
        sizes = [min(args.per_call, n - i) for i in range(0, n, args.per_call)]
        for c, tracks in enumerate(sizes):
            r = requests.post(base + "/v1/calls", headers=auth, timeout=60, json={
                "connector": "whep", "url": f"{urls['whep']}?call={c}", "tracks": tracks})
            if r.status_code != 201:
                raise RuntimeError(f"join {c} failed: {r.status_code} {r.text[:300]}")

        def metrics() -> str:
            return requests.get(base + "/metrics", timeout=10).text

        deadline = time.monotonic() + FLOW_TIMEOUT_S
        while _metric(metrics(), "affect_speakers_active") < n:
            if time.monotonic() > deadline:
                raise RuntimeError(f"not all {n} speakers joined in {FLOW_TIMEOUT_S:.0f} s")
            time.sleep(0.5)
        time.sleep(1.0 + args.settle)
        placed = Counter(c.get("worker") for c in requests.get(
            base + "/v1/calls", headers=auth, timeout=10).json()["calls"])
        src = psutil.Process(source.pid)
        serving = getattr(args, "serving", None)
        server = psutil.Process(serving._proc.pid) if serving is not None else None
        srv0 = tree_cpu(server) if server is not None else 0.0
        m0, cpu0, src0, t0 = metrics(), tree_cpu(root), tree_cpu(src), time.monotonic()
        busy0 = machine_busy_s()
        time.sleep(args.seconds)
        m1, cpu1, src1, t1 = metrics(), tree_cpu(root), tree_cpu(src), time.monotonic()
        busy1 = machine_busy_s()
        srv1 = tree_cpu(server) if server is not None else 0.0
        rss, pss = _tree_mem_mb(root)
        wall = t1 - t0

        def delta(name: str, labels: str = "") -> float:
            return _metric(m1, name, labels) - _metric(m0, name, labels)

        frames = delta("affect_audio_frames_total")
        emo_items = delta("affect_inference_batch_size_sum", 'analyzer="emotion"')
        emo_batches = delta("affect_inference_batch_size_count", 'analyzer="emotion"')
        emo_dropped = delta("affect_dropped_total", 'stage="inference_emotion"')
        emo_seconds = delta("affect_inference_seconds_sum", 'analyzer="emotion"')
        emo_failed = sum(_metric(m1, "affect_remote_inference_failures_total", f'reason="{r}"')
                         - _metric(m0, "affect_remote_inference_failures_total", f'reason="{r}"')
                         for r in ("unreachable", "http_error", "bad_response"))
        windows = delta("affect_dropped_total", 'stage="window_queue"')
        channel = delta("affect_dropped_total", 'stage="worker_channel"')
        lat_n = delta("affect_pipeline_latency_seconds_count")
        lat_mean = delta("affect_pipeline_latency_seconds_sum") / lat_n if lat_n else None
        slow = lat_n - delta("affect_pipeline_latency_seconds_bucket", 'le="1.0"')
        rate = frames / (n * wall)
        cpu = cpu1 - cpu0
        kept = (rate >= KEPT_UP_RATE * FRAME_RATE and windows == 0 and channel == 0
                and lat_mean is not None and lat_mean < 1.0 and emo_dropped == 0
                and emo_failed == 0)
        batch_sizes = re.findall(r"emotion batch (\d+) \(", br_log.read_text(errors="replace"))
        return {"speakers": n, "workers": workers, "wall_s": round(wall, 2),
                "frames_per_speaker_s": round(rate, 2), "dropped_windows": int(windows),
                "dropped_channel": int(channel), "latency_mean_s": lat_mean,
                "windows_over_1s": int(slow), "cpu_s": round(cpu, 2),
                "cores": round(cpu / wall, 3),
                "cpu_ms_per_speaker_s": round(1000 * cpu / (n * wall), 3),
                "source_cores": round((src1 - src0) / wall, 3),
                "machine_cores": round((busy1 - busy0) / wall, 3),
                "rss_mb": round(rss, 1), "pss_mb": round(pss, 1),
                "rss_mb_per_speaker": round((rss - base_rss) / n, 2),
                "pss_mb_per_speaker": round((pss - base_pss) / n, 2),
                "base_rss_mb": round(base_rss, 1), "base_pss_mb": round(base_pss, 1),
                "calls_per_worker": dict(sorted((str(k), v) for k, v in placed.items())),
                "emotion": None if not emotion else {
                    "inferences": int(emo_items), "batches": int(emo_batches),
                    "dropped": int(emo_dropped),
                    "mean_batch": round(emo_items / emo_batches, 2) if emo_batches else None,
                    "batch_sizes_measured": [int(b) for b in batch_sizes],
                    "mean_inference_s": round(emo_seconds / emo_batches, 3)
                    if emo_batches else None,
                    "remote_failures": int(emo_failed),
                    "server_cores": round((srv1 - srv0) / wall, 3) if server else None,
                    "server_cpu_ms_per_speaker_s": round(1000 * (srv1 - srv0) / (n * wall), 3)
                    if server else None},
                "kept_up": kept}
    finally:
        if service is not None:
            with contextlib.suppress(Exception):
                service.terminate()
                service.wait(60)
            if service.poll() is None:
                service.kill()
                service.wait()
            if service in children.procs:
                children.procs.remove(service)  # type: ignore[arg-type]
        children.stop(source)


def _emotion_toml(emotion: str, args: argparse.Namespace) -> str:
    serving = getattr(args, "serving", None)
    if serving is None:
        return f'[emotion]\nmodel = "{emotion}"\ndevice = "cpu"\n'
    meta = json.loads((serving.repository / "affect-emotion" / "affect-bridge.json").read_text())
    return (f'[emotion]\nbackend = "remote"\n[emotion.remote]\nurl = "{serving.url}"\n'
            f'model = "affect-emotion"\nlabels = {json.dumps(meta["labels"])}\n'
            'max_in_flight = 16\n')


def start_serving(checkpoint: str, logs: Path, threads: int, precision: str) -> Any:
    """The checkpoint exported in ``precision`` and served by MLServer on loopback with
    ``threads`` torch threads."""
    sys.path.insert(0, str(ROOT))
    from bridge.offline.export import export_model
    from tests.serving import ModelServer

    exported = export_model(checkpoint, logs / "serving" / "models", precision=precision)
    path = exported.path / "model-settings.json"
    settings = json.loads(path.read_text())
    settings["parameters"]["extra"]["threads"] = threads
    path.write_text(json.dumps(settings))
    server = ModelServer(logs / "serving" / "models", logs / "serving")
    server.start()
    print(f"  MLServer serving the exported model ({precision}) on {server.url} ({threads} "
          "torch threads), "
          f"ready in {server.startups[-1]:.1f} s", flush=True)
    return server


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def orchestrate_workers(args: argparse.Namespace) -> int:
    """--workers 1,2: for each worker count, the largest N (of --speakers, ascending) the
    service keeps up with; side by side in one run."""
    counts = [int(x) for x in args.workers.split(",")]
    speakers = ([int(x) for x in args.speakers.split(",")] if args.speakers
                else [24, 32, 40, 48, 56, 64, 72, 80, 88, 96])
    cores = os.cpu_count() or 1
    from analyzers.precision import processor

    emotion = f", 'emotion' ({args.emotion})" if args.emotion else ""
    print(f"affect-bridge live benchmark, the service: `affect-bridge run --workers W` for W in "
          f"{counts}; Python {platform.python_version()}, {cores} cores "
          f"({processor()}); analyzers=['prosody'{emotion}]; "
          f"N={speakers}; {args.per_call} speakers per WHEP session; window {args.seconds:.0f} s "
          f"after {args.settle:.0f} s settling; fresh source + service per run; source: "
          f"{SOURCE_WORDS['opus']}", flush=True)
    children = Children()
    best: dict[int, dict[str, Any] | None] = {}
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-live-") as tmp:
        logs = Path(tmp)
        opus = build_opus(logs, FLOW_TIMEOUT_S + args.settle + args.seconds + 60)
        if args.emotion:
            args.emotion_model = emotion_checkpoint(args.emotion, logs)
        args.serving = None
        if args.emotion and args.remote:
            args.serving = start_serving(args.emotion_model, logs, args.remote_threads,
                                         args.remote_precision)
        try:
            if args.emotion and not args.remote:
                # the first start on a machine measures and prepares: not reported
                print("  warm-up start (precision, prepared model, batch size; not reported) ...",
                      flush=True)
                run_service(children, logs, 1, counts[0], args, opus)
                # its background job (precisions, prepared model) ends before the runs
                from bench_inference import _wait_for_job  # beside this script
                _wait_for_job(logs / "cache")
            for w in counts:
                best[w] = None
                for n in speakers:
                    print(f"  workers={w} N={n} ...", end=" ", flush=True)
                    try:
                        r = run_service(children, logs, n, w, args, opus)
                    except RuntimeError as exc:
                        print(f"failed: {str(exc)[:300]}")
                        break
                    runs.append(r)
                    emo = r.get("emotion")
                    if emo:
                        print(f"emotion {emo['inferences']} inferences in {emo['batches']} "
                              f"batches (batch size chosen {emo['batch_sizes_measured']}), "
                              f"{emo['dropped']} turned away, mean inference "
                              f"{emo['mean_inference_s']} s"
                              + (f", server {emo['server_cores']} cores "
                                 f"({emo['server_cpu_ms_per_speaker_s']} ms/spk-s), "
                                 f"{emo['remote_failures']} failed" if args.remote else "")
                              + ";", end=" ")
                    print(f"{r['frames_per_speaker_s']:.1f} frames/spk-s, dropped "
                          f"{r['dropped_windows']}+{r['dropped_channel']}, latency "
                          f"{fmt(r['latency_mean_s'], 3)} s, {r['cores']:.2f} cores "
                          f"({r['cpu_ms_per_speaker_s']:.1f} ms/spk-s), source "
                          f"{r['source_cores']:.2f}, machine {r['machine_cores']:.2f}, "
                          f"{r['pss_mb_per_speaker']:.1f} MB PSS/spk, calls per worker "
                          f"{r['calls_per_worker']}: "
                          f"{'kept up' if r['kept_up'] else 'NOT kept up'}", flush=True)
                    if not r["kept_up"]:
                        break
                    best[w] = r
        finally:
            children.kill_all()
            if args.serving is not None:
                args.serving.stop()
    print("\nlargest N kept up in real time:")
    for w, r in best.items():
        if r is None:
            print(f"  workers={w}: none of {speakers}")
            continue
        print(f"  workers={w}: {r['speakers']} speakers, {r['cpu_ms_per_speaker_s']:.1f} CPU-ms "
              f"per speaker-second, {r['rss_mb_per_speaker']:.1f} MB RSS "
              f"({r['pss_mb_per_speaker']:.1f} MB PSS) per speaker, base {r['base_rss_mb']:.0f} "
              f"MB RSS / {r['base_pss_mb']:.0f} MB PSS")
    if len(counts) >= 2 and all(best.get(w) for w in counts[:2]):
        a, b = best[counts[0]], best[counts[1]]
        assert a is not None and b is not None
        ratio = b["speakers"] / a["speakers"]
        print(f"workers={counts[1]} / workers={counts[0]}: {ratio:.2f}x the speakers (target "
              f">= 1.6x on 2 cores: {'PASS' if ratio >= 1.6 else 'FAIL'}; N steps of "
              f"{speakers[1] - speakers[0]} bound the resolution)")
    if args.json:
        Path(args.json).write_text(json.dumps({"runs": runs, "best": best}, indent=2) + "\n",
                                   encoding="utf-8")
    return 0


def fmt(x: float | None, nd: int = 1) -> str:
    return "-" if x is None else f"{x:.{nd}f}"


SOURCE_WORDS = {"opus": "pre-encoded Opus passed through (DemoSource, MediaPlayer decode=False)",
                "encode": "the demo's DemoSource as is (FLAC decode + live Opus encode per track)"}


def run_label(r: dict[str, Any]) -> str:
    what = "prosody" if r["analyzers"] == ["prosody"] else (",".join(r["analyzers"]) or "none")
    return f"{what}/{r['source']}"


def print_table(runs: list[dict[str, Any]]) -> None:
    head = ("N", "run", "calls", "wall s", "bridge CPU s", "cores", "ms/spk-s", "ms/audio-s",
            "source CPU s", "other CPU s",
            "fr/s min", "fr/s mean", "lost pkts", "dropped", "lag p50", "lag p99", "lag max",
            "RSS MB", "MB/spk", "kept up")
    rows = [head]
    for r in runs:
        lag = r["loop_lag"]
        rows.append((
            str(r["speakers"]), run_label(r), str(r["calls"]), fmt(r["wall_s"]), fmt(r["bridge_cpu_s"], 2),
            fmt(r["bridge_cores"], 2), fmt(r["bridge_cpu_ms_per_speaker_s"], 2),
            fmt(r["bridge_cpu_ms_per_audio_s"], 2), fmt(r["source_cpu_s"], 2),
            fmt(r["other_procs_cpu_s"], 2), fmt(r["frames_per_s_min"]),
            fmt(r["frames_per_s_mean"]), str(r["packets_lost"]), str(r["dropped_windows"]),
            fmt(lag["p50_ms"]), fmt(lag["p99_ms"]), fmt(lag["max_ms"]), fmt(r["rss_end_mb"]),
            fmt(r["mb_per_speaker"], 2), "yes" if r["kept_up"] else "NO",
        ))
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    for i, row in enumerate(rows):
        print("  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)))
        if i == 0:
            print("  ".join("-" * w for w in widths))


def print_details(runs: list[dict[str, Any]]) -> None:
    print("\nrun = analyzers/source (none: analyzers=[], receive + decode + resample + VAD + "
          "windowing + stress only;\n  opus: pre-encoded Opus passthrough source; encode: the "
          "demo's source encoding live).")
    print("\nPer run, more detail (CPU seconds in the window by bridge thread kind; source-side "
          "send rate and loop lag):")
    for r in runs:
        threads = ", ".join(f"{k} {v:.2f}" for k, v in sorted(r["bridge_cpu_by_thread_s"].items()))
        sl = r["source_loop_lag"]
        print(f"  N={r['speakers']:>3} [{run_label(r)}]: "
              f"bridge threads: {threads} | source sent {r['source_packets_per_s_per_speaker']:.1f}"
              f" pkt/s/spk, bridge got {r['packets_received_per_s_per_speaker']:.1f}, "
              f"audio {r['audio_s_per_s_mean']:.3f} s/s/spk | source lag p99 {sl['p99_ms']:.0f} "
              f"max {sl['max_ms']:.0f} ms | source {r['source_cpu_ms_per_speaker_s']:.2f} "
              f"ms/spk-s | RSS base {r['rss_base_mb']:.1f} MB | join->flowing "
              f"{r['join_to_flowing_s']:.1f} s | events {r['events_in_window']}")
        if "warning" in r:
            print(f"    WARNING: {r['warning']}")


def marginal_mb(runs: list[dict[str, Any]]) -> float | None:
    """Least-squares slope of (RSS end - base) against N over the runs with N >= 8."""
    pts = [(r["speakers"], r["rss_end_mb"] - r["rss_base_mb"]) for r in runs if r["speakers"] >= 8]
    if len(pts) < 2:
        return None
    mx = statistics.fmean(p[0] for p in pts)
    my = statistics.fmean(p[1] for p in pts)
    den = sum((x - mx) ** 2 for x, _ in pts)
    return sum((x - mx) * (y - my) for x, y in pts) / den if den else None


def summarize(runs: list[dict[str, Any]], split: dict[str, Any] | None,
              other: dict[str, Any] | None, cores: int) -> dict[str, Any]:
    kept = [r for r in runs if r["kept_up"]]
    best = max(kept, key=lambda r: r["speakers"]) if kept else None
    largest = max(runs, key=lambda r: r["speakers"])
    ref = best or largest
    implied = 1000 / ref["bridge_cpu_ms_per_speaker_s"]
    highest = best["speakers"] if best else 0
    summary: dict[str, Any] = {
        "cores": cores,
        "highest_n_kept_up": highest,
        "kept_up_per_core_measured": round(highest / cores, 1),
        "target_per_core": TARGET_PER_CORE,
        "target_n_on_this_box": TARGET_PER_CORE * cores,
        "largest_n_tried": largest["speakers"],
        "implied_from_n": ref["speakers"],
        "cpu_ms_per_speaker_s": ref["bridge_cpu_ms_per_speaker_s"],
        "implied_speakers_per_core": round(implied, 1),
        "implied_speakers_per_core_with_source": round(
            1000 / (ref["bridge_cpu_ms_per_speaker_s"] + ref["source_cpu_ms_per_speaker_s"]), 1),
        "bridge_cores_at_implied_n": ref["bridge_cores"],
        "first_failure": None,
        "mb_per_speaker": ref["mb_per_speaker"],
        "mb_per_speaker_marginal": None,
        "pass_measured_per_core": highest >= TARGET_PER_CORE * cores,
        "pass_implied_per_core": implied >= TARGET_PER_CORE,
        "pass_memory": ref["mb_per_speaker"] < TARGET_MB_PER_SPEAKER,
    }
    failed = [r for r in runs if not r["kept_up"]]
    if failed:
        first = min(failed, key=lambda r: r["speakers"])
        summary["first_failure"] = {"speakers": first["speakers"], "bridge_cores": first["bridge_cores"],
                                    "frames_per_s_min": first["frames_per_s_min"],
                                    "packets_lost": first["packets_lost"],
                                    "source_packets_per_s_per_speaker":
                                        first["source_packets_per_s_per_speaker"]}
    slope = marginal_mb(runs)
    if slope is not None:
        summary["mb_per_speaker_marginal"] = round(slope, 3)
    if split is not None:
        with_p = next((r for r in runs if r["speakers"] == split["speakers"]), None)
        if with_p is not None:
            base = split["bridge_cpu_ms_per_speaker_s"]
            full = with_p["bridge_cpu_ms_per_speaker_s"]
            summary["split"] = {"speakers": split["speakers"], "no_analyzers_ms": base,
                                "prosody_ms": full, "prosody_share": round(1 - base / full, 3)}
    if other is not None:
        same = next((r for r in runs if r["speakers"] == other["speakers"]), None)
        if same is not None:
            summary["source_comparison"] = {
                "speakers": other["speakers"],
                "bridge_ms": {same["source"]: same["bridge_cpu_ms_per_speaker_s"],
                              other["source"]: other["bridge_cpu_ms_per_speaker_s"]},
                "source_ms": {same["source"]: same["source_cpu_ms_per_speaker_s"],
                              other["source"]: other["source_cpu_ms_per_speaker_s"]},
            }
    return summary


def print_summary(s: dict[str, Any], stopped: str | None, source: str) -> None:
    def verdict(ok: bool) -> str:
        return "PASS" if ok else "FAIL"

    print("\nSummary")
    if stopped:
        print(f"  {stopped}")
    print(f"  highest N kept up in real time: {s['highest_n_kept_up']} (largest tried "
          f"{s['largest_n_tried']}) = {s['kept_up_per_core_measured']} speakers per core on "
          f"{s['cores']} cores, source sharing the box")
    print(f"    target {s['target_per_core']} per core = {s['target_n_on_this_box']} here: "
          f"{verdict(s['pass_measured_per_core'])}")
    print(f"  CPU per speaker-second at N={s['implied_from_n']}: {s['cpu_ms_per_speaker_s']:.2f} ms"
          f" -> {s['implied_speakers_per_core']} speakers per core (bridge CPU alone; "
          f"{s['implied_speakers_per_core_with_source']} counting the source too): "
          f"{verdict(s['pass_implied_per_core'])} vs {s['target_per_core']}")
    if s["first_failure"]:
        f = s["first_failure"]
        print(f"  the bridge process used {s['bridge_cores_at_implied_n']:.2f} cores at "
              f"N={s['implied_from_n']} and {f['bridge_cores']:.2f} at N={f['speakers']} (which "
              f"fell behind: slowest speaker {f['frames_per_s_min']:.1f} frames/s, "
              f"{f['packets_lost']} RTP packets lost,\n    the source sending "
              f"{f['source_packets_per_s_per_speaker']:.1f} packets/s per speaker)", end="")
        if f["source_packets_per_s_per_speaker"] < KEPT_UP_RATE * FRAME_RATE:
            print(": the SOURCE fell behind too, so that N measures the source, not the bridge")
        elif f["bridge_cores"] >= 0.9:
            print(": one process runs its Python on one GIL and tops out near 1 core, whatever "
                  "the box has")
        else:
            print()
    marginal = s["mb_per_speaker_marginal"]
    print(f"  memory per speaker at N={s['implied_from_n']}: {s['mb_per_speaker']:.2f} MB "
          f"(marginal, slope over N>=8: {fmt(marginal, 2)} MB): "
          f"{verdict(s['pass_memory'])} vs < {TARGET_MB_PER_SPEAKER:.0f} MB")
    if "split" in s:
        sp = s["split"]
        print(f"  cost split at N={sp['speakers']}: receive+decode+resample+VAD+stress "
              f"(analyzers=[]) {sp['no_analyzers_ms']:.2f} ms/spk-s, with prosody "
              f"{sp['prosody_ms']:.2f} ms/spk-s -> prosody {100 * sp['prosody_share']:.0f} %")
    if "source_comparison" in s:
        c = s["source_comparison"]
        bm = ", ".join(f"{k} source {v:.2f}" for k, v in c["bridge_ms"].items())
        sm = ", ".join(f"{k} {v:.2f}" for k, v in c["source_ms"].items())
        print(f"  same N={c['speakers']} with either source: bridge ms/spk-s {bm}; the source's "
              f"own ms/spk-s {sm}")
    work = ("N MediaPlayer threads + RTP/SRTP sending of pre-encoded Opus" if source == "opus"
            else "N MediaPlayer threads decoding FLAC + Opus encoding every track")
    print(f"  NOTE: the media source ({work}) runs on the same machine and competes with the "
          "bridge\n  for the cores (its CPU is the 'source CPU s' column); these figures "
          "understate the bridge's capacity on a dedicated host.")


def emotion_checkpoint(which: str, directory: Path) -> str:
    """``base``: a random-initialised wav2vec2-base classifier (4 emotions) built into
    ``directory`` (bench_pipeline's builder); else the checkpoint directory given."""
    if which != "base":
        return str(Path(which).resolve())
    sys.path.insert(0, str(Path(__file__).parent))
    from bench_pipeline import build_model

    return str(build_model(directory / "wav2vec2-base-random"))


def orchestrate(args: argparse.Namespace) -> int:
    cores = os.cpu_count() or 1
    speakers = ([int(x) for x in args.speakers.split(",")] if args.speakers
                else list(QUICK_SPEAKERS if args.quick else FULL_SPEAKERS))
    other_mode = "encode" if args.source == "opus" else "opus"
    compare = 0 if args.quick else (16 if args.compare_encode is None else args.compare_encode)
    emotion_words = f", 'emotion' ({args.emotion})" if args.emotion else ""
    print(f"affect-bridge live benchmark: Python {platform.python_version()}, {cores} cores, "
          f"{platform.machine()}; analyzers=['prosody'{emotion_words}]; "
          f"N={speakers}; {args.per_call} speakers "
          f"per WHEP session; window {args.seconds:.0f} s after {args.settle:.0f} s settling; "
          f"fresh source + bridge process per N; source: {SOURCE_WORDS[args.source]}; all "
          f"traffic on {LOOPBACK}", flush=True)
    children = Children()
    runs: list[dict[str, Any]] = []
    extra: list[dict[str, Any]] = []  # context rows: cost split, the other source
    split: dict[str, Any] | None = None
    other: dict[str, Any] | None = None
    profile: dict[str, Any] | None = None
    stopped: str | None = None
    errors: list[str] = []
    with tempfile.TemporaryDirectory(prefix="bench-live-") as tmp:
        logs = Path(tmp)
        opus: list[Path] = []
        if args.source == "opus" or compare:
            opus = build_opus(logs, FLOW_TIMEOUT_S + args.settle + args.seconds + 60)
        main_analyzers = "prosody"
        if args.emotion:
            args.emotion_model = emotion_checkpoint(args.emotion, logs)
            main_analyzers = "prosody,emotion"

        def attempt(label: str, n: int, **kw: Any) -> dict[str, Any] | None:
            print(f"  N={n}{label} ...", end=" ", flush=True)
            kw.setdefault("source_mode", args.source)
            kw.setdefault("analyzers", main_analyzers)
            try:
                r = run_one(children, logs, n, args, opus, **kw)
            except RuntimeError as exc:
                print("failed")
                errors.append(f"N={n}{label}: {exc}")
                return None
            print(f"{r['bridge_cpu_ms_per_speaker_s']:.2f} ms/spk-s, frames/s min "
                  f"{r['frames_per_s_min']:.1f}, dropped {r['dropped_windows']}, lag p99 "
                  f"{r['loop_lag']['p99_ms']:.0f} ms"
                  + (f", emotion {r['emotion']['inferences']} inferences, "
                     f"{r['emotion']['dropped']} dropped, latency p50 "
                     f"{r['emotion']['latency_p50_s']} s" if r.get("emotion") else "")
                  + f": {'kept up' if r['kept_up'] else 'NOT kept up'}",
                  flush=True)
            return r

        try:
            for n in speakers:
                r = attempt("", n)
                if r is None:
                    stopped = f"stopped after N={n}: the run failed (see below); larger N skipped"
                    break
                runs.append(r)
                if not r["kept_up"] and not args.keep_going and n != speakers[-1]:
                    stopped = (f"stopped after N={n}: it did not keep up in real time; larger N "
                               f"({', '.join(str(x) for x in speakers if x > n)}) skipped")
                    break
            if args.split and not args.quick:
                split = attempt(", analyzers=[] (cost split)", args.split_n, analyzers="")
            if compare:
                other = attempt(f", {other_mode} source (comparison)", compare,
                                source_mode=other_mode)
            if args.profile:
                profile = attempt(", cProfile on the bridge's main thread", args.profile,
                                  profile=True)
        finally:
            children.kill_all()
    extra = [r for r in (split, other) if r is not None]
    if not runs:
        print("\nno run completed", file=sys.stderr)
        for e in errors:
            print(e, file=sys.stderr)
        return 1
    print()
    print_table(runs + extra)
    print_details(runs + extra)
    summary = summarize(runs, split, other, cores)
    print_summary(summary, stopped, args.source)
    for e in errors:
        print(f"\nERROR {e}")
    if profile is not None:
        print(f"\ncProfile of the bridge's main thread (event loop) at N={profile['speakers']} over "
              "the window, in main-thread\nCPU seconds (other threads not profiled; the profiler "
              "slows the loop):")
        print(profile["profile_main_thread"])
    if args.json:
        doc = {"machine": {"cores": cores, "python": platform.python_version(),
                           "platform": platform.platform()},
               "settings": {"speakers": speakers, "seconds": args.seconds, "settle": args.settle,
                            "per_call": args.per_call, "quick": args.quick, "source": args.source,
                            "kept_up_rule": {"frames_per_s_min": KEPT_UP_RATE * FRAME_RATE,
                                             "dropped_windows": 0,
                                             "loop_lag_p99_ms_below": KEPT_UP_LAG_MS}},
               "runs": runs, "split": split, "other_source": other, "summary": summary,
               "stopped": stopped, "errors": errors, "profile": profile}
        Path(args.json).write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
        print(f"\nJSON written to {args.json}")
    return 0 if not errors else 1


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--quick", action="store_true", help="N=1,16,64, 8 s windows, no cost split")
    p.add_argument("--json", metavar="OUT.json", help="write every figure here")
    p.add_argument("--speakers", help="comma-separated N list (default 1,8,16,32,48,64)")
    p.add_argument("--seconds", type=float, help="measurement window (default 20, 8 --quick)")
    p.add_argument("--per-call", type=int, default=8, help="speakers per WHEP session (8)")
    p.add_argument("--no-split", dest="split", action="store_false",
                   help="skip the analyzers=[] run that separates prosody's share")
    p.add_argument("--split-n", type=int, default=16, help="N of the analyzers=[] run (16)")
    p.add_argument("--profile", type=int, metavar="N", default=0,
                   help="also run N once with cProfile on the bridge's main thread")
    p.add_argument("--source", choices=("opus", "encode"), default="opus",
                   help="opus (default): the source sends pre-encoded Opus (cheap); encode: the "
                        "demo's source as is, decoding and Opus-encoding every track live")
    p.add_argument("--compare-encode", type=int, metavar="N", default=None,
                   help="also run N once with the other source (default 16; 0: skip; not "
                        "with --quick)")
    p.add_argument("--keep-going", action="store_true",
                   help="do not skip larger N after one fails to keep up")
    p.add_argument("--workers", metavar="W,W", help="measure `affect-bridge run --workers W` "
                   "as a whole (control API joins, /metrics, process-tree CPU and memory) for "
                   "each W: the largest N of --speakers kept up, side by side")
    # Internal: the children.
    p.add_argument("--_source", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--_bridge", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--_parent", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--_source-pid", dest="source_pid", type=int, help=argparse.SUPPRESS)
    p.add_argument("--_source-whep", dest="source_whep", help=argparse.SUPPRESS)
    p.add_argument("--_source-stats", dest="source_stats", help=argparse.SUPPRESS)
    p.add_argument("--_opus", dest="opus", nargs="*", help=argparse.SUPPRESS)
    p.add_argument("--_analyzers", dest="analyzers", default="prosody", help=argparse.SUPPRESS)
    p.add_argument("--_emotion-model", dest="emotion_model", help=argparse.SUPPRESS)
    p.add_argument("--emotion", metavar="MODEL",
                   help="with the emotion model on: a checkpoint directory, or 'base' for a "
                        "random-initialised wav2vec2-base classifier built here (in-process "
                        "path only)")
    p.add_argument("--remote", action="store_true",
                   help="with --emotion and --workers: the model exported (export-model) and "
                        "served by a real MLServer on loopback (.venv-serving), the service "
                        "with [emotion] backend = \"remote\"; the server's CPU is reported "
                        "apart")
    p.add_argument("--remote-threads", type=int, default=1,
                   help="the server's torch threads (1)")
    p.add_argument("--remote-precision", default="fp32", choices=("fp32", "bf16", "bf16+matmul"),
                   help="the exported model's precision (fp32; bf16 where native)")
    p.add_argument("--_settle", dest="settle", type=float, help=argparse.SUPPRESS)
    p.add_argument("--_profile", dest="profile_child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.seconds is None:
        args.seconds = 8.0 if args.quick else 20.0
    if args.settle is None:
        args.settle = 3.0 if args.quick else 5.0
    if args._source or args._bridge:
        import logging

        logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
        die_with_parent(args._parent)
    if args._source:
        asyncio.run(source_main(int(args.speakers), args.opus or []))
        return 0
    if args._bridge:
        args.profile = args.profile_child
        asyncio.run(bridge_main(args))
        return 0
    if args.per_call < 1:
        p.error("--per-call must be at least 1")

    def on_term(signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signum)  # unwinds through the finally that kills the children

    signal.signal(signal.SIGTERM, on_term)
    if args.workers:
        return orchestrate_workers(args)
    return orchestrate(args)


if __name__ == "__main__":
    sys.exit(main())
