"""How far an estimated pose is from the true one, in a way that is blind to the part's symmetries.

A gear turned by one tooth, or a block turned by 180°, is the same physical situation; comparing
matrices would call it a 90° error. A single closest-point distance is symmetry-blind but
undercounts: a 1 mm slide along a long face reads as a few tenths. So the estimated surface is
registered onto the true one by ICP started at the estimate: ICP walks to the *nearest*
symmetry-equivalent pose, and the correction it needed is the error: the mean displacement of the
surface points (mm) and its rotation angle (deg). Whatever ICP cannot explain (a wrong resting
face, a near-symmetric look-alike) stays as residual surface distance and is added to the distance.
"""

from __future__ import annotations

import math

import numpy as np
import open3d as o3d
import trimesh

from amflow_edge.inspection.geometry.raycast import tensor, triangle_scene

SAMPLES = 3000
ICP_ITERATIONS = 40
ICP_TOLERANCE_MM = 1e-5


def surface_samples(mesh: trimesh.Trimesh, count: int = SAMPLES, seed: int = 1) -> np.ndarray:
    points, _ = trimesh.sample.sample_surface_even(mesh, count, seed=seed)
    return np.asarray(points, dtype=np.float64)


def _procrustes(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Rigid 4×4 transform taking points a onto b in the least-squares sense."""
    ca, cb = a.mean(axis=0), b.mean(axis=0)
    u, _, vt = np.linalg.svd((a - ca).T @ (b - cb))
    d = np.sign(np.linalg.det(vt.T @ u.T))
    rotation = vt.T @ np.diag([1.0, 1.0, d]) @ u.T
    out = np.eye(4)
    out[:3, :3] = rotation
    out[:3, 3] = cb - rotation @ ca
    return out


def pose_error(mesh: trimesh.Trimesh, true_pose: np.ndarray, estimated_pose: np.ndarray) -> tuple[float, float]:
    """(mean surface displacement in mm, rotation in degrees) from the estimate to the nearest equivalent true pose."""
    scene, estimated = _compared(mesh, true_pose, estimated_pose)
    correction = np.eye(4)
    residual = math.inf
    for _ in range(ICP_ITERATIONS):
        moved = estimated @ correction[:3, :3].T + correction[:3, 3]
        closest = scene.compute_closest_points(tensor(moved.astype(np.float32)))["points"].numpy().astype(np.float64)
        distance = float(np.linalg.norm(closest - moved, axis=1).mean())
        step = _procrustes(moved, closest)
        correction = step @ correction
        if abs(residual - distance) < ICP_TOLERANCE_MM:
            residual = distance
            break
        residual = distance
    moved = estimated @ correction[:3, :3].T + correction[:3, 3]
    displacement = float(np.linalg.norm(moved - estimated, axis=1).mean())
    angle = math.degrees(math.acos(float(np.clip((np.trace(correction[:3, :3]) - 1) / 2, -1.0, 1.0))))
    return displacement + residual, angle


def largest_deviation(mesh: trimesh.Trimesh, true_pose: np.ndarray, estimated_pose: np.ndarray) -> float:
    """Largest distance (mm) from the design's surface at the estimate to its surface at the truth.

    `pose_error` forgives a look-alike pose: ICP slides a knob's four arms onto each other and calls
    a quarter turn exact, though its nut pocket is then 1 mm off. The largest distance does not
    forgive it, and stays at a few tenths of a millimetre for a pose that is right.
    """
    scene, estimated = _compared(mesh, true_pose, estimated_pose)
    return float(scene.compute_distance(tensor(estimated.astype(np.float32))).numpy().max())


def _compared(
    mesh: trimesh.Trimesh, true_pose: np.ndarray, estimated_pose: np.ndarray
) -> tuple[o3d.t.geometry.RaycastingScene, np.ndarray]:
    """The design's surface at the true pose, as a scene to measure distances to, and its surface samples at the estimate."""
    vertices = np.asarray(mesh.vertices) @ true_pose[:3, :3].T + true_pose[:3, 3]
    return triangle_scene(vertices, mesh.faces), surface_samples(mesh) @ estimated_pose[:3, :3].T + estimated_pose[
        :3, 3
    ]
