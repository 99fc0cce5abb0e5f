"""How far a camera's view of the empty tray has moved since it was calibrated.

A bumped bracket turns a camera by a fraction of a degree: every pixel of its image moves by about
the same amount, the calibration no longer says where the camera looks, and every silhouette it
gives is off by that much. Comparing the session's empty tray with the one photographed at
commissioning finds it without a board: phase correlation gives the shift to a pixel, and OpenCV's
enhanced correlation (ECC) refines it to a rigid motion of the image to a few hundredths of a pixel,
unaffected by a change of exposure or light level.
"""

from __future__ import annotations

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

# Half resolution keeps the measurement to a fraction of a second per camera and its error to a few
# hundredths of a pixel; the result is given in full-resolution pixels.
_SCALE = 0.5
_ECC_ITERATIONS = 60
_ECC_EPS = 1e-5
# Below this correlation the two pictures are not the same tray under the same light, and a shift
# between them means nothing.
MIN_CORRELATION = 0.6


class DriftError(ValueError):
    """The two pictures cannot be compared; the message says why and what to do."""


class ImageDrift(BaseModel):
    """The rigid motion that maps the commissioning picture onto today's, in full-resolution pixels."""

    model_config = ConfigDict(extra="forbid")

    shift_px: float = Field(
        ge=0, description="Largest displacement of any image corner: what a bump moved the view by."
    )
    dx_px: float = Field(description="Horizontal shift of the image centre (right is positive).")
    dy_px: float = Field(description="Vertical shift of the image centre (down is positive).")
    rotation_deg: float = Field(description="Rotation of the image about its centre.")
    correlation: float = Field(ge=-1, le=1, description="ECC correlation after alignment; 1 is identical.")


def _grey(image: np.ndarray, what: str) -> np.ndarray:
    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    if image.ndim != 2 or min(image.shape) < 64:
        raise DriftError(f"the {what} picture is not an image of the tray (shape {image.shape})")
    small = cv2.resize(image, None, fx=_SCALE, fy=_SCALE, interpolation=cv2.INTER_AREA)
    return small.astype(np.float32)


def measure_drift(commissioning: np.ndarray, current: np.ndarray) -> ImageDrift:
    """Raises DriftError when the pictures differ in size or do not show the same tray."""
    if commissioning.shape[:2] != current.shape[:2]:
        raise DriftError(
            f"the commissioning picture is {commissioning.shape[1]}×{commissioning.shape[0]} px and today's is "
            f"{current.shape[1]}×{current.shape[0]} px; recalibrate the camera at its current resolution"
        )
    ref = _grey(commissioning, "commissioning")
    cur = _grey(current, "current")
    window = cv2.createHanningWindow((ref.shape[1], ref.shape[0]), cv2.CV_32F)
    (sx, sy), _ = cv2.phaseCorrelate(ref, cur, window)
    start = np.array([[1, 0, sx], [0, 1, sy]], dtype=np.float32)
    criteria = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, _ECC_ITERATIONS, _ECC_EPS)
    try:
        correlation, warp = cv2.findTransformECC(ref, cur, start, cv2.MOTION_EUCLIDEAN, criteria, None)
    except cv2.error:
        raise DriftError(
            "the empty tray does not look like the one photographed at commissioning (no alignment found); "
            "if the tray or the lights were changed, recalibrate the station"
        ) from None
    if correlation < MIN_CORRELATION:
        raise DriftError(
            f"the empty tray matches the commissioning picture only to a correlation of {correlation:.2f}; "
            "if the tray or the lights were changed, recalibrate the station"
        )
    return _as_drift(np.asarray(warp, dtype=np.float64), ref.shape, float(correlation))


def _as_drift(warp: np.ndarray, shape: tuple[int, ...], correlation: float) -> ImageDrift:
    h, w = shape[:2]
    corners = np.array([[0, 0], [w, 0], [0, h], [w, h], [w / 2, h / 2]], dtype=np.float64)
    moved = corners @ warp[:, :2].T + warp[:, 2]
    displacement = np.linalg.norm(moved - corners, axis=1) / _SCALE
    centre = (moved[4] - corners[4]) / _SCALE
    return ImageDrift(
        shift_px=round(float(displacement.max()), 3),
        dx_px=round(float(centre[0]), 3),
        dy_px=round(float(centre[1]), 3),
        rotation_deg=round(float(np.degrees(np.arctan2(warp[1, 0], warp[0, 0]))), 4),
        correlation=round(min(1.0, max(-1.0, correlation)), 4),
    )
