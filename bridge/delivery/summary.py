"""Per-speaker summaries folded from the event stream.

One :class:`SpeakerSummaries` keeps them for whoever reads events and wants each speaker at a
glance: ``analyze`` and the demo (the table and report printed at the end) and the console's live
table (the latest state while the call runs). Only events reach it, so it summarises a live call
and a recording alike.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from bridge import events as ev

__all__ = ["SpeakerSummaries", "SpeakerSummary"]


@dataclass
class SpeakerSummary:
    """One speaker: ``speaker`` is the name shown, ``source`` where the audio came from."""

    speaker: str
    source: str
    audio_s: float = 0.0
    speech_s: float = 0.0
    #: Mean and peak stress index over the speaker's samples, known once the speaker has left
    #: (and only where the series is kept).
    mean_stress: float | None = None
    peak_stress: float | None = None
    spikes: int = 0
    #: The emotion with the largest summed probability so far.
    dominant_emotion: str | None = None
    error: str | None = None
    # For the HTML report: (offset_s, index, arousal, calibrating), and (start, end) of spikes.
    series: list[tuple[float, float, float | None, bool]] = field(default_factory=list)
    spike_spans: list[tuple[float, float | None]] = field(default_factory=list)
    emotion_totals: dict[str, float] = field(default_factory=dict)
    # The speaker now (the console's live table).
    latest_index: float | None = None
    calibrating: bool = True
    in_spike: bool = False
    idle: bool = False
    #: Why the speaker left (``speaker.left``'s reason); None while present.
    left: str | None = None


class SpeakerSummaries:
    """Summaries by speaker id. ``seed``: speakers known before their events (``analyze``'s
    files); any other speaker gets a summary at its first event, named by its display name.
    ``keep_series`` False keeps no per-sample series or spike spans (nor, so, mean and peak
    stress): a live table that may run for days keeps constant memory per speaker."""

    def __init__(self, seed: Mapping[str, SpeakerSummary] | None = None, *,
                 keep_series: bool = True) -> None:
        self._by_id: dict[str, SpeakerSummary] = dict(seed or {})
        self.keep_series = keep_series

    def __getitem__(self, speaker_id: str) -> SpeakerSummary:
        return self._by_id[speaker_id]

    def __iter__(self) -> Iterator[SpeakerSummary]:
        return iter(self._by_id.values())

    def __len__(self) -> int:
        return len(self._by_id)

    def values(self) -> list[SpeakerSummary]:
        """Every summary, in the order the speakers were first seen (or seeded)."""
        return list(self._by_id.values())

    def record(self, event: Any) -> None:
        """Fold one event in; events without a speaker are ignored."""
        speaker: ev.SpeakerInfo | None = event.speaker
        if speaker is None:
            return
        s = self._by_id.get(speaker.id)
        if s is None:
            s = self._by_id[speaker.id] = SpeakerSummary(speaker.display or speaker.id, speaker.id)
        data = event.data
        if isinstance(event, ev.AffectSample):
            s.latest_index, s.calibrating = data.stress.index, data.stress.calibrating
            if self.keep_series:
                s.series.append((data.offset_s, data.stress.index, data.arousal,
                                 data.stress.calibrating))
            for label, p in (data.emotion or {}).items():
                s.emotion_totals[label] = s.emotion_totals.get(label, 0.0) + p
            if s.emotion_totals:
                s.dominant_emotion = max(s.emotion_totals, key=s.emotion_totals.__getitem__)
        elif isinstance(event, ev.SpikeStarted):
            s.in_spike = True
            s.spikes += 1
            if self.keep_series:
                s.spike_spans.append((data.started_s, None))
        elif isinstance(event, ev.SpikeEnded):
            s.in_spike = False
            if s.spike_spans:
                s.spike_spans[-1] = (s.spike_spans[-1][0], data.offset_s)
        elif isinstance(event, ev.SpeakerIdle | ev.SpeakerResumed):
            s.idle = isinstance(event, ev.SpeakerIdle)
        elif isinstance(event, ev.SpeakerLeft):
            s.left = data.reason
            s.speech_s = data.speech_s
            s.spikes = data.spikes  # the analysis's own count is the one reported
            indices = [x[1] for x in s.series]
            if indices:
                s.mean_stress = sum(indices) / len(indices)
                s.peak_stress = max(indices)
