"""Printing defects put into a design mesh, so the mock station shows bad parts and the inspection can be tested.

Each defect is written as ``KIND:SIZE`` (``missing_chunk:1.0``, ``scale:0.5``, ``warp:2``; see
`defect_spec`) in configs and on the command line. Geometry changes go through manifold3d
booleans, so the result is a closed solid the renderer and the inspection can trust. Local defects
are put where the cameras can see them once the part rests on the tray (see `defect_sites`), and
the truth of what was done is returned with the mesh so tests can check the inspection against it.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import manifold3d
import numpy as np
import trimesh

from amflow_edge.drivers.simulator.defect_sites import RestingPart, SiteError, cut_direction, edge_site, surface_site
from amflow_edge.drivers.simulator.defect_spec import (
    SIZE_RANGES,
    BoundingBox,
    Defect,
    DefectError,
    DefectKind,
    DefectTruth,
)
from amflow_edge.inspection.geometry.placement import stable_poses

__all__ = [
    "SIZE_RANGES",
    "BoundingBox",
    "Defect",
    "DefectError",
    "DefectKind",
    "DefectTruth",
    "apply_defect",
    "defect_rng",
    "settle",
]

CHUNK_RADIUS_PER_MM = math.sqrt(2.0)
_SPHERE_SEGMENTS = 48
_DEFECT_STREAM = 0xDEFEC7


def defect_rng(scene_seed: int) -> np.random.Generator:
    """A scene's own stream for defects, so a defect changes nothing else of the scene (part, pose, noise)."""
    return np.random.default_rng(np.random.SeedSequence([int(scene_seed) & 0xFFFFFFFFFFFFFFFF, _DEFECT_STREAM]))


def settle(mesh: trimesh.Trimesh, pose: np.ndarray) -> np.ndarray:
    """The pose moved along z so the part touches the tray again after a defect changed its underside."""
    settled = np.array(pose, dtype=np.float64)
    settled[2, 3] -= float((np.asarray(mesh.vertices) @ settled[2, :3] + settled[2, 3]).min())
    return settled


def apply_defect(
    mesh_mm: trimesh.Trimesh,
    defect: Defect,
    rng: np.random.Generator,
    pose: np.ndarray | None = None,
    viewpoints: np.ndarray | None = None,
) -> tuple[trimesh.Trimesh, DefectTruth]:
    """A copy of the part with the defect, and its truth; the input mesh is not changed.

    `pose` is the part→tray resting pose the part will be shown in (default: its most likely
    stable pose) and `viewpoints` the (N,3) camera centres in the tray frame (default: a generic
    rig of one camera above and eight at 45° around the part). Chips and blobs go where that pose
    puts them in some camera's silhouette. The result keeps the part's frame, so the same pose
    still places it; re-rest it with `settle` before rendering.
    """
    if pose is None:
        pose = stable_poses(mesh_mm)[0][0]
    pose = np.asarray(pose, dtype=np.float64)
    if pose.shape != (4, 4) or not np.all(np.isfinite(pose)):
        raise DefectError(f"pose must be a finite 4×4 part→tray matrix, got shape {pose.shape}")
    before = _to_manifold(mesh_mm)
    if defect.kind == "scale":
        return _scale(mesh_mm, defect)
    part = RestingPart(mesh_mm, pose, viewpoints)
    try:
        return _LOCAL[defect.kind](before, defect, part, rng)
    except SiteError as exc:
        raise DefectError(f"{defect}: {exc}") from None


def _missing_slab(
    before: manifold3d.Manifold, defect: Defect, part: RestingPart, rng: np.random.Generator
) -> tuple[trimesh.Trimesh, DefectTruth]:
    direction = cut_direction(part, defect.amount, rng)
    top = float((np.asarray(part.hull.vertices) @ direction).max())
    after = _largest(before.trim_by_plane(-direction, -(top - defect.amount)))
    return _local_truth(defect, before, after, direction)


def _missing_chunk(
    before: manifold3d.Manifold, defect: Defect, part: RestingPart, rng: np.random.Generator
) -> tuple[trimesh.Trimesh, DefectTruth]:
    """A sphere of √2·size about an edge point: seen across the corner, the bite is `size` deep."""
    radius = CHUNK_RADIUS_PER_MM * defect.amount
    site = edge_site(part, radius, rng)
    after = _largest(before - manifold3d.Manifold.sphere(radius, _SPHERE_SEGMENTS).translate(site.point))
    return _local_truth(defect, before, after, site.normal)


def _extra_blob(
    before: manifold3d.Manifold, defect: Defect, part: RestingPart, rng: np.random.Generator
) -> tuple[trimesh.Trimesh, DefectTruth]:
    """A sphere of the given diameter sunk a quarter of it into the surface: fused, not balanced on it."""
    radius = defect.amount / 2.0
    site = surface_site(part, radius, rng)
    centre = site.point + 0.5 * radius * site.normal
    after = before + manifold3d.Manifold.sphere(radius, _SPHERE_SEGMENTS).translate(centre)
    return _local_truth(defect, before, after, site.normal)


