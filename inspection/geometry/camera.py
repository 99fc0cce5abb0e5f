"""Calibrated pinhole-plus-distortion cameras in the tray frame, and their OpenCV YAML files.

The station's geometry (projection, rendering, later alignment) all goes through one model so
that a pixel means the same thing everywhere. Files use OpenCV's own FileStorage format so a
calibration made with OpenCV's tools can be dropped in unchanged.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from amflow_edge.common.durable import replacing

CameraName = Literal["cam01", "cam02", "cam03", "cam04", "cam05"]
RIG_CAMERAS: tuple[CameraName, ...] = ("cam01", "cam02", "cam03", "cam04", "cam05")

BASLER_ACA2440_PIXEL_PITCH_MM = 0.00345
BASLER_ACA2440_IMAGE_SIZE = (2448, 2048)

_ORTHONORMAL_TOL = 1e-5
_DIST_LENGTHS = (4, 5, 8)

_FIELD_TO_KEY = {
    "name": "camera_name",
    "serial": "serial",
    "image_width": "image_width",
    "image_height": "image_height",
    "camera_matrix": "camera_matrix",
    "dist_coeffs": "distortion_coefficients",
    "rotation": "rotation_matrix",
    "translation": "translation_vector",
}


class CalibrationError(ValueError):
    """A calibration file that cannot be used; the message names the file, the key and the fix."""


def _matrix(value: object, rows: int, cols: int, what: str) -> np.ndarray:
    array = np.asarray(value, dtype=np.float64)
    if array.shape != (rows, cols):
        raise ValueError(f"{what} must be {rows}×{cols}, got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{what} contains NaN or infinite values")
    return array


class CameraCalibration(BaseModel):
    """Intrinsics and world→camera pose of one station camera (x_cam = R·x_world + t, millimetres)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    _rays_cache: tuple[tuple[object, ...], np.ndarray] | None = PrivateAttr(default=None)

    name: CameraName = Field(description="Station camera name, cam01 (top) … cam05.")
    serial: str = Field(min_length=1, description="Serial number of the physical camera this calibration belongs to.")
    image_width: int = Field(gt=0, description="Width in pixels of the images the calibration was made for.")
    image_height: int = Field(gt=0, description="Height in pixels of the images the calibration was made for.")
    camera_matrix: list[list[float]] = Field(
        description="3×3 intrinsic matrix [[fx,0,cx],[0,fy,cy],[0,0,1]] in pixels."
    )
    dist_coeffs: list[float] = Field(
        description="OpenCV distortion coefficients k1,k2,p1,p2[,k3[,k4,k5,k6]] (4, 5 or 8 values)."
    )
    rotation: list[list[float]] = Field(description="3×3 rotation world→camera (orthonormal, determinant +1).")
    translation: list[float] = Field(description="Translation world→camera in millimetres (x_cam = R·x_world + t).")

    @field_validator("camera_matrix")
    @classmethod
    def _check_camera_matrix(cls, value: list[list[float]]) -> list[list[float]]:
        k = _matrix(value, 3, 3, "camera_matrix")
        if k[0, 0] <= 0 or k[1, 1] <= 0:
            raise ValueError(f"camera_matrix focal lengths fx, fy must be positive, got {k[0, 0]:g}, {k[1, 1]:g}")
        if not np.allclose(k[2], [0.0, 0.0, 1.0]) or abs(k[1, 0]) > 0:
            raise ValueError(f"camera_matrix must have the form [[fx,s,cx],[0,fy,cy],[0,0,1]], got {k.tolist()}")
        return k.tolist()

    @field_validator("dist_coeffs")
    @classmethod
    def _check_dist(cls, value: list[float]) -> list[float]:
        if len(value) not in _DIST_LENGTHS:
            raise ValueError(
                f"distortion coefficients must have 4, 5 or 8 values (k1,k2,p1,p2[,k3[,k4,k5,k6]]), got {len(value)}"
            )
        if not all(math.isfinite(v) for v in value):
            raise ValueError("distortion coefficients contain NaN or infinite values")
        return list(value)

    @field_validator("rotation")
    @classmethod
    def _check_rotation(cls, value: list[list[float]]) -> list[list[float]]:
        r = _matrix(value, 3, 3, "rotation")
        error = float(np.abs(r @ r.T - np.eye(3)).max())
        if error > _ORTHONORMAL_TOL:
            raise ValueError(
                f"rotation is not orthonormal (max |R·Rᵀ − I| = {error:.2g}); write it with full precision "
                "or give the rotation as an rvec instead"
            )
        if np.linalg.det(r) < 0:
            raise ValueError("rotation has determinant −1 (a reflection, not a rotation); flip the sign of one axis")
        return r.tolist()

    @field_validator("translation")
    @classmethod
    def _check_translation(cls, value: list[float]) -> list[float]:
        return _matrix([value], 1, 3, "translation")[0].tolist()

    @model_validator(mode="after")
    def _principal_point_inside(self) -> CameraCalibration:
        cx, cy = self.camera_matrix[0][2], self.camera_matrix[1][2]
        if not (0 <= cx < self.image_width and 0 <= cy < self.image_height):
            raise ValueError(
                f"principal point ({cx:g}, {cy:g}) lies outside the {self.image_width}×{self.image_height} image; "
                "camera_matrix and image size do not belong together"
            )
        return self

    @property
    def K(self) -> np.ndarray:
        return np.array(self.camera_matrix, dtype=np.float64)

    @property
    def D(self) -> np.ndarray:
        return np.array(self.dist_coeffs, dtype=np.float64)

    @property
    def R(self) -> np.ndarray:
        return np.array(self.rotation, dtype=np.float64)

    @property
    def t(self) -> np.ndarray:
        return np.array(self.translation, dtype=np.float64)

    @property
    def rvec(self) -> np.ndarray:
        return cv2.Rodrigues(self.R)[0].reshape(3)

    @property
    def centre(self) -> np.ndarray:
        """Camera centre in the tray frame (mm); the origin of every pixel ray."""
        return -self.R.T @ self.t

    @property
    def optical_axis(self) -> np.ndarray:
        """Unit viewing direction in the tray frame."""
        return self.R[2].copy()

    def to_camera(self, points_world: np.ndarray) -> np.ndarray:
        """(N,3) tray-frame points → (N,3) camera-frame points; z is the depth in front of the camera."""
        points = np.asarray(points_world, dtype=np.float64).reshape(-1, 3)
        return points @ self.R.T + self.t

    def project(self, points_world: np.ndarray) -> np.ndarray:
        """(N,3) tray-frame points → (N,2) distorted pixel coordinates (OpenCV convention: pixel centres at integers).

        Points behind the camera give meaningless pixels; use `visible` to know which are real.
        """
        points = np.asarray(points_world, dtype=np.float64).reshape(-1, 3)
        if len(points) == 0:
            return np.zeros((0, 2))
        return self.distort(self.to_camera(points))

    def distort(self, cam: np.ndarray) -> np.ndarray:
        """(N,3) camera-frame points → (N,2) pixels, OpenCV's model (skew ignored, as cv2.projectPoints does).

        Written out because cv2.projectPoints always computes its Jacobians too: the fits project
        a few hundred points thousands of times per scan, and this is three times cheaper.
        """
        z = cam[:, 2]
        z = np.where(z != 0, z, 1.0)
        x, y = cam[:, 0] / z, cam[:, 1] / z
        d = self.dist_coeffs
        k1, k2, p1, p2 = d[:4]
        k3 = d[4] if len(d) > 4 else 0.0
        r2 = x * x + y * y
        radial = 1 + r2 * (k1 + r2 * (k2 + r2 * k3))
        if len(d) == 8:
            radial = radial / (1 + r2 * (d[5] + r2 * (d[6] + r2 * d[7])))
        xy = x * y
        xd = x * radial + 2 * p1 * xy + p2 * (r2 + 2 * x * x)
        yd = y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * xy
        k = self.camera_matrix
        return np.column_stack([k[0][0] * xd + k[0][2], k[1][1] * yd + k[1][2]])

    def visible(self, points_world: np.ndarray, margin_px: float = 0.0) -> np.ndarray:
        """Boolean mask of points in front of the camera that land inside the image (ignores occlusion)."""
        points = np.asarray(points_world, dtype=np.float64).reshape(-1, 3)
        in_front = self.to_camera(points)[:, 2] > 0
        pixels = self.project(points)
        inside = (
            (pixels[:, 0] >= -0.5 + margin_px)
            & (pixels[:, 0] <= self.image_width - 0.5 - margin_px)
            & (pixels[:, 1] >= -0.5 + margin_px)
            & (pixels[:, 1] <= self.image_height - 0.5 - margin_px)
        )
        return in_front & inside & self._inside_distortion_domain(points)

    def _inside_distortion_domain(self, points: np.ndarray) -> np.ndarray:
        """Barrel distortion folds back far outside the field of view; such points only look inside the image."""
        cam = self.to_camera(points)
        with np.errstate(divide="ignore", invalid="ignore"):
            r = np.hypot(cam[:, 0], cam[:, 1]) / cam[:, 2]
        w, h = self.image_width - 1, self.image_height - 1
        corners = np.array([[0, 0], [w, 0], [0, h], [w, h]])
        limit = float(np.hypot(*self.normalized(corners).T).max()) * 1.05
        return np.nan_to_num(r, nan=np.inf) <= limit

    def normalized(self, pixels: np.ndarray) -> np.ndarray:
        """(N,2) distorted pixels → (N,2) undistorted normalized image coordinates (x/z, y/z)."""
        pts = np.asarray(pixels, dtype=np.float64).reshape(-1, 1, 2)
        if len(pts) == 0:
            return np.zeros((0, 2))
        criteria = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 50, 1e-12)
        return cv2.undistortPoints(pts, self.K, self.D, criteria=criteria).reshape(-1, 2)

    def rays(self, pixels: np.ndarray) -> np.ndarray:
        """(N,2) distorted pixels → (N,3) unit ray directions in the tray frame, starting at `centre`."""
        xy = self.normalized(pixels)
        directions = np.column_stack([xy, np.ones(len(xy))]) @ self.R
        return directions / np.linalg.norm(directions, axis=1, keepdims=True)

    def pixel_rays(self) -> np.ndarray:
        """(H,W,3) float32 unit ray directions of every pixel centre in the tray frame, read-only.

        Undistorting 5 M points takes about a second, and the renderer needs them for every
        scene, so they are computed once per calibration object and shared. The cache is keyed
        by the parameters because model_copy(update=...) copies private state along.
        """
        key = (
            tuple(map(tuple, self.camera_matrix)),
            tuple(self.dist_coeffs),
            tuple(map(tuple, self.rotation)),
            self.image_width,
            self.image_height,
        )
        cached = self._rays_cache
        if cached is None or cached[0] != key:
            cached = (key, self._compute_pixel_rays())
            self._rays_cache = cached
        return cached[1]

    def _compute_pixel_rays(self) -> np.ndarray:
        w, h = self.image_width, self.image_height
        u, v = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
        pts = np.stack([u, v], axis=-1).reshape(-1, 1, 2)
        xy = cv2.undistortPoints(pts, self.K, self.D).reshape(h, w, 2)
        x, y = xy[..., 0].copy(), xy[..., 1].copy()
        inv_norm = 1.0 / np.sqrt(x * x + y * y + 1.0)
        rot = self.R.astype(np.float32)
        directions = np.empty((h, w, 3), dtype=np.float32)
        for axis in range(3):
            directions[..., axis] = (x * rot[0, axis] + y * rot[1, axis] + rot[2, axis]) * inv_norm
        directions.setflags(write=False)
        return directions


