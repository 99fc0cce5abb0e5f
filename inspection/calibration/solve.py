"""From the corners every camera saw in every placement to each camera's intrinsics and pose in the tray frame.

Each camera is first calibrated on its own (cv2.calibrateCamera over its views). The flat placement then
fixes the tray frame (BoardDefinition.board_to_tray_flat) and each camera's pose in it, and every other
placement's board pose follows from the camera that saw it best. One joint least-squares fit then refines
all of it together, so that a placement seen by five cameras is one board pose, not five: that is what
ties the cameras' poses to each other to a few hundredths of a millimetre. A board that moved between
the cameras of one placement cannot be one pose, and shows as residuals no corner noise makes; a lens the
model cannot fit (or a camera out of focus) leaves large residuals too, but then already in the camera's
own calibration, which is how the two are told apart.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
from scipy.optimize import least_squares

from amflow_edge.inspection.calibration.board import BoardDefinition
from amflow_edge.inspection.calibration.detection import ViewCorners, view_problem
from amflow_edge.inspection.calibration.errors import CalibrationProcedureError
from amflow_edge.inspection.geometry.camera import CameraCalibration, CameraName

MIN_PLACEMENTS = 3
"""The flat placement (it defines the tray frame) and two tilted ones, the fewest that pin a camera's focal length
down (a flat board alone cannot tell it from the camera's height). `calibrate capture` takes at least this many."""
BAD_VIEW_PX = 1.0
"""A view whose corners the joint fit leaves this far off (RMS) fails the solve, named: corner noise is a few
hundredths of a pixel. On the demo rig 1 px is about 0.17 mm on the board; a board that moved between the cameras' exposures by a
few tenths of a millimetre or more shows above it (a smaller nudge is partly absorbed into the placement's pose and
shows only as an RMS above report.MAX_RMS_PX)."""
MOVED_FACTOR = 3.0
"""A view the joint fit leaves more than this many times as far off as the camera's own calibration does saw the
board where the other cameras did not: the board moved. Comparable residuals in both are the lens or the focus."""
OUTLIER_PX = 0.3
OUTLIER_FACTOR = 6.0
_CAMERA_PARAMS = 14
_PLACEMENT_PARAMS = 6


@dataclass(frozen=True)
class CameraInfo:
    """What the capture recorded of a camera: its station name, serial and image size."""

    name: CameraName
    serial: str
    width: int
    height: int


@dataclass(frozen=True)
class SolvedCamera:
    calibration: CameraCalibration
    view_rms_px: list[float | None]
    pixels: list[np.ndarray]
    """Per placement, (N,2) pixels of the corners used."""
    residuals: list[np.ndarray]
    """Per placement, (N,2) observed − projected pixels of those corners."""
    rejected: int
    """Detected corners left out as outliers."""


@dataclass(frozen=True)
class SolvedRig:
    cameras: list[SolvedCamera]
    placement_poses: list[np.ndarray]
    """Per placement, the 4×4 board→tray transform; the first is the flat one that defines the tray frame."""
    rms_px: float


def solve_rig(
    board: BoardDefinition,
    cameras: Sequence[CameraInfo],
    views: Sequence[Sequence[ViewCorners]],
    placement_names: Sequence[str],
) -> SolvedRig:
    """Calibrate the rig from views[placement][camera]; placement 0 is the board lying flat on the tray."""
    if len(views) < MIN_PLACEMENTS:
        raise CalibrationProcedureError(
            f"only {len(views)} placement(s) captured; the solve needs at least {MIN_PLACEMENTS} (the flat one and "
            "two tilted ones); capture again with more --placements"
        )
    for name, placement in zip(placement_names, views, strict=True):
        for camera, view in zip(cameras, placement, strict=True):
            problem = view_problem(board, view)
            if problem is not None:
                raise CalibrationProcedureError(
                    f"{name}/{camera.name}.png: {problem}; capture the calibration again (calibrate capture)"
                )
    corners = board.corners_board()
    initial = [_single_camera(corners, camera, [p[i] for p in views]) for i, camera in enumerate(cameras)]
    detected = [sum(p[c].count for p in views) for c in range(len(cameras))]
    views = [[initial[c].kept[p] for c in range(len(cameras))] for p in range(len(views))]
    flat = board.board_to_tray_flat()
    camera_poses = [single.extrinsics[0] @ np.linalg.inv(flat) for single in initial]
    placement_poses = [flat]
    for index in range(1, len(views)):
        best = max(range(len(cameras)), key=lambda i: views[index][i].count)
        placement_poses.append(np.linalg.inv(camera_poses[best]) @ initial[best].extrinsics[index])
    x0 = np.concatenate(
        [
            np.concatenate([_intrinsics_vector(single.k, single.d), _pose_vector(t)])
            for single, t in zip(initial, camera_poses, strict=True)
        ]
        + [_pose_vector(t) for t in placement_poses[1:]]
    )
    joint = _JointProblem(corners, views, len(cameras), flat)
    fit = least_squares(joint.residuals, x0, x_scale="jac", method="lm")
    single_rms = [single.view_rms_px for single in initial]
    return _result(cameras, views, placement_names, joint, fit.x, detected, single_rms)


@dataclass(frozen=True)
class _SingleCamera:
    """One camera calibrated on its own: intrinsics, board→camera per view, the corners kept, their RMS per view."""

    k: np.ndarray
    d: np.ndarray
    extrinsics: list[np.ndarray]
    kept: list[ViewCorners]
    view_rms_px: list[float]


def _single_camera(corners: np.ndarray, camera: CameraInfo, views: list[ViewCorners]) -> _SingleCamera:
    """calibrateCamera over the camera's views, again without the corners it could not fit (a corner the detector
    refined onto a marker's edge is a pixel off and would pull the whole lens towards it)."""
    k, d, extrinsics = _calibrate(corners, camera, views)
    kept = []
    for view, errors in zip(views, _view_errors(corners, k, d, extrinsics, views), strict=True):
        distances = np.linalg.norm(errors, axis=1)
        good = distances <= max(OUTLIER_PX, OUTLIER_FACTOR * float(np.median(distances)))
        kept.append(ViewCorners(view.ids[good], view.pixels[good], view.image_size))
    k, d, extrinsics = _calibrate(corners, camera, kept)
    rms = [rms_px(errors) if len(errors) else 0.0 for errors in _view_errors(corners, k, d, extrinsics, kept)]
    return _SingleCamera(k, d, extrinsics, kept, rms)


def _view_errors(
    corners: np.ndarray, k: np.ndarray, d: np.ndarray, extrinsics: list[np.ndarray], views: list[ViewCorners]
) -> list[np.ndarray]:
    """Per view, (N,2) observed − projected pixels of its corners under one camera's own calibration."""
    out = []
    for view, transform in zip(views, extrinsics, strict=True):
        points = corners[view.ids] @ transform[:3, :3].T + transform[:3, 3]
        out.append(view.pixels - _project(_intrinsics_vector(k, d), points))
    return out


def _calibrate(
    corners: np.ndarray, camera: CameraInfo, views: list[ViewCorners]
) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    objects = [corners[v.ids].astype(np.float32) for v in views]
    pixels = [v.pixels.astype(np.float32).reshape(-1, 1, 2) for v in views]
    size = (camera.width, camera.height)
    try:
        _, k, d, rvecs, tvecs = cv2.calibrateCamera(objects, pixels, size, None, None, flags=cv2.CALIB_FIX_K3)
    except cv2.error as exc:
        raise CalibrationProcedureError(
            f"{camera.name}: OpenCV could not calibrate it from these views ({str(exc).strip().splitlines()[-1]}); "
            "capture again with the board tilted more between placements"
        ) from None
    extrinsics = []
    for rvec, tvec in zip(rvecs, tvecs, strict=True):
        transform = np.eye(4)
        transform[:3, :3] = cv2.Rodrigues(rvec)[0]
        transform[:3, 3] = tvec.reshape(3)
        extrinsics.append(transform)
    return np.asarray(k), np.asarray(d).reshape(-1)[:4], extrinsics


def _intrinsics_vector(k: np.ndarray, d: np.ndarray) -> np.ndarray:
    return np.array([k[0, 0], k[1, 1], k[0, 2], k[1, 2], *d[:4]], dtype=np.float64)


def _pose_vector(transform: np.ndarray) -> np.ndarray:
    return np.concatenate([cv2.Rodrigues(transform[:3, :3])[0].reshape(3), transform[:3, 3]])


def _pose_matrix(vector: np.ndarray) -> np.ndarray:
    transform = np.eye(4)
    transform[:3, :3] = cv2.Rodrigues(vector[:3].reshape(3, 1))[0]
    transform[:3, 3] = vector[3:6]
    return transform


def _project(intrinsics: np.ndarray, points_cam: np.ndarray) -> np.ndarray:
    """OpenCV's 5-coefficient model, as CameraCalibration.distort has it."""
    fx, fy, cx, cy, k1, k2, p1, p2 = intrinsics
    x, y = points_cam[:, 0] / points_cam[:, 2], points_cam[:, 1] / points_cam[:, 2]
    r2 = x * x + y * y
    radial = 1 + r2 * (k1 + r2 * k2)
    xd = x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x)
    yd = y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y
    return np.column_stack([fx * xd + cx, fy * yd + cy])


