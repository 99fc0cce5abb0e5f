"""Injected printing defects: written as KIND:SIZE, closed solids, truthful, and where the cameras see them."""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import trimesh
from pydantic import ValidationError

from amflow_edge.drivers.simulator.defects import (
    CHUNK_RADIUS_PER_MM,
    Defect,
    DefectError,
    apply_defect,
    defect_rng,
    settle,
)
from amflow_edge.inspection.designs import load_mesh_mm
from amflow_edge.inspection.geometry.camera import CameraCalibration, load_rig
from amflow_edge.inspection.geometry.placement import place_on_tray

REPO = Path(__file__).resolve().parent.parent
FLAT = np.eye(4)


def box(extents: tuple[float, float, float] = (60.0, 40.0, 20.0)) -> trimesh.Trimesh:
    mesh = trimesh.creation.box(extents)
    mesh.apply_translation((0.0, 0.0, extents[2] / 2))
    return mesh


def rested(pose: np.ndarray, mesh: trimesh.Trimesh) -> np.ndarray:
    return trimesh.transform_points(mesh.vertices, pose)


@pytest.fixture(scope="module")
def rig() -> list[CameraCalibration]:
    return load_rig(REPO / "config" / "calibration" / "demo")


@pytest.mark.parametrize(
    ("text", "kind", "size", "written"),
    [
        ("missing_slab:2", "missing_slab", 2.0, "missing_slab:2"),
        ("missing_chunk:1.0", "missing_chunk", 1.0, "missing_chunk:1"),
        (" extra_blob:0.8 ", "extra_blob", 0.8, "extra_blob:0.8"),
        ("scale:-0.5", "scale", -0.5, "scale:-0.5"),
        ("scale:0,0,-1.5", "scale", (0.0, 0.0, -1.5), "scale:0,0,-1.5"),
        ("warp:2", "warp", 2.0, "warp:2"),
    ],
)
def test_defects_parse_and_format_as_kind_colon_size(text: str, kind: str, size: object, written: str) -> None:
    defect = Defect.parse(text)
    assert (defect.kind, defect.size) == (kind, size)
    assert str(defect) == written and Defect.parse(str(defect)) == defect


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("holes:1", r"unknown defect kind 'holes'.*missing_slab, missing_chunk, extra_blob, scale, warp"),
        ("missing_chunk", r"KIND:SIZE, e\.g\. missing_chunk:1\.0"),
        ("missing_chunk:", r"KIND:SIZE"),
        ("missing_chunk:big", r"size 'big' is not a number \(depth of the chip"),
        ("missing_chunk:50", r"missing_chunk size 50 mm is outside the sensible range 0\.2–20 mm"),
        ("missing_chunk:-1", r"outside the sensible range"),
        ("extra_blob:0", r"extra_blob size 0 mm is outside"),
        ("scale:25", r"scale size 25 % is outside the sensible range ±0\.05–20 %"),
        ("scale:0,0,0", r"scale 0,0,0 is no defect"),
        ("scale:1,2", r"only scale takes three \(x,y,z\), got 2"),
        ("warp:1,1,1", r"warp takes one size"),
        ("warp:90", r"warp size 90 ° is outside the sensible range 0\.1–30 °"),
        ("warp:nan", r"finite number"),
    ],
)
def test_bad_defects_say_what_is_wrong_and_what_would_do(text: str, message: str) -> None:
    with pytest.raises(DefectError, match=message):
        Defect.parse(text)


def test_the_model_checks_sizes_too() -> None:
    with pytest.raises(ValidationError, match="outside the sensible range"):
        Defect(kind="missing_slab", size=80.0)
    with pytest.raises(ValidationError):
        Defect(kind="warp", size=2.0, depth=1.0)  # type: ignore[call-arg]


