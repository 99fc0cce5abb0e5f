"""`amflow-edge calibrate board|capture|solve`: commissioning a station's cameras with a ChArUco board.

    board    print this (true scale) and keep its board.json
    capture  the empty tray, then the board in a few placements, every camera at once, checked on the spot
    solve    intrinsics and poses in the tray frame, written as the camNN.yaml files the station reads

The capture drives the station's own cameras through its driver. A driver that can show the board itself
(the mock renders it) is asked to; with real cameras a person moves the board when prompted. OpenCV's
detector and the solve (scipy) are imported when a command runs, so `--help` and the daemon stay light.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, Protocol, runtime_checkable

from amflow_edge.cli.common import EXIT_CONFIG, EXIT_OK, load_or_report

if TYPE_CHECKING:
    import numpy as np

    from amflow_edge.config.station import StationConfig
    from amflow_edge.drivers.base import CameraDriver
    from amflow_edge.inspection.calibration.board import BoardDefinition
    from amflow_edge.inspection.calibration.capture import BoardCapture

MAX_PLACEMENTS = 6
"""As many as inspection.calibration.capture has prompts for (and the mock has placements)."""
MIN_PLACEMENTS = 3


@runtime_checkable
class BoardPresenter(Protocol):
    """A rig that puts the board in place itself (the mock renders it), instead of asking a person to."""

    def present_board(self, board: BoardDefinition, placement: int | None) -> str:
        """Show `board` at placement number `placement` (None: the empty tray); returns what the placement is."""


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `calibrate` on the `amflow-edge` command's subparsers."""
    parser = subparsers.add_parser(
        "calibrate",
        help="commission the cameras: print a ChArUco board, capture it, solve intrinsics and tray-frame poses",
        description="Calibrate the station's cameras: `board` writes a printable board, `capture` takes the empty "
        "tray and the board in several placements with the station's cameras, `solve` writes camNN.yaml files.",
    )
    sub = parser.add_subparsers(dest="calibrate_command", required=True)

    board = sub.add_parser("board", help="write a printable ChArUco board (true scale) and its board.json")
    board.add_argument(
        "--out",
        type=Path,
        required=True,
        metavar="board.png|board.pdf",
        help="picture to print at 100 %% scale (.png or .pdf)",
    )
    board.add_argument("--squares", type=int, nargs=2, metavar=("X", "Y"), default=None, help="squares (default 12 9)")
    board.add_argument("--square-mm", type=float, default=None, help="side of a square in mm (default 18)")
    board.add_argument("--marker-mm", type=float, default=None, help="side of a marker in mm (default 13)")
    board.add_argument("--dictionary", default=None, help="ArUco dictionary (default DICT_5X5_100)")
    board.add_argument("--dpi", type=int, default=600, help="printer resolution recorded in the picture (default 600)")
    board.set_defaults(func=cmd_board)

    capture = sub.add_parser("capture", help="take the empty tray and the board in several placements, checked")
    capture.add_argument("--config", type=Path, required=True, metavar="STATION.toml", help="the station's config")
    capture.add_argument("--out", type=Path, required=True, metavar="DIR", help="new (or empty) directory to fill")
    capture.add_argument("--board", type=Path, default=None, metavar="board.json", help="default: the default board")
    capture.add_argument(
        "--placements",
        type=int,
        default=5,
        choices=range(MIN_PLACEMENTS, MAX_PLACEMENTS + 1),
        metavar="N",
        help=f"board placements, {MIN_PLACEMENTS} … {MAX_PLACEMENTS} (default 5)",
    )
    capture.add_argument(
        "--yes", action="store_true", help="do not ask: take each placement at once, fail on a bad one"
    )
    capture.set_defaults(func=cmd_capture)

    solve = sub.add_parser("solve", help="solve a capture into camNN.yaml files, references and a report")
    solve.add_argument("dir", type=Path, metavar="DIR", help="the capture directory")
    solve.add_argument("--out", type=Path, required=True, metavar="CALDIR", help="calibration directory to write")
    solve.add_argument("--board", type=Path, default=None, metavar="board.json", help="check the capture's board")
    solve.set_defaults(func=cmd_solve)


