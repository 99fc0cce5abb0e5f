"""The calibration procedure end to end on the mock, at full resolution: the board the mock renders is captured
through the station's own driver, solved, and the solved rig must be the rig that rendered the pictures.

Capturing and solving cost about half a minute, so it is done once for the module; the named-error tests
break copies of that capture (links to its pictures, one replaced).
"""

from __future__ import annotations

import math
import os
import re
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from amflow_edge.cli.main import main
from amflow_edge.inspection.calibration.board import BoardDefinition, BoardError, load_board
from amflow_edge.inspection.calibration.capture import BoardCapture
from amflow_edge.inspection.calibration.detection import CornerDetector
from amflow_edge.inspection.calibration.manifest import CapturedCamera, CaptureManifest
from amflow_edge.inspection.calibration.report import CalibrationReport
from amflow_edge.inspection.geometry.camera import load_rig
from amflow_edge.inspection.inspect import inspect_scan
from amflow_edge.inspection.profiles import load_profile
from tests.inspection_scenes import design, empty, placed, rig
from tests.pylon_rig import emulated, full_resolution_station

__all__ = ["emulated"]  # the fixture, used by name

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "config" / "calibration" / "demo"
PLACEMENTS = 4
"""The fewest that meet the figures with a margin (three leave the top camera's rotation at 0.016°)."""


