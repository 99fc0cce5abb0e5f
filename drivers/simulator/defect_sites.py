"""Where on a resting part an injected defect goes, so that the station's cameras can actually see it.

A defect on the face the part lies on, or inside a bore, tests nothing: no camera sees it. So sites
are drawn from the part's outside (its convex hull), facing up or sideways in the resting pose, and
weighted towards the top and towards the outline of the footprint, where silhouettes are. Of those,
the first whose change a viewpoint sees in its silhouette (a line of sight through it that meets
no other part of the part) wins: shading alone is a weak test of an inspection.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import open3d as o3d
import trimesh
from scipy.spatial import ConvexHull, QhullError

from amflow_edge.inspection.geometry.raycast import tensor

_EDGE_SAMPLES = 3000
_SURFACE_SAMPLES = 4000
_SHARP_EDGE_DEG = 30.0
_MIN_FACING_UP = -0.2
_CLEARANCE_MM = 0.2
_ON_HULL_MM = 0.01
_PROBED = 512
_GENERIC_DISTANCE_MM = 760.0


class SiteError(ValueError):
    """No place on the part where the defect would be visible; the message says why and what would work."""


@dataclass(frozen=True)
class Site:
    """A point on the part's surface (part frame, mm) and the outward direction there."""

    point: np.ndarray
    normal: np.ndarray


class RestingPart:
    """The part as it lies on the tray: which way is up in its own frame, how high and how far out each point is."""

    def __init__(self, mesh: trimesh.Trimesh, pose: np.ndarray, viewpoints: np.ndarray | None = None) -> None:
        self.mesh = mesh
        self.pose = np.asarray(pose, dtype=np.float64)
        self.rotation = self.pose[:3, :3]
        self.up = self.rotation[2].copy()
        self.hull = mesh.convex_hull
        hull_points = np.asarray(self.hull.vertices, dtype=np.float64)
        heights = hull_points @ self.up
        self._floor = float(heights.min())
        self.height = max(float(heights.max()) - self._floor, 1e-9)
        self._planes = np.column_stack(
            [self.hull.face_normals, -np.einsum("ij,ij->i", self.hull.face_normals, self.hull.triangles[:, 0])]
        )
        footprint = hull_points @ self.rotation[:2].T
        try:
            self._outline: np.ndarray | None = ConvexHull(footprint).equations
        except QhullError:
            self._outline = None
        if viewpoints is None:
            viewpoints = _generic_viewpoints(self.to_tray(hull_points.mean(axis=0)))
        self.viewpoints = np.asarray(viewpoints, dtype=np.float64).reshape(-1, 3)
        self._scene: o3d.t.geometry.RaycastingScene | None = None

    def above_tray(self, points: np.ndarray) -> np.ndarray:
        """Height (mm) over the tray of part-frame points."""
        return points @ self.up - self._floor

    def below_hull(self, points: np.ndarray) -> np.ndarray:
        """How deep (mm) under the convex hull points lie: 0 on the outside of the part, more in pockets and bores."""
        return np.maximum(-(points @ self._planes[:, :3].T + self._planes[:, 3]).max(axis=1), 0.0)

    def inside_outline(self, points: np.ndarray) -> np.ndarray:
        """Distance (mm) in the tray plane from the footprint's outline, where the top view's silhouette is."""
        if self._outline is None:
            return np.zeros(len(points))
        xy = points @ self.rotation[:2].T
        return np.maximum(-(xy @ self._outline[:, :2].T + self._outline[:, 2]).max(axis=1), 0.0)

    def facing_up(self, directions: np.ndarray) -> np.ndarray:
        """z of part-frame directions in the tray frame: 1 up, 0 sideways, −1 into the tray."""
        return directions @ self.up

    def to_tray(self, points: np.ndarray) -> np.ndarray:
        return points @ self.rotation.T + self.pose[:3, 3]

    def seen(self, probes: np.ndarray, centres: np.ndarray, radius: float) -> np.ndarray:
        """Whether some viewpoint has a line of sight through each probe (part frame) that meets the part
        nowhere, or only within `radius` of its centre (material a defect removes there)."""
        if self._scene is None:
            self._scene = o3d.t.geometry.RaycastingScene()
            vertices = self.to_tray(np.asarray(self.mesh.vertices, dtype=np.float64)).astype(np.float32)
            self._scene.add_triangles(tensor(vertices), tensor(self.mesh.faces.astype(np.uint32)))
        count, views = len(probes), len(self.viewpoints)
        origins = np.tile(self.viewpoints, (count, 1))
        directions = np.repeat(self.to_tray(probes), views, axis=0) - origins
        directions /= np.linalg.norm(directions, axis=1, keepdims=True)
        rays = np.concatenate([origins, directions], axis=1).astype(np.float32)
        hits = {k: v.numpy() for k, v in self._scene.list_intersections(tensor(rays)).items()}
        ray = hits["ray_ids"].astype(np.int64)
        where = origins[ray] + directions[ray] * hits["t_hit"][:, None]
        elsewhere = np.linalg.norm(where - np.repeat(self.to_tray(centres), views, axis=0)[ray], axis=1) > radius
        blocked = np.bincount(ray, weights=elsewhere, minlength=len(rays)) > 0
        return ~np.all(blocked.reshape(count, views), axis=1)

    def weights(self, points: np.ndarray, reach_mm: float) -> np.ndarray:
        """Preference for high points near the outline, never zero so every candidate stays possible."""
        height = np.clip(self.above_tray(points) / self.height, 0.0, 1.0)
        return (0.1 + height) ** 2 * np.exp(-self.inside_outline(points) / (2.0 * reach_mm + 1.0))


