"""Photograph-like Mono8 images of a part on the tray, as the five calibrated station cameras would take them.

The mock driver and every image-processing test depend on these pictures, so they must carry what
real ones carry and what algorithms trip over: lens distortion, shading, a textured background,
contact shadows, soft anti-aliased edges, vignetting, blur and sensor noise. The empty tray is
rendered identically wherever the part is not, so background subtraction behaves as on the line.

All five ring lights and the dome light every picture, as they fire together at the trigger; so a
matte surface shows the same brightness to every camera, as multi-view methods assume.

Cost is kept to about a second per scene by doing everything that does not depend on the part
once per camera (rays, tray texture and lighting, blur, vignetting) and only tracing the image
region the part and its shadow cover.
"""

from __future__ import annotations

import math
import threading
import weakref
import zlib
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np
import open3d as o3d
import trimesh
from scipy.special import ndtri

from inspection.camera import CameraCalibration

PART_ALBEDO = 0.46
PART_GRAIN_FINE = 0.06
PART_GRAIN_COARSE = 0.03
PART_SPECULAR = 0.05
PART_SHININESS_LOG2 = 3
CREASE_ANGLE_DEG = 35.0

TRAY_ALBEDO = 0.24
TRAY_RIM_ALBEDO = 0.32
FLOOR_ALBEDO = 0.07
SKY_BRIGHTNESS = 0.02
TRAY_TEXEL_MM = 0.1
FLOOR_TEXEL_MM = 0.5

DOME_SHARE = 0.3
RING_RADIUS_MM = 45.0
AO_SAMPLES = 10
SHADOW_GRID_POINTS = 120_000
SHADOW_EPS_MM = 0.05

EXPOSURE_DN = 320.0
BLACK_LEVEL_DN = 2.0
BLUR_SIGMA_PX = 0.7
VIGNETTE_CORNER = 0.8
PRNU = 0.006
ELECTRONS_PER_DN = 41.0
READ_NOISE_E = 2.4

AA_GRID = 4
EDGE_NORMAL_COS = math.cos(math.radians(14.0))
EDGE_DEPTH_PX = 8.0
REGION_PAD_PX = 4

_FIXED_SEED = 0x7A3F_1D2C


@dataclass(frozen=True)
class _Light:
    """A ring light around one camera's lens; its intensity is the irradiance it gives the tray centre face-on."""

    position: np.ndarray
    axis: np.ndarray
    intensity: float
    reference_distance: float


@dataclass(frozen=True)
class _View:
    """Everything about one camera that does not depend on the part."""

    index: int
    calib: CameraCalibration
    rays: np.ndarray
    centre: np.ndarray
    base: np.ndarray
    gain: np.ndarray
    empty_dn: np.ndarray


@dataclass(frozen=True)
class _MeshData:
    faces: np.ndarray
    corner_normals: np.ndarray
    support: np.ndarray


@dataclass(frozen=True)
class _ShadowGrid:
    """Fraction of the unshadowed tray irradiance that reaches each cell, in tray coordinates."""

    factor: np.ndarray
    origin: np.ndarray
    cell_mm: float


@dataclass(frozen=True)
class _Part:
    scene: o3d.t.geometry.RaycastingScene
    rotation: np.ndarray
    inverse_rotation: np.ndarray
    inverse_translation: np.ndarray
    data: _MeshData
    support_world: np.ndarray
    shadow: _ShadowGrid


@dataclass(frozen=True)
class _Rect:
    x0: int
    y0: int
    x1: int
    y1: int


_RIG_CACHE: OrderedDict[tuple[object, ...], list[_View]] = OrderedDict()
_RIG_CACHE_LOCK = threading.Lock()
_RIG_CACHE_SIZE = 2


