"""The retained state topic: what a dashboard needs to know about the station at a glance."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from drivers.base import CameraHealth


class StationState(BaseModel):
    """Body of <prefix>/<station>/state (retained, re-published on change)."""

    model_config = ConfigDict(extra="forbid")

    station: str = Field(description="Station id.")
    version: str = Field(description="amflow-edge version.")
    mode: Literal["starting", "running", "stopping"] = Field(description="What the daemon is doing.")
    driver: str = Field(description="Camera driver in use.")
    scan_session: str = Field(description="UUID of the current scanning session.")
    cameras: list[CameraHealth] = Field(description="Health of each camera.")
    scans_stored: int = Field(description="Scans stored since start.")
    scans_failed: int = Field(description="Triggers that produced no scan since start.")
    last_scan: str | None = Field(description="UUID of the last stored scan.")
