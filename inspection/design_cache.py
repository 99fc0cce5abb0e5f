"""Everything about a design that alignment needs and that does not depend on the scan, computed once per mesh.

Stable resting poses take up to a second for round parts (trimesh finds one per facet of a
cylinder's side) and the station inspects the same designs all day, so the result is kept on
disk under the SHA-1 of the mesh geometry: a changed design file gives a new key by itself.

A design that is not a closed solid (an open surface kept as the customer sent it, see
inspection.mesh_repair) is stored with every face twice, once per side: outlines are drawn from the
faces turned to the camera, and an open surface shows the camera its inside through a hole.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import trimesh

from amflow_edge.common.durable import replacing
from amflow_edge.inspection.geometry.placement import stable_poses
from amflow_edge.inspection.geometry.raycast import corner_normals
from amflow_edge.inspection.geometry.symmetry import symmetries
from amflow_edge.inspection.mesh_repair import is_closed_solid

log = logging.getLogger(__name__)

CACHE_VERSION = 9
COARSE_FACES = 600
MAX_REST_POSES = 8
_FOOTPRINT_MM_PER_PX = 0.5


@dataclass(frozen=True)
class DesignModel:
    """A design in the form the fit uses; arrays only, so it pickles cheaply to a worker process."""

    sha1: str
    vertices: np.ndarray
    faces: np.ndarray
    edges: np.ndarray
    edge_faces: np.ndarray
    coarse_vertices: np.ndarray
    coarse_faces: np.ndarray
    rest_poses: np.ndarray
    rest_probabilities: np.ndarray
    all_rest_poses: np.ndarray
    corner_normals: np.ndarray
    """(F, 3, 3) shading normals per face corner (geometry.raycast.corner_normals), for the shading comparison."""
    symmetries: np.ndarray
    """(K, 4, 4) design-frame motions that map the design's shape onto itself, identity first: outlines cannot
    tell these poses apart, engraved lettering or a flat on a shaft can (inspection.shading.choose_symmetric)."""
    spin_axis: np.ndarray
    """(2, 3) a point on and the direction of an axis the design's shape turns about freely (a bushing,
    whose three bolt holes outlines barely see), or (0, 3) for none."""
    spin_period_deg: float
    """The smallest turn about spin_axis that maps the design exactly onto itself (120° for three bolt
    holes); 360° when there is none or no axis. Stored as a 0-d array."""
    box_transform: np.ndarray
    """(4, 4) design-frame pose of the design's minimum oriented bounding box, whose longest side is the axis a
    warp curls along (inspection.warp); 1-11 ms per scan to find again."""
    box_extents: np.ndarray
    """(3,) side lengths (mm) of that box, along its own axes."""

    @property
    def centroid(self) -> np.ndarray:
        return self.vertices.mean(axis=0)

    @property
    def extent_mm(self) -> float:
        return float(np.ptp(self.vertices, axis=0).max())

    def mesh(self) -> trimesh.Trimesh:
        return trimesh.Trimesh(self.vertices, self.faces, process=False)


def mesh_sha1(mesh: trimesh.Trimesh) -> str:
    digest = hashlib.sha1()
    digest.update(np.ascontiguousarray(mesh.vertices, dtype=np.float64).tobytes())
    digest.update(np.ascontiguousarray(mesh.faces, dtype=np.int64).tobytes())
    return digest.hexdigest()


def check_mesh(mesh: object) -> trimesh.Trimesh:
    """The mesh, if it has a surface to compare scans with; open or non-manifold meshes are fine (drawn two-sided)."""
    if not isinstance(mesh, trimesh.Trimesh):
        raise ValueError(
            f"the design must be a trimesh.Trimesh in millimetres, got {type(mesh).__name__}; "
            "load it with inspection.designs.load_mesh_mm(path, units)"
        )
    if len(mesh.faces) == 0 or not np.all(np.isfinite(mesh.vertices)):
        raise ValueError("the design mesh is empty or has non-finite vertices; export the design again")
    if not float(mesh.area) > 0:
        raise ValueError("every face of the design mesh has zero area, so it has no surface; export the design again")
    return mesh


def design_model(mesh: trimesh.Trimesh, cache_dir: Path | str | None = None) -> DesignModel:
    """The design's precomputation, from `cache_dir/<sha1>.npz` when present, else computed (and stored)."""
    mesh = check_mesh(mesh)
    sha1 = mesh_sha1(mesh)
    if cache_dir is None:
        return _compute(mesh, sha1)
    found = stored_design_model(sha1, cache_dir)
    if found is not None:
        return found
    model = _compute(mesh, sha1)
    path = _model_path(cache_dir, sha1)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {k: v for k, v in model.__dict__.items() if k != "sha1"}
    with replacing(path, shared=True) as tmp:
        np.savez(tmp, **arrays)
    return model


