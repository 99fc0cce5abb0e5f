"""Putting a part on the tray the way an operator does: on one of its stable faces, anywhere, any way round.

The mock station must show parts in poses a real operator would produce, or alignment and
metrics get tested on scenes that never occur on the line (a bracket balanced on an edge).
"""

from __future__ import annotations

import math
import weakref

import numpy as np
import trimesh

_MAX_YAW_TRIES = 24
_MIN_PROBABILITY = 1e-4


class PlacementError(ValueError):
    """The part cannot be placed on the tray; the message says why and what would make it fit."""


_cache: dict[int, tuple[weakref.ref[trimesh.Trimesh], np.ndarray, np.ndarray]] = {}


def stable_poses(mesh: trimesh.Trimesh) -> tuple[np.ndarray, np.ndarray]:
    """(K,4,4) rest poses and their probabilities (summing to 1), most likely first.

    Each pose puts the part on z = 0 with its footprint centred on the origin. Cached per mesh
    object because the mock driver places the same design over and over.
    """
    key = id(mesh)
    cached = _cache.get(key)
    if cached is not None and cached[0]() is mesh:
        return cached[1].copy(), cached[2].copy()
    poses, probs = _compute_stable_poses(mesh)
    for dead in [k for k, (ref, _, _) in _cache.items() if ref() is None]:
        del _cache[dead]
    _cache[key] = (weakref.ref(mesh), poses, probs)
    return poses.copy(), probs.copy()


def _compute_stable_poses(mesh: trimesh.Trimesh) -> tuple[np.ndarray, np.ndarray]:
    if len(mesh.vertices) == 0 or len(mesh.faces) == 0:
        raise PlacementError("the part mesh is empty; check the design's mesh file")
    poses: np.ndarray | None = None
    probs: np.ndarray | None = None
    if _has_solid_volume(mesh):
        try:
            poses, probs = trimesh.poses.compute_stable_poses(mesh)
        except Exception:  # noqa: BLE001 - trimesh raises anything from qhull to linalg errors on odd meshes
            poses = None
    usable = poses is not None and len(poses) > 0 and np.all(np.isfinite(poses))
    if not usable or probs is None or not np.isfinite(np.sum(probs)) or np.sum(probs) <= 0:
        poses, probs = _hull_face_poses(mesh)
    probs = np.asarray(probs, dtype=np.float64)
    keep = probs >= _MIN_PROBABILITY * probs.max()
    poses, probs = np.asarray(poses, dtype=np.float64)[keep], probs[keep]
    order = np.argsort(-probs, kind="stable")
    poses = np.stack([_rest_on_origin(mesh, pose) for pose in poses[order]])
    probs = probs[order] / probs[order].sum()
    return poses, probs


def _has_solid_volume(mesh: trimesh.Trimesh) -> bool:
    """compute_stable_poses needs a real centre of mass; with a NaN one it never returns, and an inconsistently
    wound mesh's is wherever its cancelling faces put it."""
    try:
        return bool(
            mesh.is_watertight
            and mesh.is_winding_consistent
            and mesh.volume > 0
            and np.all(np.isfinite(mesh.center_mass))
        )
    except Exception:  # noqa: BLE001 - property evaluation fails on broken meshes
        return False


def _hull_face_poses(mesh: trimesh.Trimesh) -> tuple[np.ndarray, np.ndarray]:
    """Fallback for meshes trimesh cannot handle (open, self-intersecting): rest on convex-hull facets.

    A facet is stable when the centre of mass projects inside it; its likelihood is taken as
    proportional to its area, a crude but monotone stand-in for the basin of attraction. An open
    surface encloses no mass, so its convex hull's centre of mass stands in: unlike the mean of the
    vertices, it does not move towards wherever the CAD export put its finest tessellation.
    """
    try:
        with np.errstate(invalid="ignore", divide="ignore"):
            hull = mesh.convex_hull
            hull_ok = _has_solid_volume(hull)
        if not hull_ok:
            raise ValueError("flat part: its convex hull has no volume")
        centre = np.asarray(mesh.center_mass if _has_solid_volume(mesh) else hull.center_mass)
        in_facets = {f for facet in hull.facets for f in facet}
        facets = list(hull.facets) + [[f] for f in range(len(hull.faces)) if f not in in_facets]
    except Exception:  # noqa: BLE001 - degenerate (flat) parts have no hull
        return np.array([_thinnest_axis_up(mesh)]), np.array([1.0])
    poses, weights = [], []
    for facet in facets:
        facet = np.asarray(facet)
        normal = hull.face_normals[facet[0]]
        triangles = hull.triangles[facet]
        projected = centre - np.dot(centre - triangles[0, 0], normal) * normal
        if not _inside_any_triangle(projected, triangles):
            continue
        poses.append(_normal_down(normal))
        weights.append(float(hull.area_faces[facet].sum()))
    if not poses:
        return np.array([_thinnest_axis_up(mesh)]), np.array([1.0])
    return np.array(poses), np.array(weights) / np.sum(weights)


