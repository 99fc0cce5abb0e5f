"""What `doctor` says of the calibration beyond "the files are there": how old, how good, and whether it still holds.

The integrator's commissioning record (`calibration.json`, written by `calibrate solve`) gives the
age and the reprojection RMS; the station's last drift check (`calibration_drift.json` in the state
directory) says whether a camera moved since. A calibration made by other tools has neither record
and is reported by its files' age alone.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from amflow_edge.config.station import StationConfig
from amflow_edge.inspection.calibration.report import MAX_RMS_PX, REPORT_FILE, CalibrationReport
from amflow_edge.station.calibration_drift import read_drift_report

# Above the target (MAX_RMS_PX) a calibration is worth redoing; above this it is unfit to inspect with: the board
# was misdetected or the lens model does not hold.
UNFIT_RMS_PX = 1.0


class CalibrationHealth(BaseModel):
    model_config = ConfigDict(extra="forbid")

    lines: list[str] = Field(description="One line per camera, then the drift check.")
    problems: list[str] = Field(description="What makes the calibration unfit to inspect with.")
    warnings: list[str] = Field(description="What is worth a look: no commissioning record, no drift check yet.")


def _age(moment: datetime, now: datetime) -> str:
    days = (now - moment).total_seconds() / 86400
    return f"{days:.0f} days" if days >= 2 else f"{days * 24:.0f} hours"


def _report(folder: Path) -> CalibrationReport | None:
    try:
        return CalibrationReport.model_validate_json((folder / REPORT_FILE).read_bytes())
    except (OSError, ValidationError):
        return None


def calibration_health(cfg: StationConfig, now: datetime | None = None) -> CalibrationHealth:
    now = now or datetime.now(UTC)
    lines: list[str] = []
    problems: list[str] = []
    warnings: list[str] = []
    reports: dict[Path, CalibrationReport | None] = {}
    for camera in cfg.cameras:
        path = Path(camera.calibration)
        folder = path.parent
        if folder not in reports:
            reports[folder] = _report(folder)
        report = reports[folder]
        entry = None if report is None else next((c for c in report.cameras if c.camera == camera.name), None)
        if report is None or entry is None:
            made = datetime.fromtimestamp(path.stat().st_mtime, UTC)
            lines.append(f"{camera.name}: file {_age(made, now)} old, no commissioning record ({folder / REPORT_FILE})")
            warnings.append(f"{camera.name} has no commissioning record; its accuracy is unknown")
            continue
        lines.append(
            f"{camera.name}: solved {_age(report.solved_at, now)} ago, reprojection RMS {entry.rms_px:.2f} px, "
            f"{entry.corners} corners, coverage {entry.coverage:.0%}"
        )
        if entry.rms_px > UNFIT_RMS_PX:
            problems.append(f"{camera.name}'s reprojection RMS {entry.rms_px:.2f} px is over {UNFIT_RMS_PX} px")
        elif entry.rms_px > MAX_RMS_PX:
            warnings.append(
                f"{camera.name}'s reprojection RMS {entry.rms_px:.2f} px is over the {MAX_RMS_PX} px target"
            )
    drift = read_drift_report(cfg.station.state_dir)
    if drift is None:
        warnings.append("no drift check yet: it runs at the next start or session start")
    else:
        shifts = ", ".join(
            f"{c.camera} {c.drift.shift_px:.2f} px" if c.drift is not None else f"{c.camera} not compared"
            for c in drift.cameras
        )
        lines.append(f"drift at {drift.measured_at:%Y-%m-%d %H:%M} UTC (session {drift.scan_session}): {shifts}")
        moved = drift.moved()
        if moved:
            problems.append(
                f"{', '.join(moved)} moved more than {drift.max_drift_px} px since calibration; "
                "the session's scans go to review until recalibrated"
            )
        unconfirmed = drift.unconfirmed()
        if unconfirmed:
            problems.append(
                f"{', '.join(unconfirmed)} could not be compared with the commissioning picture (see the station log); "
                "the session's scans go to review until recalibrated"
            )
    return CalibrationHealth(lines=lines, problems=problems, warnings=warnings)
