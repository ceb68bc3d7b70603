"""Event envelope and payloads (pydantic v2, a tagged union on ``type``), and its JSON Schema.

The same JSON goes everywhere: webhook bodies, console lines, ``affect-bridge analyze`` output.
"""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

__all__ = [
    "AffectSample",
    "AnalyzerDegraded",
    "CallInfo",
    "CallJoined",
    "CallLeft",
    "Event",
    "EventData",
    "SpeakerIdle",
    "SpeakerInfo",
    "SpeakerJoined",
    "SpeakerLeft",
    "SpeakerResumed",
    "SpikeEnded",
    "SpikeStarted",
    "envelope_schema",
    "new_event_id",
    "parse_event",
    "speaker_left",
    "spike_ended",
]

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def new_event_id() -> str:
    """``evt_`` + a ULID: unique, sortable by creation time, stable across webhook retries."""
    value = (time.time_ns() // 1_000_000) << 80 | int.from_bytes(os.urandom(10), "big")
    chars = []
    for _ in range(26):
        chars.append(_CROCKFORD[value & 31])
        value >>= 5
    return "evt_" + "".join(reversed(chars))


def _now() -> datetime:
    return datetime.now(UTC)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CallInfo(_Model):
    id: str = Field(description="Stable call id, '<connector>:<room or session>'.")
    connector: str
    room: str | None = None


class SpeakerInfo(_Model):
    id: str = Field(description="Stable speaker id within the call.")
    display: str | None = None


class ProsodyData(_Model):
    f0_hz: float | None = Field(description="Median F0 of voiced frames, Hz.")
    f0_range_st: float | None = Field(description="F0 10th..90th percentile range, semitones.")
    jitter: float | None = Field(description="Local jitter, fraction.")
    shimmer: float | None = Field(description="Local shimmer, fraction.")
    hnr_db: float | None = Field(description="Harmonics-to-noise ratio, dB.")
    energy_db: float | None = Field(description="RMS level of speech, dBFS.")
    speech_rate: float | None = Field(description="Syllable nuclei per voiced second.")
    pause_ratio: float = Field(description="Fraction of the window without speech.")


class StressData(_Model):
    index: float = Field(ge=0, le=1, description="Relative vocal-stress indicator, 0..1: the "
                         "evidence accumulated over recent windows that this speaker's voice has "
                         "moved from their own baseline in stress-linked directions (a spike "
                         "starts at stress.on). Not a clinical or cortisol measure.")
    score: float | None = Field(None, description="This window's own fused score in baseline "
                                "z units (signed: negative is calmer than usual).")
    components: dict[str, float] = Field(description="Per-feature signed robust z-scores "
                                         "(positive: in the stressed direction).")
    calibrating: bool = Field(description="True while the speaker's baseline is being learned.")


class _SpeakerData(_Model):
    offset_s: float = Field(description="Seconds since the call (or recording) started.")


class CallJoinedData(_Model):
    offset_s: float = 0.0


class CallLeftData(_Model):
    offset_s: float
    reason: str


class SpeakerJoinedData(_SpeakerData):
    pass


class SpeakerLeftData(_SpeakerData):
    reason: str
    speech_s: float
    spikes: int


class SpeakerIdleData(_SpeakerData):
    silent_s: float = Field(description="Seconds since the speaker's last audio frame "
                            "(live.silence_timeout_s or more).")


class SpeakerResumedData(_SpeakerData):
    idle_s: float = Field(description="Seconds without audio frames before this one.")


class AffectSampleData(_SpeakerData):
    window_start_s: float
    window_end_s: float
    voiced_s: float
    emotion: dict[str, float] | None = Field(
        description="Canonical emotion -> probability; null when no emotion model is loaded, "
        "or before the speaker's first estimate (made once emotion_chunk_s of speech gathered)."
    )
    arousal: float | None = Field(description="-1 (calm) .. 1 (excited); null without an "
                                  "estimate. From the model itself or the labels: affect_source.")
    valence: float | None = Field(description="-1 (negative) .. 1 (positive); null without an "
                                  "estimate.")
    dominance: float | None = Field(None, description="-1 (submissive) .. 1 (dominant); only "
                                    "from a dimensional model that gives it, else null.")
    affect_source: Literal["model", "labels"] | None = Field(
        None, description="Where arousal/valence come from: 'model' (a dimensional model's own "
        "outputs, mapped linearly onto -1..1) or 'labels' (the categorical probabilities "
        "through the circumplex table); null without an estimate.")
    prosody: ProsodyData
    stress: StressData
    extra: dict[str, Any] = Field(default_factory=dict,
                                  description="Results of further analyzer plugins, by name.")


class SpikeStartedData(_SpeakerData):
    started_s: float
    index: float
    peak: float
    components: list[str] = Field(description="Main contributing features, strongest first.")


class SpikeEndedData(SpikeStartedData):
    duration_s: float
    reason: str = Field("recovered", description="recovered (the evidence fell below "
                        "stress.off), silence (no speech for stress.end_silence_s), or stream "
                        "ended (the speaker left or the recording ended).")


class AnalyzerDegradedData(_Model):
    offset_s: float = 0.0
    analyzer: str
    reason: str


class _Envelope(_Model):
    id: str = Field(default_factory=new_event_id)
    version: Literal[1] = 1
    time: datetime = Field(default_factory=_now)
    call: CallInfo | None = None
    speaker: SpeakerInfo | None = None


class CallJoined(_Envelope):
    type: Literal["call.joined"] = "call.joined"
    data: CallJoinedData


class CallLeft(_Envelope):
    type: Literal["call.left"] = "call.left"
    data: CallLeftData


class SpeakerJoined(_Envelope):
    type: Literal["speaker.joined"] = "speaker.joined"
    data: SpeakerJoinedData


class SpeakerLeft(_Envelope):
    type: Literal["speaker.left"] = "speaker.left"
    data: SpeakerLeftData


class SpeakerIdle(_Envelope):
    """No audio frames for ``live.silence_timeout_s``: the speaker stays, baseline kept."""

    type: Literal["speaker.idle"] = "speaker.idle"
    data: SpeakerIdleData


class SpeakerResumed(_Envelope):
    """Audio frames came again from an idle speaker: analysed again on the same timeline."""

    type: Literal["speaker.resumed"] = "speaker.resumed"
    data: SpeakerResumedData


class AffectSample(_Envelope):
    type: Literal["affect.sample"] = "affect.sample"
    data: AffectSampleData


class SpikeStarted(_Envelope):
    type: Literal["stress.spike.started"] = "stress.spike.started"
    data: SpikeStartedData


class SpikeEnded(_Envelope):
    type: Literal["stress.spike.ended"] = "stress.spike.ended"
    data: SpikeEndedData


class AnalyzerDegraded(_Envelope):
    type: Literal["analyzer.degraded"] = "analyzer.degraded"
    data: AnalyzerDegradedData


Event = Annotated[
    CallJoined | CallLeft | SpeakerJoined | SpeakerLeft | SpeakerIdle | SpeakerResumed
    | AffectSample | SpikeStarted | SpikeEnded | AnalyzerDegraded,
    Field(discriminator="type"),
]
EventData = (CallJoinedData | CallLeftData | SpeakerJoinedData | SpeakerLeftData
             | SpeakerIdleData | SpeakerResumedData | AffectSampleData | SpikeStartedData
             | SpikeEndedData | AnalyzerDegradedData)
EVENT_TYPES = ("call.joined", "call.left", "speaker.joined", "speaker.left", "speaker.idle",
               "speaker.resumed", "affect.sample",
               "stress.spike.started", "stress.spike.ended", "analyzer.degraded")

_ADAPTER: TypeAdapter[Any] = TypeAdapter(Event)


def spike_ended(call: CallInfo, speaker: SpeakerInfo, spike: SpikeStartedData, *,
                offset_s: float, duration_s: float, reason: str) -> SpikeEnded:
    """``stress.spike.ended`` for ``spike`` (its start, index, peak and components), at
    ``offset_s``; times rounded to the millisecond. The one way the analysis and the worker pool
    (closing the spike of a speaker whose worker vanished) build it."""
    data = spike.model_dump() | {"offset_s": round(offset_s, 3)}
    return SpikeEnded(call=call, speaker=speaker, data=SpikeEndedData(
        **data, duration_s=round(duration_s, 3), reason=reason))


def speaker_left(call: CallInfo, speaker: SpeakerInfo, *, offset_s: float, reason: str,
                 speech_s: float, spikes: int) -> SpeakerLeft:
    """``speaker.left`` at ``offset_s`` with the speaker's totals; times rounded to the
    millisecond. The one way the analysis and the worker pool build it."""
    return SpeakerLeft(call=call, speaker=speaker, data=SpeakerLeftData(
        offset_s=round(offset_s, 3), reason=reason, speech_s=round(speech_s, 3), spikes=spikes))


def parse_event(raw: str | bytes | dict[str, Any]) -> Any:
    """Validate one event (any type; JSON text, or its decoded object) back into its model."""
    if isinstance(raw, dict):
        return _ADAPTER.validate_python(raw)
    return _ADAPTER.validate_json(raw)


def envelope_schema() -> dict[str, Any]:
    """JSON Schema (2020-12) of the envelope: a oneOf over every event type with its ``data``."""
    schema = _ADAPTER.json_schema(mode="serialization")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "affect-bridge event"
    return schema
