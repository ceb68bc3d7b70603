"""Typed statistics the pipeline and the webhook sink push out: what the metrics sink needs besides
events.

Events say what happened to a speaker (``affect.sample``, ``speaker.left``, ...); these say how
the machinery is doing (frames received, speech heard, work dropped, latency, inference
batches; webhook deliveries and the outbox's backlog, from the webhook sink). They are not part
of the public event schema: no webhook or console ever sees them. The pipeline (and the webhook
sink) calls a :data:`Record` it was constructed with; in one process that is the Prometheus
sink's ``record``, in a worker process it is the channel to the supervisor
(:mod:`bridge.workers.pool`). Nothing reads pipeline state for metrics, and no sink writes
another's metrics.

A ``Record`` must be cheap, must not raise, and must be safe to call from any thread (inference
batches are reported from the inference thread).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["AnalyzerState", "Dropped", "FramesReceived", "InferenceBatch", "OutboxPending",
           "Record", "RemoteFailure", "SpeechHeard", "Stat", "TaskFailed", "WebhookDelivery",
           "WebhookEndpoint", "WindowLatency", "WindowUnscored", "from_wire", "ignore",
           "to_wire"]


@dataclass(frozen=True, slots=True)
class FramesReceived:
    """Audio frames received (all speakers of a process, since the last report)."""

    n: int


@dataclass(frozen=True, slots=True)
class SpeechHeard:
    """Voiced seconds one speaker added since its last report."""

    call: str
    speaker: str
    seconds: float


@dataclass(frozen=True, slots=True)
class Dropped:
    """Work dropped at ``stage`` (a bounded queue was full)."""

    stage: str
    n: int = 1


@dataclass(frozen=True, slots=True)
class WindowLatency:
    """From the end of a speech window to its ``affect.sample`` being published."""

    seconds: float


@dataclass(frozen=True, slots=True)
class InferenceBatch:
    """One batch of a shared model (``analyzer``: emotion, semantic)."""

    analyzer: str
    size: int
    seconds: float


@dataclass(frozen=True, slots=True)
class RemoteFailure:
    """A request to the inference server failed (``analyzer``: emotion; ``reason``: unreachable
    (refused, reset or timed out), http_error (a status other than 200), bad_response (not the
    tensor asked for))."""

    analyzer: str
    reason: str


@dataclass(frozen=True, slots=True)
class AnalyzerState:
    """A loaded analyzer's model stopped answering (``reason``: why) or answers again
    (``reason`` empty): a remote inference server down and back. With ``--workers`` this is how
    the supervisor's ``/readyz`` learns of it."""

    analyzer: str
    reason: str = ""


@dataclass(frozen=True, slots=True)
class WindowUnscored:
    """A window came due but was not scored (``reason``: ``unvoiced``, too little periodic
    voicing in what the VAD passed: noise, not a voice)."""

    reason: str


@dataclass(frozen=True, slots=True)
class TaskFailed:
    """A task died of an unexpected exception (``task``: its kind, e.g. ``janus/supervise``, a
    bounded metric label; ``error``: one line, type and message; ``at``: ``time.time()``)."""

    task: str
    error: str
    at: float


@dataclass(frozen=True, slots=True)
class WebhookEndpoint:
    """A webhook endpoint is configured (``endpoint``: its label): its delivery counters are
    exported at 0 from the start."""

    endpoint: str


@dataclass(frozen=True, slots=True)
class WebhookDelivery:
    """One webhook delivery attempt: its endpoint's label, its ``outcome`` (delivered, retry,
    failed, disabled) and the request's ``seconds``."""

    endpoint: str
    outcome: str
    seconds: float


@dataclass(frozen=True, slots=True)
class OutboxPending:
    """Rows now waiting in the webhook outbox."""

    n: int


Stat = (FramesReceived | SpeechHeard | Dropped | WindowLatency | InferenceBatch | WindowUnscored
        | TaskFailed | WebhookEndpoint | WebhookDelivery | OutboxPending | RemoteFailure
        | AnalyzerState)
Record = Callable[[Stat], None]

_TYPES: dict[str, type[Any]] = {cls.__name__: cls for cls in
                                (FramesReceived, SpeechHeard, Dropped, WindowLatency,
                                 InferenceBatch, WindowUnscored, TaskFailed, WebhookEndpoint,
                                 WebhookDelivery, OutboxPending, RemoteFailure, AnalyzerState)}


def ignore(stat: Stat) -> None:
    """A ``Record`` for when nobody keeps statistics (``analyze``, tests)."""


def to_wire(stat: Stat) -> list[Any]:
    """``[type name, *fields]``: compact JSON for the worker channel."""
    return [type(stat).__name__, *(getattr(stat, f) for f in stat.__slots__)]


def from_wire(raw: list[Any]) -> Stat:
    """The inverse of :func:`to_wire`; raises ValueError for anything else."""
    if not raw or raw[0] not in _TYPES:
        raise ValueError(f"not a stat: {str(raw)[:80]}")
    try:
        stat: Stat = _TYPES[raw[0]](*raw[1:])
    except TypeError as exc:
        raise ValueError(f"bad {raw[0]}: {exc}") from None
    return stat
