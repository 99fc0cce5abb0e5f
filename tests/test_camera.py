"""Camera model and calibration files: the geometry every other step of the station trusts."""

from __future__ import annotations

import importlib.util
import math
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from amflow_edge.inspection.geometry.camera import (
    CalibrationError,
    CameraCalibration,
    load_calibration,
    load_rig,
    look_at,
    save_calibration,
)

REPO = Path(__file__).resolve().parent.parent
DEMO_RIG = REPO / "config" / "calibration" / "demo"
TRAY_CORNERS = np.array([[x, y, 0.0] for x in (-150.0, 150.0) for y in (-120.0, 120.0)])


def oblique(dist: tuple[float, ...] = (-0.08, 0.05, 0.0002, -0.0001, 0.0)) -> CameraCalibration:
    return look_at(
        "cam02", "40012302", eye=(540.0, 0.0, 540.0), target=(0.0, 0.0, 0.0), focal_length_mm=16.0, dist_coeffs=dist
    )


YamlValue = int | float | str | np.ndarray  # what cv2.FileStorage.write takes


def write_yaml(path: Path, entries: dict[str, YamlValue]) -> Path:
    fs = cv2.FileStorage(str(path), cv2.FILE_STORAGE_WRITE)
    for key, value in entries.items():
        fs.write(key, value)
    fs.release()
    return path


def valid_entries(calib: CameraCalibration) -> dict[str, YamlValue]:
    return {
        "camera_name": calib.name,
        "serial": calib.serial,
        "image_width": calib.image_width,
        "image_height": calib.image_height,
        "camera_matrix": calib.K,
        "distortion_coefficients": calib.D.reshape(-1, 1),
        "rotation_matrix": calib.R,
        "translation_vector": calib.t.reshape(3, 1),
    }


def test_yaml_round_trip_is_exact_and_opencv_formatted(tmp_path: Path) -> None:
    calib = oblique()
    path = tmp_path / "cam02.yaml"
    save_calibration(calib, path)
    text = path.read_text()
    assert text.startswith("%YAML:1.0\n")
    assert "camera_matrix: !!opencv-matrix" in text and "rotation_matrix: !!opencv-matrix" in text
    assert load_calibration(path) == calib
    fs = cv2.FileStorage(str(path), cv2.FILE_STORAGE_READ)
    assert np.array_equal(fs.getNode("camera_matrix").mat(), calib.K)
    fs.release()


def test_rotation_may_be_given_as_rvec(tmp_path: Path) -> None:
    calib = oblique()
    entries = valid_entries(calib)
    del entries["rotation_matrix"]
    entries["rvec"] = cv2.Rodrigues(calib.R)[0]
    loaded = load_calibration(write_yaml(tmp_path / "c.yaml", entries))
    assert np.allclose(loaded.R, calib.R, atol=1e-12)


@pytest.mark.parametrize(
    "key",
    [
        "camera_name",
        "serial",
        "image_width",
        "camera_matrix",
        "distortion_coefficients",
        "rotation_matrix",
        "translation_vector",
    ],
)
def test_missing_key_names_file_and_key(tmp_path: Path, key: str) -> None:
    entries = valid_entries(oblique())
    del entries[key]
    path = write_yaml(tmp_path / "cam02.yaml", entries)
    with pytest.raises(CalibrationError) as info:
        load_calibration(path)
    message = str(info.value)
    assert str(path) in message and f"'{key}'" in message and "missing" in message


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("rotation_matrix", oblique().R * 1.01, "orthonormal"),
        ("rotation_matrix", oblique().R * np.array([[1.0], [1.0], [-1.0]]), "determinant"),
        ("rotation_matrix", np.eye(3)[:2], "3×3"),
        ("camera_matrix", np.eye(3)[:2], "3×3"),
        ("camera_matrix", np.array([[-4000.0, 0, 1224], [0, 4000, 1024], [0, 0, 1]]), "focal"),
        ("camera_matrix", np.array([[4000.0, 0, 3000], [0, 4000, 1024], [0, 0, 1]]), "principal point"),
        ("distortion_coefficients", np.zeros((6, 1)), "4, 5 or 8"),
        ("translation_vector", np.zeros((2, 1)), "3×1"),
        ("image_width", "wide", "integer"),
    ],
)
def test_bad_values_name_the_key_and_the_problem(tmp_path: Path, key: str, value: YamlValue, expected: str) -> None:
    entries = valid_entries(oblique())
    entries[key] = value
    path = write_yaml(tmp_path / "cam02.yaml", entries)
    with pytest.raises(CalibrationError) as info:
        load_calibration(path)
    message = str(info.value)
    assert str(path) in message and f"'{key}'" in message and expected in message


