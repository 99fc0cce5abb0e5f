"""What the tray and the floor around it look like: albedo maps in tray coordinates.

Background subtraction and edge detection trip over texture, so the mock tray carries what a real
machined plate does (speckle, milling arcs, scratches, a rim) instead of a flat grey; a station look
may ask for another plate (brushed or anodised aluminium, matte black, white). The textures are built
from fixed seeds so every renderer, process and run shows the very same tray.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np

from amflow_edge.drivers.simulator.looks import TrayKind, TraySpec

TRAY_ALBEDO = 0.24
TRAY_RIM_ALBEDO = 0.32
FLOOR_ALBEDO = 0.07
TRAY_TEXEL_MM = 0.1
FLOOR_TEXEL_MM = 0.5

_TEXTURE_SEED = 0x7A3F_1D2C


@dataclass(frozen=True)
class TrayTexture:
    """The tray plate and the floor around it; `albedo` looks up tray-frame points (mm) on the plane z = 0."""

    tray: np.ndarray
    inside: np.ndarray
    origin: np.ndarray
    floor: np.ndarray
    floor_albedo: float = FLOOR_ALBEDO

    @classmethod
    def for_tray(
        cls, tray_size_mm: tuple[float, float], spec: TraySpec | None = None, floor_albedo: float = FLOOR_ALBEDO
    ) -> TrayTexture:
        """The demo station's machined tray, or the plate a station look (`spec`) asks for."""
        if spec is None or (spec == TraySpec() and floor_albedo == FLOOR_ALBEDO):
            tray, inside, origin = _tray_texture(tray_size_mm)
        else:
            tray, inside, origin = _tray_texture(
                tray_size_mm,
                spec.kind,
                spec.albedo,
                spec.contrast,
                spec.wear.scratches,
                spec.wear.strength,
                floor_albedo,
            )
        return cls(tray, inside, origin, _floor_texture(floor_albedo), floor_albedo)

    def albedo(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Tray plate where the pixel sees it, floor elsewhere, blended by coverage so the tray edge is not jagged."""
        mx = ((x - self.origin[0]) / TRAY_TEXEL_MM - 0.5).astype(np.float32)
        my = ((y - self.origin[1]) / TRAY_TEXEL_MM - 0.5).astype(np.float32)
        tray = cv2.remap(
            self.tray, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=self.floor_albedo
        )
        coverage = cv2.remap(self.inside, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0.0)
        fx = np.nan_to_num(x / FLOOR_TEXEL_MM).astype(np.float32)
        fy = np.nan_to_num(y / FLOOR_TEXEL_MM).astype(np.float32)
        size = self.floor.shape[0]
        floor = cv2.remap(self.floor, np.mod(fx, size), np.mod(fy, size), cv2.INTER_LINEAR, borderMode=cv2.BORDER_WRAP)
        return coverage * tray + (1.0 - coverage) * floor


@lru_cache(maxsize=3)
def _tray_texture(
    tray_size_mm: tuple[float, float],
    kind: TrayKind = "machined_aluminium",
    mean_albedo: float = TRAY_ALBEDO,
    contrast: float = 1.0,
    scratch_count: int = 30,
    scratch_strength: float = 0.08,
    floor_albedo: float = FLOOR_ALBEDO,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Albedo of the tray plate in tray coordinates: the plate's own texture, scratches, a rim, the floor around it."""
    rng = np.random.default_rng(_TEXTURE_SEED)
    border = 2.0
    width, depth = tray_size_mm
    nx, ny = int(round((width + 2 * border) / TRAY_TEXEL_MM)), int(round((depth + 2 * border) / TRAY_TEXEL_MM))
    origin = np.array([-width / 2 - border, -depth / 2 - border], dtype=np.float32)
    x = origin[0] + (np.arange(nx, dtype=np.float32) + 0.5) * TRAY_TEXEL_MM
    y = origin[1] + (np.arange(ny, dtype=np.float32) + 0.5) * TRAY_TEXEL_MM

    speckle: np.ndarray = cv2.GaussianBlur(rng.standard_normal((ny, nx), dtype=np.float32), (0, 0), 1.2)
    speckle /= speckle.std()
    if kind == "machined_aluminium":
        albedo = _machined(rng, x, y, depth, speckle, mean_albedo, contrast)
        rim_albedo = TRAY_RIM_ALBEDO * (mean_albedo / TRAY_ALBEDO)
    else:
        albedo = _plate(rng, kind, speckle, mean_albedo, contrast)
        rim_albedo = mean_albedo * (1.2 if kind.endswith("aluminium") else 1.05)

    scratches = np.zeros((ny, nx), dtype=np.float32)
    for _ in range(scratch_count):
        start = rng.uniform([0, 0], [nx, ny])
        angle, length = rng.uniform(0, math.pi), rng.uniform(40, 400)
        end = start + length * np.array([math.cos(angle), math.sin(angle)])
        depth_of_cut = float(rng.uniform(0.5, 1.0))
        cv2.line(scratches, (int(start[0]), int(start[1])), (int(end[0]), int(end[1])), depth_of_cut, 1, cv2.LINE_AA)
    if kind == "anodised_aluminium":
        scratches += _worn_patches(rng, nx, ny)
    albedo *= 1.0 + np.float32(scratch_strength) * scratches

    rim = 1.5
    rim_x = np.abs(x) > width / 2 - rim
    rim_y = np.abs(y) > depth / 2 - rim
    albedo[rim_y, :] = rim_albedo * (1.0 + 0.03 * speckle[rim_y, :])
    albedo[:, rim_x] = rim_albedo * (1.0 + 0.03 * speckle[:, rim_x])
    inside = ((np.abs(y) <= depth / 2)[:, None] & (np.abs(x) <= width / 2)[None, :]).astype(np.float32)
    albedo[inside == 0] = floor_albedo
    if kind != "machined_aluminium":
        np.clip(albedo, 0.002, 1.0, out=albedo)
    return np.ascontiguousarray(albedo, dtype=np.float32), inside, origin


def _machined(
    rng: np.random.Generator,
    x: np.ndarray,
    y: np.ndarray,
    depth: float,
    speckle: np.ndarray,
    mean_albedo: float,
    contrast: float,
) -> np.ndarray:
    """Bead-blasted speckle and face-milling arcs: one pass of a fly cutter every pass_width mm across the plate."""
    ny, nx = speckle.shape
    coarse: np.ndarray = cv2.GaussianBlur(
        rng.standard_normal((ny // 10 + 1, nx // 10 + 1), dtype=np.float32), (0, 0), 2.5
    )
    mottle = cv2.resize(coarse / max(float(coarse.std()), 1e-6), (nx, ny), interpolation=cv2.INTER_LINEAR)

    pass_width, cutter_radius, feed = 60.0, 40.0, 0.9
    pass_index = np.floor((y + depth / 2) / pass_width)
    pass_centre = -depth / 2 + (pass_index + 0.5) * pass_width
    dy = np.clip(y - pass_centre, -cutter_radius + 1e-3, cutter_radius - 1e-3)
    arc = np.sqrt(cutter_radius**2 - dy**2) * np.where(pass_index % 2 == 0, 1.0, -1.0)
    k = 2 * math.pi / feed
    cos_arc, sin_arc = np.cos(k * arc).astype(np.float32), np.sin(k * arc).astype(np.float32)
    cos_x, sin_x = np.cos(k * x).astype(np.float32), np.sin(k * x).astype(np.float32)
    crest = 0.5 + 0.5 * (cos_arc[:, None] * cos_x[None, :] + sin_arc[:, None] * sin_x[None, :])
    crest *= crest
    marks = crest * crest - np.float32(0.27)
    pass_tone = rng.uniform(-1.0, 1.0, int(pass_index.max()) + 2)[pass_index.astype(int)].astype(np.float32)

    albedo: np.ndarray = np.float32(mean_albedo) * (
        1.0
        + np.float32(0.05 * contrast) * speckle
        + np.float32(0.02 * contrast) * mottle
        + np.float32(0.06 * contrast) * marks
        + (0.012 * contrast * pass_tone)[:, None]
    )
    return albedo


_PLATE_GRAIN: dict[str, tuple[float, float, float]] = {
    # speckle, mottle, streaks: relative amplitudes of each plate's texture
    "brushed_aluminium": (0.012, 0.015, 0.045),
    "anodised_aluminium": (0.06, 0.03, 0.0),
    "matte_black": (0.05, 0.06, 0.0),
    "white": (0.012, 0.02, 0.0),
}


def _plate(
    rng: np.random.Generator, kind: TrayKind, speckle: np.ndarray, mean_albedo: float, contrast: float
) -> np.ndarray:
    """A plate without milling marks: fine speckle and mottle, and for brushed metal streaks along x.

    The streaks are drawn at a twentieth of the resolution along x and stretched, as blurring 6 mm streaks at
    full resolution costs seconds.
    """
    ny, nx = speckle.shape
    fine_sigma, coarse_sigma = (0.6, 4.0) if kind == "anodised_aluminium" else (1.2, 2.5)
    fine: np.ndarray = speckle
    if fine_sigma != 1.2:
        fine = cv2.GaussianBlur(rng.standard_normal((ny, nx), dtype=np.float32), (0, 0), fine_sigma)
        fine = fine / fine.std()
    coarse: np.ndarray = cv2.GaussianBlur(
        rng.standard_normal((ny // 10 + 1, nx // 10 + 1), dtype=np.float32), (0, 0), coarse_sigma
    )
    mottle = cv2.resize(coarse / max(float(coarse.std()), 1e-6), (nx, ny), interpolation=cv2.INTER_LINEAR)
    a_speckle, a_mottle, a_streaks = _PLATE_GRAIN[kind]
    variation = np.float32(a_speckle * contrast) * fine + np.float32(a_mottle * contrast) * mottle
    if a_streaks > 0:
        short: np.ndarray = cv2.GaussianBlur(
            rng.standard_normal((ny, nx // 20 + 1), dtype=np.float32), (0, 0), sigmaX=3.0, sigmaY=0.7
        )
        streaks = cv2.resize(short / max(float(short.std()), 1e-6), (nx, ny), interpolation=cv2.INTER_LINEAR)
        variation += np.float32(a_streaks * contrast) * streaks
    albedo: np.ndarray = np.float32(mean_albedo) * (1.0 + variation)
    return albedo


def _worn_patches(rng: np.random.Generator, nx: int, ny: int) -> np.ndarray:
    """Soft patches where the anodising has worn through, as on corners parts are slid over: in scratch units."""
    patches: np.ndarray = np.zeros((ny // 10 + 1, nx // 10 + 1), dtype=np.float32)
    for _ in range(5):
        centre = rng.uniform([0, 0], [patches.shape[1], patches.shape[0]])
        axes = rng.uniform(8, 40, 2)
        cv2.ellipse(
            patches,
            (int(centre[0]), int(centre[1])),
            (int(axes[0]), int(axes[1])),
            float(rng.uniform(0, 180)),
            0,
            360,
            float(rng.uniform(0.15, 0.35)),
            -1,
        )
    patches = cv2.GaussianBlur(patches, (0, 0), 4.0)
    return cv2.resize(patches, (nx, ny), interpolation=cv2.INTER_LINEAR)


@lru_cache(maxsize=2)
def _floor_texture(floor_albedo: float = FLOOR_ALBEDO) -> np.ndarray:
    """The station floor around the tray: matte, mottled; tiled, as it only has to look plausible."""
    rng = np.random.default_rng(_TEXTURE_SEED + 1)
    size = 1024
    fine = _blur_wrapped(rng.standard_normal((size, size), dtype=np.float32), 1.5)
    coarse = _blur_wrapped(rng.standard_normal((size, size), dtype=np.float32), 30.0)
    fine /= fine.std()
    coarse /= max(float(coarse.std()), 1e-6)
    return (floor_albedo * (1.0 + 0.08 * fine + 0.12 * coarse)).astype(np.float32)


def _blur_wrapped(image: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of a tile that stays seamless when tiled (OpenCV filters have no wrap-around border)."""
    pad = int(math.ceil(4 * sigma))
    padded = np.pad(image, pad, mode="wrap")
    return cv2.GaussianBlur(padded, (0, 0), sigma)[pad:-pad, pad:-pad]