def stored_design_model(sha1: str, cache_dir: Path | str) -> DesignModel | None:
    """The precomputation stored for the geometry with this hash, or None: no mesh to read, repair or hash,
    which costs a Voron part 50 ms, where this costs a few."""
    path = _model_path(cache_dir, sha1)
    if not path.is_file():
        return None
    try:
        with np.load(path) as data:
            return DesignModel(sha1=sha1, **{k: data[k] for k in data.files})
    except Exception as exc:  # noqa: BLE001 - a damaged cache file is recomputed, never trusted
        log.warning("%s: unreadable design cache (%s); recomputing", path, exc)
        return None


def _model_path(cache_dir: Path | str, sha1: str) -> Path:
    return Path(cache_dir) / f"{sha1}.v{CACHE_VERSION}.npz"


def _compute(mesh: trimesh.Trimesh, sha1: str) -> DesignModel:
    vertices = np.asarray(mesh.vertices, dtype=np.float64)
    coarse_v, coarse_f = _decimate(mesh, COARSE_FACES)
    if is_closed_solid(mesh):
        faces = np.asarray(mesh.faces, dtype=np.int64)
        edges = np.asarray(mesh.face_adjacency_edges, dtype=np.int64)
        edge_faces = np.asarray(mesh.face_adjacency, dtype=np.int64)
        normals = corner_normals(mesh)
    else:
        faces = two_sided(mesh.faces)
        edges, edge_faces = _two_sided_adjacency(np.asarray(mesh.faces, dtype=np.int64))
        coarse_f = two_sided(coarse_f)
        # A face and its other side point opposite ways, so the crease rule never smooths one into the other.
        normals = corner_normals(trimesh.Trimesh(vertices, faces, process=False))
    poses, probs = _distinct_rest_poses(mesh)
    every, _ = stable_poses(mesh)
    box = mesh.bounding_box_oriented.primitive
    return DesignModel(
        sha1,
        vertices,
        faces,
        edges,
        edge_faces,
        coarse_v,
        coarse_f,
        poses,
        probs,
        every,
        normals,
        *symmetries(mesh),
        np.asarray(box.transform, dtype=np.float64),
        np.asarray(box.extents, dtype=np.float64),
    )


def two_sided(faces: np.ndarray) -> np.ndarray:
    """(2F, 3) the faces, then each wound the other way: face f's other side is face f + F.

    The silhouette is the union of the faces turned to the camera; with both sides of every face
    present that is every face, so an open surface's outline is its projection, holes and all.
    """
    faces = np.asarray(faces, dtype=np.int64)
    return np.vstack([faces, faces[:, ::-1]])


