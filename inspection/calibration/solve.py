"""From the corners every camera saw in every placement to each camera's intrinsics and pose in the tray frame.

Each camera is first calibrated on its own (cv2.calibrateCamera over its views). The flat placement then
fixes the tray frame (BoardDefinition.board_to_tray_flat) and each camera's pose in it, and every other
placement's board pose follows from the camera that saw it best. One joint least-squares fit then refines
all of it together, so that a placement seen by five cameras is one board pose, not five: that is what
ties the cameras' poses to each other to a few hundredths of a millimetre. A board that moved between
the cameras of one placement cannot be one pose, and shows as residuals no corner noise makes.
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
MOVED_BOARD_PX = 1.0
"""A view whose corners the joint fit leaves this far off (RMS) saw the board elsewhere than the others did:
corner noise is a few hundredths of a pixel, a board nudged by a tenth of a millimetre is more than this."""
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
    views = [[initial[c][3][p] for c in range(len(cameras))] for p in range(len(views))]
    flat = board.board_to_tray_flat()
    camera_poses = [extrinsics[0] @ np.linalg.inv(flat) for _, _, extrinsics, _ in initial]
    placement_poses = [flat]
    for index in range(1, len(views)):
        best = max(range(len(cameras)), key=lambda i: views[index][i].count)
        placement_poses.append(np.linalg.inv(camera_poses[best]) @ initial[best][2][index])
    x0 = np.concatenate(
        [
            np.concatenate([_intrinsics_vector(k, d), _pose_vector(t)])
            for (k, d, _, _), t in zip(initial, camera_poses, strict=True)
        ]
        + [_pose_vector(t) for t in placement_poses[1:]]
    )
    joint = _JointProblem(corners, views, len(cameras), flat)
    fit = least_squares(joint.residuals, x0, x_scale="jac", method="lm")
    return _result(cameras, views, placement_names, joint, fit.x, detected)


def _single_camera(
    corners: np.ndarray, camera: CameraInfo, views: list[ViewCorners]
) -> tuple[np.ndarray, np.ndarray, list[np.ndarray], list[ViewCorners]]:
    """calibrateCamera over the camera's views, again without the corners it could not fit (a corner the detector
    refined onto a marker's edge is a pixel off and would pull the whole lens towards it)."""
    k, d, extrinsics = _calibrate(corners, camera, views)
    kept = []
    for view, transform in zip(views, extrinsics, strict=True):
        points = corners[view.ids] @ transform[:3, :3].T + transform[:3, 3]
        errors = np.linalg.norm(_project(_intrinsics_vector(k, d), points) - view.pixels, axis=1)
        good = errors <= max(OUTLIER_PX, OUTLIER_FACTOR * float(np.median(errors)))
        kept.append(ViewCorners(view.ids[good], view.pixels[good], view.image_size))
    k, d, extrinsics = _calibrate(corners, camera, kept)
    return k, d, extrinsics, kept


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
) -> SolvedRig:
    intrinsics, camera_poses, placements = problem.unpack(x)
    residuals: list[list[np.ndarray | None]] = [[None] * len(views) for _ in cameras]
    for (p, c, _, _), block in zip(problem.blocks, problem.block_residuals(x), strict=True):
        residuals[c][p] = block
    moved = [
        (float(np.sqrt((block**2).sum(axis=1).mean())), placement_names[p], cameras[c].name)
        for c, row in enumerate(residuals)
        for p, block in enumerate(row)
        if block is not None
    ]
    worst = max(moved)
    if worst[0] > MOVED_BOARD_PX:
        raise CalibrationProcedureError(
            f"{worst[1]}: the board was not in one place for all cameras ({worst[2]} sees it {worst[0]:.1f} px RMS "
            f"away from where the other cameras put it; corner noise is below {MOVED_BOARD_PX:g} px): it moved or "
            "was touched while the cameras took it; capture the calibration again and let go of the board first"
        )
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
        view_rms = [float(np.sqrt((r**2).sum(axis=1).mean())) if len(r) else None for r in blocks]
        used = [p[c].pixels for p in views]
        rejected = detected[c] - sum(len(u) for u in used)
        solved.append(SolvedCamera(calibration, view_rms, used, blocks, rejected))
    everything = np.concatenate([r for row in residuals for r in row if r is not None])
    rms = float(np.sqrt((everything**2).sum(axis=1).mean()))
    return SolvedRig(solved, [problem.flat, *placements], rms)