def look_at(
    name: CameraName,
    serial: str,
    eye: Sequence[float] | np.ndarray,
    target: Sequence[float] | np.ndarray,
    focal_length_mm: float,
    *,
    up: Sequence[float] = (0.0, 0.0, 1.0),
    roll_deg: float = 0.0,
    pixel_pitch_mm: float = BASLER_ACA2440_PIXEL_PITCH_MM,
    image_size: tuple[int, int] = BASLER_ACA2440_IMAGE_SIZE,
    principal_offset_px: tuple[float, float] = (0.0, 0.0),
    dist_coeffs: Sequence[float] = (0.0, 0.0, 0.0, 0.0, 0.0),
) -> CameraCalibration:
    """A calibration as a rig designer thinks of it: where the camera sits, what it aims at, which lens.

    `up` is the world direction that should point up in the image; `roll_deg` then turns the
    camera about its optical axis, as a real mount never quite sits square.
    """
    eye_v = np.asarray(eye, dtype=np.float64)
    forward = np.asarray(target, dtype=np.float64) - eye_v
    if np.linalg.norm(forward) == 0:
        raise ValueError("look_at: eye and target coincide")
    z = forward / np.linalg.norm(forward)
    up_v = np.asarray(up, dtype=np.float64)
    down = -(up_v - (up_v @ z) * z)
    if np.linalg.norm(down) < 1e-9:
        raise ValueError("look_at: 'up' is parallel to the viewing direction; pick another up vector")
    y = down / np.linalg.norm(down)
    x = np.cross(y, z)
    roll = math.radians(roll_deg)
    x, y = math.cos(roll) * x + math.sin(roll) * y, -math.sin(roll) * x + math.cos(roll) * y
    rotation = np.vstack([x, y, z])
    rotation[np.abs(rotation) < 1e-12] = 0.0
    translation = -rotation @ eye_v
    translation[np.abs(translation) < 1e-9] = 0.0
    width, height = image_size
    f_px = focal_length_mm / pixel_pitch_mm
    cx = (width - 1) / 2 + principal_offset_px[0]
    cy = (height - 1) / 2 + principal_offset_px[1]
    return CameraCalibration(
        name=name,
        serial=serial,
        image_width=width,
        image_height=height,
        camera_matrix=[[f_px, 0.0, cx], [0.0, f_px, cy], [0.0, 0.0, 1.0]],
        dist_coeffs=list(dist_coeffs),
        rotation=rotation.tolist(),
        translation=translation.tolist(),
    )


