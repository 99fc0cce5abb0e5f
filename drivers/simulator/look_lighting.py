"""The lights of a configured station look: rings, a dome, soft boxes and hard key lights, their shadows, the shading.

Same interface as inspection.geometry.lighting.Lighting (tray_irradiance, shadow_grid, shade), which stays the
demo station's exact model; this one serves every other look and any part given a catalogue material.

Area lights are what make one station's shadows differ from another's, so they are sampled rather than
treated as points: the tray's shadow grid traces stratified points over each soft box per cell, and each
surface point of the part traces one point of the box, chosen by a hash of where it is on the part, so
neighbouring pixels average into a penumbra that sticks to the part rather than flickering with the seed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import open3d as o3d

from amflow_edge.drivers.simulator.looks import (
    DomeLight,
    KeyLight,
    PartMaterial,
    RingLight,
    Softbox,
    StationLook,
)
from amflow_edge.inspection.geometry.camera import CameraCalibration
from amflow_edge.inspection.geometry.lighting import (
    AO_SAMPLES,
    PART_ALBEDO,
    PART_GRAIN_COARSE,
    PART_GRAIN_FINE,
    PART_SPECULAR,
    SHADOW_EPS_MM,
    Light,
    ShadowGrid,
    _cell_noise,
    _cosine_directions,
    _perpendicular_basis,
    shadow_grid_points,
)
from amflow_edge.inspection.geometry.raycast import PlacedPart, surface_normals, tensor

SOFTBOX_STRATA = 3
"""The tray's shadow grid samples SOFTBOX_STRATA² points of each soft box per cell."""
SOFTBOX_IRRADIANCE_SAMPLES = 8
PANEL_SHADE_STRATA = 2
"""A part's surface point traces PANEL_SHADE_STRATA² shadow rays to each soft box."""
IRRADIANCE_CELL_MM = 2.0
IRRADIANCE_MARGIN_MM = 250.0
SHADOW_MARGIN_MM = 60.0

DEFAULT_SHININESS = 8.0

_SAMPLING_SEED = 0x51_0F7B_0C5


@dataclass(frozen=True)
class _Ring:
    light: Light
    radius_mm: float
    camera: int


@dataclass(frozen=True)
class _Panel:
    """A soft box: a Lambertian emitter; `power` × Σ over `samples` of cosθe·cosθr/d² is the irradiance it gives."""

    centre: np.ndarray
    normal: np.ndarray
    a: np.ndarray
    b: np.ndarray
    half: tuple[float, float]
    power: float
    samples: np.ndarray
    centre_power: float = 1.0  # the same for the box taken as a point at its centre, as the part's shading does


@dataclass(frozen=True)
class _Point:
    position: np.ndarray
    strength: float  # radiant intensity: irradiance = strength · cosθ / d²


def default_material(albedo: float = PART_ALBEDO) -> PartMaterial:
    """What a part without a catalogue material renders as: the demo's sintered PA12 in the given reflectance."""
    return PartMaterial(
        description="PA12 as the demo renders it", albedo=albedo, specular=PART_SPECULAR, shininess=DEFAULT_SHININESS
    )


