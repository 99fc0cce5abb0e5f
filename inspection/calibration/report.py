"""calibration.json and the pictures a commissioning engineer looks at: where each camera saw corners, and how
far the solved model leaves each corner (the arrows, magnified, show a pattern when the lens model is wrong)."""

from __future__ import annotations

from datetime import datetime

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from amflow_edge.inspection.calibration.board import BoardDefinition

REPORT_FILE = "calibration.json"
MAX_RMS_PX = 0.3
"""The commissioning target for reprojection RMS (issue #25), per camera and per view: above it the calibration
still works but measures worse than the station is specified for; `calibrate solve` warns, the health check
(amflow_edge.ops.calibration_health) reads this same figure."""
TRAY_FRAME = (
    "Tray frame = the board lying flat in the first placement, face up: origin under the board's centre on the "
    "tray's top surface (z = 0; the printed surface is board.thickness_mm above it), x along the board's rows, "
    "y towards its first row, z up; millimetres."
)
RESIDUAL_GAIN = 300.0
_COLOURS = [(0, 200, 255), (0, 255, 0), (255, 128, 0), (255, 0, 255), (0, 128, 255), (255, 255, 0), (128, 0, 255)]


class ViewReport(BaseModel):
    model_config = ConfigDict(extra="forbid")

    placement: str = Field(description="Placement folder of the picture.")
    corners: int = Field(ge=0, description="Corners used in the solve.")
    rms_px: float = Field(ge=0, description="RMS reprojection error of this view's corners, pixels.")


class CameraReport(BaseModel):
    model_config = ConfigDict(extra="forbid")

    camera: str = Field(description="Station camera name.")
    serial: str = Field(description="Camera serial.")
    rms_px: float = Field(ge=0, description="RMS reprojection error over all its corners, pixels.")
    corners: int = Field(ge=0, description="Corners used in the solve, over all placements.")
    rejected_corners: int = Field(
        ge=0, description="Detected corners left out as outliers (over 0.3 px and 6× median)."
    )
    coverage: float = Field(
        ge=0,
        le=1,
        description="Share of a 12 × 10 grid over the image holding a corner; below ~0.3 the lens "
        "distortion near the image edges is extrapolated.",
    )
    focal_px: tuple[float, float] = Field(description="fx, fy in pixels.")
    centre_mm: tuple[float, float, float] = Field(description="Camera centre in the tray frame, mm.")
    views: list[ViewReport] = Field(description="Per placement.")


class CalibrationReport(BaseModel):
    """CALDIR/calibration.json: how good the calibration is, for the commissioning record and the drift check."""

    model_config = ConfigDict(extra="forbid")

    solved_at: datetime = Field(description="When the solve ran (UTC).")
    capture: str = Field(description="The capture directory solved (absolute path).")
    board: BoardDefinition = Field(description="The board the capture shows.")
    tray_frame: str = Field(default=TRAY_FRAME, description="How the tray frame was defined.")
    rms_px: float = Field(ge=0, description="RMS reprojection error over every corner of every camera, pixels.")
    cameras: list[CameraReport] = Field(description="Per camera, in station order.")


def rms_warnings(report: CalibrationReport) -> list[str]:
    """Every camera and every view whose RMS is above MAX_RMS_PX, in words for the commissioning engineer."""
    warnings = []
    for camera in report.cameras:
        if camera.rms_px > MAX_RMS_PX:
            warnings.append(
                f"{camera.camera}: RMS {camera.rms_px:.3f} px is above the {MAX_RMS_PX:g} px target; look at "
                f"report/{camera.camera}_residuals.png (a pattern in the arrows: focus or lens; one placement's "
                "arrows alone: the board moved) and capture again"
            )
        for view in camera.views:
            if view.rms_px > MAX_RMS_PX:
                warnings.append(
                    f"{camera.camera}/{view.placement}: RMS {view.rms_px:.3f} px is above the {MAX_RMS_PX:g} px target"
                )
    return warnings


def coverage_picture(background: np.ndarray, placements: list[np.ndarray]) -> np.ndarray:
    """The empty tray, dimmed, with each placement's corners in its own colour; half size."""
    canvas = cv2.cvtColor((background // 2).astype(np.uint8), cv2.COLOR_GRAY2BGR)
    for index, pixels in enumerate(placements):
        for x, y in pixels:
            cv2.circle(canvas, (round(x), round(y)), 7, _COLOURS[index % len(_COLOURS)], 3, cv2.LINE_AA)
    return cv2.resize(canvas, None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA)


def residual_picture(background: np.ndarray, pixels: list[np.ndarray], residuals: list[np.ndarray]) -> np.ndarray:
    """Each corner's residual as an arrow RESIDUAL_GAIN times its length, on the dimmed empty tray; half size."""
    canvas = cv2.cvtColor((background // 3).astype(np.uint8), cv2.COLOR_GRAY2BGR)
    for points, errors in zip(pixels, residuals, strict=True):
        for (x, y), (dx, dy) in zip(points, errors, strict=True):
            start = (round(x), round(y))
            end = (round(x + RESIDUAL_GAIN * dx), round(y + RESIDUAL_GAIN * dy))
            cv2.arrowedLine(canvas, start, end, (0, 255, 255), 2, cv2.LINE_AA, tipLength=0.2)
    cv2.putText(
        canvas,
        f"residuals x{RESIDUAL_GAIN:g}",
        (40, 80),
        cv2.FONT_HERSHEY_SIMPLEX,
        2.0,
        (255, 255, 255),
        3,
        cv2.LINE_AA,
    )
    return cv2.resize(canvas, None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA)
