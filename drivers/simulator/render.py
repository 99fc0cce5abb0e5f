"""Photograph-like Mono8 images of a part on the tray, as the five calibrated station cameras would take them.

The mock driver and every image-processing test depend on these pictures, so they must carry what
real ones carry and what algorithms trip over: lens distortion, shading, a textured background,
contact shadows, soft anti-aliased edges, vignetting, blur and sensor noise. The empty tray is
rendered identically wherever the part is not, so background subtraction behaves as on the line.

This module orchestrates; the tray's look is in `tray_texture`, the lights, shadows and shading in
`lighting` (the demo station, kept exactly as it was) or `look_lighting` (every other station look and
catalogue materials), what rays hit in `raycast`, and the camera's imperfections in `sensor`. What a
station looks like is configuration: `looks.StationLook`.

Cost is kept to about a second per scene by doing everything that does not depend on the part
once per camera (rays, tray texture and lighting, blur, vignetting) and only tracing the image
region the part and its shadow cover.
"""

from __future__ import annotations

import math
import threading
import weakref
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import trimesh

from amflow_edge.drivers.simulator.look_lighting import LookLighting
from amflow_edge.drivers.simulator.looks import PartMaterial, StationLook
from amflow_edge.drivers.simulator.sensor import expose, optical_blur, sensor_gain
from amflow_edge.drivers.simulator.tray_texture import TrayTexture
from amflow_edge.inspection.geometry.camera import CameraCalibration
from amflow_edge.inspection.geometry.lighting import PART_ALBEDO, Lighting, ShadowGrid, shadow_factor
from amflow_edge.inspection.geometry.raycast import (
    MeshData,
    PlacedPart,
    cast,
    edge_pixels,
    interpolate_rays,
    mesh_data,
    place_part,
)

