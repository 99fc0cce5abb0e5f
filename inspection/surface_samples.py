"""What the photos show of the design's surface at a found pose: per camera, each compared cell's point, normal
and grey level.

Commissioning learns the station's light from these samples of intact parts, and the shading comparison
predicts them; both must sample alike, so they share this one place.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from amflow_edge.inspection.align import View, transform
from amflow_edge.inspection.design_cache import DesignModel
from amflow_edge.inspection.geometry.raycast import triangle_scene


@dataclass(frozen=True)
class SurfaceSamples:
    """One camera's compared cells of one scan, flattened."""

    camera: str
    normals: np.ndarray
    """(N, 3) float32 tray-frame unit normals, facing the camera."""
    photo: np.ndarray
    """(N,) float32 grey level of the cell (the photo's mean over it)."""
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
                world=np.ascontiguousarray(world, dtype=np.float32),
            )
        )
    return found
