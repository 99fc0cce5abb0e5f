"""How the station lights a scene: one ring light per camera plus a dome, the shadows they cast, the part's shading.

All five ring lights and the dome light every picture, as they fire together at the trigger; so a
matte surface shows the same brightness to every camera, as multi-view methods assume.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import open3d as o3d

from amflow_edge.inspection.geometry.camera import CameraCalibration
from amflow_edge.inspection.geometry.raycast import PlacedPart, surface_normals, tensor

PART_ALBEDO = 0.46
PART_GRAIN_FINE = 0.06
PART_GRAIN_COARSE = 0.03
PART_SPECULAR = 0.05
PART_SHININESS_LOG2 = 3

DOME_SHARE = 0.3
RING_RADIUS_MM = 45.0
AO_SAMPLES = 10
SHADOW_GRID_POINTS = 120_000
SHADOW_EPS_MM = 0.05


_SAMPLING_SEED = 0x7A3F_1D2C


@dataclass(frozen=True)
class Light:
    """A ring light around one camera's lens; its intensity is the irradiance it gives the tray centre face-on."""

    position: np.ndarray
    axis: np.ndarray
    intensity: float
    reference_distance: float


@dataclass(frozen=True)
class ShadowGrid:
    """Fraction of the unshadowed tray irradiance that reaches each cell, in tray coordinates."""

    factor: np.ndarray
    origin: np.ndarray
    cell_mm: float


