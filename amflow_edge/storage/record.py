"""scan.json: the scan as published plus what the station knew when it took it.

A scan directory must describe itself on a backup disk years later, without the station's
database: which cameras (by serial) took which image, with which exposure, at what instant.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from amflow_edge.inspection.identification.models import Outcome
from amflow_edge.messaging.payload import Scan


class CameraShotRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")

    file: str = Field(description="Image file name inside the scan directory.")
    serial: str = Field(description="Serial number of the camera that took the image.")
    timestamp: str = Field(description="When the camera delivered the frame (ISO 8601, UTC).")
    exposure_us: float = Field(description="Exposure time in microseconds.")
    gain_db: float = Field(description="Analogue gain in dB.")
    width: int = Field(description="Image width in pixels.")
    height: int = Field(description="Image height in pixels.")
    calibration: str = Field(description="Calibration file in force when the image was taken.")
    extra: dict[str, Any] = Field(default_factory=dict, description="Driver-specific facts about the frame.")


class OperatorDecisionRecord(BaseModel):
    """One operator decision, kept so an audit can tell who (which button, which system) decided when."""

    model_config = ConfigDict(extra="forbid")

    passed: bool = Field(description="Approved (true) or rejected (false).")
    source: Literal["button", "mqtt", "http"] = Field(description="Which path the decision came through.")
    device: str = Field(
        description="The button input ('evdev:/dev/input/by-id/…:KEY_F13'), the requesting system ('mqtt:<operator>') "
        "or the HTTP API's logged-in operator ('http:<operator>')."
    )
    at: str = Field(description="When the button went down or the request arrived (ISO 8601, station time).")
    comment: str | None = Field(default=None, description="The comment given with the decision.")
    reasons: list[str] | None = Field(default=None, description="Reasons given with the decision, if any.")


class AssignmentChangeRecord(BaseModel):
    """One change of the scan's assignment asked for by someone (an operator, a plant system): the events say
    what changed, this says who asked, so an audit can tell a screen's click from an MES request."""

    model_config = ConfigDict(extra="forbid")

    change: Literal["assign", "reassign", "unassign", "reject", "confirm"] = Field(description="What was asked for.")
    part_id: str | None = Field(default=None, description="The part assigned to (assign, reassign, confirm).")
    comment: str | None = Field(default=None, description="The reject's comment.")
    source: Literal["button", "mqtt", "http", "station"] = Field(description="Which path the request came through.")
    device: str = Field(
        description="Who asked: 'http:<operator>' (the HTTP API's logged-in operator), 'mqtt' or 'mqtt:<operator>' "
        "(a plant system, with the operator it names), the button's input, or 'station'."
    )
    at: str = Field(description="When the change was made (ISO 8601, station time).")


IdentificationOutcome = Outcome
"""identified, or why no design was chosen (inspection.identification.models)."""


class CandidateRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")

    design_material: str = Field(description="A design of the session the scan was compared with.")
    score: float = Field(ge=0.0, le=1.0, description="How well it explains the photos (1: perfectly).")


class IdentifiedAs(BaseModel):
    """What the worker concluded about which design is on the tray, and why, before the station stamps it."""

    model_config = ConfigDict(extra="forbid")

    outcome: IdentificationOutcome = Field(description="identified, or why no design was chosen.")
    design_material: str | None = Field(description="The design chosen; None when none was.")
    candidates: list[CandidateRecord] = Field(
        default_factory=list, max_length=10, description="The closest designs, best first."
    )
    reason: str = Field(description="Why this design, or why none, in words.")
    appearance: float | None = Field(
        default=None,
        description="The part's measured reflectance against the tray; what material looks are learned from.",
    )
    appearance_measure: str | None = Field(
        default=None,
        description="How the appearance was measured; looks are learned only from appearances measured as they are "
        "now (None: before it was recorded).",
    )


class IdentificationRecord(IdentifiedAs):
    """The identification as the scan keeps it: the operator's screen, the button's confirm and the state topic
    read this; the events carry only its consequence (design_material, assignment)."""

    at: str = Field(description="When the identification finished (ISO 8601, station time).")


class StationMetadata(BaseModel):
    model_config = ConfigDict(extra="forbid")

    station_id: str = Field(description="The station that took the scan.")
    software_version: str = Field(description="amflow-edge version.")
    driver: str = Field(description="Camera driver that took the images.")
    trigger_source: str = Field(description="What fired the trigger: timer, mqtt, cli, button, hardware.")
    triggered_at: str = Field(description="When the trigger fired (ISO 8601, station time).")
    cameras: dict[str, CameraShotRecord] = Field(description="Per camera name, how its image was taken.")
    rig: dict[str, Any] = Field(default_factory=dict, description="Rig-level driver facts (the mock's scene truth).")
    decisions: list[OperatorDecisionRecord] = Field(
        default_factory=list, description="Every operator decision on the scan, oldest first."
    )
    assignments: list[AssignmentChangeRecord] = Field(
        default_factory=list,
        description="Every requested change of the assignment, oldest first (absent in scans stored before it).",
    )
    identification: IdentificationRecord | None = Field(
        default=None, description="The station's identification of the part, once it has run."
    )
    is_backed_up: bool = Field(default=False, description="Moved to the backup disk (AM-Vision's is_backed_up).")
    backup_path: str | None = Field(default=None, description="Where the scan directory is on the backup disk.")
    backed_up_at: str | None = Field(default=None, description="When it was moved (ISO 8601, station time).")
    deleted_at: str | None = Field(
        default=None, description="When retention deleted it from the backup disk; its images are gone."
    )


class ScanRecord(BaseModel):
    """The content of scan.json."""

    model_config = ConfigDict(extra="forbid")

    scan: Scan = Field(description="The scan exactly as the last published event carried it.")
    station: StationMetadata = Field(description="How the scan was taken.")
