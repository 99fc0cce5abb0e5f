"""Whether the cameras still look where their calibration says: checked at every session start.

Each session's empty-tray references are compared with the pictures of the empty tray taken at
commissioning (`calibrate solve` keeps them as `references/camNN.png` beside the `camNN.yaml`). A
camera whose view moved by more than `[calibration] max_drift_px` is named in the state topic and
the log, and its scans are not inspected (`insufficient_evidence`) until it is recalibrated: a
verdict measured through a calibration that no longer holds would look sure and be wrong.

A calibration without those pictures (the demo rig's, or one made by other tools) gets a baseline
instead: the first session's empty tray after the calibration file last changed, kept in the state
directory and named in the log, so a later bump is still caught.
"""

from __future__ import annotations

import hashlib
import shutil
from datetime import UTC, datetime
from pathlib import Path

import cv2
import numpy as np
import structlog
from pydantic import BaseModel, ConfigDict, Field

from amflow_edge.common.durable import replace_durably, replacing
from amflow_edge.drivers.base import CameraSettings
from amflow_edge.inspection.calibration.drift import DriftError, ImageDrift, measure_drift

log = structlog.get_logger(__name__)

DRIFT_FILE = "calibration_drift.json"
BASELINE_DIR = "drift_baselines"


class CameraDrift(BaseModel):
    """One camera's view at the last session start, against its commissioning picture."""

    model_config = ConfigDict(extra="forbid")

    camera: str = Field(description="Camera name (cam01…cam05).")
    drift: ImageDrift | None = Field(description="How far the view moved; null when it could not be measured.")
    moved: bool = Field(description="The view moved by more than max_drift_px: recalibrate before inspecting.")
    problem: str | None = Field(description="Why the drift could not be measured, if it could not.")
    commissioning: str = Field(description="The picture it was compared with.")


class DriftReport(BaseModel):
    """The last drift check; kept in the state directory for `doctor` and for a restart."""

    model_config = ConfigDict(extra="forbid")

    measured_at: str = Field(description="When the check ran (ISO 8601, UTC).")
    scan_session: str = Field(description="The session whose empty-tray references were checked.")
    max_drift_px: float = Field(gt=0, description="The threshold the check used.")
    cameras: list[CameraDrift] = Field(description="One entry per camera.")

    def moved(self) -> list[str]:
        return [c.camera for c in self.cameras if c.moved]


def commissioning_picture(camera: CameraSettings) -> Path:
    """Where `calibrate solve` keeps the empty tray it was calibrated against."""
    return Path(camera.calibration).parent / "references" / f"{camera.name}.png"


class CalibrationDrift:
    def __init__(self, cameras: list[CameraSettings], max_drift_px: float, state_dir: Path) -> None:
        self._cameras = list(cameras)
        self._max_drift_px = max_drift_px
        self._state_dir = state_dir
        self._report = read_drift_report(state_dir)

    @property
    def report(self) -> DriftReport | None:
        return self._report

    def moved(self) -> list[str]:
        return [] if self._report is None else self._report.moved()

    def refusal(self) -> str | None:
        """Why no scan can be inspected now, or None."""
        if self._report is None or not self._report.moved():
            return None
        worst = ", ".join(
            f"{c.camera} by {c.drift.shift_px:.1f} px" for c in self._report.cameras if c.moved and c.drift is not None
        )
        return (
            f"camera moved since its calibration ({worst}, more than {self._max_drift_px} px); "
            "recalibrate it (amflow-edge calibrate) and start a new session"
        )

    def check(self, reference_dir: Path, scan_session: str) -> DriftReport:
        """Compares the session's empty_camNN.png with each camera's commissioning picture, and keeps the result."""
        cameras = [self._check_camera(camera, reference_dir) for camera in self._cameras]
        report = DriftReport(
            measured_at=datetime.now(UTC).isoformat(timespec="seconds"),
            scan_session=scan_session,
            max_drift_px=self._max_drift_px,
            cameras=cameras,
        )
        self._state_dir.mkdir(parents=True, exist_ok=True)
        replace_durably(self._state_dir / DRIFT_FILE, report.model_dump_json(indent=2).encode())
        self._report = report
        for entry in cameras:
            if entry.moved and entry.drift is not None:
                log.error(
                    "camera moved since its calibration; its scans are not inspected until it is recalibrated",
                    camera=entry.camera,
                    shift_px=entry.drift.shift_px,
                    rotation_deg=entry.drift.rotation_deg,
                    max_drift_px=self._max_drift_px,
                )
            elif entry.problem is not None:
                log.warning("camera drift not measured", camera=entry.camera, problem=entry.problem)
        if not report.moved():
            log.info(
                "cameras where their calibration says",
                shift_px={c.camera: c.drift.shift_px for c in cameras if c.drift is not None},
            )
        return report

    def _check_camera(self, camera: CameraSettings, reference_dir: Path) -> CameraDrift:
        current_path = reference_dir / f"empty_{camera.name}.png"
        commissioning = commissioning_picture(camera)
        if not commissioning.is_file():
            commissioning = self._baseline(camera, current_path)
        try:
            drift = measure_drift(_read(commissioning), _read(current_path))
        except DriftError as exc:
            return CameraDrift(
                camera=camera.name, drift=None, moved=False, problem=str(exc), commissioning=str(commissioning)
            )
        return CameraDrift(
            camera=camera.name,
            drift=drift,
            moved=drift.shift_px > self._max_drift_px,
            problem=None,
            commissioning=str(commissioning),
        )

    def _baseline(self, camera: CameraSettings, current: Path) -> Path:
        """The first picture taken since the calibration file last changed stands in for a commissioning one."""
        digest = hashlib.sha256(Path(camera.calibration).read_bytes()).hexdigest()[:12]
        baseline = self._state_dir / BASELINE_DIR / f"{camera.name}-{digest}.png"
        if not baseline.is_file() and current.is_file():
            baseline.parent.mkdir(parents=True, exist_ok=True)
            with replacing(baseline) as temporary:
                shutil.copyfile(current, temporary)
            log.warning(
                "no commissioning picture of the empty tray beside the calibration; this session's is the baseline "
                "later sessions are checked against (amflow-edge calibrate keeps one)",
                camera=camera.name,
                expected=str(commissioning_picture(camera)),
                baseline=str(baseline),
            )
        return baseline


def _read(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise DriftError(f"{path} cannot be read as an image; take the references again (start a new session)")
    return image


def read_drift_report(state_dir: Path) -> DriftReport | None:
    """The last check, or None if there was none or its file is unreadable (the next session start rewrites it)."""
    path = state_dir / DRIFT_FILE
    try:
        return DriftReport.model_validate_json(path.read_bytes())
    except (OSError, ValueError):
        return None
