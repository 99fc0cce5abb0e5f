"""Whether the cameras still look where their calibration says: checked at every session start and every start.

Each session's empty-tray references (and, at a start, a fresh picture from every camera) are compared
with the pictures of the empty tray taken at commissioning (`calibrate solve` keeps them as
`references/camNN.png` beside the `camNN.yaml`). A camera whose view moved by more than
`[calibration] max_drift_px`, or whose view can no longer be compared at all, is named in the state
topic and the log, and the session's scans are not inspected (`insufficient_evidence`) until a check
passes again: a verdict measured through a calibration that no longer holds would look sure and be
wrong. Scans of sessions checked before the bump keep being inspected: their pictures were taken
while the calibration held.

A calibration without those pictures (the demo rig's, or one made by other tools) gets a baseline
instead: the first picture taken after the calibration file last changed, kept in the state
directory and named in the log, so a later bump is still caught.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path

import cv2
import numpy as np
import structlog
from pydantic import BaseModel, ConfigDict, Field

from amflow_edge.common.durable import replace_durably, replacing
from amflow_edge.common.scan_layout import reference_image
from amflow_edge.drivers.base import CameraSettings
from amflow_edge.inspection.calibration.drift import DriftError, ImageDrift, measure_drift
from amflow_edge.inspection.geometry.camera import CameraName

log = structlog.get_logger(__name__)

DRIFT_FILE = "calibration_drift.json"
BASELINE_DIR = "drift_baselines"
KEPT_SESSIONS = 50


class CameraDrift(BaseModel):
    """One camera's view at the last check, against its commissioning picture."""

    model_config = ConfigDict(extra="forbid")

    camera: CameraName = Field(description="Camera name.")
    drift: ImageDrift | None = Field(description="How far the view moved; null when it could not be measured.")
    moved: bool = Field(description="The view moved by more than max_drift_px: recalibrate before inspecting.")
    problem: str | None = Field(
        description="Why the view could not be compared with the commissioning picture; its scans are not inspected "
        "either, since a camera knocked far enough no longer resembles its picture at all."
    )
    commissioning: str = Field(description="The picture it was compared with.")
    calibration_sha256: str = Field(description="First 12 hex digits of the calibration file the check was made for.")


class DriftReport(BaseModel):
    """One check of every camera; the state topic carries the last one."""

    model_config = ConfigDict(extra="forbid")

    measured_at: datetime = Field(description="When the check ran (UTC).")
    scan_session: str = Field(description="The session the check was made in.")
    max_drift_px: float = Field(gt=0, description="The threshold the check used.")
    cameras: list[CameraDrift] = Field(description="One entry per camera.")

    def moved(self) -> list[str]:
        return [c.camera for c in self.cameras if c.moved]

    def unconfirmed(self) -> list[str]:
        return [c.camera for c in self.cameras if c.problem is not None]

    def refusal(self) -> str | None:
        """Why this session's scans cannot be inspected, or None."""
        parts = [
            f"{c.camera} moved by {c.drift.shift_px:.1f} px (over {self.max_drift_px} px)"
            for c in self.cameras
            if c.moved and c.drift is not None
        ]
        parts += [
            f"{c.camera} cannot be compared with its commissioning picture ({c.problem})"
            for c in self.cameras
            if c.problem
        ]
        if not parts:
            return None
        return (
            f"camera not where its calibration says: {'; '.join(parts)}; recalibrate (amflow-edge calibrate capture and "
            "solve), then start a new session or restart the station"
        )


class DriftRecord(BaseModel):
    """`<state_dir>/calibration_drift.json`: the last check, and which sessions' scans are held back."""

    model_config = ConfigDict(extra="forbid")

    latest: DriftReport = Field(description="The last check.")
    refused_sessions: dict[str, str] = Field(
        default_factory=dict, description="scan_session → why its scans are not inspected (the last check in it)."
    )


def commissioning_picture(camera: CameraSettings) -> Path:
    """Where `calibrate solve` keeps the empty tray it was calibrated against."""
    return Path(camera.calibration).parent / "references" / f"{camera.name}.png"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