class _JointProblem:
    """Parameters: per camera fx, fy, cx, cy, k1, k2, p1, p2 and its tray→camera pose; per placement after the
    flat one its board→tray pose. Residuals: every corner's pixel error, in (placement, camera) blocks.

    k3 stays 0, as OpenCV advises for lenses this long: a board on a tray never reaches far enough into the
    corners to tell it from k2, and fitting it costs the focal length a few times its accuracy."""

    def __init__(
        self, corners: np.ndarray, views: Sequence[Sequence[ViewCorners]], camera_count: int, flat: np.ndarray
    ) -> None:
        self.camera_count = camera_count
        self.flat = flat
        self.blocks = [
            (p, c, corners[view.ids], view.pixels)
            for p, placement in enumerate(views)
            for c, view in enumerate(placement)
            if view.count
        ]

    def unpack(self, x: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
        cams = x[: self.camera_count * _CAMERA_PARAMS].reshape(self.camera_count, _CAMERA_PARAMS)
        rest = x[self.camera_count * _CAMERA_PARAMS :].reshape(-1, _PLACEMENT_PARAMS)
        intrinsics = [cam[:8] for cam in cams]
        camera_poses = [_pose_matrix(cam[8:]) for cam in cams]
        return intrinsics, camera_poses, [_pose_matrix(p) for p in rest]

    def block_residuals(self, x: np.ndarray) -> list[np.ndarray]:
        intrinsics, camera_poses, placements = self.unpack(x)
        poses = [self.flat, *placements]
        out = []
        for p, c, objects, pixels in self.blocks:
            transform = camera_poses[c] @ poses[p]
            points = objects @ transform[:3, :3].T + transform[:3, 3]
            out.append(_project(intrinsics[c], points) - pixels)
        return out

    def residuals(self, x: np.ndarray) -> np.ndarray:
        return np.concatenate([r.reshape(-1) for r in self.block_residuals(x)])


def _result(
    cameras: Sequence[CameraInfo],
    views: Sequence[Sequence[ViewCorners]],
    placement_names: Sequence[str],
    problem: _JointProblem,
    x: np.ndarray,
    detected: list[int],
    single_rms: list[list[float]],
) -> SolvedRig:
    intrinsics, camera_poses, placements = problem.unpack(x)
    residuals: list[list[np.ndarray | None]] = [[None] * len(views) for _ in cameras]
    for (p, c, _, _), block in zip(problem.blocks, problem.block_residuals(x), strict=True):
        residuals[c][p] = block
    joint_rms = [
        (rms_px(block), p, c) for c, row in enumerate(residuals) for p, block in enumerate(row) if block is not None
    ]
    _check_views(joint_rms, single_rms, cameras, placement_names)
    solved = []
    for c, camera in enumerate(cameras):
        fx, fy, cx, cy, *dist = intrinsics[c]
        calibration = CameraCalibration(
            name=camera.name,
            serial=camera.serial,
            image_width=camera.width,
            image_height=camera.height,
            camera_matrix=[[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]],
            dist_coeffs=[*(float(v) for v in dist), 0.0],
            rotation=camera_poses[c][:3, :3].tolist(),
            translation=camera_poses[c][:3, 3].tolist(),
        )
        blocks = [np.zeros((0, 2)) if r is None else r for r in residuals[c]]
        view_rms = [rms_px(r) if len(r) else None for r in blocks]
        used = [p[c].pixels for p in views]
        rejected = detected[c] - sum(len(u) for u in used)
        solved.append(SolvedCamera(calibration, view_rms, used, blocks, rejected))
    everything = np.concatenate([r for row in residuals for r in row if r is not None])
    return SolvedRig(solved, [problem.flat, *placements], rms_px(everything))


def rms_px(residuals: np.ndarray) -> float:
    """RMS reprojection error of (N,2) pixel residuals: the root of the mean squared distance, as OpenCV reports it."""
    return float(np.sqrt((residuals**2).sum(axis=1).mean()))


def _check_views(
    joint: list[tuple[float, int, int]],
    single: list[list[float]],
    cameras: Sequence[CameraInfo],
    placement_names: Sequence[str],
) -> None:
    """Name the worst view above BAD_VIEW_PX: a board that moved, or else a lens the model does not fit."""
    bad = sorted((entry for entry in joint if entry[0] > BAD_VIEW_PX), reverse=True)
    moved = [(rms, p, c) for rms, p, c in bad if rms > MOVED_FACTOR * single[c][p]]
    if moved:
        rms, p, c = moved[0]
        raise CalibrationProcedureError(
            f"{placement_names[p]}: the board was not in one place for all cameras ({cameras[c].name} sees it "
            f"{rms:.1f} px RMS away from where the other cameras put it, though its own calibration fits that view "
            f"to {single[c][p]:.2f} px): it moved or was touched while the cameras took it; capture the calibration "
            "again and let go of the board first"
        )
    if bad:
        rms, p, c = bad[0]
        name = cameras[c].name
        raise CalibrationProcedureError(
            f"{name}'s lens is not fitted by the 5-coefficient model (RMS {rms:.2f} px in {placement_names[p]}, and "
            f"{single[c][p]:.2f} px in {name}'s own calibration; corner noise is a few hundredths of a pixel): check "
            f"{name}'s focus (sharp corners over the whole tray) and the lens (a fisheye or a loose lens element is "
            "not a lens the station can use), then capture the calibration again"
        )
