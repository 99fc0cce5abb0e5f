"""`calibrate solve` as a function: a capture directory in, a calibration directory the station reads out.

CALDIR holds camNN.yaml (what `cameras[].calibration` points at), references/camNN.png (the empty tray as
commissioned, which the drift check compares against), calibration.json and report/ pictures. It is built
beside its final place and renamed into it, so a failed solve leaves an older CALDIR as it was and never
half a new one. Being replaced whole, CALDIR must hold nothing else: a directory with other files in it (and no
calibration.json, so not an earlier solve's) is refused rather than wiped.
"""

from __future__ import annotations

import os
import shutil
from datetime import UTC, datetime
from pathlib import Path

import cv2
import numpy as np

from amflow_edge.common.durable import fsync_dir, replace_durably
from amflow_edge.inspection.calibration.board import BoardDefinition
from amflow_edge.inspection.calibration.detection import CornerDetector, ViewCorners, coverage_fraction
from amflow_edge.inspection.calibration.errors import CalibrationProcedureError
from amflow_edge.inspection.calibration.manifest import EMPTY_DIR, CaptureManifest, load_manifest
from amflow_edge.inspection.calibration.report import (
    REPORT_FILE,
    CalibrationReport,
    CameraReport,
    ViewReport,
    coverage_picture,
    residual_picture,
)
from amflow_edge.inspection.calibration.solve import CameraInfo, SolvedRig, rms_px, solve_rig
from amflow_edge.inspection.geometry.camera import save_calibration

REFERENCES_DIR = "references"
REPORT_DIR = "report"


def solve_capture(capture: Path, out: Path, board: BoardDefinition | None = None) -> CalibrationReport:
    """Solve the capture in `capture` into `out`; CalibrationProcedureError names what is wrong and leaves `out` alone.

    `board` (--board) must show the pattern the capture was taken of; its thickness_mm is taken over the
    capture's, because the thickness is measured with a ruler, often after the pictures were taken.
    """
    check_out(out)
    manifest = load_manifest(capture)
    if board is not None:
        if board.printed_pattern() != manifest.board.printed_pattern():
            raise CalibrationProcedureError(
                f"{capture / 'manifest.json'}: the capture was taken of another board "
                f"({manifest.board.model_dump()}) than --board says ({board.model_dump()}); leave --board out or "
                "give the board.json it was taken with"
            )
        manifest = manifest.model_copy(update={"board": board})
    cameras = [CameraInfo(c.name, c.serial, c.width, c.height) for c in manifest.cameras]
    references: dict[str, np.ndarray] = {
        camera.name: _read(capture / EMPTY_DIR / f"{camera.name}.png", camera) for camera in cameras
    }
    detector = CornerDetector(manifest.board)
    views: list[list[ViewCorners]] = [
        [detector.detect(_read(capture / placement.directory / f"{camera.name}.png", camera)) for camera in cameras]
        for placement in manifest.placements
    ]
    names = [placement.directory for placement in manifest.placements]
    rig = solve_rig(manifest.board, cameras, views, names)
    report = _report(capture, manifest, rig, views, names)
    _write(out, capture, rig, report, references)
    return report


def _read(path: Path, camera: CameraInfo) -> np.ndarray:
    if not path.is_file():
        raise CalibrationProcedureError(
            f"{path}: missing; the capture is incomplete (was a camera disconnected?); capture the calibration again"
        )
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None or image.ndim != 2 or image.dtype != np.uint8:
        raise CalibrationProcedureError(
            f"{path}: not an 8-bit grey picture (damaged file, or not taken by the station's Mono8 camera); "
            "capture the calibration again"
        )
    if image.shape != (camera.height, camera.width):
        raise CalibrationProcedureError(
            f"{path}: {image.shape[1]}×{image.shape[0]} pixels, but {camera.name} takes {camera.width}×{camera.height}; "
            "capture again with the station's own config"
        )
    return image