class Lighting:
    """The rig's lights; irradiance of the tray, shadows of a placed part, brightness of its surface."""

    def __init__(self, cameras: Sequence[CameraCalibration]) -> None:
        self.lights = ring_lights(cameras)
        self.dome = DOME_SHARE

    def tray_irradiance(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        total = np.full(x.shape, self.dome, dtype=np.float32)
        for light in self.lights:
            dx, dy, dz = light.position[0] - x, light.position[1] - y, light.position[2]
            d2 = dx * dx + dy * dy + dz * dz
            total += light.intensity * light.reference_distance**2 * dz / (d2 * np.sqrt(d2))
        return total

    def shadow_grid(self, scene: o3d.t.geometry.RaycastingScene, support: np.ndarray) -> ShadowGrid:
        """Soft shadows of the ring lights and the dome's contact shadow, traced once per scene in tray coordinates.

        Shadows are a property of the scene, not of the viewer, so every camera samples the same grid.
        """
        height = max(float(support[:, 2].max()), 1.0)
        footprint = support[:, :2]
        boxes = [(footprint.min(axis=0) - 0.6 * height - 3.0, footprint.max(axis=0) + 0.6 * height + 3.0)]
        for light in self.lights:
            lz = float(light.position[2])
            scale = lz / np.maximum(lz - support[:, 2], 1.0)
            shadow = light.position[:2] + (footprint - light.position[:2]) * scale[:, None]
            penumbra = RING_RADIUS_MM * height / max(lz - height, 1.0) + 2.0
            boxes.append((shadow.min(axis=0) - penumbra, shadow.max(axis=0) + penumbra))
        low = np.min([box[0] for box in boxes], axis=0)
        high = np.max([box[1] for box in boxes], axis=0)
        origins, nx, ny, cell = shadow_grid_points(low, high)
        rng = np.random.default_rng(_SAMPLING_SEED)
        count = len(origins)

        batches, weights = [], []
        free = np.full(count, self.dome, dtype=np.float32)
        for light in self.lights:
            a, b = _perpendicular_basis(light.axis)
            phi = rng.uniform(0.0, 2 * math.pi, count).astype(np.float32)
            target = light.position + RING_RADIUS_MM * (np.cos(phi)[:, None] * a + np.sin(phi)[:, None] * b)
            direction = (target - origins).astype(np.float32)
            d2 = np.einsum("ij,ij->i", direction, direction)
            weight = light.intensity * light.reference_distance**2 * direction[:, 2] / (d2 * np.sqrt(d2))
            batches.append(np.concatenate([origins, direction], axis=1))
            weights.append(weight.astype(np.float32))
            free += weight
        for direction in _cosine_directions(rng, count, AO_SAMPLES):
            batches.append(np.concatenate([origins, direction * 1000.0], axis=1))
            weights.append(np.full(count, self.dome / AO_SAMPLES, dtype=np.float32))
        occluded = scene.test_occlusions(tensor(np.concatenate(batches)), tnear=0.0, tfar=1.0).numpy()
        lost = (occluded.reshape(len(batches), count) * np.stack(weights)).sum(axis=0)
        factor = (1.0 - lost / free).reshape(ny, nx).astype(np.float32)
        factor = cv2.GaussianBlur(factor, (0, 0), 1.0, borderType=cv2.BORDER_REPLICATE)
        return ShadowGrid(factor, low.astype(np.float32), cell)

    def shade(
        self,
        part: PlacedPart,
        eye: np.ndarray,
        camera_index: int,
        directions: np.ndarray,
        hits: dict[str, np.ndarray],
        albedo: float = PART_ALBEDO,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Brightness of part surface points: Lambert and a little Blinn-Phong under the ring lights and the dome.

        `albedo` is the material's diffuse reflectance (a black part 0.08, a white one 0.8), so that one geometry
        can be shown in materials identification must tell apart by their look.

        The viewing camera's own ring light sits on its lens and so casts no shadow it could see.
        Works on coordinate rows (3, N) rather than (N, 3) points: contiguous rows are what numpy is fast at.
        """
        d = np.ascontiguousarray(directions.T)
        t = hits["t_hit"]
        p = eye[:, None] + d * t
        n = surface_normals(part.data.corner_normals, part.rotation, hits, d)
        local = part.inverse_rotation @ p + part.inverse_translation[:, None]

        diffuse = self.dome * 0.5 * (1.0 + n[2])
        specular = np.zeros(len(t), dtype=np.float32)
        terms = []
        shadow_rays = []
        for index, light in enumerate(self.lights):
            towards, cos, falloff = _facing(light, p, n)
            lit = cos > 0
            half = towards - d
            glint = np.clip((n * half).sum(axis=0) / np.sqrt((half * half).sum(axis=0)), 0.0, 1.0)
            for _ in range(PART_SHININESS_LOG2):
                glint *= glint
            terms.append((np.where(lit, falloff * cos, 0.0), np.where(lit, falloff * glint, 0.0)))
            if index != camera_index:
                which = np.nonzero(lit)[0]
                if len(which):
                    target = light.position[:, None] + _ring_offsets(light, local[:, which], index)
                    origins = p[:, which] + n[:, which] * SHADOW_EPS_MM
                    shadow_rays.append((index, which, np.concatenate([origins, target - origins]).T))
        visible = [np.ones(len(t), dtype=np.float32) for _ in self.lights]
        if shadow_rays:
            batch = np.ascontiguousarray(np.concatenate([r for _, _, r in shadow_rays]), dtype=np.float32)
            occluded = part.scene.test_occlusions(tensor(batch), tnear=0.0, tfar=1.0).numpy()
            start = 0
            for index, which, rays in shadow_rays:
                visible[index][which] = ~occluded[start : start + len(rays)]
                start += len(rays)
        for (irradiance, glint), vis in zip(terms, visible, strict=True):
            diffuse += irradiance * vis
            specular += glint * vis

        grain = 1.0 + PART_GRAIN_FINE * _cell_noise(local, 0.06) + PART_GRAIN_COARSE * _cell_noise(local, 0.2, salt=7)
        brightness = np.float32(albedo) * grain * diffuse + PART_SPECULAR * specular
        return brightness.astype(np.float32), np.ascontiguousarray(n.T, dtype=np.float32)


def _facing(light: Light, p: np.ndarray, n: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unit directions to the light, cosines of incidence and falloff for (3, N) points with normals `n`."""
    to_light = light.position[:, None] - p
    d2 = (to_light * to_light).sum(axis=0)
    inv = 1.0 / np.sqrt(d2)
    return to_light * inv, (n * to_light).sum(axis=0) * inv, light.intensity * light.reference_distance**2 / d2


def shadow_grid_points(low: np.ndarray, high: np.ndarray) -> tuple[np.ndarray, int, int, float]:
    """The tray points a shadow grid over [low, high] (mm) is traced from, just above the tray, row by row; and the
    grid's columns, rows and cell size (SHADOW_GRID_POINTS cells at most, none finer than 0.35 mm)."""
    cell = max(0.35, math.sqrt(float(np.prod(high - low)) / SHADOW_GRID_POINTS))
    nx, ny = int(math.ceil((high[0] - low[0]) / cell)), int(math.ceil((high[1] - low[1]) / cell))
    gx = low[0] + (np.arange(nx, dtype=np.float32) + 0.5) * cell
    gy = low[1] + (np.arange(ny, dtype=np.float32) + 0.5) * cell
    px, py = (a.ravel() for a in np.meshgrid(gx, gy))
    return np.column_stack([px, py, np.full_like(px, SHADOW_EPS_MM)]).astype(np.float32), nx, ny, cell


def shadow_factor(grid: ShadowGrid, centre: np.ndarray, rays: np.ndarray) -> np.ndarray:
    """The shadow grid as one camera sees it: sampled where each pixel's ray meets the tray."""
    dz = rays[..., 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(dz < -1e-6, -centre[2] / dz, np.float32(-1e9)).astype(np.float32)
    mx = (centre[0] + t * rays[..., 0] - grid.origin[0]) / grid.cell_mm - 0.5
    my = (centre[1] + t * rays[..., 1] - grid.origin[1]) / grid.cell_mm - 0.5
    return cv2.remap(
        grid.factor,
        mx.astype(np.float32),
        my.astype(np.float32),
        cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=1.0,
    )


def ring_lights(cameras: Sequence[CameraCalibration]) -> list[Light]:
    """One ring light per camera, scaled so the dome plus the rings light the tray centre with unit irradiance."""
    lights = []
    raw = []
    for calib in cameras:
        position = calib.centre.astype(np.float64)
        distance = float(np.linalg.norm(position))
        raw.append(max(position[2], 0.0) / distance)
        lights.append((position, calib.optical_axis, distance))
    share = (1.0 - DOME_SHARE) / max(sum(raw), 1e-9)
    return [Light(p.astype(np.float32), a.astype(np.float32), share, d) for p, a, d in lights]


def _cell_noise(points: np.ndarray, cell_mm: float, salt: int = 0) -> np.ndarray:
    """Deterministic value in [-1, 1] per cubic cell of (3, N) points: grain that sticks to the part, not the image."""
    q = np.floor(points / cell_mm).astype(np.int64).astype(np.uint64)
    h = q[0] * np.uint64(0x9E3779B185EBCA87)
    h ^= q[1] * np.uint64(0xC2B2AE3D27D4EB4F)
    h ^= q[2] * np.uint64(0x165667B19E3779F9)
    h ^= np.uint64((salt * 0x27D4EB2F165667C5) & 0xFFFFFFFFFFFFFFFF)
    h ^= h >> np.uint64(29)
    h *= np.uint64(0xBF58476D1CE4E5B9)
    h ^= h >> np.uint64(32)
    return (h & np.uint64(0xFFFF)).astype(np.float32) * np.float32(1.0 / 32767.5) - np.float32(1.0)


def _ring_offsets(light: Light, local: np.ndarray, salt: int) -> np.ndarray:
    """(3, N) points on the ring light, one per surface point, so self-shadows get a penumbra instead of a hard line."""
    a, b = _perpendicular_basis(light.axis)
    phi = np.float32(math.pi) * (1.0 + _cell_noise(local, 0.05, salt=100 + salt))
    return RING_RADIUS_MM * (a[:, None] * np.cos(phi) + b[:, None] * np.sin(phi))


def _perpendicular_basis(axis: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    helper = np.array([1.0, 0.0, 0.0]) if abs(axis[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    a = np.cross(axis, helper)
    a /= np.linalg.norm(a)
    return a.astype(np.float32), np.cross(axis, a).astype(np.float32)


def _cosine_directions(rng: np.random.Generator, count: int, samples: int) -> list[np.ndarray]:
    """Stratified cosine-weighted hemisphere directions, rotated randomly per point so strata do not band."""
    rotation = rng.uniform(0.0, 2 * math.pi, count).astype(np.float32)
    jitter = rng.uniform(0.0, 1.0, (samples, count)).astype(np.float32)
    directions = []
    for k in range(samples):
        r = np.sqrt((k + jitter[k]) / samples)
        phi = rotation + 2.399963 * k
        z = np.sqrt(np.maximum(0.0, 1 - r * r))
        directions.append(np.column_stack([r * np.cos(phi), r * np.sin(phi), z]).astype(np.float32))
    return directions
