"""Segmentation benchmark: how far the part mask strays from the true silhouette, per camera view.

    .venv/bin/python benchmarks/segmentation.py [--placements N] [--seed N] [--looks all] [--materials pa12_black] [--parts tuning]

The scenes are the inspection benchmark's intact ones (same parts, placements and seeds), under each station
look and part material asked for; the truth is the design's silhouette at the pose it was rendered in. Per look
and material it prints the pixels wrong by more than 3 px per view; how far shadow was taken for part, and part
for tray (tray open to the outside only, where it can read as missing material); the mask's outward bias; the
silhouette IoU against the truth (what commissioning trusts a station's outlines by); and the time per view.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path
from types import ModuleType

import cv2
import numpy as np
import trimesh

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from amflow_edge.drivers.simulator.looks import PartMaterial, known_looks, load_look, load_material  # noqa: E402
from amflow_edge.drivers.simulator.render import Renderer  # noqa: E402
from amflow_edge.inspection.geometry.camera import load_rig  # noqa: E402
from amflow_edge.inspection.geometry.placement import place_on_tray  # noqa: E402
from amflow_edge.inspection.geometry.silhouette import full_window, silhouette  # noqa: E402
from amflow_edge.inspection.regions import open_to_background  # noqa: E402
from amflow_edge.inspection.segment import segment_scan  # noqa: E402


def _inspection_benchmark() -> ModuleType:
    """benchmarks/inspection.py, whose name the inspection package shadows."""
    spec = importlib.util.spec_from_file_location("inspection_benchmark", REPO / "benchmarks" / "inspection.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up while being made
    spec.loader.exec_module(module)
    return module


def _stats(values: list[float]) -> str:
    return f"median {np.median(values):.2f}, p10 {np.percentile(values, 10):.2f}, p90 {np.percentile(values, 90):.2f}, max {np.max(values):.2f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--placements", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1000, help="first scene seed, as benchmarks/inspection.py --seed")
    parser.add_argument("--looks", default="demo", help="station looks, comma-separated, or 'all'")
    parser.add_argument("--materials", default="", help="part materials, comma-separated; '' the look's grey")
    parser.add_argument("--parts", choices=["demo", "tuning", "held-out"], default="demo")
    parser.add_argument("--count", type=int, default=8, help="held-out Voron parts to draw (--parts held-out)")
    parser.add_argument("--quick", action="store_true", help="the demo parts without their scaled variants")
    args = parser.parse_args()
    bench = _inspection_benchmark()
    cameras = load_rig(REPO / "config" / "calibration" / "demo")
    meshes = bench.parts(args.quick) if args.parts == "demo" else bench.voron_parts(args.parts, args.count)
    looks = known_looks() if args.looks == "all" else [x for x in args.looks.split(",") if x]
    materials: list[str | None] = [m for m in args.materials.split(",") if m] or [None]
    for look_name in looks:
        renderer = Renderer(cameras, look=load_look(look_name))
        try:
            for material_name in materials:
                material = None if material_name is None else load_material(material_name)
                _run(renderer, meshes, material, args.placements, args.seed, f"{look_name} {material_name or '-'}")
        finally:
            renderer.close()
    return 0


def _run(
    renderer: Renderer,
    meshes: dict[str, trimesh.Trimesh],
    material: PartMaterial | None,
    placements: int,
    seed: int,
    label: str,
) -> None:
    gross: list[float] = []
    false_part: list[float] = []
    false_tray: list[float] = []
    bias: list[float] = []
    iou: list[float] = []
    seconds = 0.0
    for name, mesh in meshes.items():
        for _ in range(placements):
            seed += 1
            pose = place_on_tray(mesh, np.random.default_rng(seed))
            empty = renderer.render(None, None, seed + 500_000)
            images = renderer.render(mesh, pose, seed, material=material)
            vertices = mesh.vertices @ pose[:3, :3].T + pose[:3, 3]
            ious = []
            for calib in renderer.cameras:
                started = time.perf_counter()
                mask = segment_scan(calib.name, images[calib.name], empty[calib.name]).mask
                seconds += time.perf_counter() - started
                truth = silhouette(calib, vertices, np.asarray(mesh.faces), full_window(calib, 1.0)) > 0
                outside = cv2.distanceTransform((~truth).astype(np.uint8), cv2.DIST_L2, 5)[mask & ~truth]
                inside = cv2.distanceTransform(truth.astype(np.uint8), cv2.DIST_L2, 5)[truth & open_to_background(mask)]
                gross.append(float(np.count_nonzero(outside > 3) + np.count_nonzero(inside > 3)))
                false_part.append(float(outside.max(initial=0.0)))
                false_tray.append(float(inside.max(initial=0.0)))
                outline = truth & ~cv2.erode(truth.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
                bias.append(
                    (np.count_nonzero(mask & ~truth) - np.count_nonzero(truth & ~mask))
                    / max(int(np.count_nonzero(outline)), 1)
                )
                ious.append(np.count_nonzero(mask & truth) / max(int(np.count_nonzero(mask | truth)), 1))
            iou.extend(ious)
            print(f"  [{label}] {name} seed {seed}: IoU " + " ".join(f"{v:.2f}" for v in ious), flush=True)
    print(f"=== {label}: {len(gross)} views")
    print(f"pixels wrong by more than 3 px per view: mean {np.mean(gross):.0f}, median {np.median(gross):.0f}")
    print(f"farthest shadow taken for part [px]: {_stats(false_part)}")
    print(f"farthest part taken for tray, open to the outside [px]: {_stats(false_tray)}")
    print(f"outward bias [px]: median {np.median(bias):.2f}, mean {np.mean(bias):.2f}")
    print(f"silhouette IoU: {_stats(iou)}, min {np.min(iou):.3f}, views below 0.9: {sum(v < 0.9 for v in iou)}")
    print(f"segmentation time per view [s]: {seconds / len(gross):.3f}", flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