class Renderer:
    """Renders scenes for a fixed rig; construct once, render many times.

    Preparing a 5-camera rig costs seconds, so the part-independent work is kept per process and
    a driver reopened on the same calibrations (tests, daemon restarts of the loop) reuses it.
    """

    def __init__(
        self, cameras: Sequence[CameraCalibration], tray_size_mm: tuple[float, float] = (300.0, 240.0)
    ) -> None:
        names = [c.name for c in cameras]
        if len(set(names)) != len(names):
            raise ValueError(f"Renderer: camera names must be unique, got {names}")
        if not cameras:
            raise ValueError("Renderer: needs at least one camera")
        self.tray_size_mm = (float(tray_size_mm[0]), float(tray_size_mm[1]))
        self._lights = _ring_lights(cameras)
        self._dome = DOME_SHARE
        self._tray_texture = _tray_texture(self.tray_size_mm)
        self._floor_texture = _floor_texture()
        self._mesh_cache: dict[int, tuple[weakref.ref[trimesh.Trimesh], _MeshData]] = {}
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="render")
        key = (tuple(c.model_dump_json() for c in cameras), self.tray_size_mm)
        with _RIG_CACHE_LOCK:
            views = _RIG_CACHE.pop(key, None)
            if views is None:
                views = list(self._pool.map(self._prepare_view, range(len(cameras)), cameras))
            _RIG_CACHE[key] = views
            while len(_RIG_CACHE) > _RIG_CACHE_SIZE:
                _RIG_CACHE.popitem(last=False)
        self._views = views

    @property
    def cameras(self) -> list[CameraCalibration]:
        return [v.calib for v in self._views]

    def close(self) -> None:
        self._pool.shutdown(wait=False)

    def render(self, mesh: trimesh.Trimesh | None, pose: np.ndarray | None, seed: int) -> dict[str, np.ndarray]:
        """One Mono8 image per camera of the part at `pose` (part→tray 4×4), or of the empty tray for mesh=None.

        The same seed gives bit-identical images; the seed only drives the sensor noise, so an
        empty-tray and a part image with the same seed are identical away from the part.
        """
        part = None
        if mesh is not None:
            part = self._prepare_part(mesh, np.eye(4) if pose is None else np.asarray(pose, dtype=np.float64))
        images = self._pool.map(lambda view: self._render_view(view, part, seed), self._views)
        return {view.calib.name: image for view, image in zip(self._views, images)}

    def _prepare_view(self, index: int, calib: CameraCalibration) -> _View:
        rays = calib.pixel_rays()
        centre = calib.centre.astype(np.float32)
        base = self._empty_brightness(centre, rays)
        gain = _vignette(calib) * EXPOSURE_DN
        empty_dn = cv2.GaussianBlur(base, (0, 0), BLUR_SIGMA_PX, borderType=cv2.BORDER_REFLECT_101) * gain
        for array in (base, gain, empty_dn):
            array.setflags(write=False)
        return _View(index, calib, rays, centre, base, gain, empty_dn)

    def _empty_brightness(self, centre: np.ndarray, rays: np.ndarray) -> np.ndarray:
        dz = rays[..., 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            t = np.where(dz < -1e-6, -centre[2] / dz, np.float32(np.nan)).astype(np.float32)
        x = centre[0] + t * rays[..., 0]
        y = centre[1] + t * rays[..., 1]
        albedo = self._albedo(x, y)
        brightness = albedo * self._tray_irradiance(x, y)
        return np.where(np.isfinite(t), brightness, np.float32(SKY_BRIGHTNESS)).astype(np.float32)

    def _albedo(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Tray plate where the pixel sees it, floor elsewhere, blended by coverage so the tray edge is not jagged."""
        texture, inside, origin = self._tray_texture
        mx = ((x - origin[0]) / TRAY_TEXEL_MM - 0.5).astype(np.float32)
        my = ((y - origin[1]) / TRAY_TEXEL_MM - 0.5).astype(np.float32)
        tray = cv2.remap(texture, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=FLOOR_ALBEDO)
        coverage = cv2.remap(inside, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0.0)
        fx = np.nan_to_num(x / FLOOR_TEXEL_MM).astype(np.float32)
        fy = np.nan_to_num(y / FLOOR_TEXEL_MM).astype(np.float32)
        size = self._floor_texture.shape[0]
        floor = cv2.remap(
            self._floor_texture, np.mod(fx, size), np.mod(fy, size), cv2.INTER_LINEAR, borderMode=cv2.BORDER_WRAP
        )
        return coverage * tray + (1.0 - coverage) * floor

    def _tray_irradiance(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        total = np.full(x.shape, self._dome, dtype=np.float32)
        for light in self._lights:
            dx, dy, dz = light.position[0] - x, light.position[1] - y, light.position[2]
            d2 = dx * dx + dy * dy + dz * dz
            total += light.intensity * light.reference_distance**2 * dz / (d2 * np.sqrt(d2))
        return total

    def _mesh_data(self, mesh: trimesh.Trimesh) -> _MeshData:
        cached = self._mesh_cache.get(id(mesh))
        if cached is not None and cached[0]() is mesh:
            return cached[1]
        faces = np.ascontiguousarray(mesh.faces, dtype=np.int64)
        try:
            support = np.asarray(mesh.convex_hull.vertices, dtype=np.float64)
        except Exception:  # noqa: BLE001 - flat parts have no hull
            support = np.asarray(mesh.vertices, dtype=np.float64)
        data = _MeshData(faces, _corner_normals(mesh), support)
        for dead in [k for k, (ref, _) in self._mesh_cache.items() if ref() is None]:
            del self._mesh_cache[dead]
        self._mesh_cache[id(mesh)] = (weakref.ref(mesh), data)
        return data

    def _prepare_part(self, mesh: trimesh.Trimesh, pose: np.ndarray) -> _Part:
        if pose.shape != (4, 4) or not np.all(np.isfinite(pose)):
            raise ValueError(f"render: pose must be a finite 4×4 matrix, got shape {pose.shape}")
        data = self._mesh_data(mesh)
        vertices = (np.asarray(mesh.vertices, dtype=np.float64) @ pose[:3, :3].T + pose[:3, 3]).astype(np.float32)
        scene = o3d.t.geometry.RaycastingScene()
        scene.add_triangles(o3d.core.Tensor(vertices), o3d.core.Tensor(data.faces.astype(np.uint32)))
        support_world = data.support @ pose[:3, :3].T + pose[:3, 3]
        shadow = self._shadow_grid(scene, support_world)
        inverse = np.linalg.inv(pose)
        return _Part(
            scene,
            pose[:3, :3].astype(np.float32),
            inverse[:3, :3].astype(np.float32),
            inverse[:3, 3].astype(np.float32),
            data,
            support_world,
            shadow,
        )

    def _shadow_grid(self, scene: o3d.t.geometry.RaycastingScene, support: np.ndarray) -> _ShadowGrid:
        """Soft shadows of the ring lights and the dome's contact shadow, traced once per scene in tray coordinates.

        Shadows are a property of the scene, not of the viewer, so every camera samples the same grid.
        """
        height = max(float(support[:, 2].max()), 1.0)
        footprint = support[:, :2]
        boxes = [(footprint.min(axis=0) - 0.6 * height - 3.0, footprint.max(axis=0) + 0.6 * height + 3.0)]
        for light in self._lights:
            lz = float(light.position[2])
            scale = lz / np.maximum(lz - support[:, 2], 1.0)
            shadow = light.position[:2] + (footprint - light.position[:2]) * scale[:, None]
            penumbra = RING_RADIUS_MM * height / max(lz - height, 1.0) + 2.0
            boxes.append((shadow.min(axis=0) - penumbra, shadow.max(axis=0) + penumbra))
        low = np.min([box[0] for box in boxes], axis=0)
        high = np.max([box[1] for box in boxes], axis=0)
        cell = max(0.35, math.sqrt(float(np.prod(high - low)) / SHADOW_GRID_POINTS))
        nx, ny = int(math.ceil((high[0] - low[0]) / cell)), int(math.ceil((high[1] - low[1]) / cell))
        gx = low[0] + (np.arange(nx, dtype=np.float32) + 0.5) * cell
        gy = low[1] + (np.arange(ny, dtype=np.float32) + 0.5) * cell
        px, py = (a.ravel() for a in np.meshgrid(gx, gy))
        origins = np.column_stack([px, py, np.full_like(px, SHADOW_EPS_MM)]).astype(np.float32)
        rng = np.random.default_rng(_FIXED_SEED)
        count = len(origins)

        batches, weights = [], []
        free = np.full(count, self._dome, dtype=np.float32)
        for light in self._lights:
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
            weights.append(np.full(count, self._dome / AO_SAMPLES, dtype=np.float32))
        occluded = scene.test_occlusions(o3d.core.Tensor(np.concatenate(batches)), tnear=0.0, tfar=1.0).numpy()
        lost = (occluded.reshape(len(batches), count) * np.stack(weights)).sum(axis=0)
        factor = (1.0 - lost / free).reshape(ny, nx).astype(np.float32)
        factor = cv2.GaussianBlur(factor, (0, 0), 1.0, borderType=cv2.BORDER_REPLICATE)
        return _ShadowGrid(factor, low.astype(np.float32), cell)

    def _render_view(self, view: _View, part: _Part | None, seed: int) -> np.ndarray:
        dn = view.empty_dn
        if part is not None:
            rects = self._regions(view, part)
            if rects is not None:
                dn = dn.copy()
                self._render_region(view, part, *rects, dn)
        return _expose(dn, seed, view.index)

    def _regions(self, view: _View, part: _Part) -> tuple[_Rect, _Rect] | None:
        """Pixel rectangles that can change: where the shadow grid lies, and (inside it) where rays can hit the part."""
        grid = part.shadow
        ny, nx = grid.factor.shape
        edge = np.linspace(0.0, 1.0, 16)
        w, h = nx * grid.cell_mm, ny * grid.cell_mm
        border = np.concatenate(
            [
                np.column_stack([edge * w, np.zeros_like(edge)]),
                np.column_stack([edge * w, np.full_like(edge, h)]),
                np.column_stack([np.zeros_like(edge), edge * h]),
                np.column_stack([np.full_like(edge, w), edge * h]),
            ]
        ) + grid.origin
        trace = self._pixel_rect(view, part.support_world, REGION_PAD_PX)
        if trace is None:
            return None
        shadow = self._pixel_rect(view, np.column_stack([border, np.zeros(len(border))]), 0)
        pad = 2 * REGION_PAD_PX
        region = _Rect(
            max(0, min(trace.x0, shadow.x0 if shadow else trace.x0) - pad),
            max(0, min(trace.y0, shadow.y0 if shadow else trace.y0) - pad),
            min(view.calib.image_width, max(trace.x1, shadow.x1 if shadow else trace.x1) + pad),
            min(view.calib.image_height, max(trace.y1, shadow.y1 if shadow else trace.y1) + pad),
        )
        return region, trace

    def _pixel_rect(self, view: _View, points: np.ndarray, pad: int) -> _Rect | None:
        in_front = view.calib.to_camera(points)[:, 2] > 1.0
        if not np.any(in_front):
            return None
        pixels = view.calib.project(points[in_front])
        rect = _Rect(
            int(max(0, math.floor(pixels[:, 0].min()) - pad)),
            int(max(0, math.floor(pixels[:, 1].min()) - pad)),
            int(min(view.calib.image_width, math.ceil(pixels[:, 0].max()) + pad + 1)),
            int(min(view.calib.image_height, math.ceil(pixels[:, 1].max()) + pad + 1)),
        )
        return rect if rect.x1 > rect.x0 and rect.y1 > rect.y0 else None

    def _render_region(self, view: _View, part: _Part, region: _Rect, trace: _Rect, dn: np.ndarray) -> None:
        x0, y0, x1, y1 = region.x0, region.y0, region.x1, region.y1
        rays = view.rays[y0:y1, x0:x1]
        h, w = rays.shape[:2]
        image = view.base[y0:y1, x0:x1] * self._shadow_factor(part.shadow, view.centre, rays)

        window = image[trace.y0 - y0 : trace.y1 - y0, trace.x0 - x0 : trace.x1 - x0]
        trace_rays = view.rays[trace.y0 : trace.y1, trace.x0 : trace.x1]
        th, tw = trace_rays.shape[:2]
        hits = _cast(part.scene, view.centre, trace_rays.reshape(-1, 3))
        t_hit = hits["t_hit"].reshape(th, tw)
        hit = np.isfinite(t_hit)
        if np.any(hit):
            flat = hit.reshape(-1)
            shaded, normals_hit = self._shade(view, part, trace_rays[hit], {k: v[flat] for k, v in hits.items()})
            tray = window.copy()
            window[hit] = shaded
            normals = np.zeros((th, tw, 3), dtype=np.float32)
            normals[hit] = normals_hit
            edges = _edge_pixels(hit, t_hit, normals, EDGE_DEPTH_PX / float(view.calib.K[0, 0]))
            if np.any(edges):
                window[edges] = self._supersample(view, part, edges, (trace.x0, trace.y0), tray[edges])

        blurred = cv2.GaussianBlur(image, (0, 0), BLUR_SIGMA_PX, borderType=cv2.BORDER_REFLECT_101)
        ix0 = REGION_PAD_PX if x0 > 0 else 0
        iy0 = REGION_PAD_PX if y0 > 0 else 0
        ix1 = w - (REGION_PAD_PX if x1 < view.calib.image_width else 0)
        iy1 = h - (REGION_PAD_PX if y1 < view.calib.image_height else 0)
        dn[y0 + iy0 : y0 + iy1, x0 + ix0 : x0 + ix1] = (
            blurred[iy0:iy1, ix0:ix1] * view.gain[y0 + iy0 : y0 + iy1, x0 + ix0 : x0 + ix1]
        )

    def _shadow_factor(self, grid: _ShadowGrid, centre: np.ndarray, rays: np.ndarray) -> np.ndarray:
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

    def _shade(
        self, view: _View, part: _Part, directions: np.ndarray, hits: dict[str, np.ndarray]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Brightness of part surface points: Lambert and a little Blinn-Phong under the ring lights and the dome.

        Works on coordinate rows (3, N) rather than (N, 3) points: contiguous rows are what numpy is fast at.
        """
        d = np.ascontiguousarray(directions.T)
        t = hits["t_hit"]
        p = view.centre[:, None] + d * t
        faces = hits["primitive_ids"].astype(np.int64)
        u, v = hits["primitive_uvs"][:, 0], hits["primitive_uvs"][:, 1]
        corner = part.data.corner_normals[faces]
        local_n = corner[:, 0] * (1.0 - u - v)[:, None] + corner[:, 1] * u[:, None] + corner[:, 2] * v[:, None]
        n = part.rotation @ local_n.T
        n *= 1.0 / np.maximum(np.sqrt((n * n).sum(axis=0)), 1e-12)
        geometric = hits["primitive_normals"].T
        n *= np.where((geometric * d).sum(axis=0) > 0, -1.0, 1.0).astype(np.float32)
        local = part.inverse_rotation @ p + part.inverse_translation[:, None]

        diffuse = self._dome * 0.5 * (1.0 + n[2])
        specular = np.zeros(len(t), dtype=np.float32)
        terms = []
        shadow_rays = []
        for index, light in enumerate(self._lights):
            to_light = light.position[:, None] - p
            d2 = (to_light * to_light).sum(axis=0)
            inv = 1.0 / np.sqrt(d2)
            cos = (n * to_light).sum(axis=0) * inv
            lit = cos > 0
            falloff = light.intensity * light.reference_distance**2 / d2
            half = to_light * inv - d
            glint = np.clip((n * half).sum(axis=0) / np.sqrt((half * half).sum(axis=0)), 0.0, 1.0)
            for _ in range(PART_SHININESS_LOG2):
                glint *= glint
            terms.append((np.where(lit, falloff * cos, 0.0), np.where(lit, falloff * glint, 0.0)))
            if index != view.index:
                which = np.nonzero(lit)[0]
                if len(which):
                    target = light.position[:, None] + _ring_offsets(light, local[:, which], index)
                    origins = p[:, which] + n[:, which] * SHADOW_EPS_MM
                    shadow_rays.append((index, which, np.concatenate([origins, target - origins]).T))
        visible = [np.ones(len(t), dtype=np.float32) for _ in self._lights]
        if shadow_rays:
            batch = np.ascontiguousarray(np.concatenate([r for _, _, r in shadow_rays]), dtype=np.float32)
            occluded = part.scene.test_occlusions(o3d.core.Tensor(batch), tnear=0.0, tfar=1.0).numpy()
            start = 0
            for index, which, rays in shadow_rays:
                visible[index][which] = ~occluded[start : start + len(rays)]
                start += len(rays)
        for (irradiance, glint), vis in zip(terms, visible):
            diffuse += irradiance * vis
            specular += glint * vis

        grain = 1.0 + PART_GRAIN_FINE * _cell_noise(local, 0.06) + PART_GRAIN_COARSE * _cell_noise(local, 0.2, salt=7)
        brightness = PART_ALBEDO * grain * diffuse + PART_SPECULAR * specular
        return brightness.astype(np.float32), np.ascontiguousarray(n.T, dtype=np.float32)

    def _supersample(
        self, view: _View, part: _Part, edges: np.ndarray, offset: tuple[int, int], tray: np.ndarray
    ) -> np.ndarray:
        """Re-trace only discontinuity pixels with AA_GRID² sub-rays, so silhouettes get fractional coverage."""
        ys, xs = np.nonzero(edges)
        steps = (np.arange(AA_GRID, dtype=np.float32) + 0.5) / AA_GRID - 0.5
        du, dv = (a.ravel() for a in np.meshgrid(steps, steps))
        u = (xs[:, None] + offset[0] + du[None, :]).ravel()
        v = (ys[:, None] + offset[1] + dv[None, :]).ravel()
        directions = _interpolate_rays(view.rays, u, v)
        hits = _cast(part.scene, view.centre, directions)
        hit = np.isfinite(hits["t_hit"])
        values = np.repeat(tray, AA_GRID * AA_GRID).astype(np.float32)
        if np.any(hit):
            values[hit] = self._shade(view, part, directions[hit], {k: v[hit] for k, v in hits.items()})[0]
        return values.reshape(-1, AA_GRID * AA_GRID).mean(axis=1)


def _cast(scene: o3d.t.geometry.RaycastingScene, centre: np.ndarray, directions: np.ndarray) -> dict[str, np.ndarray]:
    rays = np.empty((len(directions), 6), dtype=np.float32)
    rays[:, :3] = centre
    rays[:, 3:] = directions
    result = scene.cast_rays(o3d.core.Tensor(rays))
    return {key: value.numpy() for key, value in result.items()}


def _interpolate_rays(rays: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Sub-pixel ray directions by bilinear interpolation; distortion varies far too slowly for this to matter."""
    height, width = rays.shape[:2]
    u0 = np.clip(np.floor(u).astype(np.int64), 0, width - 2)
    v0 = np.clip(np.floor(v).astype(np.int64), 0, height - 2)
    fu = (u - u0).astype(np.float32)[:, None]
    fv = (v - v0).astype(np.float32)[:, None]
    d = (
        rays[v0, u0] * (1 - fu) * (1 - fv)
        + rays[v0, u0 + 1] * fu * (1 - fv)
        + rays[v0 + 1, u0] * (1 - fu) * fv
        + rays[v0 + 1, u0 + 1] * fu * fv
    )
    return (d / np.linalg.norm(d, axis=1, keepdims=True)).astype(np.float32)


def _edge_pixels(hit: np.ndarray, t_hit: np.ndarray, normals: np.ndarray, step_ratio: float) -> np.ndarray:
    """Pixels on silhouettes, depth steps and creases: the only places where one sample per pixel aliases."""
    edges = np.zeros_like(hit)
    depth = np.where(hit, t_hit, 0.0)
    for axis in (0, 1):
        a = [slice(None), slice(None)]
        b = [slice(None), slice(None)]
        a[axis], b[axis] = slice(None, -1), slice(1, None)
        ha, hb = hit[tuple(a)], hit[tuple(b)]
        both = ha & hb
        step = np.abs(depth[tuple(a)] - depth[tuple(b)]) > step_ratio * np.maximum(depth[tuple(a)], depth[tuple(b)])
        crease = np.einsum("ijk,ijk->ij", normals[tuple(a)], normals[tuple(b)]) < EDGE_NORMAL_COS
        differ = (ha != hb) | (both & (step | crease))
        edges[tuple(a)] |= differ
        edges[tuple(b)] |= differ
    return edges


def _corner_normals(mesh: trimesh.Trimesh) -> np.ndarray:
    """(F,3,3) per-corner normals, smooth across gentle angles and sharp across creases, like a CAD tessellation means.

    Flat-shaded triangles would make every curved surface look faceted, which printed parts never do;
    fully smooth normals would round off real edges.
    """
    faces = np.asarray(mesh.faces, dtype=np.int64)
    face_normals = np.asarray(mesh.face_normals, dtype=np.float32)
    corner_face = np.repeat(np.arange(len(faces)), 3)
    corner_vertex = faces.ravel()
    order = np.argsort(corner_vertex, kind="stable")
    degree = np.bincount(corner_vertex, minlength=len(mesh.vertices))
    start = np.concatenate([[0], np.cumsum(degree)])
    pairs_per_corner = degree[corner_vertex]
    if int(pairs_per_corner.sum()) > 30_000_000:
        return np.repeat(face_normals[:, None, :], 3, axis=1)
    pair_corner = np.repeat(np.arange(len(corner_vertex)), pairs_per_corner)
    within = np.arange(len(pair_corner)) - np.repeat(np.cumsum(pairs_per_corner) - pairs_per_corner, pairs_per_corner)
    other = order[start[corner_vertex[pair_corner]] + within]
    other_face = corner_face[other]
    angles = np.asarray(mesh.face_angles, dtype=np.float32).ravel()[other]
    similar = np.einsum("ij,ij->i", face_normals[corner_face[pair_corner]], face_normals[other_face]) > math.cos(
        math.radians(CREASE_ANGLE_DEG)
    )
    weight = angles * similar
    summed = np.stack(
        [
            np.bincount(pair_corner, weights=weight * face_normals[other_face, k], minlength=len(corner_vertex))
            for k in range(3)
        ],
        axis=1,
    )
    length = np.linalg.norm(summed, axis=1, keepdims=True)
    fallback = np.repeat(face_normals, 3, axis=0)
    normals = np.where(length > 1e-9, summed / np.maximum(length, 1e-12), fallback)
    return normals.reshape(-1, 3, 3).astype(np.float32)


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


def _ring_offsets(light: _Light, local: np.ndarray, salt: int) -> np.ndarray:
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


def _ring_lights(cameras: Sequence[CameraCalibration]) -> list[_Light]:
    """One ring light per camera, scaled so the dome plus the rings light the tray centre with unit irradiance."""
    lights = []
    raw = []
    for calib in cameras:
        position = calib.centre.astype(np.float64)
        distance = float(np.linalg.norm(position))
        raw.append(max(position[2], 0.0) / distance)
        lights.append((position, calib.optical_axis, distance))
    share = (1.0 - DOME_SHARE) / max(sum(raw), 1e-9)
    return [_Light(p.astype(np.float32), a.astype(np.float32), share, d) for p, a, d in lights]


def _vignette(calib: CameraCalibration) -> np.ndarray:
    """Radial fall-off to VIGNETTE_CORNER in the corners, times a fixed per-sensor pixel response non-uniformity."""
    w, h = calib.image_width, calib.image_height
    cx, cy = calib.K[0, 2], calib.K[1, 2]
    x = (np.arange(w, dtype=np.float32) - cx)[None, :]
    y = (np.arange(h, dtype=np.float32) - cy)[:, None]
    corner = max(math.hypot(cx, cy), math.hypot(w - cx, cy), math.hypot(cx, h - cy), math.hypot(w - cx, h - cy))
    rho2 = (x * x + y * y) / corner**2
    falloff = 1.0 - (1.0 - VIGNETTE_CORNER) * (0.6 * rho2 + 0.4 * rho2 * rho2)
    prnu = np.random.default_rng(zlib.crc32(calib.serial.encode())).standard_normal((h, w), dtype=np.float32)
    return (falloff * (1.0 + PRNU * prnu)).astype(np.float32)


def _expose(dn: np.ndarray, seed: int, camera_index: int) -> np.ndarray:
    """Shot and read noise of the sensor, deterministic for (seed, camera); then 8-bit quantisation.

    Normal deviates come from 16-bit uniforms through an inverse-CDF table: half the cost of
    drawing them directly, and a ±4.3σ tail is more than an 8-bit sensor image can show.
    """
    rng = np.random.Generator(np.random.Philox(np.random.SeedSequence([int(seed) & 0xFFFFFFFFFFFFFFFF, camera_index])))
    noise = _normal_table()[rng.integers(0, 65536, dn.shape, dtype=np.uint16)]
    read_variance = np.float32((READ_NOISE_E / ELECTRONS_PER_DN) ** 2)
    sigma = np.sqrt(np.maximum(dn, 0.0) * np.float32(1.0 / ELECTRONS_PER_DN) + read_variance)
    noise *= sigma
    noise += dn
    noise += np.float32(BLACK_LEVEL_DN + 0.5)
    np.clip(noise, 0.0, 255.0, out=noise)
    return noise.astype(np.uint8)


@lru_cache(maxsize=1)
def _normal_table() -> np.ndarray:
    return ndtri((np.arange(65536, dtype=np.float64) + 0.5) / 65536).astype(np.float32)


@lru_cache(maxsize=2)
def _tray_texture(tray_size_mm: tuple[float, float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Albedo of the tray plate in tray coordinates: bead-blasted speckle, face-milling arcs, a few scratches, a rim.

    Built from a fixed seed so every renderer, process and run shows the very same tray.
    """
    rng = np.random.default_rng(_FIXED_SEED)
    border = 2.0
    width, depth = tray_size_mm
    nx, ny = int(round((width + 2 * border) / TRAY_TEXEL_MM)), int(round((depth + 2 * border) / TRAY_TEXEL_MM))
    origin = np.array([-width / 2 - border, -depth / 2 - border], dtype=np.float32)
    x = origin[0] + (np.arange(nx, dtype=np.float32) + 0.5) * TRAY_TEXEL_MM
    y = origin[1] + (np.arange(ny, dtype=np.float32) + 0.5) * TRAY_TEXEL_MM

    speckle = cv2.GaussianBlur(rng.standard_normal((ny, nx), dtype=np.float32), (0, 0), 1.2)
    speckle /= speckle.std()
    coarse = cv2.GaussianBlur(rng.standard_normal((ny // 10 + 1, nx // 10 + 1), dtype=np.float32), (0, 0), 2.5)
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

    albedo = np.float32(TRAY_ALBEDO) * (
        1.0
        + np.float32(0.05) * speckle
        + np.float32(0.02) * mottle
        + np.float32(0.06) * marks
        + (0.012 * pass_tone)[:, None]
    )

    scratches = np.zeros((ny, nx), dtype=np.float32)
    for _ in range(30):
        start = rng.uniform([0, 0], [nx, ny])
        angle, length = rng.uniform(0, math.pi), rng.uniform(40, 400)
        end = start + length * np.array([math.cos(angle), math.sin(angle)])
        depth_of_cut = float(rng.uniform(0.5, 1.0))
        cv2.line(scratches, (int(start[0]), int(start[1])), (int(end[0]), int(end[1])), depth_of_cut, 1, cv2.LINE_AA)
    albedo *= 1.0 + np.float32(0.08) * scratches

    rim = 1.5
    rim_x = np.abs(x) > width / 2 - rim
    rim_y = np.abs(y) > depth / 2 - rim
    albedo[rim_y, :] = TRAY_RIM_ALBEDO * (1.0 + 0.03 * speckle[rim_y, :])
    albedo[:, rim_x] = TRAY_RIM_ALBEDO * (1.0 + 0.03 * speckle[:, rim_x])
    inside = ((np.abs(y) <= depth / 2)[:, None] & (np.abs(x) <= width / 2)[None, :]).astype(np.float32)
    albedo[inside == 0] = FLOOR_ALBEDO
    return np.ascontiguousarray(albedo, dtype=np.float32), inside, origin


@lru_cache(maxsize=1)
def _floor_texture() -> np.ndarray:
    """The station floor around the tray: dark, matte, mottled; tiled, as it only has to look plausible."""
    rng = np.random.default_rng(_FIXED_SEED + 1)
    size = 1024
    fine = _blur_wrapped(rng.standard_normal((size, size), dtype=np.float32), 1.5)
    coarse = _blur_wrapped(rng.standard_normal((size, size), dtype=np.float32), 30.0)
    fine /= fine.std()
    coarse /= max(float(coarse.std()), 1e-6)
    return (FLOOR_ALBEDO * (1.0 + 0.08 * fine + 0.12 * coarse)).astype(np.float32)


def _blur_wrapped(image: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of a tile that stays seamless when tiled (OpenCV filters have no wrap-around border)."""
    pad = int(math.ceil(4 * sigma))
    padded = np.pad(image, pad, mode="wrap")
    return cv2.GaussianBlur(padded, (0, 0), sigma)[pad:-pad, pad:-pad]