def _fail(path: Path, key: str, problem: str, fix: str) -> CalibrationError:
    return CalibrationError(f"{path}: key '{key}': {problem}; {fix}")


def _read_int(fs: cv2.FileStorage, path: Path, key: str) -> int:
    node = fs.getNode(key)
    if node.empty():
        raise _fail(path, key, "missing", f"add '{key}: <pixels>' (an integer)")
    if not (node.isInt() or node.isReal()) or node.real() != int(node.real()):
        raise _fail(path, key, "is not an integer", f"write '{key}' as a whole number of pixels")
    return int(node.real())


def _read_string(fs: cv2.FileStorage, path: Path, key: str, example: str) -> str:
    node = fs.getNode(key)
    if node.empty():
        raise _fail(path, key, "missing", f'add {key}: "{example}"')
    if node.isString():
        return node.string()
    if node.isInt() or node.isReal():
        number = node.real()
        return str(int(number)) if number == int(number) else str(number)
    raise _fail(path, key, "is not a string", f'write it as {key}: "{example}"')


def _read_matrix(
    fs: cv2.FileStorage, path: Path, key: str, shape_text: str, *, square: bool = False, lengths: Sequence[int] = (3,)
) -> np.ndarray | None:
    node = fs.getNode(key)
    if node.empty():
        return None
    matrix = node.mat()
    if matrix is None:
        raise _fail(path, key, "is not an !!opencv-matrix node", f"write it as an !!opencv-matrix of {shape_text}")
    matrix = np.asarray(matrix, dtype=np.float64)
    rows, cols = (matrix.shape + (1,))[:2]
    ok = (rows, cols) == (3, 3) if square else (min(rows, cols) == 1 and matrix.size in lengths)
    if not ok:
        raise _fail(path, key, f"is {rows}×{cols}", f"it must be {shape_text}")
    return matrix


