"""Calibration benchmark: the commissioning procedure on the mock at full resolution, against the rig that rendered it.

    .venv/bin/python benchmarks/calibration.py                  # 6 placements (the most the mock has)
    .venv/bin/python benchmarks/calibration.py --placements 4   # what the tests use
    .venv/bin/python benchmarks/calibration.py --thickness-mm 4 # a board on a 4 mm backing (board.json says so)

Runs `calibrate capture` (mock driver, --yes) and `calibrate solve` exactly as an integrator would, then compares the
solved camNN.yaml with the demo rig's: focal length error, camera centre error, rotation error, reprojection RMS; and
inspects one rendered part with the true and with the solved rig, printing how far apart the two found poses are.
Targets (issue #25): focal within 0.1 %, centre within 0.1 mm, rotation within 0.02°, RMS ≤ 0.3 px, pose ≤ 0.05 mm.
With --thickness-mm the mock renders the board's surface that far above the tray and board.json says so: camera
centres matching the demo rig then show that the solved tray frame's z = 0 is on the tray, not on the print.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from amflow_edge.cli.main import main as cli  # noqa: E402
from amflow_edge.drivers.simulator.render import Renderer  # noqa: E402
from amflow_edge.inspection.calibration.board import BoardDefinition  # noqa: E402
from amflow_edge.inspection.calibration.report import CalibrationReport  # noqa: E402
from amflow_edge.inspection.designs import load_mesh_mm  # noqa: E402
from amflow_edge.inspection.geometry.camera import load_rig  # noqa: E402
from amflow_edge.inspection.geometry.placement import place_on_tray  # noqa: E402
from amflow_edge.inspection.inspect import inspect_scan  # noqa: E402
from amflow_edge.inspection.profiles import load_profile  # noqa: E402

DEMO = REPO / "config" / "calibration" / "demo"
PART = REPO / "config" / "designs" / "montageblok_mb80.stl"


def rotation_deg(a: np.ndarray, b: np.ndarray) -> float:
    r = a @ b.T
    skew = np.linalg.norm([r[2, 1] - r[1, 2], r[0, 2] - r[2, 0], r[1, 0] - r[0, 1]]) / 2
    return math.degrees(math.asin(min(1.0, float(skew))))


def station(directory: Path) -> Path:
    text = (REPO / "config" / "demo.toml").read_text()
    text = text.replace('"designs/designs.toml"', f'"{REPO / "config" / "designs" / "designs.toml"}"')
    text = re.sub(r'calibration = "calibration/', f'calibration = "{REPO}/config/calibration/', text)
    text = text.replace('"../run/data"', f'"{directory / "data"}"').replace(
        '"../run/state"', f'"{directory / "state"}"'
    )
    config = directory / "station.toml"
    config.write_text(text)
    return config


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--placements", type=int, default=6, help="board placements, 3 … 6 (default 6)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[3, 8], help="scenes inspected with both rigs")
    parser.add_argument("--thickness-mm", type=float, default=0.0, help="the board's thickness with its backing")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        capture, caldir, board = work / "capture", work / "caldir", work / "board.json"
        board.write_text(BoardDefinition(thickness_mm=args.thickness_mm).model_dump_json())
        start = time.perf_counter()
        argv = ["calibrate", "capture", "--config", str(station(work)), "--out", str(capture), "--yes"]
        if cli([*argv, "--board", str(board), "--placements", str(args.placements)]) != 0:
            return 1
        captured = time.perf_counter()
        if cli(["calibrate", "solve", str(capture), "--out", str(caldir), "--board", str(board)]) != 0:
            return 1
        solved_at = time.perf_counter()
        truth, solved = load_rig(DEMO), load_rig(caldir)
        report = CalibrationReport.model_validate_json((caldir / "calibration.json").read_text())
        print(f"\n{args.placements} placements, board {args.thickness_mm:g} mm thick, full resolution (2448×2048)")
        print(f"{'camera':8} {'fx err %':>9} {'fy err %':>9} {'centre mm':>10} {'rot °':>8} {'RMS px':>7}")
        worst = np.zeros(4)
        for t, s, r in zip(truth, solved, report.cameras, strict=True):
            figures = np.array(
                [
                    100 * max(abs(s.K[0, 0] / t.K[0, 0] - 1), abs(s.K[1, 1] / t.K[1, 1] - 1)),
                    float(np.linalg.norm(s.centre - t.centre)),
                    rotation_deg(s.R, t.R),
                    r.rms_px,
                ]
            )
            worst = np.maximum(worst, figures)
            fx = 100 * (s.K[0, 0] / t.K[0, 0] - 1)
            fy = 100 * (s.K[1, 1] / t.K[1, 1] - 1)
            print(f"{s.name:8} {fx:9.4f} {fy:9.4f} {figures[1]:10.4f} {figures[2]:8.4f} {figures[3]:7.3f}")
        print(f"{'worst':8} {worst[0]:9.4f} {'':9} {worst[1]:10.4f} {worst[2]:8.4f} {worst[3]:7.3f}")
        print(f"overall RMS {report.rms_px:.3f} px (targets: 0.1 %, 0.1 mm, 0.02°, 0.3 px)")
        print(f"time: capture {captured - start:.1f} s, solve {solved_at - captured:.1f} s")
        renderer = Renderer(truth)
        mesh = load_mesh_mm(PART, "mm")
        profile = load_profile("default")
        references = renderer.render(None, None, 500_000)
        for seed in args.seeds:
            pose = place_on_tray(mesh, np.random.default_rng(seed))
            images = renderer.render(mesh, pose, seed)
            found = [
                inspect_scan(images, references, rig, mesh, PART.stem, profile, cache_dir=work / "cache").pose
                for rig in (truth, solved)
            ]
            if found[0] is None or found[1] is None:
                print(f"scene {seed}: no pose found ({found})")
                continue
            a, b = np.array(found[0]), np.array(found[1])
            print(
                f"inspection, scene {seed}: solved vs true rig, pose differs by "
                f"{np.linalg.norm(a[:3, 3] - b[:3, 3]):.4f} mm, {rotation_deg(a[:3, :3], b[:3, :3]):.4f}° (target 0.05 mm)"
            )
        renderer.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
