"""The model hub as ``affect-bridge download-models`` meets it.

``hub_failure`` tells from the exception *types* in an error's cause chain (never from message
text) whether a model could not be fetched because the hub was not reached: a connection or
timeout error of the HTTP library the hub library uses, or huggingface_hub's own
``OfflineModeIsEnabled`` / ``LocalEntryNotFoundError`` / a 5xx ``HfHubHTTPError``. A
:class:`HubFailure` then writes the one line that says what to do.

The hub library's retry warnings are kept to one line each by the log set-up
(:func:`bridge.logsafe.configure_logging`).
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

__all__ = ["ConfiguredModel", "HubFailure", "hub_failure"]

# Statuses for which huggingface_hub itself retries: the hub (or a mirror) is there but not
# serving. A 401/404 means it was reached: the loader's own message says what is wrong.
_UNAVAILABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504})


@dataclass(frozen=True)
class ConfiguredModel:
    """A configured model: ``what`` for messages, ``key`` where the configuration names it."""

    what: str  # "emotion model"
    key: str  # "[emotion] model"
    name: str  # a hub id or a local directory


@dataclass(frozen=True)
class HubFailure:
    """Models were not fetched because the hub was not asked (``offline``) or not reached."""

    offline: bool
    endpoint: str
    cause: BaseException  # the innermost network error, shown with its type

    def advice(self, models: Sequence[ConfiguredModel]) -> str:
        """One line: what happened to ``models`` and the ways to go on."""
        one = len(models) == 1
        names = _and([f"{m.what} {m.name!r}" for m in models]) or "the models"
        keys = _and(list(dict.fromkeys(m.key for m in models))) or "the model setting"
        local = f"give {'a local model directory' if one else 'local model directories'} as {keys}"
        if self.offline:
            return (f"HF_HUB_OFFLINE is set, so the model hub was not asked, and {names} "
                    f"{'is' if one else 'are'} not in the local cache: {local}, or unset "
                    "HF_HUB_OFFLINE to download (from a mirror: set HF_ENDPOINT)")
        reason = " ".join(str(self.cause).split())[:200]
        shown = f"{type(self.cause).__name__}: {reason}" if reason else type(self.cause).__name__
        return (f"the model hub at {self.endpoint} could not be reached ({shown}), so {names} "
                f"{'was' if one else 'were'} not downloaded: {local}, set HF_HUB_OFFLINE=1 to "
                "use only the local cache, or set HF_ENDPOINT to a reachable mirror")


def _and(items: list[str]) -> str:
    return ", ".join(items[:-1]) + f" and {items[-1]}" if len(items) > 1 else "".join(items)


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _network_error_types() -> tuple[type[BaseException], ...]:
    """Connection and timeout errors of the HTTP libraries imported so far (one that is not
    imported raised nothing): httpx2 (huggingface_hub 2), httpx (1.x), requests (0.x)."""
    found: list[type[BaseException]] = [ConnectionError, TimeoutError, socket.gaierror]
    for module, names in (("httpx2", ("TransportError",)), ("httpx", ("TransportError",)),
                          ("requests", ("ConnectionError", "Timeout"))):
        mod = sys.modules.get(module)
        for name in names:
            kind = getattr(mod, name, None)
            if isinstance(kind, type) and issubclass(kind, BaseException):
                found.append(kind)
    return tuple(found)


def hub_failure(exc: BaseException) -> HubFailure | None:
    """A :class:`HubFailure` when ``exc`` (or what caused it) says the hub was not asked or not
    reached; None for anything else (a wrong model id, a refused checkpoint, a full disk)."""
    try:
        from huggingface_hub import constants
        from huggingface_hub.utils import (
            HfHubHTTPError,
            LocalEntryNotFoundError,
            OfflineModeIsEnabled,
        )
    except ImportError:  # pragma: no cover - a dependency of transformers
        return None
    network = _network_error_types()
    marker: BaseException | None = None  # the first link that says "hub not asked / reached"
    cause: BaseException | None = None  # the innermost network error, if any
    refused_offline = False
    for link in _chain(exc):
        if isinstance(link, OfflineModeIsEnabled):  # a ConnectionError: before `network`
            refused_offline, marker = True, marker or link
        elif isinstance(link, network):
            marker = cause = link  # keep going: the innermost one names the reason best
        elif isinstance(link, LocalEntryNotFoundError):
            marker = marker or link
        elif isinstance(link, HfHubHTTPError):
            status = getattr(getattr(link, "response", None), "status_code", None)
            if status in _UNAVAILABLE_STATUSES:
                marker = cause = link
    if marker is None:
        return None
    offline = refused_offline or (cause is None and bool(constants.HF_HUB_OFFLINE))
    return HubFailure(offline=offline, endpoint=constants.ENDPOINT, cause=cause or marker)