def edge_site(part: RestingPart, radius_mm: float, rng: np.random.Generator) -> Site:
    """A point on a sharp convex edge of the part's outside, facing up or sideways, clear of the tray.

    For a chip: a sphere of `radius_mm` about the point is removed, and some viewpoint must see
    through the hole. Falls back to a surface site on parts without such edges (a sphere has none).
    """
    mesh = part.mesh
    sharp = (mesh.face_adjacency_angles > math.radians(_SHARP_EDGE_DEG)) & mesh.face_adjacency_convex
    if not np.any(sharp):
        return _chip_site(part, *_surface_samples(mesh, rng), radius_mm, rng)
    ends = mesh.vertices[mesh.face_adjacency_edges[sharp]]
    lengths = np.linalg.norm(ends[:, 1] - ends[:, 0], axis=1)
    pick = rng.choice(len(ends), size=_EDGE_SAMPLES, p=lengths / lengths.sum())
    along = rng.uniform(0.0, 1.0, _EDGE_SAMPLES)[:, None]
    points = ends[pick, 0] * (1.0 - along) + ends[pick, 1] * along
    pair = mesh.face_adjacency[sharp][pick]
    bisector = mesh.face_normals[pair[:, 0]] + mesh.face_normals[pair[:, 1]]
    bisector /= np.maximum(np.linalg.norm(bisector, axis=1, keepdims=True), 1e-12)
    return _chip_site(part, points, bisector, radius_mm, rng)


def _chip_site(
    part: RestingPart, points: np.ndarray, normals: np.ndarray, radius_mm: float, rng: np.random.Generator
) -> Site:
    offsets = (-0.6 * radius_mm, -0.4 * radius_mm, -0.2 * radius_mm)
    site = _choose(part, points, normals, radius_mm, rng, probe_offsets=offsets, clear_radius=0.97 * radius_mm)
    if site is None:
        raise SiteError(_nowhere(part.mesh, radius_mm))
    return site


def surface_site(part: RestingPart, radius_mm: float, rng: np.random.Generator) -> Site:
    """A point on the part's outside surface, facing up or sideways, clear of the tray.

    For a blob: a sphere of `radius_mm` centred half a radius out along the normal is added, and
    some viewpoint must see its top stand out against the background.
    """
    points, normals = _surface_samples(part.mesh, rng)
    offsets = (radius_mm, 0.75 * radius_mm, 0.5 * radius_mm)
    site = _choose(part, points, normals, radius_mm, rng, probe_offsets=offsets, clear_radius=0.0)
    if site is None:
        raise SiteError(_nowhere(part.mesh, radius_mm))
    return site


