"""The renderer: photograph-like, geometrically exact, deterministic images from the calibrated rig."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TypedDict

import numpy as np
import pytest
import trimesh

from amflow_edge.drivers.simulator.render import Renderer
from amflow_edge.inspection.geometry.camera import load_rig, look_at

REPO = Path(__file__).resolve().parent.parent
BOX_POSE = trimesh.transformations.concatenate_matrices(
    trimesh.transformations.translation_matrix((5.0, -8.0, 10.0)),
    trimesh.transformations.rotation_matrix(np.radians(20.0), (0, 0, 1)),
)


class Scene(TypedDict):
    images: dict[str, np.ndarray]
    empty: dict[str, np.ndarray]
    seconds: float


@pytest.fixture(scope="module")
def renderer() -> Renderer:
    return Renderer(load_rig(REPO / "config" / "calibration" / "demo"))


@pytest.fixture(scope="module")
def box() -> trimesh.Trimesh:
    return trimesh.creation.box((50.0, 30.0, 20.0))


@pytest.fixture(scope="module")
def scene(renderer: Renderer, box: trimesh.Trimesh) -> Scene:
    renderer.render(box, BOX_POSE, seed=10)  # warm the per-mesh caches, as every scene after the first finds them
    started = time.perf_counter()
    images = renderer.render(box, BOX_POSE, seed=11)
    seconds = time.perf_counter() - started
    return {"images": images, "empty": renderer.render(None, None, seed=11), "seconds": seconds}


def test_five_mono8_images_of_the_calibrated_size(scene: Scene) -> None:
    images = scene["images"]
    assert isinstance(images, dict) and sorted(images) == ["cam01", "cam02", "cam03", "cam04", "cam05"]
    for image in images.values():
        assert image.shape == (2048, 2448) and image.dtype == np.uint8
        assert 15 < image.mean() < 120 and image.max() > 120


def test_a_scene_renders_within_the_time_budget(scene: Scene) -> None:
    print(f"render time, five cameras at 2448×2048: {scene['seconds']:.2f} s")
    assert scene["seconds"] < 6.0, "the target is 3 s on the 2-core station; 6 s means a real regression"


def test_same_seed_same_images_other_seed_other_noise(renderer: Renderer, box: trimesh.Trimesh, scene: Scene) -> None:
    again = renderer.render(box, BOX_POSE, seed=11)
    other = renderer.render(box, BOX_POSE, seed=12)
    for name, image in scene["images"].items():
        assert np.array_equal(image, again[name])
        difference = image.astype(np.int16) - other[name]
        assert np.count_nonzero(difference) > image.size // 4
        assert abs(float(difference.mean())) < 0.1 and 0.7 < float(difference.std()) < 4.0


def test_the_part_shows_where_it_projects_and_nowhere_far_from_it(
    renderer: Renderer, box: trimesh.Trimesh, scene: Scene
) -> None:
    top_centre = trimesh.transform_points([[0.0, 0.0, 10.0]], BOX_POSE)
    for calib in renderer.cameras:
        image = scene["images"][calib.name].astype(np.int16)
        empty = scene["empty"][calib.name].astype(np.int16)
        u, v = np.round(calib.project(top_centre)[0]).astype(int)
        assert np.abs(image[v - 5 : v + 6, u - 5 : u + 6] - empty[v - 5 : v + 6, u - 5 : u + 6]).mean() > 30, calib.name
        corners = calib.project(trimesh.transform_points(box.vertices, BOX_POSE))
        far = np.ones(image.shape, dtype=bool)
        low = np.floor(corners.min(axis=0)).astype(int) - 400
        high = np.ceil(corners.max(axis=0)).astype(int) + 400
        far[max(low[1], 0) : high[1], max(low[0], 0) : high[0]] = False
        assert np.array_equal(image[far], empty[far]), f"{calib.name}: pixels far from the part changed"


def test_empty_tray_images_differ_only_by_sensor_noise(renderer: Renderer, scene: Scene) -> None:
    other = renderer.render(None, None, seed=99)
    for name, empty in scene["empty"].items():
        difference = empty.astype(np.int16) - other[name]
        assert abs(float(difference.mean())) < 0.05
        assert 0.7 < float(difference.std()) < 4.0, "shot noise of a ~20–90 DN image"


def test_lens_distortion_puts_the_part_where_the_calibration_says(renderer: Renderer) -> None:
    """A thin disk near the tray corner, where the top camera's barrel distortion shifts it by about 5 px."""
    disk = trimesh.creation.cylinder(radius=4.0, height=0.3, sections=128)
    pose = trimesh.transformations.translation_matrix((120.0, 95.0, 0.15))
    image = renderer.render(disk, pose, seed=3)["cam01"].astype(np.int16)
    empty = renderer.render(None, None, seed=3)["cam01"].astype(np.int16)
    calib = renderer.cameras[0]
    expected = calib.project(np.array([[120.0, 95.0, 0.3]]))[0]
    u, v = np.round(expected).astype(int)
    window = (image - empty)[v - 60 : v + 61, u - 60 : u + 61]
    ys, xs = np.nonzero(window > 35)
    assert len(xs) > 1500
    centroid = np.array([xs.mean() + u - 60, ys.mean() + v - 60])
    assert np.linalg.norm(centroid - expected) < 1.0
    undistorted = calib.model_copy(update={"dist_coeffs": [0.0] * 5}).project(np.array([[120.0, 95.0, 0.3]]))[0]
    assert np.linalg.norm(undistorted - expected) > 3.0, "the test must be able to tell distortion from none"


