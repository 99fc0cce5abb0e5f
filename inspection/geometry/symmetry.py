"""Which poses of a design its outlines cannot tell apart: the turns that leave its surface in place.

Computed once per design (inspection.design_cache) and used to choose among look-alike poses by
their shading (inspection.shading.choose_symmetric).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import numpy as np
import trimesh
from scipy.spatial.transform import Rotation

from amflow_edge.inspection.geometry.raycast import tensor, triangle_scene

SYMMETRY_SAMPLES = 2000
SYMMETRY_TOLERANCE = 0.01
SPIN_TEST_DEG = (7.0, 13.0)
MAX_FOLD = 12
EXACT_TOLERANCE = 0.002


def symmetries(mesh: trimesh.Trimesh) -> tuple[np.ndarray, np.ndarray, float]:
    """The quarter turns and flips about the design's oriented bounding box that leave its surface in
    place, the box axis it turns about freely, if any, and the turn about that axis that leaves it
    exactly in place (360° for none).

    Within SYMMETRY_TOLERANCE of its size: a cube with lettering on its faces is a cube to its outlines.
    A shape that survives a quarter turn and turns of SPIN_TEST_DEG (which no gear or knob divides
    into) about an axis turns about it freely; the quarter turn keeps flat plates out, whose faces
    stay in their planes under any turn.
    """
    box = np.asarray(mesh.bounding_box_oriented.primitive.transform, dtype=np.float64)
    points = np.asarray(mesh.sample(SYMMETRY_SAMPLES, seed=0))
    scene = triangle_scene(mesh.vertices, mesh.faces)
    tolerance = SYMMETRY_TOLERANCE * float(mesh.extents.max())

    def distances(motion: np.ndarray) -> np.ndarray:
        moved = (points @ motion[:3, :3].T + motion[:3, 3]).astype(np.float32)
        return scene.compute_distance(tensor(moved)).numpy()

    def keeps(motion: np.ndarray) -> bool:
        return float(distances(motion).mean()) < tolerance

    found = [np.eye(4)] + [m for m in (box @ t @ np.linalg.inv(box) for t in _quarter_turns()[1:]) if keeps(m)]
    for axis in box[:3, :3].T:
        if all(keeps(spin(box[:3, 3], axis, math.radians(a))) for a in (90.0, *SPIN_TEST_DEG)):
            return np.stack(found), np.stack([box[:3, 3], axis]), _period(box[:3, 3], axis, distances, mesh)
    return np.stack(found), np.zeros((0, 3)), 360.0


def _period(
    point: np.ndarray, axis: np.ndarray, distances: Callable[[np.ndarray], np.ndarray], mesh: trimesh.Trimesh
) -> float:
    """The smallest turn about a free axis that keeps every surface point in place: 120° for three bolt holes.

    Searching a period instead of the full turn makes the look-alike search that many times cheaper;
    the largest distance, not the mean, tells an exact turn from one that moves the holes.
    """
    exact = EXACT_TOLERANCE * float(mesh.extents.max())
    for fold in range(MAX_FOLD, 1, -1):
        if float(distances(spin(point, axis, 2 * math.pi / fold)).max()) < exact:
            return 360.0 / fold
    return 360.0


def spin(point: np.ndarray, axis: np.ndarray, angle: float) -> np.ndarray:
    """4×4 turn by `angle` (radians) about the axis through `point` along unit `axis`."""
    motion = np.eye(4)
    motion[:3, :3] = Rotation.from_rotvec(axis * angle).as_matrix()
    motion[:3, 3] = point - motion[:3, :3] @ point
    return motion


def _quarter_turns() -> list[np.ndarray]:
    """The 24 rotations of a cube (signed permutation matrices of determinant 1), identity first."""
    turns = []
    for perm in itertools.permutations(range(3)):
        for signs in itertools.product((1.0, -1.0), repeat=3):
            matrix = np.zeros((4, 4))
            matrix[3, 3] = 1.0
            for row, (col, sign) in enumerate(zip(perm, signs, strict=True)):
                matrix[row, col] = sign
            if np.linalg.det(matrix[:3, :3]) > 0:
                turns.append(matrix)
    turns.sort(key=lambda m: -np.trace(m[:3, :3]))
    return turns
