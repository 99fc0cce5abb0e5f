"""What identification needs of a design that depends only on its mesh, computed once and kept on disk.

A station identifies among a batch of up to a hundred designs in about a second, so nothing per design may
cost more than a few milliseconds per scan: the design's rest poses, a light mesh and, per rest pose, its
footprint seen from straight above (an image a few dozen pixels across) with its area and height are made at
session start (`prepare_design`) and stored under the SHA-1 of the mesh file and its units, which is what a
design_material id starts with, so the scan-time lookup needs neither the mesh nor a hash of its geometry.
The alignment's own precomputation (inspection.design_cache) is made at the same time, under the geometry's
hash, so the shortlisted designs' fits and the inspection find it ready.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeVar

import cv2
import numpy as np
import trimesh

from amflow_edge.common.durable import replacing
from amflow_edge.inspection.design_cache import DesignModel, design_model, stored_design_model
from amflow_edge.inspection.designs import load_mesh_mm

log = logging.getLogger(__name__)

Units = Literal["mm", "inch", "m"]
K = TypeVar("K")
V = TypeVar("V")

DESCRIPTOR_VERSION = 1
FOOTPRINT_PX = 56
"""Pixels across the design's largest footprint extent: the footprint comparison sees shapes, the fit sees
details, and at this size rotating and comparing a footprint costs about 20 µs."""
FOOTPRINT_FINE_MM_PER_PX = 0.25
"""Resolution the footprint is drawn at before it is reduced, so that thin walls keep their share of area."""
_SUBPIXEL = 4


@dataclass(frozen=True)
class Descriptors:
    """A design's identification data; arrays only, small enough to keep a hundred in memory."""

    file_sha1: str
    units: str
    geometry_sha1: str
    """inspection.design_cache's key for this design, to check a loaded model is the one described."""
    rest_poses: np.ndarray
    """(K, 4, 4) the alignment's rest poses (DesignModel.rest_poses), part on z = 0."""
    heights: np.ndarray
    """(K,) height (mm) of the part in each rest pose."""
    areas: np.ndarray
    """(K,) footprint area (mm²) seen from straight above in each rest pose."""
    sides: np.ndarray
    """(K, 2) longer and shorter side (mm) of the footprint's smallest enclosing rectangle."""
    centroids: np.ndarray
    """(K, 2) footprint area centroid (mm, x y) in the rest pose's frame, about which the footprints are drawn."""
    footprints: np.ndarray
    """(K, N, N) uint8 footprints (255 inside), centroid at the centre pixel, x to the right and y down the rows."""
    mm_per_px: float
    """Scale of the footprints."""
    coarse_vertices: np.ndarray
    coarse_faces: np.ndarray
    extent_mm: float

    @property
    def size(self) -> int:
        return int(self.footprints.shape[1])


def file_sha1(path: Path) -> str:
    digest = hashlib.sha1()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


_SHA1_BY_STAT: dict[tuple[str, int, int], str] = {}
_LOCK = threading.Lock()


