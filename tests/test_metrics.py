"""Metrics: intact parts measure as intact; removed material, tilt and scale show up in millimetres and degrees."""

from __future__ import annotations

import math

import numpy as np
import pytest
import trimesh

from inspection.align import View, align, fit_scale
from inspection.design_cache import design_model
from inspection.metrics import compute_metrics, tilt_deg
from inspection.regions import open_to_background
from inspection.segment import segment_scan
from tests.inspection_scenes import design, empty, placed, renderer, rig


def _metrics(images: dict[str, np.ndarray], name: str, cache):  # type: ignore[no-untyped-def]
    model = design_model(design(name), cache)
    views = [View(c, segment_scan(c.name, images[c.name], empty()[c.name]).mask) for c in rig()]
    found = align(model, views)
    return compute_metrics(model, views, found, fit_scale(model, views, found.pose))[0]


def test_tilt_is_zero_at_rest_and_measures_a_propped_part(tmp_path) -> None:  # type: ignore[no-untyped-def]
    model = design_model(design("montageblok_mb80"), tmp_path)
    rest = model.rest_poses[0]
    assert tilt_deg(model, rest) < 1e-6
    propped = trimesh.transformations.rotation_matrix(math.radians(12.0), (1, 0, 0)) @ rest
    assert tilt_deg(model, propped) == pytest.approx(12.0, abs=0.01)


def test_an_intact_part_measures_small_and_a_cut_away_corner_large(tmp_path) -> None:  # type: ignore[no-untyped-def]
    name = "montageblok_mb80"
    pose, images = placed(name, 3)
    intact = _metrics(images, name, tmp_path)
    assert intact.silhouette_iou_min > 0.9 and intact.tilt_deg < 1.0 and abs(intact.lift_mm) < 0.5
    assert intact.scale_max_abs_pct < 1.5
    mesh = design(name)
    corner = mesh.vertices[np.argmax(mesh.vertices @ np.array([1.0, 1.0, 1.0]))]
    cutter = trimesh.creation.box((8.0, 8.0, 8.0), trimesh.transformations.translation_matrix(corner))
    damaged = trimesh.boolean.difference([mesh, cutter], engine="manifold")
    cut = _metrics(renderer().render(damaged, pose, 3), name, tmp_path)
    # Depth, not area: shadowed dark faces (here the walls of the through-holes seen from above)
    # leave regions of ~10 mm² and ~2 mm depth on the intact part (segmentation noise), while the
    # cut corner reaches further past the outline, at the corner.
    assert cut.missing_material_depth_mm > intact.missing_material_depth_mm + 0.5
    assert cut.missing_material_depth_mm > 2.0 and cut.missing_material_mm2 > 8.0
    assert cut.missing_regions and np.linalg.norm(np.array(cut.missing_regions[0].centre_part_mm) - corner) < 12.0
    assert intact.scale_max_abs_pct < 1.5 and cut.scale_max_abs_pct < 1.5, "a chip must not read as shrinkage"


def test_only_background_open_to_the_outside_can_show_missing_material() -> None:
    """A hole enclosed by part pixels is a dark bore wall given to the tray; a chip opens onto the background."""
    observed = np.zeros((40, 40), dtype=bool)
    observed[5:35, 5:35] = True
    observed[15:20, 15:20] = False  # enclosed: a dark pocket
    observed[5:10, 20:25] = False  # a notch in the outline: a chip
    open_ = open_to_background(observed)
    assert not open_[15:20, 15:20].any()
    assert open_[5:10, 20:25].all()
    assert open_[0, 0] and not open_[30, 30]
