"""Rendered scans shared by the inspection tests: rendering costs about a second per scene, so each is made once."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache, lru_cache
from pathlib import Path

import numpy as np
import trimesh

from amflow_edge.drivers.simulator.defects import Defect, DefectTruth, apply_defect, defect_rng, settle
from amflow_edge.drivers.simulator.render import Renderer
from amflow_edge.inspection.designs import load_mesh_mm
from amflow_edge.inspection.geometry.camera import CameraCalibration, load_rig
from amflow_edge.inspection.geometry.placement import place_on_tray
from amflow_edge.inspection.learned_light import LearnedLight, LearnedLightRecord
from amflow_edge.inspection.station_model.model import StationModel, load_station_model

REPO = Path(__file__).resolve().parent.parent
DESIGNS = REPO / "config" / "designs"
MESHES = REPO / "tests" / "data" / "meshes"


@lru_cache(maxsize=1)
def rig() -> list[CameraCalibration]:
    return load_rig(REPO / "config" / "calibration" / "demo")


@lru_cache(maxsize=1)
def demo_light() -> LearnedLight:
    """The demo rig's light as its shipped commissioning learned it (scripts/commission-demo-rig)."""
    station = load_station_model(REPO / "config" / "calibration" / "demo")
    light = None if station is None else station.learned_light()
    assert light is not None, "config/calibration/demo/station_model.json has no light: run scripts/commission-demo-rig"
    return light


def light_of(model: StationModel) -> LearnedLight:
    """A station model's learned light, which the test expects it to have."""
    light = model.learned_light()
    assert light is not None, "the model learned no light"
    return light


def light_record_of(model: StationModel) -> LearnedLightRecord:
    assert model.light is not None, "the model learned no light"
    return model.light


@lru_cache(maxsize=1)
def renderer() -> Renderer:
    return Renderer(rig())


@cache
def design(name: str) -> trimesh.Trimesh:
    if name in {"angle_block", "featuretype", "idler_riser"}:
        return load_mesh_mm(MESHES / f"{name}.STL", "inch")
    return load_mesh_mm(DESIGNS / f"{name}.stl", "mm")


@cache
def empty(seed: int = 7) -> dict[str, np.ndarray]:
    return renderer().render(None, None, seed)


@cache
def placed(name: str, seed: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(true pose, images) of the design resting on the tray as an operator would put it."""
    mesh = design(name)
    pose = place_on_tray(mesh, np.random.default_rng(seed))
    return pose, renderer().render(mesh, pose, seed)


@dataclass(frozen=True)
class BenchmarkScene:
    """One scene of benchmarks/inspection.py, made as the benchmark makes it."""

    mesh: trimesh.Trimesh
    """The design (at the scene's size), which the inspection is given."""
    pose: np.ndarray
    """Where the shown part lies on the tray (the design's resting pose, settled after a defect)."""
    images: dict[str, np.ndarray]
    reference: dict[str, np.ndarray]
    """The empty tray, rendered with its own seed as at the station (another frame, independent noise)."""
    truth: DefectTruth | None
    """What the defect did, in the design's frame; None for an intact part."""


@cache
def benchmark_scene(name: str, factor: float, seed: int, defect: str | None = None) -> BenchmarkScene:
    """Benchmark scene `seed` of design `name` at size `factor` (0.7, 1.3; 1 for the design itself), with
    `defect` (KIND:SIZE) put in from the scene's own defect stream: to pin a case the benchmark found."""
    mesh = design(name).copy()
    mesh.apply_scale(factor)
    pose = place_on_tray(mesh, np.random.default_rng(seed))
    shown, truth = mesh, None
    if defect is not None:
        shown, truth = apply_defect(mesh, Defect.parse(defect), defect_rng(seed), pose=pose)
        pose = settle(shown, pose)
    return BenchmarkScene(
        mesh, pose, renderer().render(shown, pose, seed), renderer().render(None, None, seed + 500_000), truth
    )
