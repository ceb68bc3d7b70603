"""`run --workers N`: the pool (placement, the call mirror), one supervised worker process each
(launch, ping, reap), the channel between them (framing) and the typed messages on it."""
