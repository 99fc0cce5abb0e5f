"""The AM-Vision 3.7 webhook payload, the contract with every plant subscriber (shared/reference/PAYLOAD.md).

Field order in these models *is* the key order on the wire, so never reorder fields.
One function, `envelope`, builds every published event from the scan, so no event can drift
from another in shape.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, field_validator

from amflow_edge.qc.reasons import REASON_ID

EventName = Literal[
    "scan.capture", "scan.quality_control", "scan.assign", "scan.reassign", "scan.unassign", "scan.reject"
]

_TIMESTAMP_PATTERN = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}[+-]\d{2}:\d{2}$"
_STRICT = ConfigDict(extra="forbid", strict=True)
DESIGN_MATERIAL = r"^[0-9a-f]{40}_[A-Z0-9]+_[A-Z0-9]+_[A-Z0-9]+$"
"""<SHA-1 of the geometry>_<PROCESS>_<MATERIAL>_<COLOUR>, as AM-Vision names a design_material."""

# Bounds on every value a request can put into the payload. Every later event of a scan or session
# carries these values, and AM-Vision's consumers (JavaScript front ends, Django models with varchar
# columns) cannot hold an unbounded string or an integer beyond a double's exact range. The models
# carry them as constraints, so the JSON Schema and AsyncAPI documents state them too.
MAX_SAFE_INTEGER = 2**53 - 1
"""JavaScript's Number.MAX_SAFE_INTEGER: beyond it a JSON number no longer round-trips through a JS client."""
MAX_ID_LENGTH = 255
"""Ids and titles: a varchar(255), the common database column for names."""
MAX_COMMENT_LENGTH = 2000
MAX_REASONS = 32
"""More reasons than the catalogue could sensibly hold for one part."""

DesignMaterial = Annotated[str, Field(pattern=DESIGN_MATERIAL, max_length=MAX_ID_LENGTH)]
SafeCount = Annotated[int, Field(ge=0, le=MAX_SAFE_INTEGER)]
ReasonId = Annotated[str, Field(pattern=REASON_ID)]


def timestamp(moment: datetime) -> str:
    """AM-Vision's timestamps always carry microseconds and the station's UTC offset."""
    if moment.tzinfo is None:
        raise ValueError("timestamps must be time-zone aware")
    return moment.isoformat(timespec="microseconds")


class Hook(BaseModel):
    model_config = _STRICT

    id: int = Field(description="Stable integer per subscription.")
    event: EventName = Field(description="The event name.")
    target: str = Field(description="Where the event goes; by default the MQTT topic's URI.")


class Assignment(BaseModel):
    model_config = _STRICT

    assignment: str = Field(max_length=MAX_ID_LENGTH, description="UUID of the scan assignment.")
    part_id: str = Field(max_length=MAX_ID_LENGTH, description="Part id in the order system.")
    part_title: str = Field(max_length=MAX_ID_LENGTH, description="Human title of the part.")
    copies: SafeCount = Field(description="Copies of this part in the batch.")
    last_added_copies: SafeCount = Field(description="Copies added by the last assignment.")
    manual: bool = Field(description="Assigned by an operator rather than by the station.")


class Output(BaseModel):
    model_config = _STRICT

    id: SafeCount = Field(description="The output (bin/slot) the part goes to.")


class Batch(BaseModel):
    model_config = _STRICT

    id: str = Field(max_length=MAX_ID_LENGTH, description="Batch id.")
    title: str = Field(max_length=MAX_ID_LENGTH, description="Batch title.")


