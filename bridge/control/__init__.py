"""The control plane: the HTTP app (control API, /metrics, health), forwarding to the replica
that owns a call, the OpenAPI document, sharding, Janus auto-join, and the runtime they start."""
