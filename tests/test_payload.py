"""The published envelope must match AM-Vision 3.7's example key by key: order, types, nulls at capture."""

from __future__ import annotations

import json
import uuid
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from pydantic import ValidationError

from amflow_edge.messaging.payload import (
    Assignment,
    Batch,
    Envelope,
    Output,
    Scan,
    envelope,
    new_scan,
    timestamp,
    to_wire,
)
from tests.conftest import EXAMPLE_PAYLOAD

EXAMPLE: dict[str, Any] = json.loads(EXAMPLE_PAYLOAD.read_text())
AMSTERDAM = ZoneInfo("Europe/Amsterdam")
SESSION = "cbe45ba7-da35-444d-b598-4e70587a33cc"


def json_type(value: Any) -> str:
    return type(value).__name__ if value is not None else "null"


NULLABLE = {
    f".data.{key}"
    for key in (
        "design_material",
        "assignment",
        "output",
        "batch",
        "inspectionreport",
        "qc_machine",
        "qc_operator",
        "qc_pass",
        "qc_comment",
    )
}


def assert_same_shape(ours: Any, theirs: Any, where: str = "") -> None:
    """Same keys in the same order, the same JSON types, and null only where PAYLOAD.md allows it."""
    if ours is None:
        assert where in NULLABLE, f"{where}: null where the contract does not allow it"
    elif isinstance(theirs, dict):
        assert isinstance(ours, dict), f"{where}: expected an object"
        assert list(ours) == list(theirs), f"{where}: keys differ"
        for key in theirs:
            assert_same_shape(ours[key], theirs[key], f"{where}.{key}")
    elif isinstance(theirs, list):
        assert isinstance(ours, list), f"{where}: expected a list"
        for a, b in zip(ours, theirs, strict=False):
            assert_same_shape(a, b, f"{where}[]")
    elif theirs is not None:
        assert json_type(ours) == json_type(theirs), f"{where}: {json_type(ours)} != {json_type(theirs)}"


def capture_scan() -> Scan:
    return new_scan(
        uuid=str(uuid.uuid1()),
        created=datetime(2026, 3, 11, 16, 36, 57, 247589, tzinfo=AMSTERDAM),
        scan_session=SESSION,
        camera_count=5,
        batch=Batch(id="PRTS_SRC_102_DAT_20260309_VER_A", title="20260309_02A"),
    )


def test_example_itself_validates_against_the_models() -> None:
    parsed = Envelope.model_validate_json(EXAMPLE_PAYLOAD.read_text())
    assert json.loads(to_wire(parsed)) == EXAMPLE
    assert list(json.loads(to_wire(parsed))["data"]) == list(EXAMPLE["data"])


def test_capture_envelope_matches_the_example_key_by_key() -> None:
    scan = capture_scan()
    wire = json.loads(to_wire(envelope("scan.capture", scan, 13, "mqtt://127.0.0.1:1883/amflow/s/event/scan.capture")))
    assert_same_shape(wire, EXAMPLE)
    data = wire["data"]
    assert len(data) == 19
    assert data["created"] == "2026-03-11T16:36:57.247589+01:00"
    assert data["url"] == f"/api/scan/{scan.uuid}/"
    assert data["scan_urls"][4] == f"/data/scans/{scan.uuid}/scan_cam05.png"
    assert data["scan_urls_full"][0] == f"/api/scan/{scan.uuid}/full_image/1/"
    for key in ("inspectionreport", "qc_machine", "qc_operator", "qc_pass", "qc_comment", "design_material"):
        assert data[key] is None, key
    assert data["qc_needs_review"] is False and data["qc_reasons"] == [] and data["archived"] is False


def test_filled_scan_matches_the_example_types_too() -> None:
    scan = capture_scan().model_copy(
        update={
            "assignment": Assignment(
                assignment=str(uuid.uuid4()),
                part_id="2471584",
                part_title="x",
                copies=1,
                last_added_copies=1,
                manual=False,
            ),
            "output": Output(id=2),
            "inspectionreport": str(uuid.uuid4()),
            "qc_machine": False,
            "qc_operator": True,
            "qc_pass": True,
            "qc_comment": "ok",
            "qc_reasons": ["misalignment"],
        }
    )
    assert_same_shape(json.loads(to_wire(envelope("scan.quality_control", scan, 13, "t"))), EXAMPLE)


def test_timestamps_always_carry_microseconds_and_offset() -> None:
    assert timestamp(datetime(2026, 7, 1, 12, 0, 0, 0, tzinfo=AMSTERDAM)) == "2026-07-01T12:00:00.000000+02:00"
    with pytest.raises(ValueError):
        timestamp(datetime(2026, 7, 1, 12, 0, 0))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("uuid", "0f6c8d2e-4b1a-4c3e-9d7f-2a5b6c8e1f30"),  # version 4, not 1
        ("created", "2026-03-11T16:36:57+01:00"),  # no microseconds
        ("design_material", "not-an-id"),
        ("qc_needs_review", None),
        ("qc_reasons", "misalignment"),
    ],
)
def test_contract_violations_are_refused(field: str, value: Any) -> None:
    data = json.loads(capture_scan().model_dump_json())
    data[field] = value
    with pytest.raises(ValidationError):
        Scan.model_validate(data)


def test_extra_keys_are_refused() -> None:
    data = json.loads(capture_scan().model_dump_json())
    data["is_backed_up"] = False
    with pytest.raises(ValidationError):
        Scan.model_validate(data)
