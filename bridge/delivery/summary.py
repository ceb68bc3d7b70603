"""Per-speaker state folded from the event stream, and the summaries built on it.

:class:`SpeakerState` is the one fold of a speaker's events: its :meth:`~SpeakerState.apply`
takes each event (and the ``SpeechHeard`` statistics the pipeline reports) and keeps the
speaker's latest stress index, emotion estimate, spikes, open spike, idle flag, speech seconds,
last offset and why it left. Whoever follows speakers holds one per speaker: the Prometheus sink
(its per-speaker series), the worker pool (its mirror of the workers' calls), and
:class:`SpeakerSummaries`.

One :class:`SpeakerSummaries` keeps a :class:`SpeakerSummary` per speaker (its state, plus what
a summary adds on top: the stress series, spike spans and dominant emotion) for whoever reads
events and wants each speaker at a glance: ``analyze`` and the demo (the table and report printed
at the end) and the console's live table (the latest state while the call runs). Only events
reach it, so it summarises a live call and a recording alike.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from bridge import events as ev
from bridge import stats

__all__ = ["SpeakerState", "SpeakerSummaries", "SpeakerSummary"]


@dataclass(slots=True)
class SpeakerState:
    """One speaker as its events tell it, updated by :meth:`apply` alone."""

    info: ev.SpeakerInfo
    #: The latest ``affect.sample``'s stress index and whether the baseline was still learned.
    index: float | None = None
    calibrating: bool = True
    #: The latest emotion estimate (a sample without one leaves it standing): a categorical
    #: model's probabilities, arousal and valence, or a dimensional model's arousal, valence and
    #: maybe dominance.
    emotion: dict[str, float] | None = None
    arousal: float | None = None
    valence: float | None = None
    dominance: float | None = None
    #: Voiced seconds: summed from ``SpeechHeard`` statistics, then ``speaker.left``'s total.
    speech_s: float = 0.0
    #: Spikes started; ``speaker.left``'s count (the analysis's own) once the speaker has left.
    spikes: int = 0
    #: The ``stress.spike.started`` data of the spike still open, if any.
    open_spike: ev.SpikeStartedData | None = None
    idle: bool = False
    #: The latest ``offset_s`` of the speaker's events (call time).
    last_offset_s: float = 0.0
    #: Why the speaker left (``speaker.left``'s reason); None while present.
    left: str | None = None

    @property
    def in_spike(self) -> bool:
        return self.open_spike is not None

    def apply(self, item: ev.Event | stats.SpeechHeard) -> None:
        """Fold in one of this speaker's events, or voiced seconds it added."""
        match item:
            case stats.SpeechHeard(seconds=seconds):
                self.speech_s += seconds
                return
            case ev.AffectSample(data=d):
                self.index, self.calibrating = d.stress.index, d.stress.calibrating
                if d.emotion is not None or any(
                        v is not None for v in (d.arousal, d.valence, d.dominance)):
                    self.emotion, self.arousal, self.valence, self.dominance = (
                        d.emotion, d.arousal, d.valence, d.dominance)
            case ev.SpikeStarted(data=d):
                self.spikes += 1
                self.open_spike = d
            case ev.SpikeEnded():
                self.open_spike = None
            case ev.SpeakerIdle():
                self.idle = True
            case ev.SpeakerResumed():
                self.idle = False
            case ev.SpeakerLeft(data=d):
                self.left = d.reason
                self.speech_s, self.spikes = d.speech_s, d.spikes
        self.last_offset_s = max(self.last_offset_s, item.data.offset_s)

    def closing_events(self, call: ev.CallInfo, reason: str,
                       ) -> list[ev.SpikeEnded | ev.SpeakerLeft]:
        """The events that close this speaker when it vanished without them (its worker died):
        the open spike's ``stress.spike.ended`` (reason ``stream ended``), if any, then
        ``speaker.left`` (``reason``), both at the last offset heard."""
        at = round(self.last_offset_s, 3)
        out: list[ev.SpikeEnded | ev.SpeakerLeft] = []
        if self.open_spike is not None:
            out.append(ev.spike_ended(call, self.info, self.open_spike, offset_s=at,
                                      duration_s=max(0.0, at - self.open_spike.started_s),
                                      reason="stream ended"))
        out.append(ev.speaker_left(call, self.info, offset_s=at, reason=reason,
                                   speech_s=self.speech_s, spikes=self.spikes))
        return out


