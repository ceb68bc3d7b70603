"""Rendezvous sharding of rooms over replicas."""

from __future__ import annotations

import pytest

from bridge.control.shard import owner, owns

ROOMS = [*range(1000, 3000), *(f"room-{i}" for i in range(1000))]


@pytest.mark.parametrize("count", range(1, 9))
def test_every_room_has_exactly_one_owner(count: int) -> None:
    for room in ROOMS:
        assert sum(owns(room, index, count) for index in range(count)) == 1


@pytest.mark.parametrize("count", range(1, 8))
def test_adding_a_replica_moves_about_one_share_only_to_it(count: int) -> None:
    before = {room: owner(room, count) for room in ROOMS}
    after = {room: owner(room, count + 1) for room in ROOMS}
    moved = [room for room in ROOMS if before[room] != after[room]]
    assert all(after[room] == count for room in moved)  # rooms move only to the new replica
    share = len(moved) / len(ROOMS)
    assert abs(share - 1 / (count + 1)) < 0.03, share


def test_load_is_balanced_and_bad_counts_are_refused() -> None:
    counts = [0] * 4
    for room in ROOMS:
        counts[owner(room, 4)] += 1
    assert min(counts) > 0.2 * len(ROOMS)
    assert owner(1234, 3) == owner("1234", 3)
    with pytest.raises(ValueError):
        owner(1, 0)