def test_unreadable_files_say_what_is_expected(tmp_path: Path) -> None:
    garbage = tmp_path / "cam01.yaml"
    garbage.write_text("%YAML:1.0\ncamera_matrix: [unclosed\n  : : :\n")
    with pytest.raises(CalibrationError, match="cam01.yaml"):
        load_calibration(garbage)
    with pytest.raises(CalibrationError, match="no such calibration file"):
        load_calibration(tmp_path / "absent.yaml")


def test_project_matches_pinhole_model() -> None:
    calib = look_at(
        "cam01", "1", eye=(0.0, 0.0, 600.0), target=(0.0, 0.0, 0.0), focal_length_mm=12.0, up=(0.0, 1.0, 0.0)
    )
    f, cx, cy = calib.K[0, 0], calib.K[0, 2], calib.K[1, 2]
    pixels = calib.project(np.array([[0.0, 0.0, 0.0], [30.0, 0.0, 0.0], [0.0, 30.0, 100.0]]))
    assert np.allclose(pixels[0], [cx, cy])
    assert np.allclose(pixels[1], [cx + f * 30 / 600, cy])
    assert np.allclose(pixels[2], [cx, cy - f * 30 / 500])
    assert np.allclose(calib.centre, [0.0, 0.0, 600.0])


def test_distortion_moves_off_axis_points_inwards() -> None:
    plain, barrel = oblique(dist=(0.0, 0.0, 0.0, 0.0, 0.0)), oblique()
    corner = np.array([[150.0, 120.0, 0.0]])
    centre = barrel.K[:2, 2]
    assert np.linalg.norm(barrel.project(corner) - centre) < np.linalg.norm(plain.project(corner) - centre) - 3.0


@pytest.mark.parametrize(
    "dist",
    [
        (-0.08, 0.05, 0.0002, -0.0001),
        (-0.08, 0.05, 0.0002, -0.0001, 0.01),
        (0.1, -0.2, 0.001, 0.002, 0.05, 0.01, 0.02, -0.01),
    ],
)
def test_projection_is_opencvs_for_every_distortion_length(dist: tuple[float, ...]) -> None:
    """project() writes OpenCV's model out (cv2.projectPoints' Jacobians made it the fits' largest cost)."""
    calib = oblique(dist=dist)
    points = np.random.default_rng(3).uniform([-150.0, -120.0, -5.0], [150.0, 120.0, 80.0], (500, 3))
    expected, _ = cv2.projectPoints(points, calib.rvec, calib.t, calib.K, calib.D)
    assert np.abs(calib.project(points) - expected.reshape(-1, 2)).max() < 1e-8


def test_pixel_rays_pass_through_the_points_they_project_from() -> None:
    calib = oblique()
    rays = calib.pixel_rays()
    assert rays.shape == (2048, 2448, 3) and rays.dtype == np.float32
    assert np.allclose(np.linalg.norm(rays, axis=2)[::97, ::89], 1.0, atol=1e-6)
    assert calib.pixel_rays() is rays
    rng = np.random.default_rng(0)
    u, v = rng.integers(0, 2448, 200), rng.integers(0, 2048, 200)
    points = calib.centre + rays[v, u].astype(np.float64) * rng.uniform(300, 900, (200, 1))
    assert np.abs(calib.project(points) - np.column_stack([u, v])).max() < 0.02
    sub_pixel = np.column_stack([u + 0.3, v - 0.2])
    exact = calib.centre + calib.rays(sub_pixel) * 700.0
    assert np.abs(calib.project(exact) - sub_pixel).max() < 1e-6


