"""The calibration board as the station's cameras would photograph it: lying on the tray, or propped up tilted.

Calibration is judged by how well it recovers the rig that rendered the pictures, so the board's
geometry must be exact to a hundredth of a pixel: every pixel is traced back (through the lens
distortion, as the rig's own pixel rays do) to the board plane and the board's picture is sampled
there, 2×2 times per pixel, from a fine texture whose squares have their edges on texel boundaries.
What the tray and the sensor add (texture, vignetting, blur, noise) is the mock's usual photograph.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import cv2
import numpy as np

from amflow_edge.drivers.simulator.sensor import expose, optical_blur, sensor_gain
from amflow_edge.drivers.simulator.tray_texture import TrayTexture
from amflow_edge.inspection.calibration.board import BoardDefinition
from amflow_edge.inspection.geometry.camera import CameraCalibration
from amflow_edge.inspection.geometry.lighting import Lighting

TEXEL_MM = 0.05
PAPER_MARGIN_MM = 8.0
PREFILTER_MM = 0.08
"""Half a pixel's footprint on the board: with the 2×2 sub-samples, an edge's brightness then varies smoothly with
its sub-pixel position instead of in four steps, which would bias corners by up to a tenth of a pixel."""
PAPER_ALBEDO = 0.62
INK_ALBEDO = 0.05
SKY_BRIGHTNESS = 0.02
_SUBSAMPLES = ((-0.25, -0.25), (0.25, -0.25), (-0.25, 0.25), (0.25, 0.25))
_ROI_PAD_PX = 6
_IRRADIANCE_STEP = 8


@dataclass(frozen=True)
class BoardPlacement:
    """Where the board lies for one capture: its 4×4 board→tray transform (OpenCV board frame, mm)."""

    name: str
    pose: np.ndarray
    instruction: str


def flat_pose(board: BoardDefinition, x_mm: float = 0.0, y_mm: float = 0.0, yaw_deg: float = 0.0) -> np.ndarray:
    """The board lying on the tray, its centre at (x, y), turned by yaw about the vertical; its printed surface is
    board.thickness_mm above the tray (board_to_tray_flat), as a board glued to a backing lies."""
    turn = np.eye(4)
    turn[:3, :3] = _rotation((0.0, 0.0, 1.0), yaw_deg)
    turn[:3, 3] = [x_mm, y_mm, 0.0]
    return turn @ board.board_to_tray_flat()


def tilted_pose(
    board: BoardDefinition, tilt_deg: float, axis_deg: float, lift_mm: float, x_mm: float = 0.0, y_mm: float = 0.0
) -> np.ndarray:
    """The board propped up: turned by tilt about a horizontal axis at axis_deg from tray x, centred over (x, y),
    the lowest corner of its backing lift_mm above the tray (on blocks), so the board never dips into the tray."""
    axis = (math.cos(math.radians(axis_deg)), math.sin(math.radians(axis_deg)), 0.0)
    turn = np.eye(4)
    turn[:3, :3] = _rotation(axis, tilt_deg)
    pose: np.ndarray = turn @ board.board_to_tray_flat()
    width, height = board.size_mm
    corners = np.array(
        [[u, v, depth, 1.0] for u in (0.0, width) for v in (0.0, height) for depth in (0.0, board.thickness_mm)]
    )  # the printed face's corners and the backing's below them (OpenCV's board z points into the board)
    lowest = float((corners @ pose.T)[:, 2].min())
    pose[:3, 3] += [x_mm, y_mm, lift_mm - lowest]
    return pose


def default_placements(board: BoardDefinition) -> list[BoardPlacement]:
    """The mock's sequence: flat and centred (defines the tray frame), flat shifted, then tilted about the tray's
    diagonals (so every oblique camera still sees the markers) and at different heights."""
    return [
        BoardPlacement("flat_centre", flat_pose(board), "place the board flat at the centre of the tray"),
        BoardPlacement(
            "tilt_diagonal_a",
            tilted_pose(board, 25.0, 45.0, 20.0),
            "prop the board up about 25° along one diagonal of the tray",
        ),
        BoardPlacement(
            "tilt_diagonal_b",
            tilted_pose(board, 25.0, 135.0, 40.0, x_mm=10.0),
            "prop the board up about 25° along the other diagonal, a little higher",
        ),
        BoardPlacement(
            "tilt_diagonal_a_reverse",
            tilted_pose(board, -22.0, 45.0, 60.0, y_mm=-10.0),
            "tilt the board about 20° the other way along the first diagonal, higher still",
        ),
        BoardPlacement(
            "tilt_diagonal_b_reverse",
            tilted_pose(board, -22.0, 135.0, 10.0, x_mm=-10.0, y_mm=10.0),
            "tilt the board about 20° the other way along the second diagonal, low",
        ),
        BoardPlacement(
            "flat_shifted",
            flat_pose(board, x_mm=35.0, y_mm=-25.0, yaw_deg=12.0),
            "lay the board flat again, shifted towards one corner and turned a little",
        ),
    ]


def _rotation(axis: Sequence[float], degrees: float) -> np.ndarray:
    vector = np.asarray(axis, dtype=np.float64)
    vector = vector / np.linalg.norm(vector) * math.radians(degrees)
    return np.asarray(cv2.Rodrigues(vector)[0], dtype=np.float64)


@dataclass(frozen=True)
class _View:
    index: int
    calib: CameraCalibration
    base: np.ndarray
    gain: np.ndarray


class BoardRenderer:
    """Renders the board for a fixed rig; the per-camera tray brightness and gain are computed once."""

    def __init__(
        self,
        cameras: Sequence[CameraCalibration],
        board: BoardDefinition,
        tray_size_mm: tuple[float, float] = (300.0, 240.0),
    ) -> None:
        self.board = board
        self._lighting = Lighting(cameras)
        tray = TrayTexture.for_tray(tray_size_mm)
        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="board") as pool:
            bases = list(pool.map(lambda calib: self._tray_brightness(calib, tray), cameras))
            gains = list(pool.map(sensor_gain, cameras))
        self._views = [
            _View(index, calib, base, gain)
            for index, (calib, base, gain) in enumerate(zip(cameras, bases, gains, strict=True))
        ]
        printed = board.texture(TEXEL_MM, PAPER_MARGIN_MM).astype(np.float32) / 255.0
        texture: np.ndarray = cv2.GaussianBlur(
            printed, (0, 0), PREFILTER_MM / TEXEL_MM, borderType=cv2.BORDER_REPLICATE
        )
        self._albedo = (INK_ALBEDO + (PAPER_ALBEDO - INK_ALBEDO) * texture).astype(np.float32)
        self._paper = np.ones_like(self._albedo)
        self._origin_mm = -PAPER_MARGIN_MM

    @property
    def cameras(self) -> list[CameraCalibration]:
        return [view.calib for view in self._views]

    def _tray_brightness(self, calib: CameraCalibration, tray: TrayTexture) -> np.ndarray:
        rays = calib.pixel_rays()
        centre = calib.centre.astype(np.float32)
        with np.errstate(divide="ignore", invalid="ignore"):
            t = np.where(rays[..., 2] < -1e-6, -centre[2] / rays[..., 2], np.float32(np.nan)).astype(np.float32)
        x = centre[0] + t * rays[..., 0]
        y = centre[1] + t * rays[..., 1]
        brightness = tray.albedo(x, y) * self._lighting.tray_irradiance(x, y)
        return np.where(np.isfinite(t), brightness, np.float32(SKY_BRIGHTNESS)).astype(np.float32)

    def render(self, pose: np.ndarray | None, seed: int) -> dict[str, np.ndarray]:
        """One Mono8 image per camera of the board at `pose` (board→tray 4×4), or of the empty tray for None."""
        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="board") as pool:
            images = list(pool.map(lambda view: self._render_view(view, pose, seed), self._views))
        return {view.calib.name: image for view, image in zip(self._views, images, strict=True)}

    def _render_view(self, view: _View, pose: np.ndarray | None, seed: int) -> np.ndarray:
        brightness = view.base
        roi = None if pose is None else self._roi(view.calib, pose)
        if pose is not None and roi is not None:
            brightness = brightness.copy()
            x0, y0, x1, y1 = roi
            brightness[y0:y1, x0:x1] = self._board_region(view, pose, roi)
        return expose(optical_blur(brightness) * view.gain, seed, view.index)

    def _roi(self, calib: CameraCalibration, pose: np.ndarray) -> tuple[int, int, int, int] | None:
        width, height = self.board.size_mm
        m = PAPER_MARGIN_MM
        edge = np.linspace(0.0, 1.0, 24)
        u = np.concatenate(
            [edge * (width + 2 * m) - m, edge * (width + 2 * m) - m, np.full(24, -m), np.full(24, width + m)]
        )
        v = np.concatenate(
            [np.full(24, -m), np.full(24, height + m), edge * (height + 2 * m) - m, edge * (height + 2 * m) - m]
        )
        points = np.column_stack([u, v, np.zeros_like(u), np.ones_like(u)]) @ pose.T
        if np.any(calib.to_camera(points[:, :3])[:, 2] <= 1.0):
            return 0, 0, calib.image_width, calib.image_height
        pixels = calib.project(points[:, :3])
        x0 = max(0, math.floor(pixels[:, 0].min()) - _ROI_PAD_PX)
        y0 = max(0, math.floor(pixels[:, 1].min()) - _ROI_PAD_PX)
        x1 = min(calib.image_width, math.ceil(pixels[:, 0].max()) + _ROI_PAD_PX + 1)
        y1 = min(calib.image_height, math.ceil(pixels[:, 1].max()) + _ROI_PAD_PX + 1)
        return (x0, y0, x1, y1) if x1 > x0 and y1 > y0 else None

    def _board_region(self, view: _View, pose: np.ndarray, roi: tuple[int, int, int, int]) -> np.ndarray:
        """Board brightness where the paper is, the tray's elsewhere, averaged over 2×2 sub-pixel samples.

        Sub-pixel board coordinates come from the pixel-centre ones and their local derivatives: the map from
        pixels to the board plane is smooth, and a quarter pixel away its curvature is far below 0.001 px.
        """
        x0, y0, x1, y1 = roi
        calib = view.calib
        rays = calib.pixel_rays()[y0:y1, x0:x1].astype(np.float64)
        centre = calib.centre
        rotation, origin = pose[:3, :3], pose[:3, 3]
        normal = rotation[:, 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            t = ((origin - centre) @ normal) / (rays @ normal)
        hit = np.isfinite(t) & (t > 0)
        points = centre + np.where(hit, t, 0.0)[..., None] * rays
        local = (points - origin) @ rotation
        u = (local[..., 0] - self._origin_mm) / TEXEL_MM - 0.5
        v = (local[..., 1] - self._origin_mm) / TEXEL_MM - 0.5
        du_dy, du_dx = np.gradient(u)
        dv_dy, dv_dx = np.gradient(v)
        tray = view.base[y0:y1, x0:x1]
        coarse = points[::_IRRADIANCE_STEP, ::_IRRADIANCE_STEP].astype(np.float32)
        irradiance = cv2.resize(
            self._lighting.tray_irradiance(coarse[..., 0], coarse[..., 1]), (u.shape[1], u.shape[0])
        )
        total = np.zeros(u.shape, dtype=np.float32)
        for dx, dy in _SUBSAMPLES:
            su = (u + dx * du_dx + dy * du_dy).astype(np.float32)
            sv = (v + dx * dv_dx + dy * dv_dy).astype(np.float32)
            albedo = cv2.remap(self._albedo, su, sv, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0.0)
            paper = cv2.remap(self._paper, su, sv, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0.0)
            paper = np.where(hit, paper, np.float32(0.0))
            total += paper * albedo * irradiance + (1.0 - paper) * tray
        return total / np.float32(len(_SUBSAMPLES))