class Scan(BaseModel):
    """The 19 keys of an AM-Vision 3.7 Scan, in order."""

    model_config = _STRICT

    url: str = Field(description="/api/scan/<uuid>/")
    created: str = Field(pattern=_TIMESTAMP_PATTERN, description="Capture time, ISO 8601 with µs and UTC offset.")
    modified: str = Field(pattern=_TIMESTAMP_PATTERN, description="Time of the last change of the scan.")
    uuid: str = Field(description="Version-1 UUID of the scan.")
    scan_session: str = Field(description="UUID of the scanning session.")
    design_material: DesignMaterial | None = Field(description="Geometry + material id; null while unknown.")
    scan_urls: list[str] = Field(description="/data/scans/<uuid>/scan_camNN.png, one per camera.")
    scan_urls_full: list[str] = Field(description="/api/scan/<uuid>/full_image/N/, one per camera.")
    assignment: Assignment | None = Field(description="Null until assigned.")
    output: Output | None = Field(description="The output the part goes to.")
    batch: Batch | None = Field(description="The active batch.")
    archived: bool = Field(description="False for live scans.")
    inspectionreport: str | None = Field(description="UUID of the inspection report; null until inspected.")
    qc_machine: bool | None = Field(description="Passed the automated inspection; null until inspected.")
    qc_needs_review: bool = Field(description="A human must review.")
    qc_operator: bool | None = Field(description="The operator's verdict; null until given.")
    qc_pass: bool | None = Field(description="Final decision.")
    qc_comment: str | None = Field(max_length=MAX_COMMENT_LENGTH, description="Quality-control comment.")
    qc_reasons: list[ReasonId] = Field(max_length=MAX_REASONS, description="QualityControlReason ids.")

    @field_validator("uuid")
    @classmethod
    def _version_one(cls, value: str) -> str:
        if UUID(value).version != 1 or str(UUID(value)) != value:
            raise ValueError("a scan uuid is a canonical RFC 4122 version-1 UUID")
        return value

    @field_validator("scan_session", "inspectionreport")
    @classmethod
    def _canonical_uuid(cls, value: str | None) -> str | None:
        if value is not None and str(UUID(value)) != value:
            raise ValueError("expected a canonical UUID string")
        return value


class Envelope(BaseModel):
    """What goes on the wire: AM-Vision's webhook body."""

    model_config = _STRICT

    hook: Hook = Field(description="Which subscription and event this is.")
    data: Scan = Field(description="The scan as it is now.")


def new_scan(
    uuid: str,
    created: datetime,
    scan_session: str,
    camera_count: int,
    design_material: str | None = None,
    batch: Batch | None = None,
    assignment: Assignment | None = None,
    output: Output | None = None,
) -> Scan:
    """A just-captured scan: everything about quality control still unknown (PAYLOAD.md, 'At scan.capture')."""
    stamp = timestamp(created)
    return Scan(
        url=f"/api/scan/{uuid}/",
        created=stamp,
        modified=stamp,
        uuid=uuid,
        scan_session=scan_session,
        design_material=design_material,
        scan_urls=[f"/data/scans/{uuid}/scan_cam{i:02d}.png" for i in range(1, camera_count + 1)],
        scan_urls_full=[f"/api/scan/{uuid}/full_image/{i}/" for i in range(1, camera_count + 1)],
        assignment=assignment,
        output=output,
        batch=batch,
        archived=False,
        inspectionreport=None,
        qc_machine=None,
        qc_needs_review=False,
        qc_operator=None,
        qc_pass=None,
        qc_comment=None,
        qc_reasons=[],
    )


def envelope(event: EventName, scan: Scan, hook_id: int, target: str) -> Envelope:
    return Envelope(hook=Hook(id=hook_id, event=event, target=target), data=scan)


def to_wire(message: Envelope) -> bytes:
    """Compact UTF-8 JSON, keys in model order; pydantic never writes NaN for these types."""
    return message.model_dump_json().encode("utf-8")


def for_hook(payload: bytes, hook_id: int, target: str) -> bytes:
    """An outbox event as another subscription receives it: the same envelope with that subscription's hook id
    and target, so every sink's body is exactly the 3.7 shape."""
    message = Envelope.model_validate_json(payload)
    hook = Hook(id=hook_id, event=message.hook.event, target=target)
    return to_wire(Envelope(hook=hook, data=message.data))
