"""The contract every camera driver meets, so the capture loop never knows which hardware it drives.

A driver owns all five cameras of a station: a scan is only meaningful when every camera
saw the same instant, so triggering and grabbing are whole-rig operations, not per camera.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from amflow_edge.common.config_file import ConfigPath

CAMERA_NAMES: tuple[str, ...] = ("cam01", "cam02", "cam03", "cam04", "cam05")


class CameraSettings(BaseModel):
    """One camera of the station as the integrator configures it."""

    model_config = ConfigDict(extra="forbid")

    name: Literal["cam01", "cam02", "cam03", "cam04", "cam05"] = Field(
        description="Station-wide camera name; decides the image file name scan_<name>.png."
    )
    serial: str = Field(min_length=1, description="Camera serial number; cameras are mapped by it, never by order.")
    calibration: ConfigPath = Field(
        description="OpenCV-style calibration YAML of this camera (intrinsics, world→camera pose)."
    )
    width: int = Field(default=2448, gt=0, description="Image width in pixels.")
    height: int = Field(default=2048, gt=0, description="Image height in pixels.")
    pixel_format: Literal["Mono8"] = Field(default="Mono8", description="Pixel format; the station stores 8-bit grey.")
    exposure_us: float = Field(default=8000.0, gt=0, description="Exposure time in microseconds.")
    gain_db: float = Field(default=0.0, ge=0, description="Analogue gain in dB.")


@dataclass(frozen=True)
class Frame:
    """One camera's image of one trigger, with what the record of the scan needs to know about it."""

    camera: str
    image: np.ndarray
    timestamp: datetime
    serial: str
    exposure_us: float
    """As the camera reports it for this frame (chunk data, or read back after setting): what the scan records, since
    a camera rounds or limits what it is given."""
    gain_db: float
    extra: dict[str, Any] = field(default_factory=dict)
    camera_timestamp_ticks: int | None = None
    """The camera's own clock at the frame, in ticks of camera_tick_hz; None where the camera keeps none. Frames of one
    trigger are compared by it: the host's arrival times include the transfer."""
    camera_tick_hz: float | None = None


@dataclass(frozen=True)
class Shot:
    """All cameras' frames of one trigger, plus rig-level facts for the scan record."""

    frames: dict[str, Frame]
    metadata: dict[str, Any] = field(default_factory=dict)


class CameraHealth(BaseModel):
    model_config = ConfigDict(extra="forbid")

    camera: str = Field(description="Configured camera name.")
    serial: str = Field(description="Serial number the camera is mapped by.")
    connected: bool = Field(description="Whether the camera is present and open.")
    detail: str = Field(default="", description="Why it is not healthy, for the state topic and logs.")


class DriverError(RuntimeError):
    """A driver problem an operator or integrator can act on; the message names the camera and the fix."""


class GrabError(DriverError):
    """A trigger did not yield one good frame from every camera; the scan must not be stored."""

    def __init__(self, camera: str, reason: str) -> None:
        super().__init__(f"{camera}: {reason}")
        self.camera = camera
        self.reason = reason


@runtime_checkable
class CameraDriver(Protocol):
    """What the capture loop needs from a rig of cameras."""

    def open(self) -> None:
        """Connect to every configured camera; raises DriverError naming any missing one."""

    def trigger(self) -> None:
        """Expose all cameras together (software trigger, or arm for a hardware trigger)."""

    def grab(self, timeout_s: float) -> Shot:
        """One frame per configured camera for the last trigger, or GrabError within timeout_s."""

    def close(self) -> None:
        """Release the cameras so the next process can open them."""

    def health(self) -> list[CameraHealth]:
        """Per-camera health for the state topic."""


@runtime_checkable
class ReferenceSource(Protocol):
    """A rig that can take the empty-tray reference images inspection needs (the mock renders them)."""

    def grab_reference(self, timeout_s: float) -> Shot:
        """One frame per camera of the empty tray."""


@runtime_checkable
class HardwareTriggered(Protocol):
    """A rig fired by a hardware line (a part-present sensor): the station waits for frames instead of triggering."""

    @property
    def hardware_triggered(self) -> bool: ...

    def wait_shot(self, timeout_s: float) -> Shot | None:
        """The rig's frames of the next pulse, or None when no pulse came within timeout_s."""


@runtime_checkable
class Reconnecting(Protocol):
    """A rig whose cameras can disappear and come back (cables, power, network)."""

    def needs_reconnect(self) -> bool:
        """Cheap and thread-safe: whether reconnect() has work now. Asked by the supervisor thread."""

    def reconnect(self) -> None:
        """Reopen lost cameras by serial, with backoff. Runs on the capture thread, between scans."""
