"""What every shipped station look costs and shows: seconds per 5-camera scene, grey of the tray and of a part.

    .venv/bin/python benchmarks/render_looks.py [--looks demo,key_black] [--scenes 3]

The demo rig at full resolution (2448×2048) renders a 50×30×20 mm block under each look in config/looks/:
one warm-up scene, then --scenes timed ones (the mock renders ahead of triggers, so the steady state is what
counts). Per look one line: seconds per scene, and the mean grey (DN) the top camera sees of the open tray
and of the block's top face in pa12_white and pa12_black. The mock's budget is about 1-2 s per scene on 2 cores.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import trimesh

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from amflow_edge.drivers.simulator.looks import known_looks, load_look, load_material  # noqa: E402
from amflow_edge.drivers.simulator.render import Renderer  # noqa: E402
from amflow_edge.inspection.geometry.camera import CameraCalibration, load_rig  # noqa: E402

BLOCK = (50.0, 30.0, 20.0)
POSE = trimesh.transformations.translation_matrix((5.0, -8.0, BLOCK[2] / 2))


def mean_in(image: np.ndarray, calib: CameraCalibration, corners_mm: np.ndarray) -> float:
    """Mean grey inside the projection of a tray-frame polygon."""
    pixels = calib.project(corners_mm)
    mask = np.zeros(image.shape, dtype=np.uint8)
    cv2.fillPoly(mask, [np.round(pixels).astype(np.int32)], 1)
    return float(image[mask > 0].mean())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--looks", default=",".join(known_looks()), help="comma-separated look names or paths")
    parser.add_argument("--scenes", type=int, default=3, help="timed scenes per look")
    args = parser.parse_args()
    rig = load_rig(REPO / "config" / "calibration" / "demo")
    top = rig[0]
    block = trimesh.creation.box(BLOCK)
    hx, hy = BLOCK[0] / 2 * 0.7, BLOCK[1] / 2 * 0.7
    face = np.array([[x, y, BLOCK[2]] for x, y in ((-hx, -hy), (hx, -hy), (hx, hy), (-hx, hy))]) + [5.0, -8.0, 0.0]
    open_tray = np.array([[-140.0, 60.0, 0.0], [-60.0, 60.0, 0.0], [-60.0, 110.0, 0.0], [-140.0, 110.0, 0.0]])
    white, black = load_material("pa12_white"), load_material("pa12_black")
    print(f"{'look':<18} {'s/scene':>8} {'tray DN':>8} {'white DN':>9} {'black DN':>9}")
    for name in args.looks.split(","):
        renderer = Renderer(rig, look=load_look(name))
        try:
            renderer.render(block, POSE, seed=1)
            started = time.perf_counter()
            for seed in range(args.scenes):
                renderer.render(block, POSE, seed=100 + seed)
            seconds = (time.perf_counter() - started) / args.scenes
            tray = mean_in(renderer.render(None, None, seed=7)[top.name], top, open_tray)
            bright = mean_in(renderer.render(block, POSE, seed=7, material=white)[top.name], top, face)
            dark = mean_in(renderer.render(block, POSE, seed=7, material=black)[top.name], top, face)
        finally:
            renderer.close()
        print(f"{name:<18} {seconds:8.2f} {tray:8.1f} {bright:9.1f} {dark:9.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
