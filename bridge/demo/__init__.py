"""`affect-bridge demo`: a local call with bundled speakers, and the WHEP media source that plays
them (also used by tests and benchmarks)."""