def cmd_board(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from amflow_edge.inspection.calibration.board import BoardDefinition, BoardError, write_board

    fields: dict[str, object] = {}
    if args.squares is not None:
        fields["squares_x"], fields["squares_y"] = args.squares
    for key, value in (("square_mm", args.square_mm), ("marker_mm", args.marker_mm), ("dictionary", args.dictionary)):
        if value is not None:
            fields[key] = value
    if not 72 <= args.dpi <= 2400:
        print(f"--dpi {args.dpi}: give the printer's resolution, 72 … 2400", file=sys.stderr)
        return EXIT_CONFIG
    try:
        board = BoardDefinition.model_validate(fields)
        definition = write_board(board, args.out, args.dpi)
    except ValidationError as exc:
        for error in exc.errors(include_url=False):
            print(f"board: {'.'.join(map(str, error['loc'])) or 'board'}: {error['msg']}", file=sys.stderr)
        return EXIT_CONFIG
    except (BoardError, OSError) as exc:
        print(exc, file=sys.stderr)
        return EXIT_CONFIG
    width, height = board.size_mm
    print(
        f"{args.out}: {board.squares_x}×{board.squares_y} squares of {board.square_mm:g} mm ({width:g} × {height:g} mm)"
    )
    print(f"{definition}: the board's definition; give it to `calibrate capture --board` and keep it with the board")
    print(
        "print at 100 % (no 'fit to page'), glue it flat on something stiff, and measure a square: if it is not "
        f"{board.square_mm:g} mm, set square_mm and marker_mm in {definition.name} to what you measure"
    )
    return EXIT_OK


def cmd_capture(args: argparse.Namespace) -> int:
    from amflow_edge.drivers.base import DriverError
    from amflow_edge.inspection.calibration.board import BoardDefinition, BoardError, load_board
    from amflow_edge.inspection.calibration.errors import CalibrationProcedureError

    cfg = load_or_report(args.config)
    if cfg is None:
        return EXIT_CONFIG
    try:
        board = load_board(args.board) if args.board is not None else BoardDefinition()
    except BoardError as exc:
        print(exc, file=sys.stderr)
        return EXIT_CONFIG
    out: Path = args.out
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        print(f"{out}: exists and is not an empty directory; give a new directory to capture into", file=sys.stderr)
        return EXIT_CONFIG
    try:
        driver = _driver(cfg)
        driver.open()
    except DriverError as exc:
        print(f"cameras: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        _capture(cfg, driver, board, out, args.yes).run(args.placements)
    except (CalibrationProcedureError, DriverError) as exc:
        print(exc, file=sys.stderr)
        return EXIT_CONFIG
    finally:
        driver.close()
    print(f"next: amflow-edge calibrate solve {out} --out CALDIR")
    return EXIT_OK


def _driver(cfg: StationConfig) -> CameraDriver:
    """The station's rig; the mock shows an empty tray (and the board when asked), never a part."""
    if cfg.rig.driver == "mock":
        from amflow_edge.drivers.mock import MockDriver

        settings = cfg.mock.model_copy(update={"empty_tray": True, "designs": [], "defect_rate": 0.0, "defects": []})
        return MockDriver(cfg.cameras, settings, _NoDesigns())
    from amflow_edge.drivers.pylon import PylonDriver

    return PylonDriver(cfg.cameras, cfg.pylon)


class _NoDesigns:
    @property
    def designs(self) -> list[Any]:
        return []

    def get(self, design_material: str) -> NoReturn:
        raise KeyError(f"{design_material}: calibration places no parts")


def _capture(cfg: StationConfig, driver: CameraDriver, board: BoardDefinition, out: Path, yes: bool) -> BoardCapture:
    from amflow_edge.inspection.calibration.capture import BoardCapture, CapturedCamera

    def shoot() -> dict[str, np.ndarray]:
        driver.trigger()
        shot = driver.grab(cfg.rig.grab_timeout_s)
        return {name: frame.image for name, frame in shot.frames.items()}

    def place(placement: int | None) -> str:
        assert isinstance(driver, BoardPresenter)
        return driver.present_board(board, placement)

    cameras = [CapturedCamera(name=c.name, serial=c.serial, width=c.width, height=c.height) for c in cfg.cameras]
    presenter = place if isinstance(driver, BoardPresenter) else None
    return BoardCapture(out, board, cameras, cfg.rig.driver, shoot, presenter, None if yes else _ask, print)


def _ask(prompt: str) -> None:
    from amflow_edge.inspection.calibration.errors import CalibrationProcedureError

    try:
        input(prompt + " ")
    except EOFError:
        raise CalibrationProcedureError("no terminal to ask on; run it on a terminal, or with --yes") from None


def cmd_solve(args: argparse.Namespace) -> int:
    from amflow_edge.inspection.calibration.board import BoardError, load_board
    from amflow_edge.inspection.calibration.errors import CalibrationProcedureError
    from amflow_edge.inspection.calibration.procedure import solve_capture

    try:
        board = load_board(args.board) if args.board is not None else None
        report = solve_capture(args.dir, args.out, board)
    except (CalibrationProcedureError, BoardError) as exc:
        print(exc, file=sys.stderr)
        return EXIT_CONFIG
    print(f"{'camera':8} {'RMS px':>7} {'corners':>8} {'coverage':>9} {'fx px':>10}  centre mm (tray frame)")
    for camera in report.cameras:
        x, y, z = camera.centre_mm
        print(
            f"{camera.camera:8} {camera.rms_px:7.3f} {camera.corners:8d} {camera.coverage:9.2f} "
            f"{camera.focal_px[0]:10.1f}  ({x:.2f}, {y:.2f}, {z:.2f})"
        )
        if camera.coverage < 0.3:
            print(
                f"  {camera.camera}: corners cover little of the image; add placements nearer its edges",
                file=sys.stderr,
            )
    print(
        f"overall RMS {report.rms_px:.3f} px; wrote {args.out}: cam01.yaml … , references/, calibration.json, report/"
    )
    return EXIT_OK