def mock_station(directory: Path) -> Path:
    """The demo station, its files found from anywhere and its data kept in `directory`."""
    text = (REPO / "config" / "demo.toml").read_text()
    text = text.replace('"designs/designs.toml"', f'"{REPO / "config" / "designs" / "designs.toml"}"')
    text = text.replace('calibration = "calibration/', f'calibration = "{REPO}/config/calibration/')
    text = text.replace('"../run/data"', f'"{directory / "data"}"').replace(
        '"../run/state"', f'"{directory / "state"}"'
    )
    config = directory / "station.toml"
    config.write_text(text)
    return config


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(capture directory, calibration directory) of the mock station."""
    work = tmp_path_factory.mktemp("calibration")
    config = mock_station(work)
    capture, caldir = work / "capture", work / "caldir"
    argv = ["calibrate", "capture", "--config", str(config), "--out", str(capture), "--placements", str(PLACEMENTS)]
    assert main([*argv, "--yes"]) == 0
    assert main(["calibrate", "solve", str(capture), "--out", str(caldir)]) == 0
    return capture, caldir


def rotation_deg(a: np.ndarray, b: np.ndarray) -> float:
    """From the relative rotation's skew part: exact for small angles even when a and b are rounded, as
    the trace is not (a report's six decimals make the trace formula read 0.05° for nothing)."""
    r = a @ b.T
    return math.degrees(
        math.asin(min(1.0, float(np.linalg.norm([r[2, 1] - r[1, 2], r[0, 2] - r[2, 0], r[1, 0] - r[0, 1]])) / 2))
    )


def test_the_solved_rig_is_the_rig_that_rendered_the_pictures(calibrated: tuple[Path, Path]) -> None:
    _, caldir = calibrated
    for truth, solved in zip(load_rig(DEMO), load_rig(caldir), strict=True):
        assert (solved.name, solved.serial, solved.image_width, solved.image_height) == (
            truth.name,
            truth.serial,
            truth.image_width,
            truth.image_height,
        )
        focal_error = np.abs(np.diag(solved.K)[:2] / np.diag(truth.K)[:2] - 1)
        assert focal_error.max() <= 0.001, (solved.name, focal_error)
        assert np.linalg.norm(solved.centre - truth.centre) <= 0.1, (solved.name, solved.centre, truth.centre)
        assert rotation_deg(solved.R, truth.R) <= 0.02, solved.name
        assert len(solved.dist_coeffs) == 5


def test_the_report_gives_the_residuals_and_coverage_and_the_references_are_kept(calibrated: tuple[Path, Path]) -> None:
    capture, caldir = calibrated
    report = CalibrationReport.model_validate_json((caldir / "calibration.json").read_text())
    assert report.rms_px <= 0.3 and report.board == BoardDefinition()
    assert [c.camera for c in report.cameras] == ["cam01", "cam02", "cam03", "cam04", "cam05"]
    for camera in report.cameras:
        assert camera.rms_px <= 0.3 and camera.corners > 60 * PLACEMENTS and 0.2 < camera.coverage <= 1
        assert [v.placement for v in camera.views] == [f"placement_{i:02d}" for i in range(PLACEMENTS)]
        assert all(v.rms_px <= 0.3 for v in camera.views)
        assert (caldir / "references" / f"{camera.camera}.png").read_bytes() == (
            capture / "empty" / f"{camera.camera}.png"
        ).read_bytes()
        for picture in ("coverage", "residuals"):
            image = cv2.imread(str(caldir / "report" / f"{camera.camera}_{picture}.png"))
            assert image is not None and image.shape == (1024, 1224, 3)
    assert not [p for p in caldir.parent.iterdir() if p.name.startswith(".caldir")]


def test_an_inspection_with_the_solved_rig_finds_the_part_where_the_true_rig_does(
    calibrated: tuple[Path, Path], tmp_path: Path
) -> None:
    _, caldir = calibrated
    name = "montageblok_mb80"
    _, images = placed(name, 3)
    profile = load_profile("default")
    true = inspect_scan(images, empty(), rig(), design(name), name, profile, cache_dir=tmp_path)
    solved = inspect_scan(images, empty(), load_rig(caldir), design(name), name, profile, cache_dir=tmp_path)
    assert true.pose is not None and solved.pose is not None
    a, b = np.array(true.pose), np.array(solved.pose)
    assert np.linalg.norm(a[:3, 3] - b[:3, 3]) <= 0.05
    assert rotation_deg(a[:3, :3], b[:3, :3]) <= 0.05


def broken_copy(capture: Path, directory: Path) -> Path:
    """A copy of the capture whose pictures link to the originals, so one can be replaced cheaply."""
    copy = directory / "capture"
    for path in capture.rglob("*"):
        target = copy / path.relative_to(capture)
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        elif path.suffix == ".png":
            target.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(path, target)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
    return copy


def grey(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    assert image is not None, path
    return image


def replace_picture(copy: Path, relative: str, image: np.ndarray) -> None:
    (copy / relative).unlink()
    cv2.imwrite(str(copy / relative), image)


def solve_fails(copy: Path, out: Path, capsys: pytest.CaptureFixture[str]) -> str:
    out.mkdir()
    (out / "cam01.yaml").write_text("the calibration in use\n")
    capsys.readouterr()
    assert main(["calibrate", "solve", str(copy), "--out", str(out)]) == 2
    assert [p.name for p in out.iterdir()] == ["cam01.yaml"], "a failed solve must leave CALDIR as it was"
    assert (out / "cam01.yaml").read_text() == "the calibration in use\n"
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}")]
    return capsys.readouterr().err


def test_a_missing_picture_is_named(
    calibrated: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    copy = broken_copy(calibrated[0], tmp_path)
    (copy / "placement_02" / "cam03.png").unlink()
    error = solve_fails(copy, tmp_path / "caldir", capsys)
    assert "placement_02/cam03.png: missing" in error and "capture the calibration again" in error


def test_a_damaged_picture_is_named(
    calibrated: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    copy = broken_copy(calibrated[0], tmp_path)
    (copy / "placement_01" / "cam01.png").unlink()
    (copy / "placement_01" / "cam01.png").write_bytes(b"\x89PNG not really")
    error = solve_fails(copy, tmp_path / "caldir", capsys)
    assert "placement_01/cam01.png: not an 8-bit grey picture" in error


def test_a_picture_without_the_board_is_named(
    calibrated: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    copy = broken_copy(calibrated[0], tmp_path)
    replace_picture(copy, "placement_01/cam02.png", grey(copy / "empty" / "cam02.png"))
    error = solve_fails(copy, tmp_path / "caldir", capsys)
    assert "placement_01/cam02.png: too few ChArUco corners (0 of 88; needs 20)" in error


def test_a_mostly_covered_board_is_too_few_corners(
    calibrated: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    copy = broken_copy(calibrated[0], tmp_path)
    image = grey(copy / "placement_00" / "cam04.png")
    view = CornerDetector(BoardDefinition()).detect(image)
    x0, y0 = view.pixels.min(axis=0).astype(int)
    covered = np.full_like(image, 40)
    covered[y0 - 60 : y0 + 260, x0 - 60 : x0 + 260] = image[y0 - 60 : y0 + 260, x0 - 60 : x0 + 260]
    replace_picture(copy, "placement_00/cam04.png", covered)
    error = solve_fails(copy, tmp_path / "caldir", capsys)
    assert "placement_00/cam04.png: too few ChArUco corners (" in error
    assert "(0 of" not in error, "some corners remain visible: the count must say how many"


def test_a_board_that_moved_between_the_cameras_is_named(
    calibrated: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """cam03 saw placement 2 where the board lay for placement 3: each view alone is a fine view of the board."""
    copy = broken_copy(calibrated[0], tmp_path)
    (copy / "placement_02" / "cam03.png").unlink()
    os.symlink(calibrated[0] / "placement_03" / "cam03.png", copy / "placement_02" / "cam03.png")
    error = solve_fails(copy, tmp_path / "caldir", capsys)
    assert "placement_02: the board was not in one place for all cameras" in error and "cam03" in error


def test_the_board_file_and_picture_are_at_true_scale(tmp_path: Path) -> None:
    out = tmp_path / "board.png"
    argv = ["calibrate", "board", "--out", str(out), "--squares", "8", "6", "--square-mm", "20", "--marker-mm", "15"]
    assert main([*argv, "--dictionary", "DICT_4X4_50", "--dpi", "300"]) == 0
    board = load_board(tmp_path / "board.json")
    assert board == BoardDefinition(squares_x=8, squares_y=6, square_mm=20, marker_mm=15, dictionary="DICT_4X4_50")
    with Image.open(out) as written:
        assert written.info["dpi"] == pytest.approx((300, 300), abs=0.01)
    image = grey(out)
    px_per_mm = 300 / 25.4
    assert image.shape == (
        round(120 * px_per_mm) + 2 * round(10 * px_per_mm),
        round(160 * px_per_mm) + 2 * round(10 * px_per_mm),
    )
    view = CornerDetector(board).detect(image)
    assert view.count == board.corner_count
    first_row = view.pixels[np.argsort(view.ids)][:7]
    assert abs(np.linalg.norm(first_row[-1] - first_row[0]) - 6 * 20 * px_per_mm) <= 1.0


def test_bad_boards_are_refused_with_the_fix(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["calibrate", "board", "--out", str(tmp_path / "board.jpg")]) == 2
    assert "use --out board.png or --out board.pdf" in capsys.readouterr().err
    assert main(["calibrate", "board", "--out", str(tmp_path / "b.png"), "--square-mm", "10", "--marker-mm", "10"]) == 2
    assert "leaves no white border" in capsys.readouterr().err
    assert main(["calibrate", "board", "--out", str(tmp_path / "b.png"), "--squares", "20", "20"]) == 2
    assert "pick a larger dictionary" in capsys.readouterr().err
    (tmp_path / "extra.json").write_text('{"squares_x": 5, "colour": "red"}')
    with pytest.raises(BoardError, match="colour"):
        load_board(tmp_path / "extra.json")
    assert not list(tmp_path.glob("*.png"))


def test_a_capture_into_a_used_directory_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "something").write_text("")
    argv = ["calibrate", "capture", "--config", str(mock_station(tmp_path)), "--out", str(tmp_path / "used"), "--yes"]
    assert main(argv) == 2
    assert "not an empty directory" in capsys.readouterr().err


def test_capture_runs_on_emulated_basler_cameras_fed_the_rendered_board(
    calibrated: tuple[Path, Path], emulated: list[str], tmp_path: Path
) -> None:
    """pypylon's emulated cameras deliver the mock's flat-board pictures: the capture takes and checks them."""
    capture = calibrated[0]
    full_resolution_station(tmp_path, 1883)
    for index, serial in enumerate(emulated, start=1):
        shutil.copyfile(capture / "placement_00" / f"cam0{index}.png", tmp_path / "images" / f"{serial}.png")
    out = tmp_path / "pylon_capture"
    argv = ["calibrate", "capture", "--config", str(tmp_path / "station.toml"), "--out", str(out)]
    assert main([*argv, "--placements", "3", "--yes"]) == 0
    manifest = CaptureManifest.model_validate_json((out / "manifest.json").read_text())
    assert manifest.driver == "pylon" and [c.serial for c in manifest.cameras] == emulated
    assert [p.directory for p in manifest.placements] == ["placement_00", "placement_01", "placement_02"]
    taken = grey(out / "placement_02" / "cam03.png")
    assert np.array_equal(taken, grey(capture / "placement_00" / "cam03.png"))


def test_an_emulated_camera_seeing_no_board_is_named(
    emulated: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    full_resolution_station(tmp_path, 1883)  # every camera is fed a noise picture
    argv = ["calibrate", "capture", "--config", str(tmp_path / "station.toml"), "--out", str(tmp_path / "capture")]
    capsys.readouterr()
    assert main([*argv, "--yes"]) == 2
    error = capsys.readouterr().err
    assert "placement_00: cam01: too few ChArUco corners (0 of 88; needs 20)" in error
    assert "placement_00: cam05: too few ChArUco corners" in error
    assert not (tmp_path / "capture" / "manifest.json").exists()


def test_a_placement_a_camera_cannot_use_is_named_and_asked_again(
    calibrated: tuple[Path, Path], tmp_path: Path
) -> None:
    capture = calibrated[0]
    names = ["cam01", "cam02", "cam03", "cam04", "cam05"]
    empty_tray = {name: grey(capture / "empty" / f"{name}.png") for name in names}
    boards = [{name: grey(capture / f"placement_0{i}" / f"{name}.png") for name in names} for i in range(3)]
    cam04_blocked = {**boards[0], "cam04": empty_tray["cam04"]}
    shots = iter([empty_tray, cam04_blocked, boards[0], boards[1], boards[2]])
    asked: list[str] = []
    said: list[str] = []
    cameras = [CapturedCamera(name=n, serial=f"s{n}", width=2448, height=2048) for n in names]
    out = tmp_path / "capture"
    BoardCapture(out, BoardDefinition(), cameras, "test", lambda: next(shots), None, asked.append, said.append).run(3)
    assert asked[0].startswith("empty tray") and asked[1].startswith("placement 1 of 3: place the board flat")
    assert asked[2].startswith("placement 1 again")
    assert any("placement_00: cam04: too few ChArUco corners (0 of 88" in line for line in said)
    assert np.array_equal(grey(out / "placement_00" / "cam04.png"), boards[0]["cam04"])
    assert (out / "manifest.json").is_file()


def test_the_board_prints_at_true_size_from_a_pdf(tmp_path: Path) -> None:
    out = tmp_path / "board.pdf"
    assert (
        main(["calibrate", "board", "--out", str(out), "--squares", "8", "6", "--square-mm", "20", "--marker-mm", "15"])
        == 0
    )
    board = load_board(tmp_path / "board.json")
    text = out.read_bytes()
    assert text.startswith(b"%PDF")
    box = re.search(rb"/MediaBox \[\s*0 0 ([0-9.]+) ([0-9.]+)\s*\]", text)
    assert box is not None
    width_mm, height_mm = (float(v) / 72 * 25.4 for v in box.groups())  # PDF points are 1/72 inch
    margin_mm = 2 * max(board.square_mm / 2, 5.0)
    assert width_mm == pytest.approx(8 * 20 + margin_mm, abs=0.3)
    assert height_mm == pytest.approx(6 * 20 + margin_mm, abs=0.3)
