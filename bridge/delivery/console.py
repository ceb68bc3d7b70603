"""Console sink: JSON lines, or a live table of speakers redrawn in place on a terminal.

The table shows each speaker's latest stress index (with a bar), its state (calibrating the
baseline, listening, in a spike, idle, left), spikes so far and dominant emotion, and below it
the latest event lines (an ``analyzer.degraded`` line stays there, first, for as long as the table). Where
stdout is not a terminal, the table mode prints one readable line per notable event instead.

While the table is on screen, log records that would be written to the terminal (the logging
handlers whose stream is a TTY) are held and printed above the table at its next redraw, so a
warning never lands across it. The handlers get their streams back on ``aclose``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import sys
import threading
from typing import IO, Any

from bridge import events as ev
from bridge.delivery.summary import SpeakerSummaries
from bridge.safe_text import terminal_safe

__all__ = ["ConsoleSink"]



def describe(event: Any) -> str | None:
    """One human line for the events a person watching wants to see, else None."""
    who = terminal_safe(event.speaker.display or event.speaker.id) if event.speaker else ""
    d = event.data
    if isinstance(event, ev.SpeakerJoined):
        return f"{d.offset_s:7.1f}s  {who} joined"
    if isinstance(event, ev.SpikeStarted):
        return (f"{d.offset_s:7.1f}s  {who}: STRESS SPIKE started at {d.started_s:.1f}s "
                f"(index {d.index:.2f}; {', '.join(d.components)})")
    if isinstance(event, ev.SpikeEnded):
        return f"{d.offset_s:7.1f}s  {who}: spike ended after {d.duration_s:.1f}s (peak {d.peak:.2f})"
    if isinstance(event, ev.SpeakerIdle):
        return f"{d.offset_s:7.1f}s  {who} idle (no audio for {d.silent_s:.0f}s)"
    if isinstance(event, ev.SpeakerResumed):
        return f"{d.offset_s:7.1f}s  {who} back after {d.idle_s:.0f}s"
    if isinstance(event, ev.SpeakerLeft):
        return f"{d.offset_s:7.1f}s  {who} left ({d.speech_s:.1f}s of speech, {d.spikes} spikes)"
    if isinstance(event, ev.AnalyzerDegraded):
        return f"{d.offset_s:7.1f}s  analyzer {d.analyzer} unavailable: {d.reason}"
    return None


class ConsoleSink:
    """``mode``: "jsonl" (every event, one JSON object per line) or "table"."""

    def __init__(self, mode: str = "table", stream: IO[str] | None = None,
                 refresh_s: float = 1.0) -> None:
        if mode not in ("jsonl", "table"):
            raise ValueError(f"console mode must be jsonl or table, got {mode!r}")
        self.mode = mode
        self.stream = stream or sys.stdout
        self.live = mode == "table" and self.stream.isatty()
        self._refresh_s = refresh_s
        self._speakers = SpeakerSummaries(keep_series=False)
        self._notes: list[str] = []
        self._degraded: dict[str, str] = {}  # analyzer -> its line, pinned above the notes
        self._task: asyncio.Task[None] | None = None
        self._drawn_lines = 0
        self._log_lines = _LogLines()
        self._diverted: list[tuple[logging.StreamHandler[Any], Any]] = []

    async def start(self) -> None:
        """On a terminal: draw the table from now on, with log lines printed above it."""
        if self.live and self._task is None:
            self._divert_logging()
            self._task = asyncio.create_task(self._redraw(), name="console-table")

    async def emit(self, event: Any) -> None:
        if self.mode == "jsonl":
            self.stream.write(event.model_dump_json() + "\n")
            self.stream.flush()
            return
        self._speakers.apply(event)
        line = describe(event)
        if line is not None:
            if self.live and isinstance(event, ev.AnalyzerDegraded):
                self._degraded[event.data.analyzer] = line
            elif self.live:
                self._notes = [*self._notes, line][-6:]
            else:
                print(line, file=self.stream, flush=True)

    def render(self) -> str:
        lines = [f"{'speaker':<16} {'stress':>6}  {'':<20} {'state':<12} {'spikes':>6} "
                 f"{'emotion':<9}"]
        for summary in self._speakers:
            name = terminal_safe(summary.speaker)
            s = summary.state
            index = "-" if s.index is None else f"{s.index:.2f}"
            bar = "" if s.index is None else "#" * round(s.index * 20)
            state = ("left" if s.left else "idle" if s.idle else "SPIKE" if s.in_spike
                     else "calibrating" if s.calibrating else "listening")
            lines.append(f"{name[:16]:<16} {index:>6}  {bar:<20} {state:<12} "
                         f"{s.spikes:>6} {summary.dominant_emotion or '-':<9}")
        return "\n".join([*lines, "", *self._degraded.values(), *self._notes])

    async def _redraw(self) -> None:
        while True:
            self._draw()
            await asyncio.sleep(self._refresh_s)

    def _draw(self) -> None:
        # Lines cut to the terminal's width: a wrapped line would throw off the redraw.
        width = max(20, shutil.get_terminal_size().columns - 1)
        text = "\n".join(line[:width] for line in self.render().splitlines())
        # Log lines held since the last frame go where that frame was, whole (they may wrap:
        # they are above the table, never moved over again); the table is drawn below them.
        above = "".join(terminal_safe(line, limit=sys.maxsize) + "\n"
                        for line in self._log_lines.take(partial=not self._diverted))
        # Move up over the previous frame and clear it, then draw the new one.
        prefix = f"\x1b[{self._drawn_lines}F\x1b[J" if self._drawn_lines else ""
        self.stream.write(prefix + above + text + "\n")
        self.stream.flush()
        self._drawn_lines = text.count("\n") + 1

    def _divert_logging(self) -> None:
        """Point every logging handler that writes to a terminal at the held log lines."""
        for handler in _terminal_handlers():
            self._diverted.append((handler, handler.setStream(self._log_lines)))

    def _restore_logging(self) -> None:
        for handler, stream in reversed(self._diverted):
            handler.setStream(stream)
        self._diverted = []

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
            self._restore_logging()  # records from here on go to the terminal again
            self._draw()  # the last frame, with the log lines still held above it


class _LogLines:
    """The stream of the diverted logging handlers: complete lines are held until the next
    frame takes them. Handlers write from any thread (executor threads, the inference thread)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lines: list[str] = []
        self._partial = ""

    def write(self, text: str) -> int:
        with self._lock:
            *done, self._partial = (self._partial + text).split("\n")
            self._lines.extend(done)
        return len(text)

    def flush(self) -> None:
        pass

    def take(self, *, partial: bool = False) -> list[str]:
        """The complete lines written so far (and, with ``partial``, an unfinished one)."""
        with self._lock:
            lines, self._lines = self._lines, []
            if partial and self._partial:
                lines.append(self._partial)
                self._partial = ""
        return lines


def _terminal_handlers() -> list[logging.StreamHandler[Any]]:
    """The logging handlers (of the root logger and every logger made so far) that write to a
    terminal; file handlers, and streams redirected to a file or a pipe, are left alone."""
    loggers = [logging.getLogger(), *(logger for logger in logging.Logger.manager.loggerDict.values()
                                      if isinstance(logger, logging.Logger))]
    found: dict[int, logging.StreamHandler[Any]] = {}
    for logger in loggers:
        for handler in logger.handlers:
            if (isinstance(handler, logging.StreamHandler)
                    and not isinstance(handler, logging.FileHandler)
                    and _isatty(handler.stream)):
                found.setdefault(id(handler), handler)
    return list(found.values())


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):  # no isatty, or a closed stream
        return False
