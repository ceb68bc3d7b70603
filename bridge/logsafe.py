"""Log hygiene at the service's edge: what clients send never floods the log or lands in it raw.

``client_error`` logs a client's mistake as one INFO line, at most ``BURST`` per ``WINDOW_S``
(then one line saying how many were left out). ``ClientNoiseFilter`` does the same for aiohttp's
own reports of malformed requests and clients that went away mid-body: aiohttp puts the raw
request line (which can hold a token) in those exceptions and logs them with a traceback at
ERROR; here they become one line naming only the kind of error.
"""

from __future__ import annotations

import logging
import time

__all__ = ["BURST", "ClientNoiseFilter", "client_error", "install"]

BURST = 20
WINDOW_S = 60.0

_window_start = 0.0
_count = 0
_suppressed = 0


def _allow() -> bool:
    """Rate limit shared by every client-error line of the process."""
    global _window_start, _count, _suppressed
    now = time.monotonic()
    if now - _window_start >= WINDOW_S:
        if _suppressed:
            logging.getLogger(__name__).info("%d more client errors not logged in the last "
                                             "%.0f s", _suppressed, WINDOW_S)
        _window_start, _count, _suppressed = now, 0, 0
    _count += 1
    if _count > BURST:
        _suppressed += 1
        return False
    return True


def client_error(logger: logging.Logger, msg: str, *args: object) -> None:
    """One INFO line for a client's mistake (never a traceback), rate-limited."""
    if _allow():
        logger.info(msg, *args)


class ClientNoiseFilter(logging.Filter):
    """For aiohttp's server loggers: a record carrying an exception becomes one INFO line that
    names the exception's type only (its message may hold the raw request line)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info is None or record.levelno < logging.WARNING:
            return True
        exc = record.exc_info[1]
        kind = type(exc).__name__ if exc is not None else "error"
        if not _allow():
            return False
        record.msg = "a client request failed in the HTTP layer (%s); details not logged"
        record.args = (kind,)
        record.exc_info = None
        record.exc_text = None
        record.levelno, record.levelname = logging.INFO, "INFO"
        return True


_FILTER = ClientNoiseFilter()


def install() -> None:
    """Attach the filter to aiohttp's server-side loggers (idempotent)."""
    for name in ("aiohttp.server", "aiohttp.web", "aiohttp.access"):
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
