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
from typing import IO, Any

from bridge.analyze import describe
from bridge.safe_text import terminal_safe
from bridge.summary import SpeakerSummaries

__all__ = ["ConsoleSink"]


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
        self._speakers.record(event)
        line = describe(event)
        if line is not None:
            if self.live:
                self._notes = [*self._notes, line][-6:]
            else:
                print(line, file=self.stream, flush=True)

    def render(self) -> str:
        lines = [f"{'speaker':<16} {'stress':>6}  {'':<20} {'state':<12} {'spikes':>6} "
                 f"{'emotion':<9}"]
        for s in self._speakers:
            name = terminal_safe(s.speaker)
            index = "-" if s.latest_index is None else f"{s.latest_index:.2f}"
            bar = "" if s.latest_index is None else "#" * round(s.latest_index * 20)
            state = ("left" if s.left else "idle" if s.idle else "SPIKE" if s.in_spike
                     else "calibrating" if s.calibrating else "listening")
            lines.append(f"{name[:16]:<16} {index:>6}  {bar:<20} {state:<12} "
                         f"{s.spikes:>6} {s.dominant_emotion or '-':<9}")
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
