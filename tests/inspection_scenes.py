"""Rendered scans shared by the inspection tests: rendering costs about a second per scene, so each is made once."""

from __future__ import annotations

from functools import cache, lru_cache
from pathlib import Path

import numpy as np
import trimesh

from inspection.camera import CameraCalibration, load_rig
from inspection.defects import Defect, apply_defect, defect_rng, settle
from inspection.designs import load_mesh_mm
from inspection.placement import place_on_tray
from inspection.render import Renderer

REPO = Path(__file__).resolve().parent.parent
DESIGNS = REPO / "config" / "designs"
MESHES = REPO / "tests" / "data" / "meshes"


@lru_cache(maxsize=1)
def rig() -> list[CameraCalibration]:
    return load_rig(REPO / "config" / "calibration" / "demo")


@lru_cache(maxsize=1)
def renderer() -> Renderer:
    return Renderer(rig())


@lru_cache(maxsize=None)
def design(name: str) -> trimesh.Trimesh:
    if name in {"angle_block", "featuretype", "idler_riser"}:
        return load_mesh_mm(MESHES / f"{name}.STL", "inch")
    return load_mesh_mm(DESIGNS / f"{name}.stl", "mm")


@lru_cache(maxsize=None)
def empty(seed: int = 7) -> dict[str, np.ndarray]:
    return renderer().render(None, None, seed)


@lru_cache(maxsize=None)
def placed(name: str, seed: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(true pose, images) of the design resting on the tray as an operator would put it."""
    mesh = design(name)
    pose = place_on_tray(mesh, np.random.default_rng(seed))
    return pose, renderer().render(mesh, pose, seed)


@cache
def benchmark_scene(
    name: str, factor: float, seed: int, defect: str | None = None
) -> tuple[trimesh.Trimesh, np.ndarray, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(mesh, true pose, images, empty-tray reference) of benchmarks/inspection.py's scene `seed`, to pin a case it found.

    `factor` is the benchmark's size variant (0.7, 1.3; 1 for the design itself); the reference is
    rendered with its own seed, as the benchmark does; `defect` (KIND:SIZE) is put in as the benchmark
    puts it, with the scene's own defect stream, and the mesh returned is the design's.
    """
    mesh = design(name).copy()
    mesh.apply_scale(factor)
    pose = place_on_tray(mesh, np.random.default_rng(seed))
    shown, shown_pose = mesh, pose
    if defect is not None:
        shown, _ = apply_defect(mesh, Defect.parse(defect), defect_rng(seed), pose=pose)
        shown_pose = settle(shown, pose)
    return mesh, shown_pose, renderer().render(shown, shown_pose, seed), renderer().render(None, None, seed + 500_000)
