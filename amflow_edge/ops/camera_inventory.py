"""Which Basler cameras are connected, and whether they are the ones the station is configured with.

Serial numbers are the only identity that survives a re-cabled switch, so everything here matches by
serial. pypylon is imported only when cameras are listed: a mock station never loads the SDK.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from amflow_edge.config.station import StationConfig
from amflow_edge.ops.doctor import CheckResult


class ConnectedCamera(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(description="Camera model name.")
    serial: str = Field(description="Serial number.")
    interface: str = Field(description="Transport: BaslerGigE, BaslerUsb, BaslerCamEmu.")
    address: str = Field(description="IP address (GigE) or device GUID (USB), where pylon knows one.")
    configured_as: str | None = Field(description="The station camera (cam01…) with this serial, if any.")


def _address(info: object) -> str:
    for getter in ("GetIpAddress", "GetDeviceGUID", "GetFullName"):
        try:
            value = str(getattr(info, getter)())
        except Exception:  # noqa: BLE001 - pylon raises for properties a transport lacks
            continue
        if value and value != "N/A":
            return value
    return ""


def connected_cameras(serial_to_name: dict[str, str]) -> list[ConnectedCamera]:
    from amflow_edge.drivers.pylon import enumerate_cameras

    return [
        ConnectedCamera(
            model=info.GetModelName(),
            serial=info.GetSerialNumber(),
            interface=info.GetDeviceClass(),
            address=_address(info),
            configured_as=serial_to_name.get(info.GetSerialNumber()),
        )
        for info in enumerate_cameras()
    ]


def camera_check(cfg: StationConfig) -> CheckResult:
    """The doctor's camera row for a Basler station: every configured serial connected."""
    cameras = connected_cameras({c.serial: c.name for c in cfg.cameras})
    present = {c.serial for c in cameras}
    missing = [f"{c.name} (serial {c.serial})" for c in cfg.cameras if c.serial not in present]
    if missing:
        seen = ", ".join(f"{c.serial} ({c.model})" for c in cameras) or "none"
        return CheckResult(
            name="cameras",
            ok=False,
            detail=f"not connected: {', '.join(missing)}; connected: {seen}",
            fix="check cables and power; `amflow-edge cameras list --config FILE` shows serials",
        )
    return CheckResult(name="cameras", ok=True, detail=f"all {len(cfg.cameras)} cameras connected")