def _to_manifold(mesh: trimesh.Trimesh) -> manifold3d.Manifold:
    solid = manifold3d.Manifold(
        manifold3d.Mesh64(
            vert_properties=np.ascontiguousarray(mesh.vertices, dtype=np.float64),
            tri_verts=np.ascontiguousarray(mesh.faces, dtype=np.uint64),
        )
    )
    if solid.status() != manifold3d.Error.NoError or solid.is_empty():
        raise DefectError(
            f"the part mesh is not a closed, consistently oriented solid ({solid.status().name}); "
            "load it with inspection.designs.load_mesh_mm, which checks and repairs meshes"
        )
    return solid


def _to_trimesh(solid: manifold3d.Manifold) -> trimesh.Trimesh:
    out = solid.to_mesh64()
    vertices, faces = np.asarray(out.vert_properties)[:, :3], np.asarray(out.tri_verts, dtype=np.int64)
    mesh = trimesh.Trimesh(vertices, faces, process=False)
    if not mesh.is_watertight:
        mesh.merge_vertices()
    return mesh


def _largest(solid: manifold3d.Manifold) -> manifold3d.Manifold:
    """What stays of the part: a piece cut loose by a chip or a slab falls off the part, as it would."""
    pieces = solid.decompose()
    if not pieces:
        raise DefectError("the defect would remove the whole part; use a smaller size")
    return max(pieces, key=lambda piece: piece.volume())


def _xyz(vector: np.ndarray) -> tuple[float, float, float]:
    x, y, z = (float(v) for v in vector)
    return (x, y, z)


def _truth(
    defect: Defect, location: np.ndarray, normal: np.ndarray | None, volume: float, region: np.ndarray
) -> DefectTruth:
    return DefectTruth(
        kind=defect.kind,
        size=defect.size,
        spec=str(defect),
        location=_xyz(location),
        normal=None if normal is None else _xyz(normal / np.linalg.norm(normal)),
        volume_change_mm3=volume,
        region=BoundingBox(min=_xyz(region.min(axis=0)), max=_xyz(region.max(axis=0))),
    )


def _local_truth(
    defect: Defect, before: manifold3d.Manifold, after: manifold3d.Manifold, normal: np.ndarray
) -> tuple[trimesh.Trimesh, DefectTruth]:
    changed = (before - after) + (after - before)
    if changed.is_empty() or changed.volume() <= 0:
        raise DefectError(f"{defect}: the defect changed nothing of the part; use a larger size")
    difference = _to_trimesh(changed)
    truth = _truth(defect, difference.center_mass, normal, after.volume() - before.volume(), difference.vertices)
    return _to_trimesh(after), truth


def _scale(mesh: trimesh.Trimesh, defect: Defect) -> tuple[trimesh.Trimesh, DefectTruth]:
    """Scaled about the part's bounds centre, in the part's (the design's) axes."""
    size = defect.size if isinstance(defect.size, tuple) else (defect.size,) * 3
    centre = mesh.bounds.mean(axis=0)
    transform = np.eye(4)
    transform[:3, :3] = np.diag([1.0 + v / 100.0 for v in size])
    transform[:3, 3] = centre - transform[:3, :3] @ centre
    scaled = mesh.copy()
    scaled.apply_transform(transform)
    region = np.vstack([mesh.bounds, scaled.bounds])
    return scaled, _truth(defect, centre, None, float(scaled.volume - mesh.volume), region)


def _warp(
    before: manifold3d.Manifold, defect: Defect, part: RestingPart, rng: np.random.Generator
) -> tuple[trimesh.Trimesh, DefectTruth]:
    """The long axis bent into a circular arc whose end tangents differ by `size` degrees, ends lifting off the tray.

    This is how long SLS parts curl. The part is refined first so long flat faces can bend.
    """
    mesh = part.mesh
    box = mesh.bounding_box_oriented
    axes = np.asarray(box.primitive.transform)[:3, :3].T
    extents = np.asarray(box.primitive.extents)
    long_axis = axes[int(np.argmax(extents))]
    centre = np.asarray(box.primitive.transform)[:3, 3]
    bend = part.up - (part.up @ long_axis) * long_axis
    if np.linalg.norm(bend) < 0.3:
        others = [i for i in range(3) if i != int(np.argmax(extents))]
        bend = axes[min(others, key=lambda i: extents[i])]
    bend = bend / np.linalg.norm(bend)
    length = float(extents.max())
    radius = length / math.radians(defect.amount)

    def bent(points: np.ndarray) -> np.ndarray:
        offset = points - centre
        s = offset @ long_axis
        h = offset @ bend
        rest = offset - np.outer(s, long_axis) - np.outer(h, bend)
        angle = s / radius
        arc = (radius - h)[:, None] * (np.outer(np.sin(angle), long_axis) - np.outer(np.cos(angle), bend))
        return centre + radius * bend + arc + rest

    after = before.refine_to_length(max(length / 48.0, 0.3)).warp_batch(bent)
    if after.status() != manifold3d.Error.NoError or after.is_empty():
        raise DefectError(f"{defect}: bending broke the part's surface ({after.status().name}); use a smaller angle")
    warped = _to_trimesh(after)
    region = np.vstack([mesh.bounds, warped.bounds])
    return warped, _truth(defect, centre, bend, after.volume() - before.volume(), region)


_Apply = Callable[[manifold3d.Manifold, Defect, RestingPart, np.random.Generator], tuple[trimesh.Trimesh, DefectTruth]]
_LOCAL: dict[str, _Apply] = {
    "missing_slab": _missing_slab,
    "missing_chunk": _missing_chunk,
    "extra_blob": _extra_blob,
    "warp": _warp,
}
