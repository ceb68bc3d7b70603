"""Console sink: JSON lines, or a live table of speakers redrawn in place on a terminal.

The table shows each speaker's latest stress index (with a bar), whether the baseline is still
being calibrated, spikes so far, speech seconds and dominant emotion. Where stdout is not a
terminal, the table mode prints one readable line per notable event instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import sys
from dataclasses import dataclass, field
from typing import IO, Any

from bridge import events as ev
from bridge.analyze import describe
from bridge.safe_text import terminal_safe

__all__ = ["ConsoleSink"]


@dataclass
class _Row:
    name: str
    index: float | None = None
    calibrating: bool = True
    in_spike: bool = False
    spikes: int = 0
    speech_s: float = 0.0
    emotion: str | None = None
    left: str | None = None
    idle: bool = False
    emotion_totals: dict[str, float] = field(default_factory=dict)


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
        self._rows: dict[str, _Row] = {}
        self._notes: list[str] = []
        self._task: asyncio.Task[None] | None = None
        self._drawn_lines = 0

    async def start(self) -> None:
        if self.live:
            self._task = asyncio.create_task(self._redraw(), name="console-table")

    async def emit(self, event: Any) -> None:
        if self.mode == "jsonl":
            self.stream.write(event.model_dump_json() + "\n")
            self.stream.flush()
            return
        self._update(event)
        line = describe(event)
        if line is not None:
            if self.live:
                self._notes = [*self._notes, line][-6:]
            else:
                print(line, file=self.stream, flush=True)

    def _update(self, event: Any) -> None:
        if event.speaker is None:
            return
        row = self._rows.setdefault(event.speaker.id,
                                    _Row(terminal_safe(event.speaker.display or event.speaker.id)))
        d = event.data
        if isinstance(event, ev.AffectSample):
            row.index = d.stress.index
            row.calibrating = d.stress.calibrating
            for label, p in (d.emotion or {}).items():
                row.emotion_totals[label] = row.emotion_totals.get(label, 0.0) + p
            if row.emotion_totals:
                row.emotion = max(row.emotion_totals, key=row.emotion_totals.__getitem__)
        elif isinstance(event, ev.SpikeStarted):
            row.in_spike = True
            row.spikes += 1
        elif isinstance(event, ev.SpikeEnded):
            row.in_spike = False
        elif isinstance(event, ev.SpeakerIdle | ev.SpeakerResumed):
            row.idle = isinstance(event, ev.SpeakerIdle)
        elif isinstance(event, ev.SpeakerLeft):
            row.left = d.reason
            row.speech_s = d.speech_s

    def render(self) -> str:
        lines = [f"{'speaker':<16} {'stress':>6}  {'':<20} {'state':<12} {'spikes':>6} "
                 f"{'emotion':<9}"]
        for row in self._rows.values():
            index = "-" if row.index is None else f"{row.index:.2f}"
            bar = "" if row.index is None else "#" * round(row.index * 20)
            state = ("left" if row.left else "idle" if row.idle else "SPIKE" if row.in_spike
                     else "calibrating" if row.calibrating else "listening")
            lines.append(f"{row.name[:16]:<16} {index:>6}  {bar:<20} {state:<12} "
                         f"{row.spikes:>6} {row.emotion or '-':<9}")
        return "\n".join([*lines, "", *self._notes])

    async def _redraw(self) -> None:
        while True:
            self._draw()
            await asyncio.sleep(self._refresh_s)

    def _draw(self) -> None:
        # Lines cut to the terminal's width: a wrapped line would throw off the redraw.
        width = max(20, shutil.get_terminal_size().columns - 1)
        text = "\n".join(line[:width] for line in self.render().splitlines())
        # Move up over the previous frame and clear it, then draw the new one.
        prefix = f"\x1b[{self._drawn_lines}F\x1b[J" if self._drawn_lines else ""
        self.stream.write(prefix + text + "\n")
        self.stream.flush()
        self._drawn_lines = text.count("\n") + 1

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
            self._draw()
