"""Which replica owns a room: rendezvous (highest-random-weight) hashing of the room id.

Every replica computes the same answer from the room id and the replica count alone, so no
coordinator is needed; going from N to N+1 replicas moves only the rooms the new replica wins
(about 1/(N+1) of them).
"""

from __future__ import annotations

import hashlib

__all__ = ["owner", "owns"]


def _weight(key: str, replica: int) -> int:
    digest = hashlib.blake2b(f"{key}\x00{replica}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def owner(key: str | int, count: int) -> int:
    """The replica index (0..count-1) that owns ``key``."""
    if count < 1:
        raise ValueError("count must be at least 1")
    return max(range(count), key=lambda replica: _weight(str(key), replica))


def owns(key: str | int, index: int, count: int) -> bool:
    return owner(key, count) == index
