"""Helpers that are not part of the bridge's own path from a call to its events, kept beside it
for the demo, the tests and the benchmarks (aiortc keeps its own such helpers in
``aiortc.contrib``): :mod:`bridge.contrib.media_source`, a WHEP endpoint that plays recordings,
is the other side of the demo call."""