SKY_BRIGHTNESS = 0.02
AA_GRID = 4
EDGE_DEPTH_PX = 8.0
REGION_PAD_PX = 4


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
class _Part:
    placed: PlacedPart
    shadow: ShadowGrid
    albedo: float = PART_ALBEDO
    material: PartMaterial | None = None


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
        self,
        cameras: Sequence[CameraCalibration],
        tray_size_mm: tuple[float, float] = (300.0, 240.0),
        look: StationLook | None = None,
    ) -> None:
        """`look`: the station's lights, tray and camera (drivers.simulator.looks); None is the demo station."""
        names = [c.name for c in cameras]
        if len(set(names)) != len(names):
            raise ValueError(f"Renderer: camera names must be unique, got {names}")
        if not cameras:
            raise ValueError("Renderer: needs at least one camera")
        self.tray_size_mm = (float(tray_size_mm[0]), float(tray_size_mm[1]))
        self.look = StationLook() if look is None else look
        self._cameras = list(cameras)
        demo = StationLook()
        self._lighting: Lighting | LookLighting
        if self.look.lights == demo.lights and self.look.tray_bounce == demo.tray_bounce:
            self._lighting = Lighting(cameras)
        else:
            self._lighting = LookLighting(cameras, self.look, self.tray_size_mm)
        self._look_lighting = self._lighting if isinstance(self._lighting, LookLighting) else None
        self._texture = TrayTexture.for_tray(self.tray_size_mm, self.look.tray, self.look.floor_albedo)
        self._mesh_cache: dict[int, tuple[weakref.ref[trimesh.Trimesh], MeshData]] = {}
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="render")
        key = (tuple(c.model_dump_json() for c in cameras), self.tray_size_mm, self.look.model_dump_json())
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

    def render(
        self,
        mesh: trimesh.Trimesh | None,
        pose: np.ndarray | None,
        seed: int,
        albedo: float = PART_ALBEDO,
        material: PartMaterial | None = None,
    ) -> dict[str, np.ndarray]:
        """One Mono8 image per camera of the part at `pose` (part→tray 4×4), or of the empty tray for mesh=None.

        The same seed gives bit-identical images; the seed only drives the sensor noise, so an
        empty-tray and a part image with the same seed are identical away from the part. `albedo` is the
        part's diffuse reflectance as the demo's PA12 (drivers.simulator.materials maps a design_material's colour
        to it); a catalogue `material` (looks.load_material) replaces it with its own reflectance, gloss and grain.
        """
        if not 0.0 < albedo <= 1.0:
            raise ValueError(f"render: albedo must be in (0, 1], got {albedo}")
        part = None
        if mesh is not None:
            pose = np.eye(4) if pose is None else np.asarray(pose, dtype=np.float64)
            part = self._prepare_part(mesh, pose, albedo, material)
            if material is not None and self._look_lighting is None:
                self._look_lighting = LookLighting(self._cameras, self.look, self.tray_size_mm)
        images = self._pool.map(lambda view: self._render_view(view, part, seed), self._views)
        return {view.calib.name: image for view, image in zip(self._views, images, strict=True)}

    def _prepare_view(self, index: int, calib: CameraCalibration) -> _View:
        rays = calib.pixel_rays()
        centre = calib.centre.astype(np.float32)
        base = self._empty_brightness(centre, rays)
        gain = sensor_gain(calib, self.look.exposure_dn, self.look.vignette_corner)
        empty_dn = optical_blur(base, self.look.blur_sigma_px) * gain
        for array in (base, gain, empty_dn):
            array.setflags(write=False)
        return _View(index, calib, rays, centre, base, gain, empty_dn)

    def _empty_brightness(self, centre: np.ndarray, rays: np.ndarray) -> np.ndarray:
        dz = rays[..., 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            t = np.where(dz < -1e-6, -centre[2] / dz, np.float32(np.nan)).astype(np.float32)
        x = centre[0] + t * rays[..., 0]
        y = centre[1] + t * rays[..., 1]
        albedo = self._texture.albedo(x, y)
        brightness = albedo * self._lighting.tray_irradiance(x, y)
        return np.where(np.isfinite(t), brightness, np.float32(SKY_BRIGHTNESS)).astype(np.float32)

    def _mesh_data(self, mesh: trimesh.Trimesh) -> MeshData:
        cached = self._mesh_cache.get(id(mesh))
        if cached is not None and cached[0]() is mesh:
            return cached[1]
        data = mesh_data(mesh)
        for dead in [k for k, (ref, _) in self._mesh_cache.items() if ref() is None]:
            del self._mesh_cache[dead]
        self._mesh_cache[id(mesh)] = (weakref.ref(mesh), data)
        return data

    def _prepare_part(
        self, mesh: trimesh.Trimesh, pose: np.ndarray, albedo: float = PART_ALBEDO, material: PartMaterial | None = None
    ) -> _Part:
        placed = place_part(mesh, self._mesh_data(mesh), pose)
        return _Part(placed, self._lighting.shadow_grid(placed.scene, placed.support_world), albedo, material)

    def _shade(
        self, part: _Part, view: _View, directions: np.ndarray, hits: dict[str, np.ndarray]
    ) -> tuple[np.ndarray, np.ndarray]:
        """The demo's PA12 under the rig's lighting, or a catalogue material under the look's lights."""
        if part.material is None:
            return self._lighting.shade(part.placed, view.centre, view.index, directions, hits, part.albedo)
        assert self._look_lighting is not None
        return self._look_lighting.shade(
            part.placed, view.centre, view.index, directions, hits, part.albedo, part.material
        )

    def _render_view(self, view: _View, part: _Part | None, seed: int) -> np.ndarray:
        dn = view.empty_dn
        if part is not None:
            rects = self._regions(view, part)
            if rects is not None:
                dn = dn.copy()
                self._render_region(view, part, *rects, dn)
        return expose(dn, seed, view.index, self.look.electrons_per_dn, self.look.read_noise_e)

    def _regions(self, view: _View, part: _Part) -> tuple[_Rect, _Rect] | None:
        """Pixel rectangles that can change: where the shadow grid lies, and (inside it) where rays can hit the part."""
        grid = part.shadow
        ny, nx = grid.factor.shape
        edge = np.linspace(0.0, 1.0, 16)
        w, h = nx * grid.cell_mm, ny * grid.cell_mm
        border = (
            np.concatenate(
                [
                    np.column_stack([edge * w, np.zeros_like(edge)]),
                    np.column_stack([edge * w, np.full_like(edge, h)]),
                    np.column_stack([np.zeros_like(edge), edge * h]),
                    np.column_stack([np.full_like(edge, w), edge * h]),
                ]
            )
            + grid.origin
        )
        trace = self._pixel_rect(view, part.placed.support_world, REGION_PAD_PX)
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
        image = view.base[y0:y1, x0:x1] * shadow_factor(part.shadow, view.centre, rays)

        window = image[trace.y0 - y0 : trace.y1 - y0, trace.x0 - x0 : trace.x1 - x0]
        trace_rays = view.rays[trace.y0 : trace.y1, trace.x0 : trace.x1]
        th, tw = trace_rays.shape[:2]
        hits = cast(part.placed.scene, view.centre, trace_rays.reshape(-1, 3))
        t_hit = hits["t_hit"].reshape(th, tw)
        hit = np.isfinite(t_hit)
        if np.any(hit):
            flat = hit.reshape(-1)
            shaded, normals_hit = self._shade(part, view, trace_rays[hit], {k: v[flat] for k, v in hits.items()})
            tray = window.copy()
            window[hit] = shaded
            normals = np.zeros((th, tw, 3), dtype=np.float32)
            normals[hit] = normals_hit
            edges = edge_pixels(hit, t_hit, normals, EDGE_DEPTH_PX / float(view.calib.K[0, 0]))
            if np.any(edges):
                window[edges] = self._supersample(view, part, edges, (trace.x0, trace.y0), tray[edges])

        blurred = optical_blur(image, self.look.blur_sigma_px)
        ix0 = REGION_PAD_PX if x0 > 0 else 0
        iy0 = REGION_PAD_PX if y0 > 0 else 0
        ix1 = w - (REGION_PAD_PX if x1 < view.calib.image_width else 0)
        iy1 = h - (REGION_PAD_PX if y1 < view.calib.image_height else 0)
        dn[y0 + iy0 : y0 + iy1, x0 + ix0 : x0 + ix1] = (
            blurred[iy0:iy1, ix0:ix1] * view.gain[y0 + iy0 : y0 + iy1, x0 + ix0 : x0 + ix1]
        )

    def _supersample(
        self,
        view: _View,
        part: _Part,
        edges: np.ndarray,
        offset: tuple[int, int],
        tray: np.ndarray,
    ) -> np.ndarray:
        """Re-trace only discontinuity pixels with AA_GRID² sub-rays, so silhouettes get fractional coverage."""
        ys, xs = np.nonzero(edges)
        steps = (np.arange(AA_GRID, dtype=np.float32) + 0.5) / AA_GRID - 0.5
        du, dv = (a.ravel() for a in np.meshgrid(steps, steps))
        u = (xs[:, None] + offset[0] + du[None, :]).ravel()
        v = (ys[:, None] + offset[1] + dv[None, :]).ravel()
        directions = interpolate_rays(view.rays, u, v)
        hits = cast(part.placed.scene, view.centre, directions)
        hit = np.isfinite(hits["t_hit"])
        values = np.repeat(tray, AA_GRID * AA_GRID).astype(np.float32)
        if np.any(hit):
            values[hit] = self._shade(part, view, directions[hit], {k: v[hit] for k, v in hits.items()})[0]
        return values.reshape(-1, AA_GRID * AA_GRID).mean(axis=1)
