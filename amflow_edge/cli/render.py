"""`amflow-edge render`: what the station's cameras would take of a given part, without a station.

Integrators use it to try an inspection on their own parts (and on defective copies of them)
before any hardware exists: the scan images, the empty-tray references and the truth of where the
part lay and what was wrong with it. The interface is a contract; keep it stable.

The renderer, defects and placement (trimesh, open3d) are imported when a part is rendered, so the
other commands and `--help` do not load them.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import get_args

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from amflow_edge.cli.common import EXIT_BAD_INPUT
from amflow_edge.common.scan_layout import reference_image, scan_image
from amflow_edge.common.shipped import DEMO_CALIBRATION, LOOKS
from amflow_edge.drivers.simulator.defect_spec import DefectError, DefectTruth
from amflow_edge.drivers.simulator.looks import DEMO_LOOK_NAME, LookError, look_path
from amflow_edge.inspection.designs import MeshError, Units, load_mesh_mm
from amflow_edge.inspection.geometry.camera import CalibrationError, load_rig

TRAY_SIZE_MM = (300.0, 240.0)
DEFAULT_CALIBRATION = DEMO_CALIBRATION
REFERENCE_SEED_OFFSET = 500_000
"""The empty tray is another frame, as at the station: the same seed would give it the scan's sensor noise,
which then correlates with the part's dark faces and hides them from the comparison."""
TRUTH_FILE = "truth.json"


class RenderTruth(BaseModel):
    """truth.json: everything needed to check an inspection of the rendered scan against what was rendered."""

    model_config = ConfigDict(extra="forbid")

    mesh: str = Field(description="The part mesh file rendered (absolute path).")
    units: Units = Field(description="Unit the mesh file was read in; it was converted to mm.")
    seed: int = Field(description="Seed of the scene: placement, defect and sensor noise follow from it.")
    pose: list[list[float]] = Field(
        description="4×4 part→tray pose (mm): maps the mesh's coordinates, converted to mm, into the tray frame "
        "(origin at the tray centre, z up); the part rests on z = 0."
    )
    defect: DefectTruth | None = Field(
        description="The defect put into the part (geometry in the part's frame, mm), or null."
    )
    calibration: str = Field(
        description="Calibration directory (cam01.yaml … cam05.yaml) of the cameras rendered (absolute path)."
    )
    look: str = Field(
        default=DEMO_LOOK_NAME,
        description="Station look rendered: a name of config/looks (demo, softbox_brushed, …) or a look file "
        "(absolute path).",
    )
    material: str | None = Field(
        default=None,
        description="Material of config/materials.toml the part was rendered in, or null: the demo's grey PA12.",
    )


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `render` on the `amflow-edge` command's subparsers."""
    parser = subparsers.add_parser(
        "render",
        help="render what the mock cameras would take of a part (scan, empty tray, truth.json)",
        description="Place PART_MESH on the tray as an operator would (stable pose, random yaw and position from "
        "the seed) and write scan_cam01.png … scan_cam05.png, empty_cam01.png … empty_cam05.png and truth.json.",
    )
    parser.add_argument("mesh", metavar="PART_MESH", type=Path, help="part mesh (STL, OBJ, PLY)")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="output directory (created if missing)")
    parser.add_argument("--units", choices=get_args(Units), default="mm", help="unit of the mesh file (default mm)")
    parser.add_argument("--seed", type=_seed, default=0, help="scene seed, a whole number ≥ 0 (default 0)")
    parser.add_argument(
        "--calibration",
        type=Path,
        default=DEFAULT_CALIBRATION,
        metavar="DIR",
        help="directory with cam01.yaml … cam05.yaml (default: the demo rig)",
    )
    parser.add_argument(
        "--defect",
        default=None,
        metavar="KIND:SIZE",
        help="put a printing defect into the part: missing_slab:MM, missing_chunk:MM, extra_blob:MM, "
        "scale:PERCENT[,Y,Z], warp:DEGREES",
    )
    parser.add_argument(
        "--look",
        default=DEMO_LOOK_NAME,
        metavar="NAME|PATH",
        help="station look: lights, tray and camera (a name of config/looks, e.g. softbox_brushed, or a .toml file; "
        "default demo)",
    )
    parser.add_argument(
        "--material",
        default=None,
        metavar="NAME",
        help="part material of config/materials.toml, e.g. pa12_black (default: the demo's grey PA12)",
    )
    parser.set_defaults(func=cmd_render)


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number; give e.g. --seed 7") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative; give a seed ≥ 0")
    return value