def cached_file_sha1(path: Path) -> str:
    """The file's SHA-1, hashed again only when its size or modification time changed: a hundred meshes are
    30 MB, and hashing them for every scan would cost a third of a second."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    with _LOCK:
        known = _SHA1_BY_STAT.get(key)
    if known is None:
        known = file_sha1(path)
        with _LOCK:
            _SHA1_BY_STAT[key] = known
    return known


def descriptor_path(cache_dir: Path, sha1: str, units: str) -> Path:
    return cache_dir / f"{sha1}.{units}.ident.v{DESCRIPTOR_VERSION}.npz"


_MEMORY: OrderedDict[tuple[str, str], Descriptors] = OrderedDict()
_MEMORY_SIZE = 400


def design_descriptors(
    mesh_path: Path, units: Units, cache_dir: Path | None, model: DesignModel | None = None
) -> Descriptors:
    """The design's descriptors: from memory, else from `cache_dir`, else computed (and stored there). Given the
    design's current `model` (prepare_design has it), descriptors of another geometry (the mesh repair changed
    since they were stored) are made again: full_model reads the model they name, and identification must fit
    the one inspection will measure."""
    sha1 = cached_file_sha1(mesh_path)
    key = (sha1, units)
    found = _recall(_MEMORY, key)
    if found is not None and (model is None or found.geometry_sha1 == model.sha1):
        return found
    path = descriptor_path(cache_dir, sha1, units) if cache_dir is not None else None
    descriptors = _read(path, sha1, units) if path is not None and path.is_file() else None
    if descriptors is not None and model is not None and descriptors.geometry_sha1 != model.sha1:
        log.info("%s: identification cache made from another geometry; made again", path)
        descriptors = None
    if descriptors is None:
        mesh = design_mesh(mesh_path, units)  # loaded and repaired once, for both
        descriptors = compute_descriptors(mesh, model or design_model(mesh, cache_dir), sha1, units)
        if path is not None:
            _write(path, descriptors)
    return _remember(_MEMORY, key, descriptors, _MEMORY_SIZE)


_MODELS: OrderedDict[str, DesignModel] = OrderedDict()
_MODELS_SIZE = 24
_MESHES: OrderedDict[str, trimesh.Trimesh] = OrderedDict()
_MESHES_SIZE = 4


def full_model(mesh_path: Path, units: Units, cache_dir: Path | None) -> DesignModel:
    """The alignment's model of a shortlisted design; the few most recent kept in memory, the rest read from
    `cache_dir` by the geometry hash its descriptors name. A worker fits a dozen of a 50-design batch's designs
    per scan: reading and repairing each one's mesh again, when it had left memory, cost about 50 ms per scan."""
    key = f"{cached_file_sha1(mesh_path)}.{units}"
    found = _recall(_MODELS, key)
    if found is not None:
        return found
    model = _stored_model(mesh_path, units, cache_dir) or design_model(design_mesh(mesh_path, units), cache_dir)
    return _remember(_MODELS, key, model, _MODELS_SIZE)


def design_mesh(mesh_path: Path, units: Units) -> trimesh.Trimesh:
    """The design's mesh in mm, repaired as the station uses it; the last few kept, for the inspection that
    follows an identification."""
    key = f"{cached_file_sha1(mesh_path)}.{units}"
    found = _recall(_MESHES, key)
    return found if found is not None else _remember(_MESHES, key, load_mesh_mm(mesh_path, units), _MESHES_SIZE)


def _recall(memory: OrderedDict[K, V], key: K) -> V | None:
    """An entry of one of this module's in-memory caches, marked as the most recent."""
    with _LOCK:
        found = memory.get(key)
        if found is not None:
            memory.move_to_end(key)
        return found


def _remember(memory: OrderedDict[K, V], key: K, value: V, size: int) -> V:
    """`value` kept under `key`, the oldest entries dropped beyond `size`; returns `value`."""
    with _LOCK:
        memory[key] = value
        while len(memory) > size:
            memory.popitem(last=False)
    return value


def _stored_model(mesh_path: Path, units: Units, cache_dir: Path | None) -> DesignModel | None:
    """The model stored under the geometry hash of the design's stored descriptors, if both are on disk."""
    if cache_dir is None:
        return None
    sha1 = cached_file_sha1(mesh_path)
    descriptors = _recall(_MEMORY, (sha1, units))
    if descriptors is None:
        path = descriptor_path(cache_dir, sha1, units)
        descriptors = _read(path, sha1, units) if path.is_file() else None
    return None if descriptors is None else stored_design_model(descriptors.geometry_sha1, cache_dir)


def _read(path: Path, sha1: str, units: str) -> Descriptors | None:
    try:
        with np.load(path) as data:
            return Descriptors(
                file_sha1=sha1,
                units=units,
                geometry_sha1=str(data["geometry_sha1"]),
                rest_poses=data["rest_poses"],
                heights=data["heights"],
                areas=data["areas"],
                sides=data["sides"],
                centroids=data["centroids"],
                footprints=data["footprints"],
                mm_per_px=float(data["mm_per_px"]),
                coarse_vertices=data["coarse_vertices"],
                coarse_faces=data["coarse_faces"],
                extent_mm=float(data["extent_mm"]),
            )
    except Exception as exc:  # noqa: BLE001 - a damaged cache file is recomputed, never trusted
        log.warning("%s: unreadable identification cache (%s); recomputing", path, exc)
        return None


def _write(path: Path, descriptors: Descriptors) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {k: v for k, v in descriptors.__dict__.items() if k not in ("file_sha1", "units")}
    arrays["geometry_sha1"] = np.array(descriptors.geometry_sha1)
    with replacing(path, shared=True) as tmp:
        np.savez(tmp, **arrays)