def _inside_any_triangle(point: np.ndarray, triangles: np.ndarray) -> bool:
    barycentric = trimesh.triangles.points_to_barycentric(triangles, np.repeat(point[None], len(triangles), axis=0))
    return bool(np.any(np.all(barycentric >= -1e-9, axis=1)))


def _normal_down(normal: np.ndarray) -> np.ndarray:
    pose = np.eye(4)
    pose[:3, :3] = trimesh.geometry.align_vectors(normal, [0.0, 0.0, -1.0])[:3, :3]
    return pose


def _thinnest_axis_up(mesh: trimesh.Trimesh) -> np.ndarray:
    vertices = mesh.vertices - mesh.vertices.mean(axis=0)
    _, _, axes = np.linalg.svd(vertices, full_matrices=False)
    return _normal_down(axes[-1] if len(axes) == 3 else np.array([0.0, 0.0, 1.0]))


def _rest_on_origin(mesh: trimesh.Trimesh, pose: np.ndarray) -> np.ndarray:
    vertices = _support_points(mesh) @ pose[:3, :3].T + pose[:3, 3]
    low, high = vertices.min(axis=0), vertices.max(axis=0)
    rested = pose.copy()
    rested[:3, 3] -= [(low[0] + high[0]) / 2, (low[1] + high[1]) / 2, low[2]]
    return rested


def _support_points(mesh: trimesh.Trimesh) -> np.ndarray:
    """Hull vertices decide the footprint and the lowest point, at a fraction of the cost of all vertices."""
    try:
        return np.asarray(mesh.convex_hull.vertices, dtype=np.float64)
    except Exception:  # noqa: BLE001 - flat or degenerate meshes
        return np.asarray(mesh.vertices, dtype=np.float64)


def _yaw(angle: float) -> np.ndarray:
    rotation = np.eye(4)
    c, s = math.cos(angle), math.sin(angle)
    rotation[:2, :2] = [[c, -s], [s, c]]
    return rotation


def place_on_tray(
    mesh: trimesh.Trimesh,
    rng: np.random.Generator,
    tray_size_mm: tuple[float, float] = (300.0, 240.0),
    margin_mm: float = 10.0,
) -> np.ndarray:
    """A 4×4 part→tray pose: a stable rest pose drawn by its probability, a random yaw and position.

    The whole footprint stays inside the tray minus the margin and the part touches z = 0.
    Yaws that do not fit are redrawn, then searched degree by degree (a long part may only fit
    roughly along the tray's diagonal).
    """
    poses, probs = stable_poses(mesh)
    half = np.array(tray_size_mm, dtype=np.float64) / 2 - margin_mm
    if np.any(half <= 0):
        raise PlacementError(f"margin {margin_mm} mm leaves no room on a {tray_size_mm[0]}×{tray_size_mm[1]} mm tray")
    support = _support_points(mesh)
    first = int(rng.choice(len(poses), p=probs))
    order = [first] + [i for i in range(len(poses)) if i != first]
    for index in order:
        random_yaws = rng.uniform(0.0, 2 * math.pi, _MAX_YAW_TRIES)
        for yaw in np.concatenate([random_yaws, np.radians(np.arange(0.0, 180.0, 1.0))]):
            pose = _yaw(float(yaw)) @ poses[index]
            vertices = support @ pose[:3, :3].T + pose[:3, 3]
            low, high = vertices[:, :2].min(axis=0), vertices[:, :2].max(axis=0)
            room_low, room_high = -half - low, half - high
            if np.all(room_low <= room_high):
                pose[:2, 3] += rng.uniform(room_low, room_high)
                pose[2, 3] -= vertices[:, 2].min()
                return pose
    extent = np.sort(np.ptp(support, axis=0))[::-1]
    raise PlacementError(
        f"part of {extent[0]:.0f}×{extent[1]:.0f}×{extent[2]:.0f} mm does not fit on the "
        f"{tray_size_mm[0]:.0f}×{tray_size_mm[1]:.0f} mm tray with a {margin_mm:g} mm margin in any stable pose; "
        "use a smaller design, a smaller margin or a larger tray"
    )
