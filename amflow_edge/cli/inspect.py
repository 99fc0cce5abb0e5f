"""`amflow-edge inspect DIR --design MESH`: inspect a scan directory written by `amflow-edge render` (or the station)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from amflow_edge.common.shipped import DEMO_CALIBRATION as DEFAULT_CALIBRATION
from amflow_edge.inspection.designs import MeshError
from amflow_edge.inspection.geometry.camera import CalibrationError
from amflow_edge.inspection.profiles import ProfileError


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "inspect",
        help="align a design to a scan directory and judge it; prints the inspection report as JSON",
        description="Reads scan_cam0N.png and empty_cam0N.png from DIR, writes inspection_report.json and overlays into DIR.",
    )
    parser.add_argument("directory", type=Path, metavar="DIR", help="scan directory (scan_cam0N.png, empty_cam0N.png)")
    parser.add_argument("--design", type=Path, required=True, metavar="MESH", help="design mesh (STL, OBJ, PLY, 3MF)")
    parser.add_argument(
        "--units", choices=["mm", "inch", "m"], default="mm", help="units of the mesh file (default mm)"
    )
    parser.add_argument(
        "--calibration", type=Path, default=DEFAULT_CALIBRATION, metavar="DIR", help="rig calibration folder"
    )
    parser.add_argument("--profile", default="default", help="inspection profile name or .toml path (default: default)")
    parser.add_argument(
        "--design-material", default=None, help="design_material id to report (default: the mesh file name)"
    )
    parser.add_argument("--cache", type=Path, default=None, metavar="DIR", help="design precomputation cache folder")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from amflow_edge.inspection.inspect import InspectionInputError, inspect_directory  # the pipeline: open3d
    from amflow_edge.inspection.station_model.model import StationModelError

    try:
        report = inspect_directory(
            args.directory,
            args.design,
            units=args.units,
            calibration=args.calibration,
            profile=args.profile,
            design_material=args.design_material,
            cache_dir=args.cache,
        )
    except (InspectionInputError, CalibrationError, MeshError, ProfileError, StationModelError) as exc:
        print(f"amflow-edge inspect: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report.model_dump(mode="json"), indent=2))
    return 0