def test_look_at_aims_at_the_target_with_up_upwards() -> None:
    calib = look_at("cam03", "1", eye=(0.0, 500.0, 500.0), target=(10.0, 0.0, 0.0), focal_length_mm=16.0, roll_deg=0.0)
    target, higher = calib.project(np.array([[10.0, 0.0, 0.0], [10.0, 0.0, 50.0]]))
    assert np.allclose(target, calib.K[:2, 2], atol=1e-6)
    assert higher[1] < target[1] - 50 and abs(higher[0] - target[0]) < 1e-6
    assert np.allclose(calib.R @ calib.R.T, np.eye(3)) and np.linalg.det(calib.R) > 0


def test_demo_rig_sees_the_whole_tray_from_top_and_four_sides() -> None:
    rig = load_rig(DEMO_RIG)
    assert [c.name for c in rig] == ["cam01", "cam02", "cam03", "cam04", "cam05"]
    assert [c.serial for c in rig] == [f"4001230{i}" for i in range(1, 6)]
    for calib in rig:
        assert (calib.image_width, calib.image_height) == (2448, 2048)
        assert calib.visible(np.vstack([[0.0, 0.0, 0.0], TRAY_CORNERS]), margin_px=50).all(), calib.name
        assert -0.1 <= calib.dist_coeffs[0] <= -0.05
        to_centre = -calib.centre / np.linalg.norm(calib.centre)
        assert math.degrees(math.acos(np.clip(to_centre @ calib.optical_axis, -1, 1))) < 1.0, calib.name
    top = rig[0]
    assert top.optical_axis[2] < -0.999 and 550 < top.centre[2] < 650
    azimuths = []
    for calib in rig[1:]:
        elevation = math.degrees(math.atan2(calib.centre[2], math.hypot(*calib.centre[:2])))
        assert 43.0 < elevation < 47.0, calib.name
        azimuths.append(math.degrees(math.atan2(calib.centre[1], calib.centre[0])) % 360)
    assert np.allclose(azimuths, [0.0, 90.0, 180.0, 270.0], atol=1.0)


def test_demo_rig_files_match_their_generator() -> None:
    spec = importlib.util.spec_from_file_location("make_demo_rig", REPO / "scripts" / "make_demo_rig.py")
    assert spec is not None and spec.loader is not None
    make = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make)
    for generated, stored in zip(make.demo_rig(), load_rig(DEMO_RIG), strict=True):
        assert np.allclose(generated.K, stored.K) and np.allclose(generated.R, stored.R, atol=1e-12)
        assert np.allclose(generated.t, stored.t, atol=1e-9) and generated.dist_coeffs == stored.dist_coeffs


def test_rig_rejects_a_file_describing_another_camera(tmp_path: Path) -> None:
    for name in ("cam01", "cam02", "cam03", "cam04", "cam05"):
        shutil.copy(DEMO_RIG / f"{name}.yaml", tmp_path / f"{name}.yaml")
    shutil.copy(DEMO_RIG / "cam03.yaml", tmp_path / "cam02.yaml")
    with pytest.raises(CalibrationError, match=r"cam02\.yaml.*'camera_name'.*cam03"):
        load_rig(tmp_path)
    (tmp_path / "cam05.yaml").unlink()
    shutil.copy(DEMO_RIG / "cam02.yaml", tmp_path / "cam02.yaml")
    with pytest.raises(CalibrationError, match=r"cam05\.yaml: missing"):
        load_rig(tmp_path)