def load_calibration(path: str | os.PathLike[str]) -> CameraCalibration:
    """Read one camera's OpenCV FileStorage YAML; any problem names the file, the key and the fix."""
    path = Path(path)
    if not path.is_file():
        raise CalibrationError(f"{path}: no such calibration file; run the calibration or check the path")
    try:
        fs = cv2.FileStorage(str(path), cv2.FILE_STORAGE_READ)
    except (cv2.error, SystemError) as exc:
        detail = str(exc.__cause__ or exc).strip()
        first_line = detail.splitlines()[-1] if detail else "parse error"
        raise CalibrationError(
            f"{path}: not a readable OpenCV YAML file ({first_line}); "
            "it must start with '%YAML:1.0' and use !!opencv-matrix nodes"
        ) from None
    if not fs.isOpened():
        raise CalibrationError(f"{path}: OpenCV could not open it; it must be an OpenCV FileStorage YAML ('%YAML:1.0')")
    try:
        keys = list(fs.root().keys())
        data: dict[str, object] = {
            "name": _read_string(fs, path, "camera_name", "cam01"),
            "serial": _read_string(fs, path, "serial", "40012301"),
            "image_width": _read_int(fs, path, "image_width"),
            "image_height": _read_int(fs, path, "image_height"),
        }
        camera_matrix = _read_matrix(fs, path, "camera_matrix", "3×3", square=True)
        if camera_matrix is None:
            raise _fail(path, "camera_matrix", "missing", "add the 3×3 intrinsic matrix as an !!opencv-matrix")
        data["camera_matrix"] = camera_matrix.reshape(3, 3).tolist()
        dist = _read_matrix(fs, path, "distortion_coefficients", "N×1 with N = 4, 5 or 8", lengths=_DIST_LENGTHS)
        if dist is None:
            raise _fail(
                path,
                "distortion_coefficients",
                "missing",
                "add k1,k2,p1,p2,k3 as a 5×1 !!opencv-matrix (zeros if none)",
            )
        data["dist_coeffs"] = dist.reshape(-1).tolist()
        data["rotation"] = _read_rotation(fs, path, keys)
        translation = _read_matrix(fs, path, "translation_vector", "3×1 (millimetres)")
        if translation is None:
            raise _fail(
                path, "translation_vector", "missing", "add the world→camera translation in mm as a 3×1 !!opencv-matrix"
            )
        data["translation"] = translation.reshape(3).tolist()
    finally:
        fs.release()
    try:
        return CameraCalibration(**data)
    except ValidationError as exc:
        raise _validation_to_calibration_error(path, exc) from None