def test_silhouettes_are_anti_aliased_to_sub_pixel_position() -> None:
    """Moving a part by half a pixel must move its rendered edge by half a pixel, not by 0 or 1."""
    calib = look_at(
        "cam01",
        "1",
        eye=(0.0, 0.0, 400.0),
        target=(0.0, 0.0, 0.0),
        focal_length_mm=16.0,
        up=(0.0, 1.0, 0.0),
        image_size=(400, 300),
    )
    small = Renderer([calib])
    cube = trimesh.creation.box((20.0, 20.0, 10.0))
    mm_per_px = 390.0 / calib.K[0, 0]
    edge_u = calib.project(np.array([[-10.0, 0.0, 10.0]]))[0, 0]
    shift = 0.5
    offset = (round(edge_u) + 0.25 - edge_u) * mm_per_px
    first = small.render(cube, trimesh.transformations.translation_matrix((offset, 0.0, 5.0)), seed=1)["cam01"]
    moved = trimesh.transformations.translation_matrix((offset - shift * mm_per_px, 0.0, 5.0))
    second = small.render(cube, moved, seed=1)["cam01"]
    left = round(edge_u)
    rows = slice(150 - 80, 150 + 80)
    tray = float(np.median(first[rows, left - 25 : left - 15]))
    part = float(np.median(first[rows, left + 15 : left + 25]))
    assert part - tray > 40
    band = slice(left - 12, left + 12)
    profile = first[rows, band].astype(np.float64)
    assert np.any((profile > tray + 0.3 * (part - tray)) & (profile < part - 0.3 * (part - tray)))
    moved_by = (second[rows, band].astype(np.float64) - first[rows, band]).sum(axis=1).mean() / (part - tray)
    assert abs(moved_by - shift) < 0.15, f"edge moved {moved_by:.2f} px for a {shift} px shift"


def test_curved_surfaces_shade_smoothly_and_edges_stay_sharp() -> None:
    from amflow_edge.inspection.geometry.raycast import corner_normals as _corner_normals

    sphere = trimesh.creation.icosphere(subdivisions=3, radius=10.0)
    corners = _corner_normals(sphere)
    radial = sphere.vertices[sphere.faces] / 10.0
    assert np.abs(corners - radial).max() < 0.01
    box = trimesh.creation.box((10.0, 20.0, 30.0))
    assert np.allclose(_corner_normals(box), np.repeat(box.face_normals[:, None, :], 3, axis=1), atol=1e-6)


def test_the_tray_is_the_same_everywhere_and_the_floor_around_it_darker() -> None:
    from amflow_edge.drivers.simulator import tray_texture
    from amflow_edge.drivers.simulator.tray_texture import FLOOR_ALBEDO, TRAY_ALBEDO, TrayTexture

    texture = TrayTexture.for_tray((300.0, 240.0))
    x = np.array([[0.0, 100.0, -140.0, 200.0, 0.0]], dtype=np.float32)
    y = np.array([[0.0, -80.0, 100.0, 0.0, 150.0]], dtype=np.float32)
    albedo = texture.albedo(x, y)[0]
    assert np.all(np.abs(albedo[:3] / TRAY_ALBEDO - 1.0) < 0.3) and np.all(
        np.abs(albedo[3:] / FLOOR_ALBEDO - 1.0) < 0.5
    )
    tray_texture._tray_texture.cache_clear()
    tray_texture._floor_texture.cache_clear()
    again = TrayTexture.for_tray((300.0, 240.0))
    assert again.tray is not texture.tray
    assert np.array_equal(again.albedo(x, y)[0], albedo), "every renderer and process shows the very same tray"


def test_sensor_noise_follows_seed_and_camera_and_scales_with_brightness() -> None:
    from amflow_edge.drivers.simulator.sensor import BLACK_LEVEL_DN, ELECTRONS_PER_DN, expose

    dn = np.full((256, 256), 100.0, dtype=np.float32)
    image = expose(dn, seed=4, camera_index=0)
    assert np.array_equal(image, expose(dn, seed=4, camera_index=0))
    assert not np.array_equal(image, expose(dn, seed=4, camera_index=1))
    assert not np.array_equal(image, expose(dn, seed=5, camera_index=0))
    assert abs(float(image.mean()) - (100.0 + BLACK_LEVEL_DN)) < 0.1
    assert abs(float(image.std()) - np.sqrt(100.0 / ELECTRONS_PER_DN + 1 / 12)) < 0.1, "shot noise plus quantisation"