@dataclass
class SpeakerSummary:
    """One speaker: ``speaker`` is the name shown, ``source`` where the audio came from,
    ``state`` the speaker now (the console's live table)."""

    speaker: str
    source: str
    state: SpeakerState
    audio_s: float = 0.0
    #: Mean and peak stress index over the speaker's samples, known once the speaker has left
    #: (and only where the series is kept).
    mean_stress: float | None = None
    peak_stress: float | None = None
    #: The emotion with the largest summed probability so far.
    dominant_emotion: str | None = None
    error: str | None = None
    # For the HTML report: (offset_s, index, arousal, calibrating), and (start, end) of spikes.
    series: list[tuple[float, float, float | None, bool]] = field(default_factory=list)
    spike_spans: list[tuple[float, float | None]] = field(default_factory=list)
    emotion_totals: dict[str, float] = field(default_factory=dict)

    @property
    def speech_s(self) -> float:
        """Voiced seconds, reported by ``speaker.left`` (0 until then)."""
        return self.state.speech_s

    @property
    def spikes(self) -> int:
        """Spikes started; the analysis's own count once the speaker has left."""
        return self.state.spikes

    def apply(self, event: ev.Event, *, keep_series: bool) -> None:
        """Fold in one of this speaker's events: its state, then what the summary adds."""
        self.state.apply(event)
        match event:
            case ev.AffectSample(data=d):
                if keep_series:
                    self.series.append((d.offset_s, d.stress.index, d.arousal,
                                        d.stress.calibrating))
                for label, p in (d.emotion or {}).items():
                    self.emotion_totals[label] = self.emotion_totals.get(label, 0.0) + p
                if self.emotion_totals:
                    self.dominant_emotion = max(self.emotion_totals,
                                                key=self.emotion_totals.__getitem__)
            case ev.SpikeStarted(data=d):
                if keep_series:
                    self.spike_spans.append((d.started_s, None))
            case ev.SpikeEnded(data=d):
                if self.spike_spans:
                    self.spike_spans[-1] = (self.spike_spans[-1][0], d.offset_s)
            case ev.SpeakerLeft():
                indices = [x[1] for x in self.series]
                if indices:
                    self.mean_stress = sum(indices) / len(indices)
                    self.peak_stress = max(indices)


class SpeakerSummaries:
    """Summaries by speaker id, in the order the speakers were added (:meth:`add`) or first
    seen: a speaker not added before its first event gets a summary then, named by its display
    name. ``keep_series`` False keeps no per-sample series or spike spans (nor, so, mean and
    peak stress): a live table that may run for days keeps constant memory per speaker."""

    def __init__(self, *, keep_series: bool = True) -> None:
        self._by_id: dict[str, SpeakerSummary] = {}
        self.keep_series = keep_series

    def __getitem__(self, speaker_id: str) -> SpeakerSummary:
        return self._by_id[speaker_id]

    def __iter__(self) -> Iterator[SpeakerSummary]:
        return iter(self._by_id.values())

    def values(self) -> list[SpeakerSummary]:
        """Every summary, in the order the speakers were first seen (or added)."""
        return list(self._by_id.values())

    def add(self, info: ev.SpeakerInfo, *, name: str | None = None,
            source: str | None = None) -> SpeakerSummary:
        """Summarise ``info`` from now on (``analyze`` adds its files' speakers before any
        event): shown as ``name`` (default: its display name, else its id), from ``source``
        (default: its id)."""
        s = self._by_id[info.id] = SpeakerSummary(name or info.display or info.id,
                                                  source or info.id, SpeakerState(info))
        return s

    def apply(self, event: ev.Event) -> None:
        """Fold one event in; events without a speaker are ignored."""
        speaker = event.speaker
        if speaker is None:
            return
        s = self._by_id.get(speaker.id) or self.add(speaker)
        s.apply(event, keep_series=self.keep_series)