def test_a_chunk_is_a_sphere_bitten_out_of_a_visible_edge() -> None:
    mesh = box()
    before = mesh.vertices.copy()
    size = 1.5
    result, truth = apply_defect(mesh, Defect.parse(f"missing_chunk:{size}"), defect_rng(1), pose=FLAT)
    assert np.array_equal(mesh.vertices, before), "the design's mesh must stay intact"
    assert result.is_watertight and result.is_winding_consistent
    radius = CHUNK_RADIUS_PER_MM * size
    sphere = 4 / 3 * math.pi * radius**3
    assert -sphere / 4 * 1.01 < truth.volume_change_mm3 < -sphere / 8 * 0.95, "a quarter (edge) to an eighth (corner)"
    assert truth.volume_change_mm3 == pytest.approx(result.volume - mesh.volume, abs=1e-6)
    low, high = np.array(truth.region.min), np.array(truth.region.max)
    assert np.all(high - low <= 2 * radius + 1e-6) and np.all(low <= truth.location) and np.all(truth.location <= high)
    assert low[2] > 0.0, "not where the part touches the tray"
    assert np.array(truth.normal)[2] > -0.2, "on an edge facing up or sideways"
    assert np.allclose(settle(result, FLAT), FLAT), "the bottom is untouched, so the part rests as before"


def test_a_slab_is_cut_off_a_face_or_edge_the_cameras_see() -> None:
    mesh = box()
    for seed in range(4):
        result, truth = apply_defect(mesh, Defect.parse("missing_slab:3"), defect_rng(seed), pose=FLAT)
        assert result.is_watertight
        normal = np.array(truth.normal)
        assert normal[2] >= -0.1
        reach = mesh.vertices @ normal
        assert (result.vertices @ normal).max() == pytest.approx(reach.max() - 3.0, abs=1e-6)
        assert truth.volume_change_mm3 == pytest.approx(result.volume - mesh.volume, abs=1e-6)
        assert truth.volume_change_mm3 < 0


def test_a_blob_is_fused_on_a_visible_surface() -> None:
    mesh = box()
    result, truth = apply_defect(mesh, Defect.parse("extra_blob:2"), defect_rng(3), pose=FLAT)
    assert result.is_watertight and result.body_count == 1
    assert 0 < truth.volume_change_mm3 < 4 / 3 * math.pi
    size = np.array(truth.region.max) - np.array(truth.region.min)
    assert np.all(size <= 2.0 + 1e-6) and size.max() > 1.5
    assert np.array(truth.normal)[2] >= -0.2 and truth.region.min[2] > 0.0
    grown = np.concatenate([result.bounds[1] - mesh.bounds[1], mesh.bounds[0] - result.bounds[0]])
    assert grown.max() > 1.0, "it sticks out of the box"


def test_scale_is_uniform_or_per_axis_about_the_part_centre() -> None:
    mesh = box()
    result, truth = apply_defect(mesh, Defect.parse("scale:2,0,-1"), defect_rng(0), pose=FLAT)
    assert np.allclose(result.extents, [61.2, 40.0, 19.8])
    assert np.allclose(result.bounds.mean(axis=0), mesh.bounds.mean(axis=0))
    assert truth.volume_change_mm3 == pytest.approx(mesh.volume * (1.02 * 0.99 - 1.0))
    assert truth.normal is None
    pose = settle(result, FLAT)
    assert rested(pose, result)[:, 2].min() == pytest.approx(0.0, abs=1e-9) and pose[2, 3] == pytest.approx(-0.1)


def test_warp_curls_the_long_axis_and_the_ends_lift_off_the_tray() -> None:
    mesh = box((100.0, 20.0, 10.0))
    degrees = 4.0
    result, truth = apply_defect(mesh, Defect.parse(f"warp:{degrees:g}"), defect_rng(0), pose=FLAT)
    assert result.is_watertight
    assert truth.normal is not None
    assert np.allclose(truth.normal, [0.0, 0.0, 1.0]), "the ends move up, away from the tray"
    placed = rested(settle(result, FLAT), result)
    radius = 100.0 / math.radians(degrees)
    expected_lift = (radius + 5.0) * (1.0 - math.cos(math.radians(degrees / 2)))
    ends = placed[np.abs(placed[:, 0]) > placed[:, 0].max() - 0.5]
    middle = placed[np.abs(placed[:, 0]) < 2.0]
    assert ends[:, 2].min() == pytest.approx(expected_lift, rel=0.05)
    assert middle[:, 2].min() == pytest.approx(0.0, abs=0.01)
    assert abs(truth.volume_change_mm3) < 1e-3 * mesh.volume