def _surface_samples(mesh: trimesh.Trimesh, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    areas = mesh.area_faces
    faces = rng.choice(len(areas), size=_SURFACE_SAMPLES, p=areas / areas.sum())
    u, v = rng.uniform(0.0, 1.0, (2, _SURFACE_SAMPLES))
    flip = u + v > 1.0
    u, v = np.where(flip, 1.0 - u, u), np.where(flip, 1.0 - v, v)
    corners = mesh.triangles[faces]
    points = corners[:, 0] + u[:, None] * (corners[:, 1] - corners[:, 0]) + v[:, None] * (corners[:, 2] - corners[:, 0])
    return points, np.asarray(mesh.face_normals[faces])


def _choose(
    part: RestingPart,
    points: np.ndarray,
    normals: np.ndarray,
    radius_mm: float,
    rng: np.random.Generator,
    *,
    probe_offsets: tuple[float, ...],
    clear_radius: float,
) -> Site | None:
    """Draw candidates by preference and keep the first a viewpoint sees in silhouette.

    A candidate is seen when a line of sight through its probe point (offset along the normal,
    inside a chip or a blob) meets the part only within `clear_radius` of it. Deeper probes come
    first, as they mean a deeper change of the silhouette; 'on the outside' is relaxed step by step
    for parts that are mostly pockets. When no candidate shows in any silhouette, the most
    preferred one is taken (its shading still shows).
    """
    clear = part.above_tray(points) >= radius_mm + _CLEARANCE_MM
    facing = part.facing_up(normals) >= _MIN_FACING_UP
    depth = part.below_hull(points)
    tiers: list[np.ndarray] = []
    for tolerance in (_ON_HULL_MM, 0.05 * float(part.mesh.extents.max()), math.inf):
        index = np.flatnonzero(clear & facing & (depth <= tolerance))
        if len(index) and not (tiers and len(tiers[-1]) == len(index)):
            weights = part.weights(points[index], radius_mm)
            size = min(len(index), _PROBED)
            tiers.append(index[rng.choice(len(index), size=size, replace=False, p=weights / weights.sum())])
    if not tiers:
        return None
    for offset in probe_offsets:
        for order in tiers:
            seen = part.seen(points[order] + offset * normals[order], points[order], clear_radius)
            if np.any(seen):
                chosen = int(order[int(np.argmax(seen))])
                return Site(points[chosen].copy(), normals[chosen].copy())
    return Site(points[tiers[0][0]].copy(), normals[tiers[0][0]].copy())


def _nowhere(mesh: trimesh.Trimesh, radius_mm: float) -> str:
    return (
        f"no surface of the {_size_text(mesh)} mm part faces up or sideways at least "
        f"{radius_mm + _CLEARANCE_MM:.3g} mm above the tray; use a smaller defect size"
    )


def _generic_viewpoints(centre: np.ndarray) -> np.ndarray:
    """A station-like rig around the part when none is given: one camera above, eight at 45° all round."""
    azimuths = np.radians(np.arange(0.0, 360.0, 45.0))
    ring = np.column_stack([np.cos(azimuths), np.sin(azimuths), np.ones_like(azimuths)]) * math.sqrt(0.5)
    return centre + _GENERIC_DISTANCE_MM * np.vstack([[0.0, 0.0, 1.0], ring])


def cut_direction(part: RestingPart, depth_mm: float, rng: np.random.Generator) -> np.ndarray:
    """Outward direction (part frame) of a planar cut: a face of the hull (a short print) or an edge (a broken edge).

    Only directions facing up or sideways, along which the part is at least twice the cut's depth,
    so the cut shows and leaves most of the part.
    """
    hull = part.hull
    vertices = np.asarray(hull.vertices, dtype=np.float64)
    faces = (hull.face_normals, hull.area_faces)
    sharp = hull.face_adjacency_angles > math.radians(_SHARP_EDGE_DEG)
    pairs = hull.face_adjacency[sharp]
    bisectors = hull.face_normals[pairs[:, 0]] + hull.face_normals[pairs[:, 1]]
    bisectors /= np.maximum(np.linalg.norm(bisectors, axis=1, keepdims=True), 1e-12)
    ends = hull.vertices[hull.face_adjacency_edges[sharp]]
    edges = (bisectors, np.linalg.norm(ends[:, 1] - ends[:, 0], axis=1))
    usable = []
    for directions, size in (faces, edges):
        projected = directions @ vertices.T
        thick = projected.max(axis=1) - projected.min(axis=1) >= 2.0 * depth_mm
        ok = thick & (part.facing_up(directions) >= -0.1) & (size > 0)
        if np.any(ok):
            usable.append((directions[ok], size[ok] * (0.5 + np.maximum(part.facing_up(directions[ok]), 0.0))))
    if not usable:
        raise SiteError(
            f"a {depth_mm:g} mm slab would take half or more of the {_size_text(part.mesh)} mm part from every side "
            "the cameras see; use a smaller depth"
        )
    directions, weights = usable[int(rng.integers(len(usable)))]
    return directions[int(rng.choice(len(directions), p=weights / weights.sum()))].copy()


def _size_text(mesh: trimesh.Trimesh) -> str:
    return "×".join(f"{v:.0f}" for v in mesh.extents)
