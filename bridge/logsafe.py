"""Log hygiene: what clients send never floods the log or lands in it raw, and every line goes
out once, through one handler.

``client_error`` logs a client's mistake as one INFO line, at most ``BURST`` per ``WINDOW_S``
(then one line saying how many were left out). ``ClientNoiseFilter`` does the same for aiohttp's
own reports of malformed requests and clients that went away mid-body: aiohttp puts the raw
request line (which can hold a token) in those exceptions and logs them with a traceback at
ERROR; here they become one line naming only the kind of error.

``configure_logging`` sets up a process's logging (every command, every worker process):
``ShownOnceFilter`` and ``adopt_hub_logger`` keep the model hub library's retry warnings to one
line each (huggingface_hub gives its logger a handler of its own when it is imported, so each
of its records was printed bare and again by the root handler; and it repeats the same "...
thrown while requesting URL" line before every retry).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections import OrderedDict

__all__ = ["BURST", "NETWORK_LOGGERS", "PROJECT_LOGGERS", "ClientNoiseFilter", "ShownOnceFilter",
           "adopt_hub_logger", "client_error", "configure_logging", "install"]

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


# --- the process's log set-up (every command and worker process) ----------------------------

# Third-party loggers whose repeated lines are shown once (HTTP clients and the hub library).
NETWORK_LOGGERS = ("huggingface_hub", "urllib3", "requests", "httpx", "httpx2", "httpcore",
                   "httpcore2")

PROJECT_LOGGERS = ("affect-bridge", "bridge", "analyzers")


def configure_logging(debug: bool, *, prefix: str = "affect-bridge") -> None:
    """INFO for everything; ``--debug`` turns on this project's loggers only (a library's DEBUG,
    numba's bytecode dumps for one, would flood the terminal). Worker processes log with their
    own ``prefix``. Every line goes through one handler, once: huggingface_hub's own handler is
    dropped (:func:`adopt_hub_logger`), and an HTTP library's line already shown is not shown again."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(ShownOnceFilter())
    logging.basicConfig(level=logging.INFO, format=f"{prefix}: %(levelname)s: %(message)s",
                        handlers=[handler])
    if debug:
        for name in PROJECT_LOGGERS:
            logging.getLogger(name).setLevel(logging.DEBUG)
    # Third-party chatter (transformers' own warnings, numba) stays out of normal output.
    for name in ("transformers", "numba", "urllib3", "filelock", "aioice", "aiortc"):
        logging.getLogger(name).setLevel(logging.WARNING if debug else logging.ERROR)
    adopt_hub_logger(logging.WARNING if debug else logging.ERROR)
    # Read by transformers / huggingface_hub when (and only if) they are imported.
    if not debug:
        # torch's C++ warnings (e.g. int8 tensor creation being deprecated) go to stderr
        # unformatted; read when torch is first imported, which is later.
        os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")


class ShownOnceFilter(logging.Filter):
    """For a handler: a line from ``NETWORK_LOGGERS`` that was already shown is not shown again
    (the hub library logs the same failed request before every retry). Remembers the last
    ``size`` lines."""

    def __init__(self, size: int = 256) -> None:
        super().__init__()
        self._seen: OrderedDict[tuple[str, int, str], None] = OrderedDict()
        self._size = size

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith(NETWORK_LOGGERS):
            return True
        key = (record.name, record.levelno, record.getMessage())
        if key in self._seen:
            self._seen.move_to_end(key)
            return False
        self._seen[key] = None
        if len(self._seen) > self._size:
            self._seen.popitem(last=False)
        return True


def adopt_hub_logger(level: int) -> None:
    """Import huggingface_hub's logging now (it gives its logger a handler and WARNING when
    first imported), drop that handler so records reach the terminal once, through the root
    handler and its format, and set ``level``."""
    try:
        import huggingface_hub.utils.logging  # noqa: F401 - its import configures the logger
    except ImportError:  # pragma: no cover - a dependency of transformers
        pass
    logger = logging.getLogger("huggingface_hub")
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    logger.propagate = True
    logger.setLevel(level)
