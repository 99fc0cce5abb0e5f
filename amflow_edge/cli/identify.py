"""`amflow-edge identify DIR --batch FILE`: which of a batch's parts is in a scan directory, and why.

For trying identification on a scan before a station runs it: DIR as `amflow-edge render` (or the
station) writes it, the batch as a batch file. Prints JSON: the chosen design_material and part_id
(or null), the ranked candidates with their scores, and the reason.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from amflow_edge.cli.common import EXIT_BAD_INPUT
from amflow_edge.common.shipped import DEMO_CALIBRATION
from amflow_edge.config.batch_file import BatchFileError, load_batch_file
from amflow_edge.inspection.designs import MeshError
from amflow_edge.inspection.geometry.camera import CalibrationError
from amflow_edge.messaging.command_models import BatchFile

if TYPE_CHECKING:
    from amflow_edge.inspection.identification.models import CandidateDesign


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "identify",
        help="identify which of a batch's parts a scan directory shows; prints JSON",
        description="Reads scan_cam0N.png and empty_cam0N.png from DIR and compares the part with every design of "
        "the batch file's parts. Writes nothing into DIR.",
    )
    parser.add_argument("directory", type=Path, metavar="DIR", help="scan directory (scan_cam0N.png, empty_cam0N.png)")
    parser.add_argument("--batch", type=Path, required=True, metavar="FILE", help="batch file (JSON or TOML)")
    parser.add_argument(
        "--calibration", type=Path, default=DEMO_CALIBRATION, metavar="DIR", help="rig calibration folder"
    )
    parser.add_argument("--cache", type=Path, default=None, metavar="DIR", help="design precomputation cache folder")
    parser.set_defaults(func=run)


class _BatchMeshError(ValueError):
    pass


def run(args: argparse.Namespace) -> int:
    from amflow_edge.inspection.identification.pipeline import identify_directory  # the pipeline: open3d
    from amflow_edge.inspection.inspect import InspectionInputError

    try:
        batch = load_batch_file(args.batch)
        candidates = _candidates(batch, args.batch.parent)
        found = identify_directory(args.directory, candidates, calibration=args.calibration, cache_dir=args.cache)
    except (BatchFileError, _BatchMeshError, InspectionInputError, CalibrationError, MeshError) as exc:
        print(f"amflow-edge identify: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    part = next((p for p in batch.parts if p.design_material == found.design_material), None)
    parts_of: dict[str, list[str]] = {}
    for p in batch.parts:
        parts_of.setdefault(p.design_material, []).append(p.part_id)
    answer = {
        "design_material": found.design_material,
        "part_id": part.part_id if part else None,
        "part_title": part.part_title if part else None,
        "outcome": found.outcome,
        "reason": found.reason,
        "candidates": [
            {**c.model_dump(mode="json"), "part_ids": parts_of.get(c.design_material, [])} for c in found.candidates
        ],
        "appearance": found.appearance,
        "appearance_measure": found.appearance_measure,
        "timings_s": found.timings_s,
    }
    print(json.dumps(answer, indent=2))
    return 0


def _candidates(batch: BatchFile, folder: Path) -> list[CandidateDesign]:
    """One candidate per design_material; a part without a mesh cannot be identified from a file alone."""
    from amflow_edge.inspection.identification.models import CandidateDesign

    out: dict[str, CandidateDesign] = {}
    for part in batch.parts:
        if part.design_material in out:
            continue
        if part.mesh is None:
            raise _BatchMeshError(
                f"part {part.part_id!r} names no mesh; give its mesh file, relative to the batch file"
            )
        path = folder / part.mesh
        try:
            digest = hashlib.sha1(path.read_bytes()).hexdigest()
        except OSError as exc:
            raise _BatchMeshError(
                f"part {part.part_id!r}: mesh {path} cannot be read ({exc.strerror or exc})"
            ) from None
        if not part.design_material.startswith(digest + "_"):
            raise _BatchMeshError(
                f"part {part.part_id!r}: design_material {part.design_material} does not match mesh {path}, whose "
                f"SHA-1 is {digest}; write design_material as {digest}_{part.design_material.split('_', 1)[1]}"
            )
        out[part.design_material] = CandidateDesign(
            design_material=part.design_material, mesh_path=path, units=part.units
        )
    return list(out.values())
