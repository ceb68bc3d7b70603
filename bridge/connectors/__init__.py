"""Connectors: how a call is joined and its speakers found (entry-point group
``affect_bridge.connectors``; ``whep`` and ``janus`` are built in).

Importing this package imports no connector and no aiortc (config imports
:mod:`bridge.join_options`); :func:`load_connectors` imports the installed ones.
"""

from __future__ import annotations

import logging
from importlib.metadata import entry_points
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bridge.connectors.base import Connector

__all__ = ["GROUP", "load_connectors"]

GROUP = "affect_bridge.connectors"

log = logging.getLogger(__name__)


def load_connectors() -> dict[str, type[Connector]]:
    """Installed connectors by name. One that fails to import is logged and left out, so a
    broken plugin never takes the built-in connectors down with it."""
    from bridge.connectors.base import Connector

    found: dict[str, type[Connector]] = {}
    for ep in entry_points(group=GROUP):
        try:
            cls = ep.load()
        except Exception as exc:
            log.error("connector %r (%s) failed to import: %s", ep.name, ep.value, exc)
            continue
        if isinstance(cls, type) and issubclass(cls, Connector):
            found[ep.name] = cls
        else:
            log.error("connector %r (%s) is not a Connector subclass", ep.name, ep.value)
    return found
