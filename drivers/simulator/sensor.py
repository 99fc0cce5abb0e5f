"""From scene brightness to the 8-bit numbers a Mono8 camera delivers: optics blur, vignetting, exposure, noise.

Kept apart from the scene so the camera's imperfections, which image-processing tests depend on,
are tuned in one place and apply identically to empty-tray and part images. A station look
(drivers.simulator.looks) sets its own exposure, vignetting, blur and noise; the defaults are the demo station's.
"""

from __future__ import annotations

import math
import zlib
from functools import lru_cache

import cv2
import numpy as np
from scipy.special import ndtri

from amflow_edge.inspection.geometry.camera import CameraCalibration

EXPOSURE_DN = 320.0
BLACK_LEVEL_DN = 2.0
BLUR_SIGMA_PX = 0.7
VIGNETTE_CORNER = 0.8
PRNU = 0.006
ELECTRONS_PER_DN = 41.0
READ_NOISE_E = 2.4


def optical_blur(image: np.ndarray, sigma_px: float = BLUR_SIGMA_PX) -> np.ndarray:
    """The lens's point-spread function, a small Gaussian: no real edge is one pixel sharp."""
    return cv2.GaussianBlur(image, (0, 0), sigma_px, borderType=cv2.BORDER_REFLECT_101)


def sensor_gain(
    calib: CameraCalibration, exposure_dn: float = EXPOSURE_DN, vignette_corner: float = VIGNETTE_CORNER
) -> np.ndarray:
    """(H,W) DN per unit scene brightness: exposure times vignetting and pixel response non-uniformity."""
    return _vignette(calib, vignette_corner) * exposure_dn


def _vignette(calib: CameraCalibration, vignette_corner: float = VIGNETTE_CORNER) -> np.ndarray:
    """Radial fall-off to `vignette_corner` in the corners, times a fixed per-sensor pixel response non-uniformity."""
    w, h = calib.image_width, calib.image_height
    cx, cy = calib.K[0, 2], calib.K[1, 2]
    x = (np.arange(w, dtype=np.float32) - cx)[None, :]
    y = (np.arange(h, dtype=np.float32) - cy)[:, None]
    corner = max(math.hypot(cx, cy), math.hypot(w - cx, cy), math.hypot(cx, h - cy), math.hypot(w - cx, h - cy))
    rho2 = (x * x + y * y) / corner**2
    falloff = 1.0 - (1.0 - vignette_corner) * (0.6 * rho2 + 0.4 * rho2 * rho2)
    prnu = np.random.default_rng(zlib.crc32(calib.serial.encode())).standard_normal((h, w), dtype=np.float32)
    return (falloff * (1.0 + PRNU * prnu)).astype(np.float32)


def expose(
    dn: np.ndarray,
    seed: int,
    camera_index: int,
    electrons_per_dn: float = ELECTRONS_PER_DN,
    read_noise_e: float = READ_NOISE_E,
) -> np.ndarray:
    """Shot and read noise of the sensor, deterministic for (seed, camera); then 8-bit quantisation.

    Normal deviates come from 16-bit uniforms through an inverse-CDF table: half the cost of
    drawing them directly, and a ±4.3σ tail is more than an 8-bit sensor image can show.
    """
    rng = np.random.Generator(np.random.Philox(np.random.SeedSequence([int(seed) & 0xFFFFFFFFFFFFFFFF, camera_index])))
    noise = _normal_table()[rng.integers(0, 65536, dn.shape, dtype=np.uint16)]
    read_variance = np.float32((read_noise_e / electrons_per_dn) ** 2)
    sigma = np.sqrt(np.maximum(dn, 0.0) * np.float32(1.0 / electrons_per_dn) + read_variance)
    noise *= sigma
    noise += dn
    noise += np.float32(BLACK_LEVEL_DN + 0.5)
    np.clip(noise, 0.0, 255.0, out=noise)
    return noise.astype(np.uint8)


@lru_cache(maxsize=1)
def _normal_table() -> np.ndarray:
    return ndtri((np.arange(65536, dtype=np.float64) + 0.5) / 65536).astype(np.float32)