def cmd_render(args: argparse.Namespace) -> int:
    from amflow_edge.inspection.geometry.placement import PlacementError

    try:
        truth, images = _render(args)
        _write(args.out, truth, images)
    except (CalibrationError, DefectError, LookError, MeshError, PlacementError, OSError) as exc:
        print(f"amflow-edge render: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    defect = "no defect" if truth.defect is None else f"defect {truth.defect.spec}"
    print(f"{args.out}: 5 scan images, 5 empty-tray images and {TRUTH_FILE} ({defect}, seed {truth.seed})")
    return 0


def _render(args: argparse.Namespace) -> tuple[RenderTruth, dict[str, np.ndarray]]:
    from amflow_edge.drivers.simulator.defects import Defect, apply_defect, defect_rng, settle
    from amflow_edge.drivers.simulator.looks import load_look, load_material
    from amflow_edge.drivers.simulator.render import Renderer
    from amflow_edge.inspection.geometry.placement import PlacementError, place_on_tray

    defect = None if args.defect is None else Defect.parse(args.defect)
    look = load_look(args.look)
    material = None if args.material is None else load_material(args.material)
    if args.out.exists() and not args.out.is_dir():
        raise NotADirectoryError(f"--out {args.out} is a file; give a directory for the images and {TRUTH_FILE}")
    rig = load_rig(args.calibration)
    mesh = load_mesh_mm(args.mesh, args.units)
    try:
        pose = place_on_tray(mesh, np.random.default_rng(args.seed), tray_size_mm=TRAY_SIZE_MM)
    except PlacementError as exc:
        raise PlacementError(f"{args.mesh}: {exc}") from None
    defect_truth = None
    if defect is not None:
        viewpoints = np.array([calib.centre for calib in rig])
        mesh, defect_truth = apply_defect(mesh, defect, defect_rng(args.seed), pose=pose, viewpoints=viewpoints)
        pose = settle(mesh, pose)
    renderer = Renderer(rig, TRAY_SIZE_MM, look=look)
    try:
        scans = renderer.render(mesh, pose, args.seed, material=material)
        empties = renderer.render(None, None, args.seed + REFERENCE_SEED_OFFSET)
    finally:
        renderer.close()
    truth = RenderTruth(
        mesh=str(args.mesh.resolve()),
        units=args.units,
        seed=args.seed,
        pose=pose.tolist(),
        defect=defect_truth,
        calibration=str(args.calibration.resolve()),
        look=_look_name(args.look),
        material=args.material,
    )
    images = {scan_image(name): image for name, image in scans.items()}
    images.update({reference_image(name): image for name, image in empties.items()})
    return truth, images


def _look_name(look: str) -> str:
    """A shipped look by its name; a look file by its absolute path, so truth.json finds it from anywhere."""
    path = look_path(look)
    return look if path == LOOKS / f"{look}.toml" else str(path.resolve())


def _write(out: Path, truth: RenderTruth, images: dict[str, np.ndarray]) -> None:
    """Images first and truth.json last, so a directory with a truth.json is complete."""
    out.mkdir(parents=True, exist_ok=True)
    (out / TRUTH_FILE).unlink(missing_ok=True)
    for name, image in images.items():
        if not cv2.imwrite(str(out / name), image, [cv2.IMWRITE_PNG_COMPRESSION, 1]):
            raise OSError(f"cannot write {out / name}; check that the directory is writable and the disk not full")
    (out / TRUTH_FILE).write_text(json.dumps(truth.model_dump(mode="json"), indent=2) + "\n", encoding="utf-8")
