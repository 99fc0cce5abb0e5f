"""How a camera's empty tray looked at commissioning, and whether today's empty-tray reference still looks so.

The segmentation and the learned light both assume the station is as it was commissioned. The empty tray is
the one picture taken before every batch that shows whether it is: a failed or ageing lamp darkens it, a
swapped or re-finished tray changes its texture, a knocked camera moves it. Three figures catch these: the
median grey level (light), the texture contrast (surface finish, focus) and the correlation of the fine
detail of a downsampled copy (the same tray, seen from the same place).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

DOWNSAMPLE = 8
"""The stored copy is 1/8 of the camera's size (306 × 256 for 2448 × 2048): enough for the tray's coarse
texture and a rim, small enough to keep beside the calibration for every version."""
CONTRAST_SIGMA_PX = 2.0
"""Gaussian σ of the local mean and standard deviation the texture contrast is measured with: the scale of a
bead-blasted or milled plate's grain at the station's resolution."""
CENTRAL_SHARE = 0.5
"""Contrast and grey level are measured on the central half (in width and height) of the image, which shows the
tray plate on every station camera, not the floor or the rig around it."""
DETAIL_SIGMA = 4.0
"""Gaussian σ (pixels of the downsampled copy) of the shading divided out before correlating: what remains is
the tray's own detail, which a change of light does not alter but another tray or a moved camera does."""

BRIGHTNESS_TOLERANCE = 0.15
"""The tray may be this much (relative) darker or brighter before it is a change: exposure and lamp output drift
a few per cent between batches, and the segmentation compensates a global gain up to about this much."""
CONTRAST_TOLERANCE = 0.3
"""Relative change of texture contrast allowed: sensor noise and a slightly different focus move it by some
ten per cent; a tray with another finish or a defocused lens by far more."""
MIN_CORRELATION = 0.6
"""Correlation of the downsampled detail below which the tray is not the one commissioned (or not seen from the
same place): the same tray with new sensor noise correlates above 0.9, an unrelated texture near 0."""
LOW_LIGHT = 1e-3
MIN_PATTERN = 0.01
"""A commissioned tray whose thumbnail varies by less than this (relative) has no pattern to recognise: a plain white
or black plate, whose correlation with itself is that of two noises. It is judged by brightness and contrast only."""


@dataclass(frozen=True)
class TrayChange:
    """Today's empty tray against the commissioned one, for one camera."""

    camera: str
    brightness_ratio: float
    """Median grey level now ÷ at commissioning."""
    contrast_ratio: float
    """Texture contrast now ÷ at commissioning."""
    correlation: float
    """Normalised correlation (−1 … 1) of the downsampled copies' detail (shading divided out)."""
    changed: bool
    why: str
    """Plain language: what changed and what to check; empty when nothing did."""


@dataclass(frozen=True)
class TrayAppearance:
    """One camera's empty tray at commissioning."""

    camera: str
    grey: float
    """Median grey level of the central part of the reference."""
    contrast: float
    """Median local standard deviation ÷ local mean (σ CONTRAST_SIGMA_PX) on the central part."""
    thumbnail: np.ndarray
    """uint8 copy of the reference at 1/DOWNSAMPLE size."""

    @classmethod
    def of(cls, camera: str, reference: np.ndarray) -> TrayAppearance:
        grey, contrast = _figures(reference)
        return cls(camera, grey, contrast, thumbnail(reference))

    def compare(self, reference_now: np.ndarray) -> TrayChange:
        """Today's empty-tray reference of the same camera against this one."""
        grey, contrast = _figures(reference_now)
        small = thumbnail(reference_now)
        if small.shape != self.thumbnail.shape:
            small = cv2.resize(small, self.thumbnail.shape[::-1], interpolation=cv2.INTER_AREA)
        brightness = grey / max(self.grey, LOW_LIGHT)
        contrast_ratio = contrast / max(self.contrast, LOW_LIGHT)
        correlation = _correlation(_detail(self.thumbnail), _detail(small))
        reasons = []
        if brightness < 1 - BRIGHTNESS_TOLERANCE:
            reasons.append(
                f"tray {100 * (1 - brightness):.0f} % darker than at commissioning: has a lamp failed or the exposure changed?"
            )
        elif brightness > 1 / (1 - BRIGHTNESS_TOLERANCE):
            reasons.append(
                f"tray {100 * (brightness - 1):.0f} % brighter than at commissioning: a new lamp, daylight, or the exposure changed?"
            )
        patterned = float(np.std(_detail(self.thumbnail))) >= MIN_PATTERN
        if patterned and correlation < MIN_CORRELATION:
            reasons.append(
                f"tray texture differs (correlation {correlation:.2f}): was the tray swapped or a camera moved?"
            )
        elif abs(contrast_ratio - 1) > CONTRAST_TOLERANCE:
            reasons.append(
                f"tray texture contrast {contrast_ratio:.2f}× that at commissioning: is the lens out of focus or the tray re-finished?"
            )
        why = "; ".join(f"{self.camera}: {reason}" for reason in reasons)
        return TrayChange(self.camera, brightness, contrast_ratio, correlation, bool(reasons), why)


def thumbnail(reference: np.ndarray) -> np.ndarray:
    height, width = reference.shape[:2]
    size = (max(1, width // DOWNSAMPLE), max(1, height // DOWNSAMPLE))
    return np.asarray(cv2.resize(reference, size, interpolation=cv2.INTER_AREA), dtype=np.uint8)


def _central(image: np.ndarray) -> np.ndarray:
    height, width = image.shape[:2]
    dy, dx = int(height * (1 - CENTRAL_SHARE) / 2), int(width * (1 - CENTRAL_SHARE) / 2)
    return image[dy : height - dy, dx : width - dx]


def _figures(reference: np.ndarray) -> tuple[float, float]:
    """Median grey level and texture contrast of the central part."""
    if reference.ndim != 2:
        raise ValueError(f"empty-tray reference must be a 2-D grey image, got shape {reference.shape}")
    centre = _central(reference).astype(np.float32)
    mean = cv2.GaussianBlur(centre, (0, 0), CONTRAST_SIGMA_PX)
    square = cv2.GaussianBlur(centre * centre, (0, 0), CONTRAST_SIGMA_PX)
    std = np.sqrt(np.maximum(square - mean * mean, 0.0))
    contrast = np.median(std / np.maximum(mean, 1.0))
    return float(np.median(centre)), float(contrast)


def _detail(small: np.ndarray) -> np.ndarray:
    image = small.astype(np.float32)
    shading = cv2.GaussianBlur(image, (0, 0), DETAIL_SIGMA)
    return np.asarray(image / np.maximum(shading, 1.0) - 1.0, dtype=np.float32)


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    a = a - a.mean()
    b = b - b.mean()
    norm = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / norm) if norm > 0 else 0.0