def compute_descriptors(mesh: trimesh.Trimesh, model: DesignModel, sha1: str, units: str) -> Descriptors:
    """Footprints and their measures for every rest pose the alignment searches."""
    vertices = np.asarray(mesh.vertices, dtype=np.float64)
    faces = np.asarray(mesh.faces, dtype=np.int64)
    placed = [vertices @ pose[:3, :3].T + pose[:3, 3] for pose in model.rest_poses]
    reach = max(float(np.ptp(p[:, :2], axis=0).max()) for p in placed)
    mm_per_px = max(reach, 1.0) / FOOTPRINT_PX
    size = int(np.ceil(FOOTPRINT_PX * 1.5)) | 1
    heights, areas, sides, centroids, footprints = [], [], [], [], []
    for points in placed:
        fine, origin = _fine_footprint(points, faces)
        area_px = float(np.count_nonzero(fine))
        moments = cv2.moments(fine, binaryImage=True)
        centroid = origin + np.array([moments["m10"], moments["m01"]]) / moments["m00"] * FOOTPRINT_FINE_MM_PER_PX
        heights.append(float(np.ptp(points[:, 2])))
        areas.append(area_px * FOOTPRINT_FINE_MM_PER_PX**2)
        sides.append(rectangle_sides(fine) * FOOTPRINT_FINE_MM_PER_PX)
        centroids.append(centroid)
        footprints.append(_reduced(fine, origin, centroid, mm_per_px, size))
    return Descriptors(
        file_sha1=sha1,
        units=units,
        geometry_sha1=model.sha1,
        rest_poses=np.asarray(model.rest_poses, dtype=np.float64),
        heights=np.array(heights),
        areas=np.array(areas),
        sides=np.array(sides),
        centroids=np.array(centroids),
        footprints=np.stack(footprints),
        mm_per_px=mm_per_px,
        coarse_vertices=np.asarray(model.coarse_vertices, dtype=np.float64),
        coarse_faces=np.asarray(model.coarse_faces, dtype=np.int64),
        extent_mm=model.extent_mm,
    )


def _fine_footprint(points: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The orthographic footprint at FOOTPRINT_FINE_MM_PER_PX and the mm position of its pixel (0, 0) centre.

    Only the triangles facing up are drawn: for a closed mesh their union is the whole footprint, at half the cost.
    """
    triangles = points[faces]
    normal_z = np.cross(triangles[:, 1] - triangles[:, 0], triangles[:, 2] - triangles[:, 0])[:, 2]
    up = triangles[normal_z > 0][:, :, :2]
    origin = points[:, :2].min(axis=0) - 2 * FOOTPRINT_FINE_MM_PER_PX
    extent = np.ceil((points[:, :2].max(axis=0) - origin) / FOOTPRINT_FINE_MM_PER_PX).astype(int) + 3
    image = np.zeros((extent[1], extent[0]), dtype=np.uint8)
    fixed = np.round((up - origin) / FOOTPRINT_FINE_MM_PER_PX * (1 << _SUBPIXEL)).astype(np.int32)
    for triangle in fixed:
        cv2.fillConvexPoly(image, triangle, 1, cv2.LINE_8, _SUBPIXEL)
    return image, origin


def _reduced(fine: np.ndarray, origin: np.ndarray, centroid: np.ndarray, mm_per_px: float, size: int) -> np.ndarray:
    """The fine footprint at `mm_per_px` on a size×size grid whose centre pixel is the footprint's centroid."""
    factor = FOOTPRINT_FINE_MM_PER_PX / mm_per_px
    centre = (size - 1) / 2
    # fine pixel (u, v) lies at origin + (u, v)·fine mm; grid pixel = centre + (mm − centroid) / mm_per_px.
    shift = centre + (origin - centroid) / mm_per_px
    matrix = np.array([[factor, 0.0, shift[0]], [0.0, factor, shift[1]]])
    # warpAffine samples; the blur first makes each grid pixel the mean of the fine pixels it covers.
    smooth = cv2.GaussianBlur(fine.astype(np.float32) * 255, (0, 0), max(0.5 / factor, 0.5))
    return cv2.warpAffine(smooth, matrix, (size, size), flags=cv2.INTER_LINEAR).clip(0, 255).astype(np.uint8)


def rectangle_sides(mask: np.ndarray) -> np.ndarray:
    """Longer and shorter side (px) of the smallest rectangle around a mask's pixels."""
    points = cv2.findNonZero(mask.astype(np.uint8))
    if points is None:
        return np.zeros(2)
    (_, _), (w, h), _ = cv2.minAreaRect(points)
    return np.array([max(w, h) + 1.0, min(w, h) + 1.0])
