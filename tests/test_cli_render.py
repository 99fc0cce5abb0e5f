"""`amflow-edge render`: scan and empty-tray images of a given part, and the truth of the scene, for integrators."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import get_args

import cv2
import numpy as np
import pytest
import trimesh

from amflow_edge.cli.render import DEFAULT_CALIBRATION, RenderTruth, Units, add_parser
from amflow_edge.drivers.simulator.defect_spec import DefectTruth
from amflow_edge.inspection import designs
from amflow_edge.inspection.geometry.camera import load_rig, save_calibration

REPO = Path(__file__).resolve().parent.parent
SCALE = 0.25
CAMERAS = ("cam01", "cam02", "cam03", "cam04", "cam05")


def run(*argv: str | Path) -> int:
    """As `amflow-edge render …` will run once cli.py registers the subcommand."""
    parser = argparse.ArgumentParser(prog="amflow-edge")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["render", *map(str, argv)])
    return int(args.func(args))


def read_png(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert image is not None, f"{path}: not written or not a readable image"
    return image


@pytest.fixture(scope="module")
def small_rig(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo rig at a quarter of the resolution: the same views, a sixteenth of the pixels."""
    directory = tmp_path_factory.mktemp("rig")
    for calib in load_rig(REPO / "config" / "calibration" / "demo"):
        k = np.array(calib.camera_matrix)
        k[:2, :2] *= SCALE
        k[:2, 2] = (k[:2, 2] + 0.5) * SCALE - 0.5
        small = calib.model_copy(update={"camera_matrix": k.tolist(), "image_width": 612, "image_height": 512})
        save_calibration(small, directory / f"{calib.name}.yaml")
    return directory


@pytest.fixture(scope="module")
def block(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("parts") / "block.stl"
    trimesh.creation.box((40.0, 25.0, 15.0)).export(path)
    return path


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory, small_rig: Path, block: Path) -> Path:
    out = tmp_path_factory.mktemp("render") / "chipped"
    assert run(block, "--out", out, "--seed", "5", "--calibration", small_rig, "--defect", "missing_chunk:1.0") == 0
    return out


def test_writes_five_scans_five_empty_trays_and_the_truth(rendered: Path, block: Path, small_rig: Path) -> None:
    names = sorted(p.name for p in rendered.iterdir())
    assert names == sorted([f"scan_{c}.png" for c in CAMERAS] + [f"empty_{c}.png" for c in CAMERAS] + ["truth.json"])
    truth = RenderTruth.model_validate_json((rendered / "truth.json").read_text())
    assert truth.mesh == str(block.resolve()) and truth.units == "mm" and truth.seed == 5
    assert truth.calibration == str(small_rig.resolve())
    assert isinstance(truth.defect, DefectTruth) and truth.defect.spec == "missing_chunk:1"
    assert truth.defect.volume_change_mm3 < 0
    for camera in CAMERAS:
        scan = read_png(rendered / f"scan_{camera}.png")
        empty = read_png(rendered / f"empty_{camera}.png")
        assert scan.shape == empty.shape == (512, 612) and scan.dtype == np.uint8
        assert np.count_nonzero(scan != empty) > 1000, f"{camera}: the part must show"
        corner = (slice(0, 40), slice(0, 40))  # tray only: another frame has other sensor noise
        assert np.count_nonzero(scan[corner] == empty[corner]) < 0.5 * 40 * 40, f"{camera}: same noise as the scan"


def test_the_pose_puts_the_part_on_the_tray_where_the_cameras_see_it(rendered: Path, block: Path) -> None:
    truth = RenderTruth.model_validate_json((rendered / "truth.json").read_text())
    pose = np.array(truth.pose)
    assert pose.shape == (4, 4) and np.allclose(pose[3], [0, 0, 0, 1])
    placed = trimesh.transform_points(trimesh.load_mesh(block).vertices, pose)
    assert abs(placed[:, 2].min()) < 1e-6 and np.all(np.abs(placed[:, :2]) <= [140.0, 110.0])
    for calib in load_rig(truth.calibration):
        scan = read_png(rendered / f"scan_{calib.name}.png").astype(np.int16)
        empty = read_png(rendered / f"empty_{calib.name}.png").astype(np.int16)
        u, v = np.round(calib.project(trimesh.transform_points([[0.0, 0.0, 7.5]], pose))[0]).astype(int)
        assert np.abs(scan[v - 2 : v + 3, u - 2 : u + 3] - empty[v - 2 : v + 3, u - 2 : u + 3]).mean() > 20, calib.name


