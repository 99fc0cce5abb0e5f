"""The bend of a curled part: zero for an intact one, close to the curl for a warped one, ends-up positive."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from amflow_edge.drivers.simulator.defects import Defect, apply_defect, defect_rng, settle
from amflow_edge.inspection.align import View, align
from amflow_edge.inspection.design_cache import design_model
from amflow_edge.inspection.profiles import load_profile
from amflow_edge.inspection.segment import segment_scan
from amflow_edge.inspection.warp import bent, fit_bend
from tests.inspection_scenes import (
    benchmark_scene,
    design,
    empty,
    placed,
    renderer,
    rig,
)

NAME, SEED = "montageblok_mb80", 3


def test_bending_moves_the_ends_along_the_direction_and_leaves_the_middle() -> None:
    axis, up = np.array([1.0, 0.0, 0.0]), np.array([0.0, 0.0, 1.0])
    points = np.array([[-40.0, 0.0, 0.0], [0.0, 0.0, 0.0], [40.0, 0.0, 0.0]])
    curvature = np.radians(6.0) / 80.0
    moved = bent(points, np.zeros(3), axis, up, curvature)
    assert np.allclose(moved[1], points[1])
    lift = curvature * 40.0**2 / 2  # 6° over 80 mm: the ends rise 1.05 mm
    assert np.allclose(moved[[0, 2], 2], lift) and abs(lift - 1.047) < 0.01


def _bend(spec: str | None, cache: Path) -> float:
    pose, images = placed(NAME, SEED)
    mesh = design(NAME)
    if spec is not None:
        shown, _ = apply_defect(mesh, Defect.parse(spec), defect_rng(SEED), pose=pose)
        images = renderer().render(shown, settle(shown, pose), SEED)
    views = [View(c, segment_scan(c.name, images[c.name], empty()[c.name]).mask) for c in rig()]
    model = design_model(mesh, cache)
    return fit_bend(model, views, align(model, views).pose)


def test_an_intact_part_reads_no_bend_and_a_curled_one_its_curl(tmp_path: Path) -> None:
    assert abs(_bend(None, tmp_path)) < 1.0
    assert 3.5 < _bend("warp:6", tmp_path) < 8.0


def test_a_small_part_propped_on_its_end_reads_no_curl_from_its_contact_shadow(tmp_path: Path) -> None:
    """Benchmark scene 3038, rejected intact for a 4.0° warp until the bend fit's loss let shadow tongues go."""
    scene = benchmark_scene("pipe_clip_pc16", 0.7, 3038)
    views = [View(c, segment_scan(c.name, scene.images[c.name], scene.reference[c.name]).mask) for c in rig()]
    threshold = next(c.threshold for c in load_profile("default").criteria if c.metric == "warp_deg")
    assert abs(fit_bend(design_model(scene.mesh, tmp_path), views, scene.pose)) < threshold