def _two_sided_adjacency(faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(E, 2) edges and (E, 2) pairs of faces of `two_sided(faces)` whose change of facing makes the edge part of
    an outline (geometry.silhouette.outer_outline_points).

    An edge of two faces wound alike joins them; of two wound against each other, one face and the other's
    other side. An edge of one face (a hole's rim) or of more than two (bodies touching) can be on the
    outline at any pose, so it is paired with its face's other side, whose facing is always the opposite:
    which of these lie on the outer outline the caller decides by a ray past each (outer_outline_points).
    """
    count = len(faces)
    directed = faces[:, [0, 1, 1, 2, 2, 0]].reshape(-1, 2)
    owner = np.repeat(np.arange(count), 3)
    _, group, sizes = np.unique(np.sort(directed, axis=1), axis=0, return_inverse=True, return_counts=True)
    group = group.ravel()
    order = np.argsort(group, kind="stable")
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    first = order[starts]
    pairs = sizes == 2
    second = order[starts[pairs] + 1]
    manifold = first[pairs]
    wound_apart = directed[manifold, 0] == directed[second, 1]
    other = np.where(wound_apart, owner[second], owner[second] + count)
    rim = first[~pairs]
    edges = np.vstack([directed[manifold], directed[rim]])
    edge_faces = np.vstack(
        [np.column_stack([owner[manifold], other]), np.column_stack([owner[rim], owner[rim] + count])]
    )
    return edges.astype(np.int64), edge_faces.astype(np.int64)


def _decimate(mesh: trimesh.Trimesh, target: int) -> tuple[np.ndarray, np.ndarray]:
    """A light mesh for the coarse search, where thousands of silhouettes are drawn at a quarter resolution."""
    if len(mesh.faces) <= target:
        return np.asarray(mesh.vertices, dtype=np.float64), np.asarray(mesh.faces, dtype=np.int64)
    import open3d as o3d

    o3d_mesh = o3d.geometry.TriangleMesh(
        o3d.utility.Vector3dVector(np.asarray(mesh.vertices)), o3d.utility.Vector3iVector(np.asarray(mesh.faces))
    )
    simple = o3d_mesh.simplify_quadric_decimation(target_number_of_triangles=target)
    return np.asarray(simple.vertices, dtype=np.float64), np.asarray(simple.triangles, dtype=np.int64)


def _distinct_rest_poses(mesh: trimesh.Trimesh) -> tuple[np.ndarray, np.ndarray]:
    """Rest poses that look different from above, most likely first, at most MAX_REST_POSES.

    A round part on its side has one stable facet per tessellation segment, all looking alike;
    searching each would waste the time budget, so look-alikes (same height, same footprint up to
    a turn about z; mirror images are kept apart) are merged and their probabilities summed.
    """
    poses, probs = stable_poses(mesh)
    kept: list[tuple[np.ndarray, float, np.ndarray]] = []
    for pose, prob in zip(poses, probs, strict=True):
        signature = _signature(mesh, pose)
        for index, (_, total, other) in enumerate(kept):
            if np.allclose(signature, other, rtol=0.02, atol=0.3):
                kept[index] = (kept[index][0], total + float(prob), other)
                break
        else:
            kept.append((pose, float(prob), signature))
    kept.sort(key=lambda item: -item[1])
    kept = kept[:MAX_REST_POSES]
    total = sum(p for _, p, _ in kept)
    return np.stack([k[0] for k in kept]), np.array([k[1] / total for k in kept])


def _signature(mesh: trimesh.Trimesh, pose: np.ndarray) -> np.ndarray:
    vertices = trimesh.transform_points(mesh.vertices, pose)
    xy = (vertices[:, :2] - vertices[:, :2].min(axis=0)) / _FOOTPRINT_MM_PER_PX + 2
    size = np.ceil(xy.max(axis=0)).astype(int) + 3
    image = np.zeros((size[1], size[0]), dtype=np.uint8)
    for triangle in np.round(xy[mesh.faces] * 16).astype(np.int32):
        cv2.fillConvexPoly(image, triangle, 1, cv2.LINE_8, 4)
    hu = cv2.HuMoments(cv2.moments(image, binaryImage=True)).ravel()
    scaled = np.sign(hu) * np.log10(np.abs(hu) + 1e-30)
    height = max(float(np.ptp(vertices[:, 2])), 1e-6)
    centres = vertices[mesh.faces].mean(axis=1)[:, 2] - vertices[:, 2].min()
    layers = np.histogram(centres / height, bins=8, range=(0.0, 1.0), weights=mesh.area_faces)[0] / mesh.area * 10.0
    return np.concatenate(
        [[height, image.sum() * _FOOTPRINT_MM_PER_PX**2 / 100.0], scaled[:4], [np.sign(hu[6])], layers]
    )
