"""The messages between the supervisor and a worker process, as types.

Each message is a frozen dataclass with an ``op``; on the channel (:mod:`bridge.workers.channel`)
it is one JSON object. :func:`encode` and :func:`decode` are the only places that know the wire
form; everyone else matches on the classes.

Supervisor -> worker: :class:`Configure` (first, once), :class:`ServiceReady` (once per worker
process), :class:`JoinCall`, :class:`LeaveCall`, :class:`Ping`, :class:`Stop`.
Worker -> supervisor: :class:`Ready`, :class:`Joined`, :class:`JoinFailed`, :class:`Left`,
:class:`Pong`, :class:`Published` (an event), :class:`StatsReport`.

A join travels as it was validated at the edge: the connector's request model is pickled (a
socketpair between two processes of this service; secrets stay ``SecretStr``), never validated
again. Replies carry the ``req`` of the request they answer.
"""

from __future__ import annotations

import asyncio
import base64
import pickle
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

from pydantic import BaseModel

from bridge import stats
from bridge.errors import BridgeError, error_from_wire
from bridge.workers.channel import read_message

__all__ = ["Configure", "JoinCall", "JoinFailed", "Joined", "LeaveCall", "Left", "Message",
           "Ping", "Pong", "Published", "Ready", "ServiceReady", "StatsReport", "Stop", "decode",
           "encode",
           "receive"]


@dataclass(frozen=True, slots=True)
class Configure:
    op: ClassVar[str] = "configure"
    settings: dict[str, Any]
    log_level: str | None = None


@dataclass(frozen=True, slots=True)
class JoinCall:
    """Join ``call`` with ``connector``'s validated ``request``."""

    op: ClassVar[str] = "join"
    req: int
    call: str
    connector: str
    request: BaseModel

    def wire(self) -> dict[str, Any]:
        return {"req": self.req, "call": self.call, "connector": self.connector,
                "request": base64.b64encode(pickle.dumps(self.request)).decode()}

    @classmethod
    def unwire(cls, raw: dict[str, Any]) -> JoinCall:
        # Only the supervisor writes this channel (a socketpair it made): trusted like our own code.
        request = pickle.loads(base64.b64decode(raw["request"]))
        if not isinstance(request, BaseModel):
            raise ValueError("a join request must be a request model")
        return cls(int(raw["req"]), str(raw["call"]), str(raw["connector"]), request)


@dataclass(frozen=True, slots=True)
class LeaveCall:
    op: ClassVar[str] = "leave"
    req: int
    call: str
    reason: str


@dataclass(frozen=True, slots=True)
class Ping:
    op: ClassVar[str] = "ping"
    n: int


@dataclass(frozen=True, slots=True)
class Stop:
    op: ClassVar[str] = "stop"
    reason: str


@dataclass(frozen=True, slots=True)
class ServiceReady:
    """Every worker is ready (or gone): the work a worker leaves until then (measuring its
    emotion batch size, starting the background preparation) may run now without slowing
    another worker's start."""

    op: ClassVar[str] = "service_ready"


@dataclass(frozen=True, slots=True)
class Ready:
    op: ClassVar[str] = "ready"
    pid: int
    analyzers: list[str]
    degraded: dict[str, str]


@dataclass(frozen=True, slots=True)
class Joined:
    op: ClassVar[str] = "joined"
    req: int
    call: str


@dataclass(frozen=True, slots=True)
class JoinFailed:
    """The join failed with a :class:`~bridge.errors.BridgeError` (its class name, code,
    reason), raised again by the supervisor as that error."""

    op: ClassVar[str] = "join_failed"
    req: int
    kind: str
    code: str
    reason: str

    @classmethod
    def of(cls, req: int, exc: BridgeError) -> JoinFailed:
        return cls(req, type(exc).__name__, exc.error, exc.reason)

    def error(self) -> BridgeError:
        return error_from_wire(self.kind, self.code, self.reason)


@dataclass(frozen=True, slots=True)
class Left:
    op: ClassVar[str] = "left"
    req: int
    call: str
    found: bool


@dataclass(frozen=True, slots=True)
class Pong:
    op: ClassVar[str] = "pong"
    n: int


@dataclass(frozen=True, slots=True)
class Published:
    """An event the worker published (the envelope's JSON; parsed by the supervisor)."""

    op: ClassVar[str] = "event"
    event: dict[str, Any]


@dataclass(frozen=True, slots=True)
class StatsReport:
    op: ClassVar[str] = "stats"
    stats: list[stats.Stat] = field(default_factory=list)

    def wire(self) -> dict[str, Any]:
        return {"stats": [stats.to_wire(s) for s in self.stats]}

    @classmethod
    def unwire(cls, raw: dict[str, Any]) -> StatsReport:
        out: list[stats.Stat] = []
        for item in raw.get("stats", []):
            try:
                out.append(stats.from_wire(item))
            except ValueError:
                continue  # one unknown stat does not lose the others
        return cls(out)


Message = (Configure | JoinCall | LeaveCall | Ping | Stop | ServiceReady | Ready | Joined
           | JoinFailed | Left | Pong | Published | StatsReport)
Reply = Joined | JoinFailed | Left

_BY_OP: dict[str, type[Any]] = {cls.op: cls for cls in (
    Configure, JoinCall, LeaveCall, Ping, Stop, ServiceReady, Ready, Joined, JoinFailed, Left,
    Pong, Published, StatsReport)}


def encode(msg: Message) -> dict[str, Any]:
    """The JSON object for ``msg``."""
    wire = getattr(msg, "wire", None)
    body = wire() if wire is not None else {f.name: getattr(msg, f.name) for f in fields(msg)}
    return {"op": msg.op, **body}


def decode(raw: dict[str, Any]) -> Message:
    """The message a JSON object is; ValueError when it is none (an unknown op, a field
    missing, a join request that is not a request model)."""
    cls = _BY_OP.get(str(raw.get("op")))
    if cls is None:
        raise ValueError(f"unknown op {str(raw.get('op'))[:40]!r}")
    try:
        unwire = getattr(cls, "unwire", None)
        if unwire is not None:
            msg: Message = unwire(raw)
            return msg
        made: Message = cls(**{f.name: raw[f.name] for f in fields(cls) if f.name in raw})
        return made
    except (KeyError, TypeError, ValueError, pickle.UnpicklingError) as exc:
        raise ValueError(f"bad {cls.op} message: {type(exc).__name__}") from None


async def receive(reader: asyncio.StreamReader) -> Message | None:
    """The next message; None at the end of the stream or when the other side is gone. Raises
    ValueError for a message that cannot be read (the stream goes on)."""
    try:
        raw = await read_message(reader)
    except (ConnectionError, OSError):
        return None
    return decode(raw) if raw is not None else None
