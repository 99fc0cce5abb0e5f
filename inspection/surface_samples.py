"""What the photos show of the design's surface at a found pose: per camera, the normal, the grey level and how
open to the room each compared cell is.

Commissioning learns the station's light from these samples of intact parts, and the shading comparison
predicts them; both must sample alike, so they share this one place.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import open3d as o3d

from amflow_edge.inspection.align import View, transform
from amflow_edge.inspection.design_cache import DesignModel
from amflow_edge.inspection.geometry.raycast import tensor, triangle_scene

OPENNESS_RAYS = 12
OPEN_EPS_MM = 0.05
_OPENNESS_SEED = 0x5EED_0C1


@dataclass(frozen=True)
class SurfaceSamples:
    """One camera's compared cells of one scan, flattened."""

    camera: str
    normals: np.ndarray
    """(N, 3) float32 tray-frame unit normals, facing the camera."""
    photo: np.ndarray
    """(N,) float32 grey level of the cell (the photo's mean over it)."""
    openness: np.ndarray
    """(N,) float32 share of the cosine-weighted hemisphere above the point that the part itself leaves open:
    1 on an outer face, low in a pocket or under an overhang, where light the part hides cannot reach."""
    world: np.ndarray
    """(N, 3) float32 tray-frame points."""


def surface_samples(
    model: DesignModel,
    views: Sequence[View],
    pose: np.ndarray,
    images: Mapping[str, np.ndarray],
    model_masks: Mapping[str, np.ndarray],
    step: int = 2,
) -> list[SurfaceSamples]:
    """The cells of every camera that sees the part where the design's surface can be compared with the photo:
    on the design and the segmentation, clear of outlines, depth steps and creases."""
    from amflow_edge.inspection.shading import frames, surface_of, trusted_cells

    scene = triangle_scene(transform(pose, model.vertices), model.faces)
    found = []
    for frame in frames(views, images, model_masks, step):
        surface = surface_of(model, frame, scene, pose)
        valid = trusted_cells(frame, surface, float(frame.view.calib.K[0, 0]))
        normals = surface.normals[valid]
        world = surface.world[valid]
        found.append(
            SurfaceSamples(
                camera=frame.view.calib.name,
                normals=np.ascontiguousarray(normals, dtype=np.float32),
                photo=np.ascontiguousarray(frame.photo[valid], dtype=np.float32),
                openness=openness(scene, world, normals),
                world=np.ascontiguousarray(world, dtype=np.float32),
            )
        )
    return found


def openness(scene: o3d.t.geometry.RaycastingScene, points: np.ndarray, normals: np.ndarray) -> np.ndarray:
    """Share of OPENNESS_RAYS cosine-weighted directions about each normal that leave the part unblocked.

    The tray is not in the scene: light from below the tray's plane never reaches a part anyway, and every
    point sees the same half-space of the room above it less what the part hides.
    """
    count = len(points)
    if count == 0:
        return np.zeros(0, dtype=np.float32)
    rng = np.random.default_rng(_OPENNESS_SEED)
    n = normals.astype(np.float32)
    helper = np.where(np.abs(n[:, :1]) < 0.9, np.array([[1.0, 0.0, 0.0]]), np.array([[0.0, 1.0, 0.0]]))
    a = np.cross(n, helper)
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    b = np.cross(n, a)
    batches = []
    origins = points.astype(np.float32) + n * OPEN_EPS_MM
    turn = rng.uniform(0.0, 2 * np.pi, count).astype(np.float32)
    for k in range(OPENNESS_RAYS):
        r = np.sqrt((k + 0.5) / OPENNESS_RAYS)
        phi = turn + 2.399963 * k
        z = np.sqrt(max(0.0, 1.0 - r * r))
        direction = (r * np.cos(phi))[:, None] * a + (r * np.sin(phi))[:, None] * b + z * n
        batches.append(np.concatenate([origins, direction.astype(np.float32) * 1000.0], axis=1))
    rays = tensor(np.ascontiguousarray(np.concatenate(batches), dtype=np.float32))
    blocked = scene.test_occlusions(rays, tnear=0.0, tfar=1.0).numpy().reshape(OPENNESS_RAYS, count)
    return (1.0 - blocked.mean(axis=0)).astype(np.float32)