def test_defects_are_reproducible_from_the_rng() -> None:
    mesh = box()
    first = apply_defect(mesh, Defect.parse("missing_chunk:1"), defect_rng(9), pose=FLAT)[1]
    again = apply_defect(mesh, Defect.parse("missing_chunk:1"), defect_rng(9), pose=FLAT)[1]
    other = apply_defect(mesh, Defect.parse("missing_chunk:1"), defect_rng(10), pose=FLAT)[1]
    assert first == again and first.location != other.location


def test_impossible_defects_and_broken_meshes_are_refused_clearly() -> None:
    with pytest.raises(DefectError, match=r"40 mm slab would take half or more of the 60×40×20 mm part.*smaller depth"):
        apply_defect(box(), Defect.parse("missing_slab:40"), defect_rng(0), pose=FLAT)
    open_box = box()
    open_box.update_faces(np.arange(len(open_box.faces)) != 0)
    with pytest.raises(DefectError, match="not a closed, consistently oriented solid.*load_mesh_mm"):
        apply_defect(open_box, Defect.parse("missing_chunk:1"), defect_rng(0), pose=FLAT)
    with pytest.raises(DefectError, match="pose must be a finite 4×4"):
        apply_defect(box(), Defect.parse("missing_chunk:1"), defect_rng(0), pose=np.eye(3))


def silhouette_depth_mm(
    calib: CameraCalibration, before: trimesh.Trimesh, after: trimesh.Trimesh, pose: np.ndarray, at: np.ndarray
) -> float:
    """How far the part's silhouette retreats near `at` (tray frame): triangles projected into an 8× zoomed window."""
    zoom, half = 8, 60
    origin = np.floor(calib.project(at[None])[0]) - half

    def mask(mesh: trimesh.Trimesh) -> np.ndarray:
        corners = ((calib.project(trimesh.transform_points(mesh.vertices, pose)) - origin) * zoom)[mesh.faces]
        size = 2 * half * zoom
        near = (corners.max(axis=1) >= 0).all(axis=1) & (corners.min(axis=1) < size).all(axis=1)
        image = np.zeros((size, size), np.uint8)
        for triangle in np.round(corners[near] * 16).astype(np.int32):
            cv2.fillConvexPoly(image, triangle, 1, shift=4)
        return image

    old, new = mask(before), mask(after)
    removed = (old == 1) & (new == 0)
    if not removed.any():
        return 0.0
    depth_px = cv2.distanceTransform(old, cv2.DIST_L2, 5)[removed].max() / zoom
    return float(depth_px * calib.to_camera(at[None])[0, 2] / calib.K[0, 0])


@pytest.mark.parametrize(("design", "seed"), [("montageblok_mb80", 2), ("spur_gear_z20m25", 1), ("pipe_clip_pc16", 3)])
def test_a_1mm_chunk_takes_about_1mm_off_the_silhouette_in_some_camera(
    rig: list[CameraCalibration], design: str, seed: int
) -> None:
    mesh = load_mesh_mm(REPO / "config" / "designs" / f"{design}.stl", "mm")
    pose = place_on_tray(mesh, np.random.default_rng(seed))
    viewpoints = np.array([calib.centre for calib in rig])
    chunk = Defect.parse("missing_chunk:1.0")
    result, truth = apply_defect(mesh, chunk, defect_rng(seed), pose=pose, viewpoints=viewpoints)
    assert np.allclose(settle(result, pose), pose)
    at = trimesh.transform_points([truth.location], pose)[0]
    depths = [silhouette_depth_mm(calib, mesh, result, pose, at) for calib in rig]
    assert 0.7 < max(depths) < 1.5, f"silhouette change per camera (mm): {np.round(depths, 2)}"
