"""The calibration procedure end to end on the mock, at full resolution: the board the mock renders is captured
through the station's own driver, solved, and the solved rig must be the rig that rendered the pictures.

Capturing and solving cost about half a minute, so it is done once for the module; the named-error tests
break copies of that capture (links to its pictures, one replaced). What needs no pictures (a board's thickness,
a lens the model cannot fit) is tested on corners projected through the demo rig, and the mock's rendering of a
thick board on one camera at half resolution.
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

from amflow_edge.cli import calibrate
from amflow_edge.cli.main import main
from amflow_edge.drivers.simulator.charuco_board import BoardRenderer, default_placements
from amflow_edge.inspection.calibration import procedure
from amflow_edge.inspection.calibration.board import BoardDefinition, BoardError, load_board
from amflow_edge.inspection.calibration.capture import BoardCapture
from amflow_edge.inspection.calibration.detection import CornerDetector, ViewCorners
from amflow_edge.inspection.calibration.errors import CalibrationProcedureError
from amflow_edge.inspection.calibration.manifest import CapturedCamera, CaptureManifest
from amflow_edge.inspection.calibration.report import MAX_RMS_PX, CalibrationReport, rms_warnings
from amflow_edge.inspection.calibration.solve import CameraInfo, SolvedRig, solve_rig
from amflow_edge.inspection.geometry.camera import CameraCalibration, load_rig
from amflow_edge.inspection.inspect import inspect_scan
from amflow_edge.inspection.profiles import load_profile
from tests.inspection_scenes import demo_light, design, empty, placed, rig
from tests.pylon_rig import emulated, full_resolution_station, point_at_image
from tests.station_files import scaled_rig

__all__ = ["emulated"]  # the fixture, used by name

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "config" / "calibration" / "demo"
PLACEMENTS = 4
"""The fewest that meet the figures with a margin (three leave the top camera's rotation at 0.016°)."""
THICK_BOARD = BoardDefinition(thickness_mm=4.0)
"""A board glued to a 4 mm backing: its printed surface lies 4 mm above the tray."""


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
    assert report.rms_px <= MAX_RMS_PX and report.board == BoardDefinition() and not rms_warnings(report)
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
    true = inspect_scan(images, empty(), rig(), design(name), name, profile, cache_dir=tmp_path, light=demo_light())
    solved = inspect_scan(
        images, empty(), load_rig(caldir), design(name), name, profile, cache_dir=tmp_path, light=demo_light()
    )
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
    (out / "calibration.json").write_text("{}")  # an earlier solve's CALDIR
    capsys.readouterr()
    assert main(["calibrate", "solve", str(copy), "--out", str(out)]) == 2
    assert sorted(p.name for p in out.iterdir()) == ["calibration.json", "cam01.yaml"], (
        "a failed solve must leave CALDIR as it was"
    )
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
    assert "lens" not in error


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


def test_capture_runs_on_a_new_line1_basler_station_fed_the_rendered_board(
    calibrated: tuple[Path, Path], emulated: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A new station: its calibration files do not exist yet and a part-present sensor triggers it on Line1. The
    capture (and the trigger check) still run, firing by software; pypylon's emulated cameras deliver the mock's
    empty tray and board pictures in turn (a directory's files, in name order)."""
    capture = calibrated[0]
    full_resolution_station(tmp_path, 1883)
    config = tmp_path / "station.toml"
    text = re.sub(
        r'calibration = "[^"]*/(cam0\d\.yaml)"', rf'calibration = "{tmp_path}/calibration/\1"', config.read_text()
    )
    config.write_text(text + 'trigger = "line1"\n')  # [pylon] is the file's last section
    assert text.count(f"{tmp_path}/calibration/") == 5 and not (tmp_path / "calibration").exists()
    for index, serial in enumerate(emulated, start=1):
        feed = tmp_path / "feed" / serial
        feed.mkdir(parents=True)
        for order, folder in enumerate(["empty", "placement_00", "placement_01", "placement_02"]):
            os.symlink(capture / folder / f"cam0{index}.png", feed / f"{order}_{folder}.png")
        point_at_image(tmp_path / "features" / f"{serial}.pfs", feed)
    out = tmp_path / "pylon_capture"
    capsys.readouterr()
    assert main(["calibrate", "capture", "--config", str(config), "--out", str(out), "--placements", "3", "--yes"]) == 0
    assert (
        "pylon.trigger = 'line1': the capture fires the cameras by software trigger instead" in capsys.readouterr().err
    )
    manifest = CaptureManifest.model_validate_json((out / "manifest.json").read_text())
    assert manifest.driver == "pylon" and [c.serial for c in manifest.cameras] == emulated
    assert [p.directory for p in manifest.placements] == ["placement_00", "placement_01", "placement_02"]
    for folder in ("empty", "placement_02"):
        assert np.array_equal(grey(out / folder / "cam03.png"), grey(capture / folder / "cam03.png"))
    assert main(["cameras", "check-triggers", "--config", str(config), "--count", "2"]) == 0
    assert "2 triggers: all frames complete" in capsys.readouterr().out


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


def test_a_shot_that_cannot_be_used_is_named_and_asked_again(calibrated: tuple[Path, Path], tmp_path: Path) -> None:
    """The board still on the 'empty' tray, a camera that cannot see the board, a placement taken twice: each is
    said and the person asked again; the prompts say how to measure the board and which way it faces."""
    capture = calibrated[0]
    names = ["cam01", "cam03", "cam04"]
    empty_tray = {name: grey(capture / "empty" / f"{name}.png") for name in names}
    boards = [{name: grey(capture / f"placement_0{i}" / f"{name}.png") for name in names} for i in range(3)]
    cam04_blocked = {**boards[0], "cam04": empty_tray["cam04"]}
    shots = iter([boards[1], empty_tray, cam04_blocked, boards[0], boards[0], boards[1], boards[2]])
    asked: list[str] = []
    said: list[str] = []
    cameras = [CapturedCamera(name=n, serial=f"s{n}", width=2448, height=2048) for n in names]
    out = tmp_path / "capture"
    BoardCapture(out, BoardDefinition(), cameras, "test", lambda: next(shots), None, asked.append, said.append).run(3)
    assert asked[0].startswith("empty tray:") and "set thickness_mm in board.json" in asked[0]
    assert asked[1].startswith("empty tray again")
    assert any(line.startswith("empty: cam01: sees ") and "still in view" in line for line in said)
    assert asked[2].startswith("placement 1 of 3: place the board flat") and "top edge" in asked[2]
    assert "towards cam03" in asked[2]
    assert asked[3].startswith("placement 1 again")
    assert any("placement_00: cam04: too few ChArUco corners (0 of 88" in line for line in said)
    assert asked[4].startswith("placement 2 of 3") and asked[5].startswith("placement 2 again")
    assert any("placement_01: the board is where it was for placement_00" in line for line in said)
    assert np.array_equal(grey(out / "empty" / "cam04.png"), empty_tray["cam04"])
    assert np.array_equal(grey(out / "placement_00" / "cam04.png"), boards[0]["cam04"])
    assert np.array_equal(grey(out / "placement_01" / "cam04.png"), boards[1]["cam04"])
    assert (out / "manifest.json").is_file()


def test_without_asking_a_repeated_placement_or_a_missing_camera_fails_named(
    calibrated: tuple[Path, Path], tmp_path: Path
) -> None:
    capture = calibrated[0]
    names = ["cam02", "cam05"]
    empty_tray = {name: grey(capture / "empty" / f"{name}.png") for name in names}
    flat = {name: grey(capture / "placement_00" / f"{name}.png") for name in names}
    cameras = [CapturedCamera(name=n, serial=f"s{n}", width=2448, height=2048) for n in names]
    shots = iter([empty_tray, flat, flat])
    repeated = BoardCapture(tmp_path / "a", BoardDefinition(), cameras, "test", lambda: next(shots), None, None, print)
    with pytest.raises(CalibrationProcedureError, match=r"placement_01: the board is where it was for placement_00"):
        repeated.run(3)
    lost = BoardCapture(
        tmp_path / "b", BoardDefinition(), cameras, "test", lambda: {"cam02": flat["cam02"]}, None, None, print
    )
    with pytest.raises(
        CalibrationProcedureError, match=r"empty: the shot has no picture from cam05 \(it delivered cam02\)"
    ):
        lost.run(3)


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


def test_the_board_is_written_with_thickness_0_and_a_note_to_measure_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["calibrate", "board", "--out", str(tmp_path / "b.png"), "--dpi", "72"]) == 0
    assert load_board(tmp_path / "b.json").thickness_mm == 0
    assert "b.json says thickness_mm 0, right only for bare paper" in capsys.readouterr().out
    (tmp_path / "thick.json").write_text('{"thickness_mm": 31}')
    with pytest.raises(BoardError, match="thickness_mm"):
        load_board(tmp_path / "thick.json")


def test_a_thick_board_is_rendered_its_thickness_above_the_tray(tmp_path: Path) -> None:
    """The flat board's printed surface is thickness_mm above the tray (z = 0), in the transform the solve fixes the
    tray frame with and in the mock's pictures: corners found in a render (half resolution, the oblique cam02) are
    where the rig projects them 4 mm above the tray, not on it."""
    board = THICK_BOARD
    width, height = board.size_mm
    flat = board.board_to_tray_flat()
    printed = np.array([[0.0, 0.0, 0.0, 1.0], [width, height, 0.0, 1.0]]) @ flat.T
    backing = np.array([[0.0, 0.0, 4.0, 1.0]]) @ flat.T
    assert np.allclose(printed[:, :3], [[-width / 2, height / 2, 4.0], [width / 2, -height / 2, 4.0]])
    assert np.allclose(backing[:, :3], [[-width / 2, height / 2, 0.0]])
    scaled_rig(tmp_path, 0.5)
    cam02 = load_rig(tmp_path)[1]
    renderer = BoardRenderer([cam02], board)
    view = CornerDetector(board).detect(renderer.render(default_placements(board)[0].pose, 1)["cam02"])
    assert view.count > 60
    u, v = board.corners_board()[view.ids, :2].T

    def error_px(z_mm: float) -> float:
        expected = cam02.project(np.column_stack([u - width / 2, height / 2 - v, np.full_like(u, z_mm)]))
        return float(np.median(np.linalg.norm(view.pixels - expected, axis=1)))

    assert error_px(4.0) < 0.2 and error_px(0.0) > 3.0, (error_px(4.0), error_px(0.0))


def projected_views(
    board: BoardDefinition, cameras: list[CameraCalibration], poses: list[np.ndarray], seed: int = 0
) -> list[list[ViewCorners]]:
    """views[placement][camera]: the board's corners at each board→tray pose projected through the rig, with a
    detector's noise, the pixels outside the image left out."""
    rng = np.random.default_rng(seed)
    corners = board.corners_board()
    views = []
    for pose in poses:
        tray = corners @ pose[:3, :3].T + pose[:3, 3]
        placement = []
        for camera in cameras:
            pixels = camera.project(tray) + rng.normal(0.0, 0.02, (len(tray), 2))
            inside = (
                (pixels[:, 0] > 5)
                & (pixels[:, 1] > 5)
                & (pixels[:, 0] < camera.image_width - 5)
                & (pixels[:, 1] < camera.image_height - 5)
            )
            size = (camera.image_width, camera.image_height)
            placement.append(ViewCorners(np.flatnonzero(inside).astype(np.int32), pixels[inside], size))
        views.append(placement)
    return views


def solve_projected(
    board: BoardDefinition, views: list[list[ViewCorners]], cameras: list[CameraCalibration]
) -> SolvedRig:
    infos = [CameraInfo(c.name, c.serial, c.image_width, c.image_height) for c in cameras]
    return solve_rig(board, infos, views, [f"placement_{i:02d}" for i in range(len(views))])


def test_the_solved_tray_frame_has_z_0_on_the_tray_under_a_thick_board() -> None:
    """Corners of a 4 mm board lying flat (its print 4 mm above the tray, written out here, not taken from the code
    under test) and tilted: solved with board.json saying 4 mm, the cameras are where the rig has them."""
    truth = load_rig(DEMO)
    width, height = THICK_BOARD.size_mm
    flat = np.diag([1.0, -1.0, -1.0, 1.0])
    flat[:3, 3] = [-width / 2, height / 2, 4.0]
    poses = [flat] + [p.pose for p in default_placements(THICK_BOARD)[1:4]]
    solved = solve_projected(THICK_BOARD, projected_views(THICK_BOARD, truth, poses), truth)
    for true, camera in zip(truth, solved.cameras, strict=True):
        assert np.linalg.norm(camera.calibration.centre - true.centre) <= 0.1, (true.name, camera.calibration.centre)
    assert solved.rms_px < 0.05


def test_a_lens_the_model_cannot_fit_is_named_not_taken_for_a_moved_board() -> None:
    """cam02's pictures rippled by 1.5 px (no 5-coefficient lens does that): its own calibration cannot fit them
    either, so it is the lens (or focus) that is named."""
    truth = load_rig(DEMO)
    poses = [p.pose for p in default_placements(BoardDefinition())[:4]]
    views = projected_views(BoardDefinition(), truth, poses)
    for placement in views:
        view = placement[1]
        x, y = view.pixels.T
        rippled = view.pixels + 1.5 * np.column_stack([np.sin(2 * np.pi * y / 260), np.cos(2 * np.pi * x / 260)])
        placement[1] = ViewCorners(view.ids, rippled, view.image_size)
    with pytest.raises(CalibrationProcedureError) as caught:
        solve_projected(BoardDefinition(), views, truth)
    message = str(caught.value)
    assert message.startswith("cam02's lens is not fitted by the 5-coefficient model (RMS "), message
    assert "check cam02's focus" in message and "not in one place" not in message


def test_rms_above_the_target_is_warned_per_camera_and_view(calibrated: tuple[Path, Path]) -> None:
    report = CalibrationReport.model_validate_json((calibrated[1] / "calibration.json").read_text())
    cam03 = report.cameras[2]
    worse = cam03.model_copy(
        update={"rms_px": 0.41, "views": [cam03.views[0].model_copy(update={"rms_px": 0.5}), *cam03.views[1:]]}
    )
    warnings = rms_warnings(report.model_copy(update={"cameras": [*report.cameras[:2], worse, *report.cameras[3:]]}))
    assert len(warnings) == 2
    assert warnings[0].startswith("cam03: RMS 0.410 px is above the 0.3 px target")
    assert warnings[1] == "cam03/placement_00: RMS 0.500 px is above the 0.3 px target"


def test_a_failed_swap_puts_the_old_caldir_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out, staging = tmp_path / "caldir", tmp_path / ".caldir.partial"
    out.mkdir()
    (out / "cam01.yaml").write_text("in use\n")
    staging.mkdir()
    (staging / "cam01.yaml").write_text("new\n")
    real = os.replace

    def failing(source: str | os.PathLike[str], target: str | os.PathLike[str]) -> None:
        if Path(source) == staging:
            raise OSError(28, "No space left on device")
        real(source, target)

    monkeypatch.setattr(procedure.os, "replace", failing)
    with pytest.raises(OSError, match="No space left"):
        procedure.replace_dir(staging, out)
    assert (out / "cam01.yaml").read_text() == "in use\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".caldir.partial", "caldir"]
    monkeypatch.setattr(procedure.os, "replace", real)
    procedure.replace_dir(staging, out)
    assert (out / "cam01.yaml").read_text() == "new\n" and [p.name for p in tmp_path.iterdir()] == ["caldir"]


def test_a_caldir_with_other_files_is_refused_before_solving(
    calibrated: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "station_files"
    out.mkdir()
    (out / "station.toml").write_text("the integrator's\n")
    assert main(["calibrate", "solve", str(calibrated[0]), "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert f"{out}: holds files that `calibrate solve` did not write (no calibration.json)" in error
    assert "Give --out a new directory" in error and (out / "station.toml").read_text() == "the integrator's\n"


def test_ctrl_c_and_a_full_disk_stop_the_capture_with_a_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    class Rig:
        def open(self) -> None: ...

        def close(self) -> None: ...

    class Stopped:
        def __init__(self, error: BaseException) -> None:
            self.error = error

        def run(self, placements: int) -> None:
            (tmp_path / "out" / "empty").mkdir(parents=True, exist_ok=True)
            raise self.error

    config = mock_station(tmp_path)
    argv = ["calibrate", "capture", "--config", str(config), "--out", str(tmp_path / "out"), "--yes"]
    monkeypatch.setattr(calibrate, "commissioning_driver", lambda cfg, command: Rig())
    for error, code, said in (
        (KeyboardInterrupt(), 130, "capture stopped (Ctrl-C);"),
        (
            OSError(28, "No space left on device", str(tmp_path / "out" / "empty" / "cam01.png")),
            1,
            "cam01.png: No space",
        ),
    ):
        monkeypatch.setattr(calibrate, "_capture", lambda *args, error=error: Stopped(error))
        shutil.rmtree(tmp_path / "out", ignore_errors=True)
        assert main(argv) == code
        err = capsys.readouterr().err
        assert said in err and "holds the pictures taken so far but no manifest.json" in err and "Traceback" not in err


def test_solve_names_a_file_it_cannot_write(
    calibrated: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def denied(*args: object) -> None:
        raise PermissionError(13, "Permission denied", str(tmp_path / "caldir"))

    monkeypatch.setattr(procedure, "solve_capture", denied)
    assert main(["calibrate", "solve", str(calibrated[0]), "--out", str(tmp_path / "caldir")]) == 1
    assert f"solve stopped: {tmp_path / 'caldir'}: Permission denied" in capsys.readouterr().err


def test_the_mock_still_needs_its_calibrations(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = mock_station(tmp_path)
    config.write_text(config.read_text().replace("calibration/demo/cam02.yaml", "calibration/none/cam02.yaml"))
    assert main(["calibrate", "capture", "--config", str(config), "--out", str(tmp_path / "out"), "--yes"]) == 2
    error = capsys.readouterr().err
    assert "cameras[1].calibration (cam02): expected a calibration YAML file" in error
    assert "the mock driver renders its pictures through the calibrations" in error
    assert (
        main(["calibrate", "capture", "--config", str(config), "--out", str(tmp_path / "o"), "--placements", "7"]) == 2
    )
    assert "--placements 7: take 3 … 6" in capsys.readouterr().err
