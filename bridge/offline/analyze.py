"""``affect-bridge analyze``: the analysis live calls get (one shared :class:`AnalysisEngine`, a
:class:`SpeakerAnalysis` per speaker) over recordings, one speaker per file or channel; the
per-speaker summaries (bridge/delivery/summary.py) are printed as a table at the end."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from analyzers.types import AudioChunk
from bridge import events as ev
from bridge.config import Settings
from bridge.delivery.summary import SpeakerSummaries, SpeakerSummary
from bridge.pipeline.analysis import AnalysisEngine, SpeakerAnalysis
from bridge.pipeline.audio import AudioDecodeError, channel_count, read_file, require_audio
from bridge.safe_text import terminal_safe

__all__ = ["AnalyzeResult", "SpeakerSummary", "analyze_files", "format_table",
           "plan_sources", "print_errors"]

log = logging.getLogger(__name__)

READ_S = 1.0  # audio decoded per executor call


@dataclass
class AnalyzeResult:
    speakers: list[SpeakerSummary]
    degraded: dict[str, str]

    @property
    def failed(self) -> bool:
        return any(s.error for s in self.speakers)


@dataclass(frozen=True)
class _Source:
    path: Path
    channel: int | None  # None: the file mixed to mono
    speaker_id: str
    display: str


def plan_sources(paths: list[Path], per: str) -> list[_Source]:
    """Check every input before any analysis starts. Raises AudioDecodeError (one line)."""
    sources: list[_Source] = []
    seen: set[str] = set()
    for path in paths:
        require_audio(path)
        channels = channel_count(path)
        stem = path.stem or path.name
        base = stem
        n = 2
        while base in seen:
            base = f"{stem}-{n}"
            n += 1
        seen.add(base)
        if per == "channel":
            sources += [_Source(path, c, f"{base}:ch{c}", f"{path.name} channel {c}")
                        for c in range(channels)]
        else:
            sources.append(_Source(path, None, base, path.name))
    return sources


async def analyze_files(
    paths: list[Path],
    settings: Settings,
    *,
    per: str = "file",
    out: IO[str] | None = None,
    registry: dict[str, type] | None = None,
    on_event: Callable[[Any], None] | None = None,
) -> AnalyzeResult:
    """Analyse ``paths`` concurrently through the shared engine (``per``: "file" mixes each
    file to one speaker, "channel" makes each channel one); write JSON lines to ``out`` and hand
    each event to ``on_event``. Returns each speaker's summary; a file that fails to decode is
    an ``error`` in its speakers' summaries, the other files go on."""
    sources = plan_sources(paths, per)
    call = ev.CallInfo(id="analyze:" + (paths[0].stem if paths else "none"), connector="file",
                       room=None)
    summaries = SpeakerSummaries()
    for s in sources:  # in the order given, each shown by its speaker id
        summaries.add(ev.SpeakerInfo(id=s.speaker_id, display=s.display), name=s.speaker_id,
                      source=s.display)

    async def emit(event: Any) -> None:
        summaries.apply(event)
        if out is not None:
            out.write(event.model_dump_json() + "\n")
        if on_event is not None:
            on_event(event)

    engine = AnalysisEngine(settings, registry)
    await engine.start()
    try:
        await emit(ev.CallJoined(call=call, data=ev.CallJoinedData()))
        for event in engine.degraded_events(call):
            await emit(event)
        by_path: dict[Path, list[_Source]] = {}
        for src in sources:
            by_path.setdefault(src.path, []).append(src)
        await asyncio.gather(*(
            _run_file(engine, call, path, srcs, emit, summaries, per == "channel")
            for path, srcs in by_path.items()
        ))
        end = max((s.audio_s for s in summaries.values()), default=0.0)
        await emit(ev.CallLeft(call=call, data=ev.CallLeftData(offset_s=round(end, 3),
                                                              reason="end of input")))
    finally:
        await engine.aclose()
    return AnalyzeResult(summaries.values(), dict(engine.degraded))


async def _run_file(
    engine: AnalysisEngine,
    call: ev.CallInfo,
    path: Path,
    sources: list[_Source],
    emit: Any,
    summaries: SpeakerSummaries,
    per_channel: bool,
) -> None:
    speakers = [
        SpeakerAnalysis(engine, call, ev.SpeakerInfo(id=s.speaker_id, display=s.display), emit,
                        offline=True)
        for s in sources
    ]
    for sp in speakers:
        await sp.start()
    loop = asyncio.get_running_loop()
    reader = _batched(read_file(path, per_channel=per_channel))
    reason = "end of file"
    try:
        while True:
            batch = await loop.run_in_executor(None, next, reader, None)
            if batch is None:
                break
            for sp, chunk in zip(speakers, batch, strict=False):
                await sp.feed(chunk)
    except AudioDecodeError as exc:
        reason = "decode error"
        for s in sources:
            summaries[s.speaker_id].error = str(exc)
    except Exception as exc:  # a bug hit by one file must not take the other files down
        log.exception("%s: analysis failed", path)
        reason = "internal error"
        for s in sources:
            summaries[s.speaker_id].error = f"{path}: internal error: {exc}"
    finally:
        reader.close()
        for sp, s in zip(speakers, sources, strict=True):
            await sp.finish(reason)
            summaries[s.speaker_id].audio_s = sp.windower.audio_s


def _batched(frames: Iterator[list[AudioChunk]]) -> Generator[list[AudioChunk], None, None]:
    """Decoded frames joined into about READ_S seconds per channel, so each executor hop, and
    each speaker's feed (its VAD submission, its windower pass), carries real work. A file's
    frames are contiguous, and the VAD and the windower cut frames and windows on their own
    grid, so the events are the same as frame by frame (tests/test_golden.py)."""
    batch: list[list[AudioChunk]] = []
    seconds = 0.0
    try:
        for chunks in frames:
            batch.append(chunks)
            seconds += chunks[0].duration_s
            if seconds >= READ_S:
                yield _joined(batch)
                batch, seconds = [], 0.0
        if batch:
            yield _joined(batch)
    finally:
        close = getattr(frames, "close", None)
        if close is not None:
            close()


def _joined(batch: list[list[AudioChunk]]) -> list[AudioChunk]:
    """Consecutive frames (each one chunk per channel) as one chunk per channel."""
    return [AudioChunk(np.concatenate([chunks[i].samples for chunks in batch]), batch[0][i].start_s)
            for i in range(len(batch[0]))]


def format_table(result: AnalyzeResult) -> str:
    head = ("speaker", "speech s", "mean stress", "peak stress", "spikes", "emotion")
    rows = [head]
    for s in result.speakers:
        rows.append((
            terminal_safe(s.speaker) + (" (error)" if s.error else ""),
            f"{s.speech_s:.1f}",
            "-" if s.mean_stress is None else f"{s.mean_stress:.2f}",
            "-" if s.peak_stress is None else f"{s.peak_stress:.2f}",
            str(s.spikes),
            s.dominant_emotion or "-",
        ))
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in
                       enumerate(zip(r, widths, strict=True))) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def print_errors(result: AnalyzeResult, stream: IO[str] = sys.stderr) -> None:
    for s in result.speakers:
        if s.error:
            print(f"affect-bridge: error: {s.error}", file=stream)
