"""`amflow-edge calibrate board|capture|solve`: commissioning a station's cameras with a ChArUco board.

    board    print this (true scale) and keep its board.json
    capture  the empty tray, then the board in a few placements, every camera at once, checked on the spot
    solve    intrinsics and poses in the tray frame, written as the camNN.yaml files the station reads

The capture drives the station's own cameras through its driver, before any calibration exists: the config is
read without its calibration files and a Line1-triggered station is fired by software (cli.commissioning). A
driver that can show the board itself (the mock renders it) is asked to; with real cameras a person moves the
board when prompted. OpenCV's detector and the solve (scipy) are imported when a command runs, so `--help` and
the daemon stay light (which is also why the placement limits are checked in the command, not by argparse).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from amflow_edge.cli.commissioning import commissioning_driver, load_uncalibrated
from amflow_edge.cli.common import EXIT_CONFIG, EXIT_FAILED, EXIT_OK

if TYPE_CHECKING:
    import numpy as np

    from amflow_edge.config.station import StationConfig
    from amflow_edge.drivers.base import CameraDriver
    from amflow_edge.inspection.calibration.board import BoardDefinition
    from amflow_edge.inspection.calibration.capture import BoardCapture

EXIT_INTERRUPTED = 130
"""128 + SIGINT, as a shell reports a command stopped with Ctrl-C."""


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
        metavar="N",
        help="board placements (default 5): at least as many as the solve needs, at most as many as it prompts for",
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
    print(
        f"{definition.name} says thickness_mm {board.thickness_mm:g}, right only for bare paper lying on the tray: "
        "measure the board with its backing (calipers) and set thickness_mm to it before `calibrate solve`, or the "
        "tray frame's z = 0 is that far above the tray and every part reads as lifted off it"
    )
    return EXIT_OK


def cmd_capture(args: argparse.Namespace) -> int:
    from amflow_edge.drivers.base import DriverError
    from amflow_edge.inspection.calibration.board import BoardDefinition, BoardError, load_board
    from amflow_edge.inspection.calibration.capture import placements_problem
    from amflow_edge.inspection.calibration.errors import CalibrationProcedureError

    if (problem := placements_problem(args.placements)) is not None:
        print(problem, file=sys.stderr)
        return EXIT_CONFIG
    cfg = load_uncalibrated(args.config)
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
        driver = commissioning_driver(cfg, "the capture")
    except DriverError as exc:
        print(f"cameras: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        try:
            driver.open()
        except DriverError as exc:
            print(f"cameras: {exc}", file=sys.stderr)
            return EXIT_CONFIG
        _capture(cfg, driver, board, out, args.yes).run(args.placements)
    except (CalibrationProcedureError, DriverError) as exc:
        print(f"{exc}\n{_left_behind(out)}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        print(f"\ncapture stopped (Ctrl-C); {_left_behind(out)}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except OSError as exc:
        print(
            f"capture stopped: {exc.filename or out}: {exc.strerror or exc} (disk full? permissions?); "
            f"{_left_behind(out)}",
            file=sys.stderr,
        )
        return EXIT_FAILED
    finally:
        driver.close()
    print(f"next: amflow-edge calibrate solve {out} --out CALDIR")
    return EXIT_OK


def _left_behind(out: Path) -> str:
    """What a stopped capture leaves in `out`: the manifest is written last, so never something the solve takes."""
    try:
        taken = out.is_dir() and any(out.iterdir())
    except OSError:
        taken = True
    if not taken:
        return f"nothing was written to {out}"
    return (
        f"{out} holds the pictures taken so far but no manifest.json, so `calibrate solve` refuses it; delete it "
        "(or give a new directory) and capture again"
    )


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
    from amflow_edge.inspection.calibration.report import rms_warnings

    try:
        board = load_board(args.board) if args.board is not None else None
        report = solve_capture(args.dir, args.out, board)
    except (CalibrationProcedureError, BoardError) as exc:
        print(exc, file=sys.stderr)
        return EXIT_CONFIG
    except OSError as exc:
        print(
            f"solve stopped: {exc.filename or args.out}: {exc.strerror or exc}; check that the capture is readable "
            f"and that {args.out}'s directory is writable with room to spare, then solve again ({args.out} is as "
            "it was)",
            file=sys.stderr,
        )
        return EXIT_FAILED
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
    for warning in rms_warnings(report):
        print(f"warning: {warning}", file=sys.stderr)
    if report.board.thickness_mm == 0:
        print(
            "warning: the board's thickness_mm is 0, so the tray frame's z = 0 is the printed surface: right only for "
            "bare paper on the tray; measure the board with its backing, set thickness_mm in board.json and solve "
            "again with --board board.json",
            file=sys.stderr,
        )
    print(
        f"overall RMS {report.rms_px:.3f} px; wrote {args.out}: cam01.yaml … , references/, calibration.json, report/"
    )
    return EXIT_OK