class CalibrationDrift:
    """The station's drift checks: run on the capture thread (or before it starts), read from any thread."""

    def __init__(self, cameras: list[CameraSettings], max_drift_px: float, state_dir: Path) -> None:
        self._cameras = list(cameras)
        self._max_drift_px = max_drift_px
        self._state_dir = state_dir
        self._lock = threading.Lock()
        self._record = read_drift_record(state_dir)

    @property
    def report(self) -> DriftReport | None:
        record = self._record
        return None if record is None else record.latest

    def refusal(self, scan_session: str) -> str | None:
        """Why scans of `scan_session` cannot be inspected, or None."""
        record = self._record
        return None if record is None else record.refused_sessions.get(scan_session)

    def check(self, reference_dir: Path, scan_session: str) -> DriftReport | None:
        """The session's stored empty_camNN.png against each camera's commissioning picture."""
        images: dict[str, np.ndarray] = {}
        for camera in self._cameras:
            image = cv2.imread(str(reference_dir / reference_image(camera.name)), cv2.IMREAD_UNCHANGED)
            if image is not None:
                images[camera.name] = np.asarray(image)
        return self.check_images(images, scan_session)

    def check_images(self, images: Mapping[str, np.ndarray], scan_session: str) -> DriftReport | None:
        """Pictures just taken (a camera missing from `images` is reported as not compared) against commissioning.
        None when the check itself could not run (a calibration or baseline file that cannot be read or written):
        nothing then confirms the calibration, so the session's scans wait too."""
        try:
            report = DriftReport(
                measured_at=datetime.now(UTC),
                scan_session=scan_session,
                max_drift_px=self._max_drift_px,
                cameras=[self._check_camera(camera, images.get(camera.name)) for camera in self._cameras],
            )
        except (OSError, ValueError) as exc:
            log.error("the cameras' drift could not be checked; the session's scans go to review", error=str(exc))
            self._failed(scan_session, str(exc))
            return None
        self._keep(report, scan_session, report.refusal())
        self._log(report)
        return report

    def _failed(self, scan_session: str, why: str) -> None:
        """The check itself could not run: nothing confirms the calibration, so the session's scans wait too."""
        record = self._record
        latest = record.latest if record is not None else None
        if latest is None:
            latest = DriftReport(
                measured_at=datetime.now(UTC), scan_session=scan_session, max_drift_px=self._max_drift_px, cameras=[]
            )
        self._keep(latest, scan_session, f"the cameras' calibration could not be checked ({why}); see the station log")

    def _keep(self, report: DriftReport, scan_session: str, refusal: str | None) -> None:
        with self._lock:
            sessions = dict(self._record.refused_sessions) if self._record is not None else {}
            sessions.pop(scan_session, None)
            if refusal is not None:
                sessions[scan_session] = refusal
            while len(sessions) > KEPT_SESSIONS:
                sessions.pop(next(iter(sessions)))
            record = DriftRecord(latest=report, refused_sessions=sessions)
            self._record = record
            try:
                self._state_dir.mkdir(parents=True, exist_ok=True)
                replace_durably(self._state_dir / DRIFT_FILE, record.model_dump_json(indent=2).encode())
            except OSError as exc:  # a full disk: the station still knows, and the next check writes it
                log.error(
                    "the drift check could not be kept on disk", path=str(self._state_dir / DRIFT_FILE), error=str(exc)
                )

    def _log(self, report: DriftReport) -> None:
        for entry in report.cameras:
            if entry.moved and entry.drift is not None:
                log.error(
                    "camera moved since its calibration; scans are not inspected until it is recalibrated",
                    camera=entry.camera,
                    shift_px=entry.drift.shift_px,
                    rotation_deg=entry.drift.rotation_deg,
                    max_drift_px=self._max_drift_px,
                )
            elif entry.problem is not None:
                log.error(
                    "camera's view cannot be compared with its commissioning picture; scans are not inspected",
                    camera=entry.camera,
                    problem=entry.problem,
                )
        if report.refusal() is None:
            log.info(
                "cameras where their calibration says",
                shift_px={c.camera: c.drift.shift_px for c in report.cameras if c.drift is not None},
            )

    def _check_camera(self, camera: CameraSettings, image: np.ndarray | None) -> CameraDrift:
        calibration_sha = _sha256(Path(camera.calibration))
        commissioning = commissioning_picture(camera)
        if not commissioning.is_file():
            commissioning = self._baseline(camera, calibration_sha, image)

        def entry(drift: ImageDrift | None, problem: str | None) -> CameraDrift:
            return CameraDrift(
                camera=camera.name,
                drift=drift,
                moved=drift is not None and drift.shift_px > self._max_drift_px,
                problem=problem,
                commissioning=str(commissioning),
                calibration_sha256=calibration_sha,
            )

        if image is None:
            return entry(None, "no picture from this camera to compare")
        reference = cv2.imread(str(commissioning), cv2.IMREAD_UNCHANGED)
        if reference is None:
            return entry(None, f"{commissioning} cannot be read as an image")
        try:
            return entry(measure_drift(reference, image), None)
        except DriftError as exc:
            return entry(None, str(exc))

    def _baseline(self, camera: CameraSettings, calibration_sha: str, image: np.ndarray | None) -> Path:
        """The first picture taken since the calibration file last changed stands in for a commissioning one."""
        baseline = self._state_dir / BASELINE_DIR / f"{camera.name}-{calibration_sha}.png"
        if not baseline.is_file() and image is not None:
            baseline.parent.mkdir(parents=True, exist_ok=True)
            with replacing(baseline) as temporary:
                if not cv2.imwrite(str(temporary), image):
                    raise OSError(f"could not write {baseline}")
            log.warning(
                "no commissioning picture of the empty tray beside the calibration; this picture is the baseline "
                "later checks compare with (amflow-edge calibrate keeps one)",
                camera=camera.name,
                expected=str(commissioning_picture(camera)),
                baseline=str(baseline),
            )
        return baseline


def read_drift_record(state_dir: Path) -> DriftRecord | None:
    """The last check, or None if there was none or its file is unreadable (the next check rewrites it)."""
    try:
        return DriftRecord.model_validate_json((state_dir / DRIFT_FILE).read_bytes())
    except (OSError, ValueError):
        return None


def read_drift_report(state_dir: Path) -> DriftReport | None:
    record = read_drift_record(state_dir)
    return None if record is None else record.latest