def _report(
    capture: Path, manifest: CaptureManifest, rig: SolvedRig, views: list[list[ViewCorners]], names: list[str]
) -> CalibrationReport:
    cameras = []
    for index, solved in enumerate(rig.cameras):
        calib = solved.calibration
        errors = np.concatenate(solved.residuals)
        cameras.append(
            CameraReport(
                camera=calib.name,
                serial=calib.serial,
                rms_px=rms_px(errors),
                corners=len(errors),
                rejected_corners=solved.rejected,
                coverage=coverage_fraction([placement[index] for placement in views]),
                focal_px=(float(calib.K[0, 0]), float(calib.K[1, 1])),
                centre_mm=(float(calib.centre[0]), float(calib.centre[1]), float(calib.centre[2])),
                views=[
                    ViewReport(placement=name, corners=len(pixels), rms_px=rms or 0.0)
                    for name, pixels, rms in zip(names, solved.pixels, solved.view_rms_px, strict=True)
                ],
            )
        )
    return CalibrationReport(
        solved_at=datetime.now(UTC),
        capture=str(capture.resolve()),
        board=manifest.board,
        rms_px=rig.rms_px,
        cameras=cameras,
    )


def check_out(out: Path) -> None:
    """Refuse a CALDIR the swap would wipe other files with: it is replaced whole."""
    if not out.exists():
        return
    if not out.is_dir():
        raise CalibrationProcedureError(
            f"{out}: exists and is not a directory; give --out a new directory (or an earlier solve's) for the "
            "calibration"
        )
    if any(out.iterdir()) and not (out / REPORT_FILE).is_file():
        raise CalibrationProcedureError(
            f"{out}: holds files that `calibrate solve` did not write (no {REPORT_FILE}); the solve replaces the "
            "directory whole and would delete them. Give --out a new directory (or an earlier solve's), or move "
            "those files elsewhere first"
        )


def replace_dir(staging: Path, out: Path) -> None:
    """Put the finished `staging` in place of `out` (renames only); if that fails, `out` is what it was.

    The old CALDIR is set aside, not deleted, until the new one is in place; a failure between the two renames
    puts it back. If even that fails, the error says where the old calibration is.
    """
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    shutil.rmtree(old, ignore_errors=True)
    set_aside = out.exists()
    if set_aside:
        os.replace(out, old)
    try:
        os.replace(staging, out)
    except OSError as exc:
        if set_aside:
            try:
                os.replace(old, out)
            except OSError:
                raise CalibrationProcedureError(
                    f"{out}: the new calibration could not be put in place ({exc.strerror}) nor the previous one "
                    f"put back; it is in {old}: rename it to {out.name} before the station starts"
                ) from None
        raise
    fsync_dir(out.parent)
    if set_aside:
        shutil.rmtree(old, ignore_errors=True)


def _write(
    out: Path, capture: Path, rig: SolvedRig, report: CalibrationReport, references: dict[str, np.ndarray]
) -> None:
    out = out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.with_name(f".{out.name}.partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        (staging / REFERENCES_DIR).mkdir(parents=True)
        (staging / REPORT_DIR).mkdir()
        for solved in rig.cameras:
            name = solved.calibration.name
            save_calibration(solved.calibration, staging / f"{name}.yaml")
            replace_durably(
                staging / REFERENCES_DIR / f"{name}.png", (capture / EMPTY_DIR / f"{name}.png").read_bytes()
            )
            _write_png(staging / REPORT_DIR / f"{name}_coverage.png", coverage_picture(references[name], solved.pixels))
            _write_png(
                staging / REPORT_DIR / f"{name}_residuals.png",
                residual_picture(references[name], solved.pixels, solved.residuals),
            )
        replace_durably(staging / REPORT_FILE, (report.model_dump_json(indent=2) + "\n").encode())
        for folder in (staging / REFERENCES_DIR, staging / REPORT_DIR, staging):
            fsync_dir(folder)
        replace_dir(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _write_png(path: Path, image: np.ndarray) -> None:
    ok, encoded = cv2.imencode(".png", image)
    if not ok:
        raise CalibrationProcedureError(f"{path}: OpenCV could not encode the report picture")
    replace_durably(path, encoded.tobytes())
