"""Analyzer plugins: entry-point group ``affect_bridge.analyzers``, loaded by the names in config.

A plugin is a class with ``name``, ``from_options(dict)``, a blocking ``load()`` (raises
:class:`~analyzers.loading.ModelUnavailable` when its model cannot be had), an async
``analyze(window, *, wait)`` and ``close()``. Only configured names are loaded; an unknown name
or a plugin that fails to import stops start-up with a message naming it. A plugin whose
``from_options`` takes an ``on_batch`` keyword gets the caller's batch observer there
(:data:`~analyzers.batching.BatchObserver`: how its shared model's batches go, for metrics).
"""

from __future__ import annotations

import inspect
from importlib.metadata import entry_points
from typing import Any, Protocol, runtime_checkable

from analyzers.batching import BatchObserver
from analyzers.types import SpeechWindow

__all__ = ["GROUP", "Analyzer", "PluginError", "available", "load_analyzers"]

GROUP = "affect_bridge.analyzers"


@runtime_checkable
class Analyzer(Protocol):
    name: str

    def load(self) -> None: ...

    async def analyze(self, window: SpeechWindow, *, wait: bool = False) -> object | None: ...

    def close(self) -> None: ...


class PluginError(ValueError):
    """A configured analyzer cannot be found, imported or configured."""


def available() -> dict[str, str]:
    """Installed analyzer names and where each comes from."""
    return {ep.name: ep.value for ep in entry_points(group=GROUP)}


def load_analyzers(
    names: list[str],
    options: dict[str, dict[str, Any]] | None = None,
    registry: dict[str, type] | None = None,
    *,
    on_batch: BatchObserver | None = None,
) -> list[Analyzer]:
    """Build (not yet ``load()``) the named analyzers. ``registry`` adds explicit classes (tests);
    ``on_batch`` goes to the plugins that take it."""
    options = options or {}
    found = {ep.name: ep for ep in entry_points(group=GROUP)}
    out: list[Analyzer] = []
    for name in dict.fromkeys(names):
        cls: Any
        if registry and name in registry:
            cls = registry[name]
        elif name in found:
            try:
                cls = found[name].load()
            except Exception as exc:
                raise PluginError(f"analyzer {name!r} ({found[name].value}) failed to import: "
                                  f"{exc}") from exc
        else:
            known = sorted(set(found) | set(registry or {}))
            raise PluginError(f"unknown analyzer {name!r}; installed: {', '.join(known) or 'none'}")
        try:
            opts = dict(options.get(name, {}))
            plugin = (cls.from_options(opts, on_batch=on_batch)
                      if on_batch is not None and _takes_on_batch(cls) else cls.from_options(opts))
        except (TypeError, ValueError) as exc:
            raise PluginError(f"bad options for analyzer {name!r}: {exc}") from exc
        if not isinstance(plugin, Analyzer):
            raise PluginError(f"analyzer {name!r} does not implement the Analyzer interface")
        out.append(plugin)
    return out


def _takes_on_batch(cls: type) -> bool:
    try:
        return "on_batch" in inspect.signature(cls.from_options).parameters  # type: ignore[attr-defined]
    except (TypeError, ValueError):
        return False
