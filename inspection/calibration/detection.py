"""Finding the board's corners in one picture, and judging whether a view is good enough to calibrate with.

OpenCV's ChArUco detector finds the corners; they are refined again with a window sized to the squares
as this view shows them, because the detector's own refinement lets a steeply seen corner's window reach
the next square's edge and drags it by a pixel or more.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from amflow_edge.inspection.calibration.board import BoardDefinition

MIN_CORNERS = 20
"""Fewer corners than this fix a view's pose too loosely to help the intrinsics."""
MIN_SPREAD = 0.02
"""The corners' convex hull must cover this share of the image: a board seen tiny or edge-on tells little."""
COVERAGE_GRID = (12, 10)


@dataclass(frozen=True)
class ViewCorners:
    """The board corners one camera saw in one picture: corner ids (into BoardDefinition.corners_board) and pixels."""

    ids: np.ndarray
    pixels: np.ndarray
    image_size: tuple[int, int]

    @property
    def count(self) -> int:
        return len(self.ids)


class CornerDetector:
    """One detector per board, reused for every picture."""

    def __init__(self, board: BoardDefinition) -> None:
        self.board = board
        self._detector = cv2.aruco.CharucoDetector(board.cv_board())

    def detect(self, image: np.ndarray) -> ViewCorners:
        if image.ndim != 2 or image.dtype != np.uint8:
            raise ValueError(f"expected an 8-bit grey image, got {image.dtype} with shape {image.shape}")
        height, width = image.shape
        corners, ids, _, _ = self._detector.detectBoard(image)
        if ids is None or len(ids) == 0:
            return ViewCorners(np.zeros(0, dtype=np.int32), np.zeros((0, 2)), (width, height))
        pixels = corners.reshape(-1, 2).astype(np.float32)
        if len(pixels) >= 2:
            pixels = _refine(image, pixels)
        return ViewCorners(ids.reshape(-1).astype(np.int32), pixels.astype(np.float64), (width, height))


def _refine(image: np.ndarray, pixels: np.ndarray) -> np.ndarray:
    distances = np.linalg.norm(pixels[:, None, :] - pixels[None, :, :], axis=2)
    np.fill_diagonal(distances, np.inf)
    spacing = float(np.median(distances.min(axis=1)))
    half = int(np.clip(round(0.3 * spacing), 3, 9))
    criteria = (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_COUNT, 100, 1e-4)
    refined = cv2.cornerSubPix(image, pixels.reshape(-1, 1, 2).copy(), (half, half), (-1, -1), criteria)
    return np.asarray(refined, dtype=np.float32).reshape(-1, 2)


def view_problem(board: BoardDefinition, view: ViewCorners) -> str | None:
    """Why this view cannot be used, in words for the person holding the board; None when it is fine."""
    if view.count < MIN_CORNERS:
        return (
            f"too few ChArUco corners ({view.count} of {board.corner_count}; needs {MIN_CORNERS}): the board is not in "
            "view, too steep, covered or out of focus; move it so this camera sees most of it"
        )
    width, height = view.image_size
    hull = cv2.convexHull(view.pixels.astype(np.float32))
    spread = float(cv2.contourArea(hull)) / (width * height)
    if spread < MIN_SPREAD:
        return (
            f"the corners cover only {100 * spread:.1f} % of the image (needs {100 * MIN_SPREAD:.0f} %): the board is "
            "seen nearly edge-on or mostly hidden; tilt it less towards this camera"
        )
    return None


def coverage_fraction(views: list[ViewCorners]) -> float:
    """Share of the image's cells (a 12 × 10 grid) holding at least one corner over all views: where no corner
    ever fell, the lens distortion is extrapolated, not measured."""
    if not views:
        return 0.0
    width, height = views[0].image_size
    nx, ny = COVERAGE_GRID
    cells = np.zeros((ny, nx), dtype=bool)
    for view in views:
        if view.count == 0:
            continue
        cx = np.clip((view.pixels[:, 0] / width * nx).astype(int), 0, nx - 1)
        cy = np.clip((view.pixels[:, 1] / height * ny).astype(int), 0, ny - 1)
        cells[cy, cx] = True
    return float(cells.mean())
