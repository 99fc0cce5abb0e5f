"""Bodies of the station's MQTT requests and responses: the contract plant systems code against.

Strict models (no extra keys, no type coercion: "true" is not a boolean) because a request
that is almost right must be refused with a reason, never half-understood. The AsyncAPI
document (asyncapi.py) is generated from these classes, so the published description
cannot drift from what the station accepts.
"""

from __future__ import annotations

from typing import Annotated, Literal
from uuid import UUID

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, RootModel, model_validator

from amflow_edge.messaging.payload import (
    MAX_COMMENT_LENGTH,
    MAX_ID_LENGTH,
    MAX_REASONS,
    MAX_SAFE_INTEGER,
    Assignment,
    Batch,
    DesignMaterial,
    Output,
    ReasonId,
    Scan,
)

_REQUEST = ConfigDict(extra="forbid", strict=True)

PROFILE_NAME = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"


QcComment = Annotated[str | None, Field(default=None, max_length=MAX_COMMENT_LENGTH, description="Becomes qc_comment.")]
"""The fields an operator's decision shares between the MQTT request and the HTTP body (web/models.py), defined
once so the two cannot drift; the scan (the path, over HTTP) and the operator (the credential) are not shared."""
RejectComment = Annotated[
    str, Field(min_length=1, max_length=MAX_COMMENT_LENGTH, description="Why; becomes qc_comment.")
]


class CaptureRequest(BaseModel):
    """Body of <prefix>/<station>/request/capture: take a scan now (an empty body is the same as {})."""

    model_config = _REQUEST

    design_material: DesignMaterial | None = Field(
        default=None,
        description="The part expected on the tray; becomes the scan's design_material and the design it is "
        "inspected against. Must be in the design library or the active session's designs.",
    )
    assignment: Assignment | None = Field(
        default=None, description="The order line the part belongs to, when the requester already knows it."
    )


class QcRequest(BaseModel):
    """Body of <prefix>/<station>/request/qc: an operator's approve or reject from a plant system."""

    model_config = _REQUEST

    scan: UUID = Field(description="UUID of the scan decided.")
    passed: bool = Field(alias="pass", description="true approves the part, false rejects it.")
    comment: QcComment
    reasons: list[ReasonId] | None = Field(
        default=None,
        max_length=MAX_REASONS,
        description="QualityControlReason ids (see the reason catalogue); replace qc_reasons when given.",
    )
    operator: str | None = Field(
        default=None, max_length=128, description="Who decided, for the scan record (a badge id or user name)."
    )


class ReevaluateRequest(BaseModel):
    """Body of <prefix>/<station>/request/reevaluate: judge a stored scan again with another inspection profile."""

    model_config = _REQUEST

    scan: UUID = Field(description="UUID of the scan to inspect again.")
    profile: str = Field(
        pattern=PROFILE_NAME, description="Name of an inspection profile in config/inspection_profiles (not a path)."
    )


class SessionDesign(BaseModel):
    """One design of a batch: its id, and the mesh when the station's design library does not have it."""

    model_config = _REQUEST

    design_material: DesignMaterial = Field(
        description="The design's id; its first 40 hex digits are the SHA-1 of the mesh file."
    )
    mesh: str | None = Field(
        default=None,
        min_length=1,
        max_length=255,
        description="Mesh file (STL, OBJ, PLY) relative to the station's batch mesh folder (designs.batch_meshes).",
    )
    units: Literal["mm", "inch", "m"] = Field(default="mm", description="Units of the mesh file.")
    title: str | None = Field(default=None, max_length=200, description="Human part name for reports and logs.")


MAX_BATCH_PARTS = 1000
"""More order lines than one session of one station scans."""


class BatchPart(BaseModel):
    """One order line of a batch, as AM-Vision lists it: the part, how many copies, where they go, its design."""

    model_config = _REQUEST

    part_id: str = Field(min_length=1, max_length=MAX_ID_LENGTH, description="Part id in the order system.")
    part_title: str = Field(min_length=1, max_length=MAX_ID_LENGTH, description="Human title of the part.")
    design_material: DesignMaterial = Field(
        description="The part's geometry and material; several parts may share one, and one geometry may come in "
        "several materials."
    )
    copies: int = Field(ge=1, le=MAX_SAFE_INTEGER, description="How many copies of this part the batch holds.")
    output: Output | None = Field(default=None, description="The output (bin/slot) this part's copies go to.")
    mesh: str | None = Field(
        default=None,
        min_length=1,
        max_length=255,
        description="Mesh file (STL, OBJ, PLY): in a session request relative to the station's batch mesh folder "
        "(designs.batch_meshes), in a batch file relative to the file. None: the design library has the design.",
    )
    units: Literal["mm", "inch", "m"] = Field(default="mm", description="Units of the mesh file.")


def _parts_unique(parts: list[BatchPart]) -> list[BatchPart]:
    """Each part once, and one design_material one mesh: two parts may share a design, never disagree on it."""
    seen: set[str] = set()
    meshes: dict[str, BatchPart] = {}
    for part in parts:
        if part.part_id in seen:
            raise ValueError(f"part_id {part.part_id!r} is listed twice; list each part once, with its copies")
        seen.add(part.part_id)
        first = meshes.setdefault(part.design_material, part)
        if (first.mesh, first.units) != (part.mesh, part.units):
            raise ValueError(
                f"parts {first.part_id!r} and {part.part_id!r} share design_material {part.design_material} but name "
                f"different meshes or units ({first.mesh!r} {first.units}, {part.mesh!r} {part.units}); one design "
                "has one mesh: give both the same"
            )
    return parts


