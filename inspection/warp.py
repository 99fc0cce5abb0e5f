"""How far the part is bent: the curl of a long sintered part, which a rigid fit cannot show.

A warped part lies on its middle with both ends lifted. Fitted rigidly, its outline stays
within a millimetre of the model everywhere, so no outline metric crosses a threshold. Here
the model's outline points are bent along the part's long axis towards the tray's normal,
by a curvature fitted jointly with a small pose correction (as fit_scale does for shrinkage),
and the bend is reported as the angle between the two end tangents, in degrees.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy.optimize import least_squares

from amflow_edge.inspection.align import (
    FIT_STOP,
    View,
    moved_pose,
    outline_inliers,
    pose_jacobian,
    residuals,
    transform,
    world_gradients,
)
from amflow_edge.inspection.design_cache import DesignModel

INLIER_PX = 8.0
"""Wider than fit_scale's: a 6° curl lifts the ends of an 80 mm part by about 1 mm, 6 px in the obliques."""
LIMIT_DEG = 20.0
LOSS_PX = 1.0
"""Scale of the fit's Cauchy loss. Segmentation errors along an outline are tongues of shadow and
notches of dark face several pixels deep, a curl's are a pixel or two spread over the whole part: a
redescending loss at the segmentation's own accuracy lets the first go. Over 88 intact benchmark
scenes (seeds 1000 and 3000) soft-L1 at 2 px read at most 4.0° (a ×0.7 pipe clip propped on its
end, seed 3038) and 0.82° RMS; this reads at most 2.4° and 0.71° RMS, and the 3° curls of the same
scenes a median 2.57° against 2.55°."""


def bend_frame(model: DesignModel, pose: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """(centre, long axis, bend direction, length) in the part frame: the long axis curls towards the tray's up."""
    axes = model.box_transform[:3, :3].T
    extents = model.box_extents
    order = np.argsort(-extents)
    long_axis, length = axes[order[0]], float(extents[order[0]])
    centre = model.box_transform[:3, 3]
    up = pose[:3, :3].T @ np.array([0.0, 0.0, 1.0])
    bend = up - (up @ long_axis) * long_axis
    if np.linalg.norm(bend) < 0.3:  # standing on its end: it can only curl sideways
        bend = axes[order[2]]
    return centre, long_axis, bend / np.linalg.norm(bend), length


def bent(
    points: np.ndarray, centre: np.ndarray, axis: np.ndarray, direction: np.ndarray, curvature: float
) -> np.ndarray:
    """Points on an arc of the given curvature (1/mm), to first order: ends move along `direction` by k·s²/2."""
    offset = points - centre
    s = offset @ axis
    h = offset @ direction
    return points + curvature * (np.outer(s * s / 2, direction) - np.outer(h * s, axis))


def fit_bend(model: DesignModel, views: Sequence[View], pose: np.ndarray, seed: int = 2) -> float:
    """Signed bend in degrees (positive: ends lifted off the tray) that best explains the outlines at `pose`."""
    inliers = outline_inliers(model, views, pose, seed, INLIER_PX)
    if inliers is None:
        return 0.0
    by_name, points = inliers
    centre, axis, direction, length = bend_frame(model, pose)
    if length <= 0:
        return 0.0
    radius = max(model.extent_mm / 2, 1.0)
    pivot = transform(pose, model.centroid[None])[0]
    limit = math.radians(LIMIT_DEG) / length

    stacked = np.vstack([p for p in points.values() if len(p)])
    offset = stacked - centre
    s, h = offset @ axis, offset @ direction
    d_curvature = np.outer(s * s / 2, direction) - np.outer(h * s, axis)

    def fun(x: np.ndarray) -> np.ndarray:
        curved = {n: bent(p, centre, axis, direction, x[6]) for n, p in points.items()}
        return np.concatenate(list(residuals(curved, by_name, moved_pose(pose, x[:6], pivot, radius)).values()))

    def jac(x: np.ndarray) -> np.ndarray:
        curved = {n: bent(p, centre, axis, direction, x[6]) for n, p in points.items()}
        moved = moved_pose(pose, x[:6], pivot, radius)
        world, d_world = world_gradients(curved, by_name, moved)
        along = np.einsum("ij,ij->i", d_world @ moved[:3, :3], d_curvature)
        return np.hstack([pose_jacobian(world, d_world, pivot + x[3:6], radius), along[:, None]])

    bounds = (np.r_[[-np.inf] * 6, -limit], np.r_[[np.inf] * 6, limit])
    result = least_squares(
        fun,
        np.zeros(7),
        jac=jac,
        loss="cauchy",
        f_scale=LOSS_PX,
        max_nfev=12,
        bounds=bounds,
        x_scale=np.r_[[1.0] * 6, limit / 4],
        **FIT_STOP,
    )
    return math.degrees(float(result.x[6]) * length)
