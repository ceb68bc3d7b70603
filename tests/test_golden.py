"""With the semantic stream off (the default), analysis output is what it was before it existed."""

import pytest

from tests.fixtures.golden.make_golden import HERE, INPUTS, record


@pytest.mark.parametrize("name", sorted(INPUTS))
def test_output_unchanged_apart_from_ids_and_times(name: str) -> None:
    assert record(INPUTS[name]) == (HERE / f"{name}.jsonl").read_text()