def _read_rotation(fs: cv2.FileStorage, path: Path, keys: list[str]) -> list[list[float]]:
    matrix = _read_matrix(fs, path, "rotation_matrix", "3×3", square=True)
    rvec = _read_matrix(fs, path, "rvec", "3×1 (Rodrigues vector, radians)")
    if matrix is None and rvec is None:
        raise _fail(
            path,
            "rotation_matrix",
            f"missing (and no 'rvec' either; keys present: {', '.join(keys)})",
            "add the world→camera rotation as a 3×3 'rotation_matrix' or a 3×1 'rvec'",
        )
    if rvec is not None:
        from_rvec = cv2.Rodrigues(rvec.reshape(3, 1))[0]
        if matrix is not None and np.abs(from_rvec - matrix).max() > 1e-6:
            raise _fail(path, "rvec", "disagrees with 'rotation_matrix'", "keep only one of the two")
        if matrix is None:
            return from_rvec.tolist()
    assert matrix is not None
    return matrix.tolist()


def _validation_to_calibration_error(path: Path, exc: ValidationError) -> CalibrationError:
    lines = []
    for error in exc.errors(include_url=False):
        field = str(error["loc"][0]) if error["loc"] else ""
        key = _FIELD_TO_KEY.get(field, field or "(whole file)")
        message = error["msg"].removeprefix("Value error, ")
        if error["loc"] == ():
            key = "camera_matrix"
        lines.append(f"key '{key}': {message}")
    return CalibrationError(f"{path}: " + "; ".join(lines) + "; fix the file or recalibrate the camera")


def save_calibration(calib: CameraCalibration, path: str | os.PathLike[str]) -> None:
    """Write the calibration as OpenCV YAML, atomically, so a reader never sees half a file."""
    path = Path(path)
    with replacing(path) as tmp:
        _write_yaml(calib, path, tmp)


def _write_yaml(calib: CameraCalibration, path: Path, tmp: Path) -> None:
    fs = cv2.FileStorage(str(tmp), cv2.FILE_STORAGE_WRITE | cv2.FILE_STORAGE_FORMAT_YAML)
    if not fs.isOpened():
        raise CalibrationError(f"{path}: cannot write calibration (check the directory exists and is writable)")
    try:
        fs.writeComment("Tray frame: origin at the tray centre, z up, millimetres. x_cam = R * x_world + t.")
        fs.write("camera_name", calib.name)
        fs.write("serial", calib.serial)
        fs.write("image_width", calib.image_width)
        fs.write("image_height", calib.image_height)
        fs.write("camera_matrix", calib.K)
        fs.write("distortion_coefficients", calib.D.reshape(-1, 1))
        fs.write("rotation_matrix", calib.R)
        fs.write("translation_vector", calib.t.reshape(3, 1))
    finally:
        fs.release()
    _opencv4_header(tmp)


def _opencv4_header(path: Path) -> None:
    """OpenCV 5 writes '%YAML 1.2'; the station's files keep OpenCV 4's '%YAML:1.0', which every version reads."""
    text = path.read_text(encoding="utf-8")
    if text.startswith("%YAML 1."):
        _, _, rest = text.partition("\n")
        text = "%YAML:1.0\n" + rest
    path.write_text(text, encoding="utf-8")


def load_rig(directory: str | os.PathLike[str]) -> list[CameraCalibration]:
    """Load cam01.yaml … cam05.yaml; a file describing another camera than its name is an error, not a silent swap."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CalibrationError(
            f"{directory}: no such calibration directory; point to the folder holding cam01.yaml … cam05.yaml"
        )
    rig = []
    for name in RIG_CAMERAS:
        path = directory / f"{name}.yaml"
        if not path.is_file():
            raise CalibrationError(
                f"{path}: missing; every rig needs cam01.yaml … cam05.yaml (calibrate {name} or copy its file here)"
            )
        calib = load_calibration(path)
        if calib.name != name:
            raise CalibrationError(
                f"{path}: key 'camera_name': says {calib.name!r} but the file is {name}.yaml; rename the file or fix the key"
            )
        rig.append(calib)
    serials = [c.serial for c in rig]
    duplicates = sorted({s for s in serials if serials.count(s) > 1})
    if duplicates:
        raise CalibrationError(
            f"{directory}: key 'serial': serial(s) {', '.join(duplicates)} appear in more than one file; "
            "each camera has its own serial"
        )
    return rig
