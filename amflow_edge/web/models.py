"""Bodies the HTTP API takes and gives: the contract the operator's screen and integrations code against.

Strict where they are input (unknown keys and wrong types refused, like the MQTT requests), described field by
field because docs/openapi.json is generated from them. The Scan itself is the AM-Vision 3.7 payload model,
never copied here, so the API cannot drift from the events.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from amflow_edge.config.http import OPERATOR_NAME
from amflow_edge.messaging.command_models import PartId, QcComment, RejectComment
from amflow_edge.messaging.payload import MAX_REASONS, Batch, Output, ReasonId, Scan
from amflow_edge.qc.reasons import QualityControlReason, ReasonCategory
from amflow_edge.storage.record import IdentificationOutcome, OperatorDecisionRecord

_OUT = ConfigDict(extra="forbid")
_IN = ConfigDict(extra="forbid", strict=True)


class ApiError(BaseModel):
    """Every refusal: what was wrong and how to fix it. Nothing was changed."""

    model_config = _OUT

    error: str = Field(description="What was wrong, and what to send or do instead.")
    problems: list[str] | None = Field(
        default=None, description="Each problem of a refused body or query, as 'field: message'."
    )


class ScanPage(BaseModel):
    model_config = _OUT

    items: list[Scan] = Field(description="Scans, newest first, each exactly as its last event carried it.")
    next_cursor: str | None = Field(
        description="Pass as `cursor` for the next (older) page; null when this page is the last."
    )


class PartView(BaseModel):
    """One order line of the session's batch, with how many of its copies have a scan so far."""

    model_config = _OUT

    part_id: str = Field(description="Part id in the order system.")
    part_title: str = Field(description="Human title of the part.")
    design_material: str = Field(description="The part's geometry and material.")
    copies: int = Field(description="Copies of the part in the batch.")
    assigned: int = Field(description="Scans of this session assigned to the part so far.")
    output: Output | None = Field(description="The output (bin/slot) its copies go to.")
    assignment: str = Field(description="UUID of the part's scan assignment in this session.")


class PartsView(BaseModel):
    model_config = _OUT

    scan_session: str = Field(description="UUID of the current scanning session.")
    batch: Batch | None = Field(description="The session's batch; null when the station scans without one.")
    parts: list[PartView] = Field(
        description="The batch's parts grouped by output (ascending; parts without an output last), in batch "
        "order within an output."
    )


class ReasonsView(BaseModel):
    """The QualityControlReason catalogue (qc.reasons): the only ids a decision's `reasons` may carry."""

    model_config = _OUT

    categories: list[ReasonCategory] = Field(description="Reason categories, in catalogue order.")
    reasons: list[QualityControlReason] = Field(description="Reasons, in catalogue order; `category` is a category id.")


class CandidateView(BaseModel):
    model_config = _OUT

    design_material: str = Field(description="A design the scan was compared with.")
    score: float = Field(description="How well it explains the photos (0..1, 1 perfectly).")
    part_id: str | None = Field(description="The first part of the session's batch with this design, if any.")
    part_title: str | None = Field(description="That part's title.")


class IdentificationView(BaseModel):
    model_config = _OUT

    outcome: IdentificationOutcome = Field(description="identified, or why no design was chosen.")
    design_material: str | None = Field(description="The design chosen; null when none was.")
    reason: str = Field(description="Why this design, or why none, in words.")
    at: str = Field(description="When the identification finished (ISO 8601, station time).")
    candidates: list[CandidateView] = Field(description="The closest designs, best first.")


class CriterionView(BaseModel):
    model_config = _OUT

    metric: str = Field(description="The metric judged.")
    verdict: str = Field(description="pass, review, fail, or abstain (too little evidence to judge: a review).")
    value: float | None = Field(description="Measured value; null when it could not be measured.")
    threshold: float = Field(description="The profile's limit.")
    comparator: str = Field(description="'<=' or '>=': how value is compared with threshold.")
    reason: str = Field(description="The QualityControlReason reported when it fails.")


