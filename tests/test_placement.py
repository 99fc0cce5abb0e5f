"""Placing parts the way an operator does: resting on a stable face, fully on the tray."""

from __future__ import annotations

import numpy as np
import pytest
import trimesh

from amflow_edge.inspection.geometry import placement
from amflow_edge.inspection.geometry.placement import PlacementError, place_on_tray, stable_poses

HALF_X, HALF_Y = 150.0 - 10.0, 120.0 - 10.0


def bracket() -> trimesh.Trimesh:
    base = trimesh.creation.box((70.0, 40.0, 6.0), trimesh.transformations.translation_matrix((0, 0, 3)))
    wall = trimesh.creation.box((6.0, 40.0, 36.0), trimesh.transformations.translation_matrix((-32, 0, 18)))
    return trimesh.boolean.union([base, wall])


def placed(mesh: trimesh.Trimesh, pose: np.ndarray) -> np.ndarray:
    return trimesh.transform_points(mesh.vertices, pose)


@pytest.mark.parametrize(
    "mesh",
    [trimesh.creation.box((40.0, 20.0, 10.0)), trimesh.creation.cylinder(radius=12.0, height=30.0), bracket()],
    ids=["box", "cylinder", "bracket"],
)
def test_placed_parts_rest_on_the_tray_inside_the_margin(mesh: trimesh.Trimesh) -> None:
    rng = np.random.default_rng(42)
    for _ in range(40):
        pose = place_on_tray(mesh, rng)
        rotation = pose[:3, :3]
        assert np.allclose(rotation @ rotation.T, np.eye(3), atol=1e-9) and np.linalg.det(rotation) > 0
        assert np.allclose(pose[3], [0, 0, 0, 1])
        vertices = placed(mesh, pose)
        assert abs(vertices[:, 2].min()) < 1e-9
        assert np.all(np.abs(vertices[:, 0]) <= HALF_X + 1e-9) and np.all(np.abs(vertices[:, 1]) <= HALF_Y + 1e-9)


def test_a_box_lies_on_one_of_its_faces_mostly_the_largest() -> None:
    mesh = trimesh.creation.box((60.0, 40.0, 8.0))
    rng = np.random.default_rng(1)
    heights = []
    for _ in range(200):
        vertices = placed(mesh, place_on_tray(mesh, rng))
        on_tray = np.abs(vertices[:, 2]) < 1e-6
        assert on_tray.sum() == 4, "a box rests on a whole face, never on an edge or corner"
        heights.append(round(float(np.ptp(vertices[:, 2])), 6))
    assert set(heights) <= {8.0, 40.0, 60.0}
    assert heights.count(8.0) > 120


def test_stable_poses_are_normalised_and_ordered() -> None:
    poses, probs = stable_poses(bracket())
    assert poses.shape[1:] == (4, 4) and len(poses) == len(probs) >= 2
    assert np.isclose(probs.sum(), 1.0) and np.all(np.diff(probs) <= 1e-12)
    mesh = bracket()
    for pose in poses:
        vertices = placed(mesh, pose)
        assert abs(vertices[:, 2].min()) < 1e-9
        centre = (vertices[:, :2].min(axis=0) + vertices[:, :2].max(axis=0)) / 2
        assert np.allclose(centre, 0.0, atol=1e-9)


def test_placement_is_reproducible_per_generator_seed() -> None:
    mesh = bracket()
    first = place_on_tray(mesh, np.random.default_rng(7))
    assert np.array_equal(first, place_on_tray(mesh, np.random.default_rng(7)))
    assert not np.allclose(first, place_on_tray(mesh, np.random.default_rng(8)))


def test_fallback_to_convex_hull_when_trimesh_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise ValueError("qhull says no")

    monkeypatch.setattr(placement.trimesh.poses, "compute_stable_poses", broken)
    mesh = trimesh.creation.box((50.0, 30.0, 10.0))
    poses, probs = stable_poses(mesh)
    assert len(poses) == 6 and np.isclose(probs.sum(), 1.0)
    assert np.isclose(np.ptp(placed(mesh, poses[0])[:, 2]), 10.0), "the largest face is the likeliest rest"
    vertices = placed(mesh, place_on_tray(mesh, np.random.default_rng(0)))
    assert abs(vertices[:, 2].min()) < 1e-9 and np.all(np.abs(vertices[:, 0]) <= HALF_X + 1e-9)


def test_flat_meshes_without_volume_still_lie_flat() -> None:
    sheet = trimesh.Trimesh(vertices=[[0, 0, 0], [30, 0, 5], [0, 20, 0], [30, 20, 5]], faces=[[0, 1, 2], [1, 3, 2]])
    vertices = placed(sheet, place_on_tray(sheet, np.random.default_rng(0)))
    assert abs(vertices[:, 2].min()) < 1e-9 and np.ptp(vertices[:, 2]) < 1e-6


def test_long_parts_are_turned_to_fit_and_too_large_parts_say_so() -> None:
    rod = trimesh.creation.box((320.0, 12.0, 12.0))
    vertices = placed(rod, place_on_tray(rod, np.random.default_rng(3)))
    assert np.all(np.abs(vertices[:, 0]) <= HALF_X + 1e-9) and np.all(np.abs(vertices[:, 1]) <= HALF_Y + 1e-9)
    with pytest.raises(PlacementError, match=r"400×400×10 mm does not fit on the 300×240 mm tray"):
        place_on_tray(trimesh.creation.box((400.0, 400.0, 10.0)), np.random.default_rng(0))
