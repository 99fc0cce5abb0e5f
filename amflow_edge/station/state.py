"""The retained state topic: what a dashboard needs to know about the station at a glance."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from amflow_edge.drivers.base import CameraHealth
from amflow_edge.messaging.outbox import OutboxStats
from amflow_edge.messaging.payload import Batch, Output
from amflow_edge.messaging.webhook_ledger import WebhookStatus
from amflow_edge.panel.operator import OperatorView
from amflow_edge.station.calibration_drift import DriftReport
from amflow_edge.station.design_processing import ProcessingProgress
from amflow_edge.station.identification import AwaitingIdentification

Mode = Literal["starting", "running", "paused", "stopping", "stopped"]


class HttpStatus(BaseModel):
    """The HTTP API and operator's screen: where they listen, or why not (the station scans on without them)."""

    model_config = ConfigDict(extra="forbid")

    listening: list[str] = Field(description="http://host:port of each address served; empty when not serving.")
    error: str | None = Field(
        description="Why the HTTP API is not served (a taken port, say) and the fix; null when it is."
    )


class StationState(BaseModel):
    """Body of <prefix>/<station>/state (retained, re-published on change)."""

    model_config = ConfigDict(extra="forbid")

    station: str = Field(description="Station id.")
    at: str = Field(
        description="When this state was taken (ISO 8601 with the station's UTC offset). The state is the last one "
        "known: a station killed outright leaves its last state retained, so a subscriber tells whether the station "
        "is alive from `availability` (its will says 'offline'), and how old the state is from this."
    )
    version: str = Field(description="amflow-edge version.")
    mode: Mode = Field(
        description="What the daemon is doing; 'paused' means it refuses scans, see paused_reason; a clean stop ends "
        "with 'stopped'."
    )
    paused_reason: str | None = Field(description="Why the station refuses scans, and what to do.")
    broker_connected: bool = Field(description="Whether the station is connected to the broker.")
    outbox: OutboxStats = Field(description="Events not yet acknowledged by the broker.")
    webhooks: list[WebhookStatus] = Field(
        default_factory=list,
        description="Each [[webhooks]] target: its backlog, its last error, whether it is parked and why.",
    )
    disk_free_bytes: int = Field(description="Free space on the data root's filesystem.")
    driver: str = Field(description="Camera driver in use.")
    scan_session: str = Field(description="UUID of the current scanning session.")
    batch: Batch | None = Field(description="The batch of the current session, if any.")
    output: Output | None = Field(description="The output of the current session, if any.")
    operator: OperatorView = Field(
        description="The operator panel: the lamps' signal and the scan awaiting a decision."
    )
    design_processing: ProcessingProgress = Field(
        description="How far the session's designs are processed; scans wait for it before they are identified."
    )
    awaiting_identification: list[AwaitingIdentification] = Field(
        default_factory=list,
        description="Recent scans the station could not identify with confidence, with their candidates: the "
        "operator assigns or rejects each.",
    )
    copies_assigned: dict[str, int] = Field(
        default_factory=dict, description="part_id → scans of the session assigned to it so far."
    )
    over_counted: list[str] = Field(
        default_factory=list,
        description="part_ids of which the station saw more scans than the batch has copies; those scans went to "
        "review unassigned.",
    )
    cameras: list[CameraHealth] = Field(description="Health of each camera.")
    calibration_drift: DriftReport | None = Field(
        default=None,
        description="The last check of the cameras against their calibration (at a session start); a camera that "
        "moved is `moved` and its scans go to review until it is recalibrated. Null before the first check or "
        "with the check off.",
    )
    scans_stored: int = Field(description="Scans stored since start.")
    scans_failed: int = Field(
        description="Captures that failed since start (a camera, a full disk); triggers refused while paused are not "
        "counted."
    )
    last_scan: str | None = Field(description="UUID of the last stored scan.")
    http: HttpStatus | None = Field(
        default=None, description="The HTTP API and the operator's screen; null when [http] enabled is false."
    )