class InspectionSummary(BaseModel):
    """What the screen shows of inspection_report.json; the whole report is at /api/scan/{uuid}/report/."""

    model_config = _OUT

    report: str = Field(description="The report's id (the scan's inspectionreport).")
    design_material: str = Field(description="The design the scan was compared against.")
    profile: str = Field(description="Inspection profile name.")
    created: str = Field(description="When the inspection ran (ISO 8601, UTC).")
    qc_machine: bool = Field(
        description="True when no criterion fails (criteria that abstained for want of evidence do not fail)."
    )
    qc_needs_review: bool = Field(
        description="A value lies in a review band, the alignment is uncertain, no part was aligned, or (with no "
        "failure) a criterion abstained."
    )
    qc_reasons: list[str] = Field(description="Reasons of the failed (or, on review, borderline) criteria.")
    criteria: list[CriterionView] = Field(description="Every criterion with its value and verdict.")
    notes: list[str] = Field(description="What the inspection could not judge, or judged with care, in words.")


class CameraView(BaseModel):
    model_config = _OUT

    camera: str = Field(description="Camera name, cam01…cam05.")
    url: str = Field(description="The full-resolution image: /api/scan/<uuid>/full_image/N/.")
    serial: str = Field(description="Serial number of the camera that took the image.")
    timestamp: str = Field(description="When the camera delivered the frame (ISO 8601, UTC).")
    exposure_us: float = Field(description="Exposure time in microseconds.")
    gain_db: float = Field(description="Analogue gain in dB.")
    width: int = Field(description="Image width in pixels.")
    height: int = Field(description="Image height in pixels.")


class ScanStationView(BaseModel):
    """What the station knows about a scan beyond the payload, as the operator's screen needs it."""

    model_config = _OUT

    captured_at: str = Field(description="When the scan was taken (the scan's `created`).")
    triggered_at: str = Field(description="When the trigger fired (ISO 8601, station time).")
    trigger_source: str = Field(description="What fired it: timer, mqtt, http, cli, button, hardware.")
    identification: IdentificationView | None = Field(description="Which design the station found; null before.")
    inspection: InspectionSummary | None = Field(description="The inspection's verdict; null until inspected.")
    overlays: str | None = Field(description="URL of the overlay contact sheet; null until inspected.")
    cameras: list[CameraView] = Field(description="How each image was taken, in camera order.")
    decisions: list[OperatorDecisionRecord] = Field(description="Every operator decision on the scan, oldest first.")
    is_backed_up: bool = Field(description="The scan directory was moved to the backup disk (still served).")
    images_deleted: bool = Field(description="Retention deleted the images from the backup disk; they are gone.")


class ScanDetail(BaseModel):
    model_config = _OUT

    scan: Scan = Field(description="The scan exactly as its last event carried it.")
    station: ScanStationView = Field(description="Identification, inspection, capture and cameras.")


# --- input ---


class LoginRequest(BaseModel):
    """An operator logs in at the screen with the station PIN."""

    model_config = _IN

    operator: str = Field(
        pattern=OPERATOR_NAME,
        description="Who is at the screen (badge id or name); decisions are recorded as 'http:<operator>'.",
    )
    pin: str = Field(min_length=1, max_length=64, description="The station PIN ([http] pin or its credential).")


class LoginResponse(BaseModel):
    model_config = _OUT

    token: str = Field(description="Send as 'Authorization: Bearer <token>'; also set as an HttpOnly cookie.")
    operator: str = Field(description="The operator the token decides as.")
    expires_at: str = Field(description="When the token stops working (ISO 8601, station time).")


class QcBody(BaseModel):
    """An operator's approve or reject: the MQTT `qc` request without the scan (it is in the path) and operator
    (the credential names it)."""

    model_config = _IN

    passed: bool = Field(description="true approves the part, false rejects it.")
    reasons: list[ReasonId] | None = Field(
        default=None, max_length=MAX_REASONS, description="QualityControlReason ids (GET /api/reasons/)."
    )
    comment: QcComment


class PartBody(BaseModel):
    """assign and reassign: the MQTT request without the scan."""

    model_config = _IN

    part_id: PartId = Field(description="The part of the active session's batch the scan is a copy of.")


class EmptyBody(BaseModel):
    """unassign: nothing beyond the scan in the path (an empty body is accepted too)."""

    model_config = _IN


class RejectBody(BaseModel):
    model_config = _IN

    comment: RejectComment


DecisionCommand = Literal["qc", "assign", "reassign", "unassign", "reject", "capture"]
