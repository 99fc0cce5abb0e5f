"""`amflow-edge commission`: learn what the inspection assumes about a station from the station's own images.

`learn` takes a few scans of intact parts the plant confirmed (scan directories as the station and `amflow-edge
render` write them, each with its design mesh) and learns the station's light (lamps with weights, the part's
shadows included) and each camera's empty tray; the model is written beside the calibration (station_model.json, earlier ones kept as station_model.vN.json) and shown.
`show` prints the current model and its history.

The inspection pipeline (open3d, trimesh) is imported when a command runs, so `--help` does not load it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, get_args

from amflow_edge.cli.common import EXIT_BAD_INPUT
from amflow_edge.common.scan_layout import reference_image
from amflow_edge.inspection.designs import MeshError, Units, load_mesh_mm
from amflow_edge.inspection.geometry.camera import CalibrationError

if TYPE_CHECKING:
    import numpy as np

    from amflow_edge.inspection.station_model.model import StationModel

MIN_SCANS = 2


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `commission` on the `amflow-edge` command's subparsers."""
    parser = subparsers.add_parser(
        "commission",
        help="learn the station's light and tray from scans of intact parts; show what was learned",
        description="What the inspection assumes about the station's light, tray and materials, learned from the "
        "station's own images and stored beside the calibration.",
    )
    commands = parser.add_subparsers(dest="commission_command", required=True)
    learn = commands.add_parser(
        "learn",
        help="learn the station model from scans of intact parts",
        description="Segment and align each scan of an intact part, fit the station's light to all of them, describe "
        "each camera's empty tray (from the first scan's empty_camNN.png), and write station_model.json beside "
        "the calibration.",
    )
    learn.add_argument("--calibration", type=Path, required=True, metavar="DIR", help="cam01.yaml … cam05.yaml")
    learn.add_argument(
        "--scan",
        type=_scan,
        action="append",
        required=True,
        metavar="SCAN_DIR=MESH_FILE",
        help="a scan directory (scan_camNN.png, empty_camNN.png) of an intact part and its design mesh; "
        f"give at least {MIN_SCANS}, better 3 to 5 of different designs",
    )
    learn.add_argument("--units", choices=get_args(Units), default="mm", help="unit of the mesh files (default mm)")
    learn.add_argument("--report", type=Path, default=None, metavar="DIR", help="also write the report and pictures")
    learn.add_argument("--cache", type=Path, default=None, metavar="DIR", help="design precomputation cache folder")
    learn.set_defaults(func=cmd_learn)
    show = commands.add_parser("show", help="print the current station model and its versions")
    show.add_argument("--calibration", type=Path, required=True, metavar="DIR", help="cam01.yaml … cam05.yaml")
    show.add_argument("--report", type=Path, default=None, metavar="DIR", help="also write the report and pictures")
    show.set_defaults(func=cmd_show)


def _scan(text: str) -> tuple[Path, Path]:
    directory, equals, mesh = text.partition("=")
    if not equals or not directory or not mesh:
        raise argparse.ArgumentTypeError(f"{text!r}: give SCAN_DIR=MESH_FILE, e.g. scans/bracket1=designs/bracket.stl")
    return Path(directory), Path(mesh)


def _fail(message: str) -> int:
    print(f"amflow-edge commission: error: {message}", file=sys.stderr)
    return EXIT_BAD_INPUT


def learn_model(
    calibration: Path, scans: Sequence[tuple[Path, Path]], units: Units = "mm", cache: Path | None = None
) -> StationModel:
    """The station model learned from (scan directory, mesh file) pairs, not yet saved; the empty trays are the
    first scan's. Raises CommissioningError, CalibrationError, InspectionInputError or MeshError on bad input."""
    from amflow_edge.inspection.geometry.camera import load_rig
    from amflow_edge.inspection.inspect import read_image
    from amflow_edge.inspection.station_model.learn import (
        CommissioningError,
        learn_station_model,
        samples_of_scan_directory,
    )

    if len(scans) < MIN_SCANS:
        raise CommissioningError(
            f"{len(scans)} --scan given; commissioning needs at least {MIN_SCANS} scans of intact parts "
            "(the light is checked on scans left out of its fit)"
        )
    cameras = load_rig(calibration)
    for directory, mesh in scans:
        if not directory.is_dir():
            raise CommissioningError(f"{directory}: no such scan directory")
        if not mesh.is_file():
            raise CommissioningError(f"{mesh}: no such mesh file")
    references: dict[str, np.ndarray] = {c.name: read_image(scans[0][0] / reference_image(c.name)) for c in cameras}
    learned = []
    for directory, mesh in scans:
        scan = samples_of_scan_directory(directory, load_mesh_mm(mesh, units), str(mesh), calibration, cache)
        learned.append(scan)
        if scan.refused is not None:
            print(f"{scan.refused}; its outlines still count, it teaches the light nothing", file=sys.stderr)
        else:
            print(f"{directory}: {sum(len(s.photo) for s in scan.samples)} surface samples", file=sys.stderr)
    return learn_station_model(learned, references, calibration)


def cmd_learn(args: argparse.Namespace) -> int:
    from amflow_edge.inspection.inspect import InspectionInputError, outline_doubt
    from amflow_edge.inspection.station_model.learn import CommissioningError
    from amflow_edge.inspection.station_model.model import StationModelError, save_station_model
    from amflow_edge.inspection.station_model.report import summary, write_commission_report

    try:
        model = learn_model(args.calibration, args.scan, args.units, args.cache)
        saved = save_station_model(model, args.calibration)
    except (CalibrationError, CommissioningError, InspectionInputError, MeshError, StationModelError) as exc:
        return _fail(str(exc))
    except OSError as exc:
        return _fail(f"{exc}; check that the calibration directory is writable and the disk not full")
    print(summary(saved))
    print(f"written: {args.calibration / 'station_model.json'}")
    unseen = outline_doubt(saved)
    if unseen is not None:
        print(f"warning: {unseen}", file=sys.stderr)
    if args.report is not None:
        try:
            write_commission_report(saved, args.report)
        except OSError as exc:
            return _fail(f"the model is saved, but not the report: {exc}; check that {args.report} is writable")
        print(f"report: {args.report}")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from amflow_edge.inspection.station_model.model import (
        StationModelError,
        archived_versions,
        calibration_digest,
        load_station_model,
        read_station_model,
    )
    from amflow_edge.inspection.station_model.report import summary, write_commission_report

    try:
        model = load_station_model(args.calibration)
    except StationModelError as exc:
        return _fail(str(exc))
    if model is None:
        return _fail(
            f"{args.calibration}: no station model yet; learn one with `amflow-edge commission learn "
            f"--calibration {args.calibration} --scan SCAN_DIR=MESH_FILE --scan SCAN_DIR=MESH_FILE …`"
        )
    print(summary(model))
    try:
        if calibration_digest(args.calibration) != model.calibration_digest:
            print("warning: the calibration changed since this model was learned; re-run `commission learn`")
    except OSError as exc:
        print(f"warning: cannot check the calibration files: {exc}")
    print("versions:")
    for version, path in archived_versions(args.calibration):
        try:
            old = read_station_model(path)
            print(f"  v{version}  {old.created:%Y-%m-%d %H:%M} UTC  {len(old.scans)} scans  {path.name}")
        except StationModelError as exc:
            print(f"  v{version}  unreadable: {exc}")
    print(f"  v{model.version}  {model.created:%Y-%m-%d %H:%M} UTC  {len(model.scans)} scans  (current)")
    if args.report is not None:
        write_commission_report(model, args.report)
        print(f"report: {args.report}")
    return 0