BatchParts = Annotated[list[BatchPart], Field(max_length=MAX_BATCH_PARTS), AfterValidator(_parts_unique)]


class SessionStart(BaseModel):
    model_config = _REQUEST

    action: Literal["start"] = Field(description="Start a scanning session for a batch.")
    batch: Batch = Field(description="The batch being scanned; every scan of the session carries it.")
    parts: BatchParts = Field(
        default_factory=list,
        description="The batch's parts: the station identifies each scan among their designs and assigns it to its part.",
    )
    designs: list[SessionDesign] = Field(
        default_factory=list,
        max_length=500,
        description="Designs without parts (the form before parts existed): scans are identified among them but "
        "not assigned.",
    )
    output: Output | None = Field(
        default=None, description="The output (bin/slot) of a scan whose part names none, if any."
    )


class BatchFile(BaseModel):
    """A batch as a file (JSON or TOML), for `amflow-edge run --batch` and `amflow-edge identify`."""

    model_config = ConfigDict(extra="forbid", strict=True)

    batch: Batch = Field(description="The batch's id and title.")
    parts: BatchParts = Field(min_length=1, description="The batch's parts; mesh paths are relative to the file.")


class SessionEnd(BaseModel):
    model_config = _REQUEST

    action: Literal["end"] = Field(description="End the active session; later scans carry no batch.")


class SessionRequest(RootModel[Annotated[SessionStart | SessionEnd, Field(discriminator="action")]]):
    """Body of <prefix>/<station>/request/session: start or end a scanning session.

    Starting one takes new empty-tray references, so the tray must be empty.
    """


AskedBy = Annotated[
    str | None, Field(max_length=128, description="Who asked, for the scan record (a badge id or user name).")
]
PartId = Annotated[str, Field(min_length=1, max_length=MAX_ID_LENGTH, description="A part_id of the active session.")]


class AssignRequest(BaseModel):
    """Body of <prefix>/<station>/request/assign: an operator's assignment of an unassigned (or rejected) scan."""

    model_config = _REQUEST

    scan: UUID = Field(description="UUID of a scan of the active session that has no assignment.")
    part_id: PartId = Field(description="The part the scan is a copy of; must have copies left.")
    operator: AskedBy = None


class ReassignRequest(BaseModel):
    """Body of <prefix>/<station>/request/reassign: move an assigned scan to another part."""

    model_config = _REQUEST

    scan: UUID = Field(description="UUID of an assigned scan of the active session.")
    part_id: PartId = Field(description="The part the scan is really a copy of; another than its current one.")
    operator: AskedBy = None


class UnassignRequest(BaseModel):
    """Body of <prefix>/<station>/request/unassign: the scan is of the batch, but of no part known yet."""

    model_config = _REQUEST

    scan: UUID = Field(description="UUID of an assigned scan of the active session.")
    operator: AskedBy = None


class RejectRequest(BaseModel):
    """Body of <prefix>/<station>/request/reject: the scan is no part of this batch (a foreign object, another
    batch's part, a scan to take again)."""

    model_config = _REQUEST

    scan: UUID = Field(description="UUID of a scan of the active session.")
    comment: RejectComment
    operator: AskedBy = None


MAX_RESEND = 10_000
"""Events one resend request may ask for: well below outbox.max_backlog_events, so answering one never pauses capture."""


class ResendRequest(BaseModel):
    """Body of <prefix>/<station>/request/resend: a subscriber lost events behind the broker (a restart that forgot
    a shared subscription, a broker killed before it saved) and asks for them again by their seqs."""

    model_config = _REQUEST

    stream: str = Field(min_length=1, max_length=64, description="The outbox's stream the seqs count in.")
    from_seq: int = Field(ge=1, le=2**63 - 1, description="First seq to send again.")
    to_seq: int = Field(ge=1, le=2**63 - 1, description="Last seq to send again (at most 9,999 after from_seq).")

    @model_validator(mode="after")
    def _bounded(self) -> ResendRequest:
        if self.to_seq < self.from_seq or self.to_seq - self.from_seq >= MAX_RESEND:
            raise ValueError(f"to_seq must be from from_seq to from_seq + {MAX_RESEND - 1}")
        return self


class Response(BaseModel):
    """Body of <prefix>/<station>/response/<command> (and of the requester's MQTT v5 response topic)."""

    model_config = ConfigDict(extra="forbid")

    status: Literal["ok", "error"] = Field(description="Whether the request was carried out.")
    command: str = Field(description="The command this answers.")
    scan: str | None = Field(default=None, description="UUID of the scan the request produced or touched.")
    scan_session: str | None = Field(default=None, description="UUID of the session a session request started.")
    data: Scan | None = Field(default=None, description="The scan after the change, as its event carries it.")
    resent: int | None = Field(default=None, description="How many events a resend request queued again.")
    error: str | None = Field(default=None, description="What was wrong and how to fix it; nothing was changed.")


COMMANDS: dict[str, type[BaseModel]] = {
    "capture": CaptureRequest,
    "qc": QcRequest,
    "reevaluate": ReevaluateRequest,
    "session": SessionRequest,
    "assign": AssignRequest,
    "reassign": ReassignRequest,
    "unassign": UnassignRequest,
    "reject": RejectRequest,
    "resend": ResendRequest,
}
