import json

import jsonschema
import pytest
from pydantic import ValidationError

from bridge import events as ev
from tests.conftest import CALM, run_cli


def test_ids_are_unique_and_sortable() -> None:
    ids = [ev.new_event_id() for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    assert all(i.startswith("evt_") and len(i) == 30 for i in ids)


def test_round_trip_through_json() -> None:
    call = ev.CallInfo(id="janus:1234", connector="janus", room="1234")
    spk = ev.SpeakerInfo(id="janus:1234:8812", display="Alice")
    e = ev.SpikeStarted(call=call, speaker=spk, data=ev.SpikeStartedData(
        offset_s=12.0, started_s=10.0, index=0.7, peak=0.7, components=["f0", "energy"]))
    back = ev.parse_event(e.model_dump_json())
    assert back == e and back.type == "stress.spike.started"


def test_unknown_type_and_extra_fields_are_rejected() -> None:
    with pytest.raises(ValidationError):
        ev.parse_event(json.dumps({"type": "stress.spike.maybe", "data": {}}))
    with pytest.raises(ValidationError):
        ev.parse_event(json.dumps({"type": "call.joined", "data": {"offset_s": 0, "x": 1}}))


def test_stress_index_bounds_are_enforced() -> None:
    with pytest.raises(ValidationError):
        ev.StressData(index=1.5, components={}, calibrating=False)


def test_schema_command_validates_real_output() -> None:
    schema_proc = run_cli("schema")
    assert schema_proc.returncode == 0
    schema = json.loads(schema_proc.stdout)
    jsonschema.Draft202012Validator.check_schema(schema)
    mapping = schema["discriminator"]["mapping"]
    assert set(mapping) == set(ev.EVENT_TYPES)
    out = run_cli("analyze", str(CALM))
    validator = jsonschema.Draft202012Validator(schema)
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    seen = set()
    for event in lines:
        validator.validate(event)
        seen.add(event["type"])
    assert {"call.joined", "speaker.joined", "affect.sample", "speaker.left", "call.left"} <= seen
