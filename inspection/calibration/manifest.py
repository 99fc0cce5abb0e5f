"""manifest.json of a capture directory: which board, which cameras, which placements, so the solve needs nothing else.

DIR/manifest.json
DIR/empty/camNN.png            the empty tray (the commissioning references)
DIR/placement_00/camNN.png     the board flat on the tray: it defines the tray frame
DIR/placement_01/camNN.png …   the board tilted and shifted
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from amflow_edge.inspection.calibration.board import BoardDefinition
from amflow_edge.inspection.calibration.errors import CalibrationProcedureError
from amflow_edge.inspection.geometry.camera import CameraName

MANIFEST = "manifest.json"
EMPTY_DIR = "empty"


def placement_dir(index: int) -> str:
    return f"placement_{index:02d}"


class CapturedCamera(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: CameraName = Field(description="Station camera name; its pictures are <name>.png.")
    serial: str = Field(min_length=1, description="Serial of the camera that took the pictures.")
    width: int = Field(gt=0, le=100_000, description="Image width in pixels.")
    height: int = Field(gt=0, le=100_000, description="Image height in pixels.")


class CapturedPlacement(BaseModel):
    model_config = ConfigDict(extra="forbid")

    directory: str = Field(pattern=r"^placement_\d{2}$", description="Folder of this placement's pictures.")
    instruction: str = Field(description="What the person (or the mock) was asked to do with the board.")


class CaptureManifest(BaseModel):
    """What `calibrate capture` took; the first placement is the board lying flat, which defines the tray frame."""

    model_config = ConfigDict(extra="forbid")

    captured_at: datetime = Field(description="When the capture finished (UTC).")
    driver: str = Field(description="The camera driver that took the pictures (mock, pylon).")
    board: BoardDefinition = Field(description="The board the pictures show.")
    cameras: list[CapturedCamera] = Field(min_length=1, max_length=5, description="The cameras, in station order.")
    placements: list[CapturedPlacement] = Field(min_length=1, description="Board placements, flat one first.")


def load_manifest(directory: Path) -> CaptureManifest:
    path = directory / MANIFEST
    if not directory.is_dir():
        raise CalibrationProcedureError(
            f"{directory}: no such capture directory; run `amflow-edge calibrate capture` first"
        )
    if not path.is_file():
        raise CalibrationProcedureError(
            f"{path}: missing, so {directory} is not a finished capture; run `amflow-edge calibrate capture` again"
        )
    try:
        return CaptureManifest.model_validate_json(path.read_text(encoding="utf-8"))
    except (ValidationError, UnicodeDecodeError) as exc:
        raise CalibrationProcedureError(f"{path}: not a capture manifest ({exc}); capture again") from None
