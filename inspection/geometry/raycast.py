"""The geometric side of rendering: the placed part as a ray-casting scene, its shading normals, where pixels alias.

Separate from lighting and the sensor so that what a pixel sees (exact, from the calibration) is
decided in one place, and how bright it looks in another.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import open3d as o3d
import trimesh

CREASE_ANGLE_DEG = 35.0
EDGE_NORMAL_COS = math.cos(math.radians(14.0))


@dataclass(frozen=True)
class MeshData:
    """What rendering needs of a mesh regardless of its pose; worth caching per mesh object."""

    faces: np.ndarray
    corner_normals: np.ndarray
    support: np.ndarray


@dataclass(frozen=True)
class PlacedPart:
    """A mesh at one pose in the tray frame, ready to cast rays against."""

    scene: o3d.t.geometry.RaycastingScene
    rotation: np.ndarray
    inverse_rotation: np.ndarray
    inverse_translation: np.ndarray
    data: MeshData
    support_world: np.ndarray


def mesh_data(mesh: trimesh.Trimesh) -> MeshData:
    faces = np.ascontiguousarray(mesh.faces, dtype=np.int64)
    try:
        support = np.asarray(mesh.convex_hull.vertices, dtype=np.float64)
    except Exception:  # noqa: BLE001 - flat parts have no hull
        support = np.asarray(mesh.vertices, dtype=np.float64)
    return MeshData(faces, corner_normals(mesh), support)


def place_part(mesh: trimesh.Trimesh, data: MeshData, pose: np.ndarray) -> PlacedPart:
    """The part moved by `pose` (part→tray 4×4); raises ValueError for a pose that is not a finite 4×4 matrix."""
    if pose.shape != (4, 4) or not np.all(np.isfinite(pose)):
        raise ValueError(f"render: pose must be a finite 4×4 matrix, got shape {pose.shape}")
    vertices = (np.asarray(mesh.vertices, dtype=np.float64) @ pose[:3, :3].T + pose[:3, 3]).astype(np.float32)
    scene = triangle_scene(vertices, data.faces)
    support_world = data.support @ pose[:3, :3].T + pose[:3, 3]
    inverse = np.linalg.inv(pose)
    return PlacedPart(
        scene,
        pose[:3, :3].astype(np.float32),
        inverse[:3, :3].astype(np.float32),
        inverse[:3, 3].astype(np.float32),
        data,
        support_world,
    )


def tensor(array: np.ndarray) -> o3d.core.Tensor:
    """A copy of `array` as an open3d tensor of its own dtype, on the CPU.

    One place for the stub's mistake: open3d's generated stub makes dtype and device required,
    though the binding defaults them to the array's dtype and the CPU.
    """
    return o3d.core.Tensor(array)  # type: ignore[call-overload]  # the stub omits the binding's defaults


def triangle_scene(vertices: np.ndarray, faces: np.ndarray) -> o3d.t.geometry.RaycastingScene:
    """An open3d ray-casting scene of (V, 3) vertices and (F, 3) faces, in whatever frame the vertices are."""
    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(tensor(np.asarray(vertices, dtype=np.float32)), tensor(np.asarray(faces, dtype=np.uint32)))
    return scene


def cast(scene: o3d.t.geometry.RaycastingScene, centre: np.ndarray, directions: np.ndarray) -> dict[str, np.ndarray]:
    rays = np.empty((len(directions), 6), dtype=np.float32)
    rays[:, :3] = centre
    rays[:, 3:] = directions
    result = scene.cast_rays(tensor(rays))
    return {key: value.numpy() for key, value in result.items()}


def surface_normals(
    corner_normals: np.ndarray, rotation: np.ndarray, hits: dict[str, np.ndarray], directions: np.ndarray
) -> np.ndarray:
    """(3, N) tray-frame shading normals at ray hits, facing the viewer; `directions` are the rays' (3, N) rows."""
    faces = hits["primitive_ids"].astype(np.int64)
    u, v = hits["primitive_uvs"][:, 0], hits["primitive_uvs"][:, 1]
    corner = corner_normals[faces]
    local_n = corner[:, 0] * (1.0 - u - v)[:, None] + corner[:, 1] * u[:, None] + corner[:, 2] * v[:, None]
    n = rotation @ local_n.T
    n *= 1.0 / np.maximum(np.sqrt((n * n).sum(axis=0)), 1e-12)
    geometric = hits["primitive_normals"].T
    n *= np.where((geometric * directions).sum(axis=0) > 0, -1.0, 1.0).astype(np.float32)
    return n


def interpolate_rays(rays: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
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


def edge_pixels(hit: np.ndarray, t_hit: np.ndarray, normals: np.ndarray, step_ratio: float) -> np.ndarray:
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


def corner_normals(mesh: trimesh.Trimesh) -> np.ndarray:
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