def test_the_same_seed_renders_the_same_scene(rendered: Path, block: Path, small_rig: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    assert run(block, "--out", again, "--seed", "5", "--calibration", small_rig, "--defect", "missing_chunk:1.0") == 0
    assert json.loads((again / "truth.json").read_text()) == json.loads((rendered / "truth.json").read_text())
    for name in ("scan_cam03.png", "empty_cam03.png"):
        assert np.array_equal(cv2.imread(str(again / name)), cv2.imread(str(rendered / name)))  # type: ignore[arg-type]  # assertion kept as written; None only for a missing file


def test_units_scale_the_part_and_no_defect_is_null(block: Path, small_rig: Path, tmp_path: Path) -> None:
    inches = tmp_path / "block_in.stl"
    trimesh.creation.box((1.0, 0.6, 0.4)).export(inches)
    out = tmp_path / "out"
    assert run(inches, "--out", out, "--units", "inch", "--seed", "2", "--calibration", small_rig) == 0
    truth = RenderTruth.model_validate_json((out / "truth.json").read_text())
    assert truth.units == "inch" and truth.defect is None
    placed = trimesh.transform_points(trimesh.load_mesh(inches).vertices * 25.4, np.array(truth.pose))
    assert np.isclose(np.ptp(placed[:, 2]), 0.4 * 25.4) and abs(placed[:, 2].min()) < 1e-6


@pytest.mark.parametrize(
    ("problem", "message"),
    [
        ("defect", "unknown defect kind 'dent'"),
        ("missing", "missing.stl: file not found"),
        ("broken", "broken.stl: cannot be parsed as STL|broken.stl: no triangles could be read"),
        ("too_big", r"huge.stl: part of 500×400×300 mm does not fit on the 300×240 mm tray"),
        ("calibration", "no such calibration directory"),
        ("out_is_a_file", "is a file; give a directory"),
    ],
)
def test_bad_input_exits_2_naming_the_problem(
    problem: str, message: str, block: Path, small_rig: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mesh, out, calibration, extra = block, tmp_path / "out", small_rig, []
    if problem == "defect":
        extra = ["--defect", "dent:1"]
    elif problem == "missing":
        mesh = tmp_path / "missing.stl"
    elif problem == "broken":
        mesh = tmp_path / "broken.stl"
        mesh.write_bytes(b"solid nothing\nfacet normal oops\n")
    elif problem == "too_big":
        mesh = tmp_path / "huge.stl"
        trimesh.creation.box((500.0, 400.0, 300.0)).export(mesh)
    elif problem == "calibration":
        calibration = tmp_path / "no-rig"
    else:
        out.write_text("not a directory")
    assert run(mesh, "--out", out, "--calibration", calibration, *extra) == 2
    error = capsys.readouterr().err
    assert error.startswith("amflow-edge render: error: ")
    assert re.search(message, error), error
    assert not (out / "truth.json").exists()


def test_the_interface_integrators_rely_on(capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser(prog="amflow-edge")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(
        [
            "render",
            "part.stl",
            "--out",
            "o",
            "--units",
            "inch",
            "--seed",
            "9",
            "--calibration",
            "c",
            "--defect",
            "warp:2",
        ]
    )
    assert (args.mesh, args.out, args.units, args.seed, args.calibration, args.defect) == (
        Path("part.stl"),
        Path("o"),
        "inch",
        9,
        Path("c"),
        "warp:2",
    )
    defaults = parser.parse_args(["render", "part.stl", "--out", "o"])
    assert (defaults.units, defaults.seed, defaults.defect) == ("mm", 0, None)
    assert defaults.calibration == DEFAULT_CALIBRATION  # the demo rig shipped in the package: config/ in a checkout
    assert DEFAULT_CALIBRATION.resolve() == (REPO / "config" / "calibration" / "demo").resolve()
    assert all((DEFAULT_CALIBRATION / f"{camera}.yaml").is_file() for camera in CAMERAS)
    assert get_args(Units) == get_args(designs.Units)
    for bad in (["--seed", "-1"], ["--units", "cm"], []):
        with pytest.raises(SystemExit) as info:
            parser.parse_args(["render", "part.stl", *bad] + (["--out", "o"] if bad else []))
        assert info.value.code == 2
    assert "--seed" in capsys.readouterr().err