class LookLighting:
    """A station look's lights; irradiance of the tray, shadows of a placed part, brightness of its surface."""

    def __init__(
        self,
        cameras: Sequence[CameraCalibration],
        look: StationLook,
        tray_size_mm: tuple[float, float] = (300.0, 240.0),
    ) -> None:
        self.dome = float(sum(light.share for light in look.lights if isinstance(light, DomeLight)))
        self.tray_size_mm = tray_size_mm
        self.rings = [
            ring for spec in look.lights if isinstance(spec, RingLight) for ring in _ring_lights(cameras, spec)
        ]
        self.panels = [_panel(spec) for spec in look.lights if isinstance(spec, Softbox)]
        self.keys = [_key(spec) for spec in look.lights if isinstance(spec, KeyLight)]
        self.bounce = float(look.tray_bounce * look.tray.albedo)
        self._panel_grid = self._panel_irradiance_grid() if self.panels else None

    def tray_irradiance(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        total = np.full(x.shape, self.dome, dtype=np.float32)
        for ring in self.rings:
            light = ring.light
            dx, dy, dz = light.position[0] - x, light.position[1] - y, light.position[2]
            d2 = dx * dx + dy * dy + dz * dz
            total += light.intensity * light.reference_distance**2 * dz / (d2 * np.sqrt(d2))
        for key in self.keys:
            dx, dy, dz = key.position[0] - x, key.position[1] - y, key.position[2]
            d2 = dx * dx + dy * dy + dz * dz
            total += key.strength * dz / (d2 * np.sqrt(d2))
        if self._panel_grid is not None:
            grid, origin = self._panel_grid
            mx = ((x - origin[0]) / IRRADIANCE_CELL_MM - 0.5).astype(np.float32)
            my = ((y - origin[1]) / IRRADIANCE_CELL_MM - 0.5).astype(np.float32)
            total += _remap(grid, mx, my)
        return total

    def _panel_irradiance_grid(self) -> tuple[np.ndarray, np.ndarray]:
        """The soft boxes' irradiance of the tray plane on a 2 mm grid: smooth, and 64 samples per pixel cost seconds."""
        half = np.array(self.tray_size_mm, dtype=np.float64) / 2 + IRRADIANCE_MARGIN_MM
        origin = -half
        nx, ny = (int(math.ceil(2 * h / IRRADIANCE_CELL_MM)) for h in half)
        gx = origin[0] + (np.arange(nx) + 0.5) * IRRADIANCE_CELL_MM
        gy = origin[1] + (np.arange(ny) + 0.5) * IRRADIANCE_CELL_MM
        px, py = np.meshgrid(gx, gy)
        points = np.stack([px.ravel(), py.ravel(), np.zeros(px.size)])
        up = np.array([0.0, 0.0, 1.0])
        total = sum(_panel_irradiance(panel, points, up) for panel in self.panels)
        grid = np.asarray(total, dtype=np.float32).reshape(ny, nx)
        return grid, origin.astype(np.float32)

    def shadow_grid(self, scene: o3d.t.geometry.RaycastingScene, support: np.ndarray) -> ShadowGrid:
        """Shadows of every light and the dome's contact shadow, traced once per scene in tray coordinates."""
        low, high = self._shadow_extent(support)
        origins, nx, ny, cell = shadow_grid_points(low, high)
        rng = np.random.default_rng(_SAMPLING_SEED)
        count = len(origins)

        batches: list[np.ndarray] = []
        weights: list[np.ndarray] = []

        def add(target: np.ndarray, scale: float, facing: np.ndarray | None = None) -> None:
            """A shadow ray per cell towards `target`, weighted by what that point of the light gives the cell: a
            point source of intensity `scale`, or with `facing` a patch of an area light with that normal."""
            v = (target - origins).astype(np.float32)
            d2 = np.einsum("ij,ij->i", v, v)
            if facing is None:
                weight = scale * v[:, 2] / (d2 * np.sqrt(d2))
            else:
                weight = scale * -(v @ facing) * v[:, 2] / (d2 * d2)
            batches.append(np.concatenate([origins, v], axis=1))
            weights.append(np.maximum(weight, 0.0).astype(np.float32))

        for ring in self.rings:
            light = ring.light
            a, b = _perpendicular_basis(light.axis)
            phi = rng.uniform(0.0, 2 * math.pi, count).astype(np.float32)
            target = light.position + ring.radius_mm * (np.cos(phi)[:, None] * a + np.sin(phi)[:, None] * b)
            add(target, light.intensity * light.reference_distance**2)
        strata = SOFTBOX_STRATA * SOFTBOX_STRATA
        for panel in self.panels:
            jitter = rng.random((strata, 2, count), dtype=np.float32)
            for k in range(strata):
                u = (2.0 * (k // SOFTBOX_STRATA + jitter[k, 0]) / SOFTBOX_STRATA - 1.0) * np.float32(panel.half[0])
                v = (2.0 * (k % SOFTBOX_STRATA + jitter[k, 1]) / SOFTBOX_STRATA - 1.0) * np.float32(panel.half[1])
                target = panel.centre + u[:, None] * panel.a + v[:, None] * panel.b
                add(target, panel.power * len(panel.samples) / strata, panel.normal)
        for key in self.keys:
            add(np.broadcast_to(key.position, (count, 3)), key.strength)
        free = self.dome + np.sum(weights, axis=0) if weights else np.full(count, self.dome)
        for direction in _cosine_directions(rng, count, AO_SAMPLES) if self.dome > 0 else []:
            batches.append(np.concatenate([origins, direction * 1000.0], axis=1))
            weights.append(np.full(count, self.dome / AO_SAMPLES, dtype=np.float32))
        occluded = scene.test_occlusions(tensor(np.concatenate(batches)), tnear=0.0, tfar=1.0).numpy()
        lost = (occluded.reshape(len(batches), count) * np.stack(weights)).sum(axis=0)
        factor = (1.0 - lost / np.maximum(free, 1e-9)).reshape(ny, nx).astype(np.float32)
        factor = cv2.GaussianBlur(factor, (0, 0), 1.0, borderType=cv2.BORDER_REPLICATE)
        return ShadowGrid(factor, low.astype(np.float32), cell)

    def _shadow_extent(self, support: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Where the part's shadows can fall: its footprint cast away from every light's extreme points, on the tray."""
        height = max(float(support[:, 2].max()), 1.0)
        footprint = support[:, :2]
        boxes = [(footprint.min(axis=0) - 0.6 * height - 3.0, footprint.max(axis=0) + 0.6 * height + 3.0)]
        emitters: list[tuple[np.ndarray, float]] = [(r.light.position, r.radius_mm) for r in self.rings]
        for panel in self.panels:
            for su, sv in ((-1, -1), (-1, 1), (1, -1), (1, 1)):
                emitters.append((panel.centre + su * panel.half[0] * panel.a + sv * panel.half[1] * panel.b, 0.0))
        emitters += [(k.position, 0.0) for k in self.keys]
        for position, radius in emitters:
            lz = float(position[2])
            scale = lz / np.maximum(lz - support[:, 2], 1.0)
            shadow = position[:2] + (footprint - position[:2]) * scale[:, None]
            pad = radius * height / max(lz - height, 1.0) + 3.0
            boxes.append((shadow.min(axis=0) - pad, shadow.max(axis=0) + pad))
        low = np.min([box[0] for box in boxes], axis=0)
        high = np.max([box[1] for box in boxes], axis=0)
        limit = np.array(self.tray_size_mm) / 2 + SHADOW_MARGIN_MM
        low = np.minimum(np.maximum(low, -limit), boxes[0][0])
        high = np.maximum(np.minimum(high, limit), boxes[0][1])
        return low, high

    def shade(
        self,
        part: PlacedPart,
        eye: np.ndarray,
        camera_index: int,
        directions: np.ndarray,
        hits: dict[str, np.ndarray],
        albedo: float = PART_ALBEDO,
        material: PartMaterial | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Brightness of part surface points: Lambert and Blinn-Phong under every light, the dome and the tray's bounce.

        `material` sets reflectance, gloss and grain; without one the part is the demo's PA12 at `albedo`.
        The viewing camera's own ring light sits on its lens and so casts no shadow it could see.
        Works on coordinate rows (3, N) rather than (N, 3) points: contiguous rows are what numpy is fast at.
        """
        material = material or default_material(albedo)
        d = np.ascontiguousarray(directions.T)
        t = hits["t_hit"]
        p = eye[:, None] + d * t
        n = surface_normals(part.data.corner_normals, part.rotation, hits, d)
        local = part.inverse_rotation @ p + part.inverse_translation[:, None]

        diffuse = self.dome * 0.5 * (1.0 + n[2])
        if self.bounce > 0:
            diffuse += self.bounce * self.tray_irradiance(p[0], p[1]) * 0.5 * (1.0 - n[2])
        terms: list[tuple[np.ndarray, np.ndarray]] = []
        shadow_rays: list[tuple[int, np.ndarray, np.ndarray, float]] = []

        def add(falloff: np.ndarray, cos: np.ndarray, towards: np.ndarray, targets: list[np.ndarray]) -> None:
            """One light's terms; each of `targets` (3, N) is a point of the light each surface point traces a
            shadow ray to, and the light's visibility is the share of them that arrive."""
            lit = (cos > 0) & (falloff > 0)
            half = towards - d
            glint = np.clip((n * half).sum(axis=0) / np.sqrt((half * half).sum(axis=0)), 0.0, 1.0)
            glint = np.power(glint, np.float32(material.shininess))
            terms.append((np.where(lit, falloff * cos, 0.0), np.where(lit, falloff * glint, 0.0)))
            which = np.nonzero(lit)[0]
            if targets and len(which):
                origins = p[:, which] + n[:, which] * SHADOW_EPS_MM
                for target in targets:
                    rays = np.concatenate([origins, target[:, which] - origins]).T
                    shadow_rays.append((len(terms) - 1, which, rays, 1.0 / len(targets)))

        for index, ring in enumerate(self.rings):
            to_light, inv, cos = _towards(ring.light.position, p, n)
            falloff = ring.light.intensity * ring.light.reference_distance**2 * inv * inv
            targets = []
            if ring.camera != camera_index:
                targets.append(ring.light.position[:, None] + _ring_offsets(ring, local, index))
            add(falloff, cos, to_light * inv, targets)
        for index, panel in enumerate(self.panels):
            to_light, inv, cos = _towards(panel.centre, p, n)
            cos_e = np.maximum(-(panel.normal @ to_light) * inv, 0.0)
            add(
                panel.centre_power * cos_e * inv * inv,
                cos,
                to_light * inv,
                _panel_points(panel, local, index),
            )
        for key in self.keys:
            to_light, inv, cos = _towards(key.position, p, n)
            add(key.strength * inv * inv, cos, to_light * inv, [np.broadcast_to(key.position[:, None], p.shape)])

        visible = [np.ones(len(t), dtype=np.float32) for _ in terms]
        if shadow_rays:
            batch = np.ascontiguousarray(np.concatenate([r for _, _, r, _ in shadow_rays]), dtype=np.float32)
            occluded = part.scene.test_occlusions(tensor(batch), tnear=0.0, tfar=1.0).numpy()
            start = 0
            for index, which, rays, share in shadow_rays:
                visible[index][which] -= share * occluded[start : start + len(rays)]
                start += len(rays)
        specular = np.zeros(len(t), dtype=np.float32)
        for (irradiance, glint), vis in zip(terms, visible, strict=True):
            diffuse += irradiance * vis
            specular += glint * vis

        grain = 1.0 + np.float32(material.grain) * (
            PART_GRAIN_FINE * _cell_noise(local, 0.06) + PART_GRAIN_COARSE * _cell_noise(local, 0.2, salt=7)
        )
        brightness = np.float32(material.albedo) * grain * diffuse + np.float32(material.specular) * specular
        return brightness.astype(np.float32), np.ascontiguousarray(n.T, dtype=np.float32)


def _remap(grid: np.ndarray, mx: np.ndarray, my: np.ndarray) -> np.ndarray:
    """Bilinear look-up of `grid` at map coordinates of any shape (cv2.remap takes 2-D maps under 32767 a side)."""
    shape, size = mx.shape, mx.size
    width = 4096
    rows = -(-size // width)
    flat_x, flat_y = (np.zeros(rows * width, dtype=np.float32) for _ in range(2))
    flat_x[:size], flat_y[:size] = mx.ravel(), my.ravel()
    out = cv2.remap(
        grid,
        flat_x.reshape(rows, width),
        flat_y.reshape(rows, width),
        cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_REPLICATE,
    )
    return out.ravel()[:size].reshape(shape)


def _towards(position: np.ndarray, p: np.ndarray, n: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Vectors from (3, N) points to a light, their inverse lengths and the cosines of incidence."""
    to_light = position[:, None] - p
    inv = 1.0 / np.sqrt((to_light * to_light).sum(axis=0))
    return to_light, inv, (n * to_light).sum(axis=0) * inv


def _panel_points(panel: _Panel, local: np.ndarray, index: int) -> list[np.ndarray]:
    """PANEL_SHADE_STRATA² points of the soft box per surface point, one in each stratum, jittered by a hash of where
    the point is on the part: several, as one sample leaves a penumbra as salt-and-pepper noise a pixel wide."""
    k = PANEL_SHADE_STRATA
    points = []
    for i in range(k):
        for j in range(k):
            salt = 200 + 2 * (k * k * index + k * i + j)
            u = (2.0 * (i + 0.5 + 0.5 * _cell_noise(local, 0.05, salt=salt)) / k - 1.0) * np.float32(panel.half[0])
            v = (2.0 * (j + 0.5 + 0.5 * _cell_noise(local, 0.05, salt=salt + 1)) / k - 1.0) * np.float32(panel.half[1])
            points.append(panel.centre[:, None] + panel.a[:, None] * u + panel.b[:, None] * v)
    return points


def _ring_lights(cameras: Sequence[CameraCalibration], spec: RingLight) -> list[_Ring]:
    """One ring per camera, scaled so together they give the tray centre `spec.share` face-on."""
    raw, lights = [], []
    for calib in cameras:
        position = calib.centre.astype(np.float64)
        distance = float(np.linalg.norm(position))
        raw.append(max(position[2], 0.0) / distance)
        lights.append((position, calib.optical_axis, distance))
    share = spec.share / max(sum(raw), 1e-9)
    return [
        _Ring(Light(p.astype(np.float32), a.astype(np.float32), share, d), spec.radius_mm, index)
        for index, (p, a, d) in enumerate(lights)
    ]


def _ring_offsets(ring: _Ring, local: np.ndarray, salt: int) -> np.ndarray:
    a, b = _perpendicular_basis(ring.light.axis)
    phi = np.float32(math.pi) * (1.0 + _cell_noise(local, 0.05, salt=100 + salt))
    return np.float32(ring.radius_mm) * (a[:, None] * np.cos(phi) + b[:, None] * np.sin(phi))


def _panel(spec: Softbox) -> _Panel:
    centre = np.array(spec.centre_mm, dtype=np.float64)
    normal = np.array(spec.aim_mm, dtype=np.float64) - centre
    normal /= np.linalg.norm(normal)
    if abs(normal[2]) > 0.99:
        a = np.array([1.0, 0.0, 0.0])
    else:
        a = np.cross([0.0, 0.0, 1.0], normal)
        a /= np.linalg.norm(a)
    b = np.cross(normal, a)
    half = (spec.size_mm[0] / 2, spec.size_mm[1] / 2)
    k = SOFTBOX_IRRADIANCE_SAMPLES
    steps = (np.arange(k) + 0.5) / k * 2.0 - 1.0
    su, sv = (s.ravel() for s in np.meshgrid(steps, steps))
    samples = centre + (su * half[0])[:, None] * a + (sv * half[1])[:, None] * b
    unit = _Panel(centre, normal, a, b, half, 1.0, samples)
    at_centre = float(_panel_irradiance(unit, np.zeros((3, 1)), np.array([0.0, 0.0, 1.0]))[0])
    power = spec.intensity / max(at_centre, 1e-12)
    distance = float(np.linalg.norm(centre))
    as_point = float((normal @ -centre) / distance * centre[2] / distance / distance**2)
    return _Panel(
        centre.astype(np.float32),
        normal.astype(np.float32),
        a.astype(np.float32),
        b.astype(np.float32),
        half,
        power,
        samples,
        spec.intensity / max(as_point, 1e-12),
    )


def _panel_irradiance(panel: _Panel, points: np.ndarray, normal: np.ndarray) -> np.ndarray:
    """Irradiance of (3, N) points facing `normal` from the panel's sample points."""
    total = np.zeros(points.shape[1])
    for sample in panel.samples:
        to_light = sample[:, None] - points
        d2 = (to_light * to_light).sum(axis=0)
        cos_r = np.maximum(normal @ to_light, 0.0)
        cos_e = np.maximum(-(panel.normal @ to_light), 0.0)
        total += cos_r * cos_e / (d2 * d2)
    return panel.power * total


def _key(spec: KeyLight) -> _Point:
    position = np.array(spec.position_mm, dtype=np.float64)
    distance = float(np.linalg.norm(position))
    strength = spec.intensity * distance**3 / position[2]
    return _Point(position.astype(np.float32), float(strength))
