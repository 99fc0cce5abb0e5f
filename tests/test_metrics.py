"""Metrics: intact parts measure as intact; removed material, tilt and scale show up in millimetres and degrees."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import trimesh

from amflow_edge.drivers.simulator.defects import Defect, apply_defect, defect_rng, settle
from amflow_edge.inspection.align import View, align, fit_scale
from amflow_edge.inspection.design_cache import design_model
from amflow_edge.inspection.metrics import (
    _bitten_patch_contrast,
    _confirm_missing,
    _missing_area,
    compute_metrics,
    tilt_deg,
)
from amflow_edge.inspection.models import CONFIRM_MM, SINGLE_CAMERA_MM2, InspectionMetrics, Region, SurfaceRegion
from amflow_edge.inspection.regions import open_to_background, regions
from amflow_edge.inspection.segment import segment_scan
from amflow_edge.inspection.shading import ShadingComparison
from tests.inspection_scenes import design, empty, placed, renderer, rig


def _metrics(images: dict[str, np.ndarray], name: str, cache: Path) -> InspectionMetrics:
    model = design_model(design(name), cache)
    views = [View(c, segment_scan(c.name, images[c.name], empty()[c.name]).mask) for c in rig()]
    found = align(model, views)
    return compute_metrics(model, views, found, fit_scale(model, views, found.pose))[0]


def test_tilt_is_zero_at_rest_and_measures_a_propped_part(tmp_path: Path) -> None:
    model = design_model(design("montageblok_mb80"), tmp_path)
    rest = model.rest_poses[0]
    assert tilt_deg(model, rest) < 1e-6
    propped = trimesh.transformations.rotation_matrix(math.radians(12.0), (1, 0, 0)) @ rest
    assert tilt_deg(model, propped) == pytest.approx(12.0, abs=0.01)


def test_an_intact_part_measures_small_and_a_cut_away_corner_large(tmp_path: Path) -> None:
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


def test_a_part_too_low_reads_shrunk_in_height(tmp_path: Path) -> None:
    """The outline along the tray is left out of the scale fit (its contact shadow reads as part), so the tray
    must pin the part's foot: free to shift up and down, a block 2 % too low read -0.9 % (a 20 mm cube -0.04 %)."""
    name = "montageblok_mb80"
    pose, _ = placed(name, 3)
    mesh = design(name)
    shown, _ = apply_defect(mesh, Defect.parse("scale:0,0,-2"), defect_rng(3), pose=pose)
    images = renderer().render(shown, settle(shown, pose), 3)
    model = design_model(mesh, tmp_path)
    views = [View(c, segment_scan(c.name, images[c.name], empty()[c.name]).mask) for c in rig()]
    found = align(model, views)
    scale_pct = (fit_scale(model, views, found.pose) - 1.0) * 100.0
    assert -2.6 < scale_pct[2] < -1.4, scale_pct
    assert np.abs(scale_pct[:2]).max() < 0.7, scale_pct


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


@pytest.mark.parametrize(("name", "seed"), [("angle_bracket_ab60", 1001), ("spur_gear_z20m25", 1011)])
def test_material_is_judged_only_where_the_photo_is_certain(name: str, seed: int, tmp_path: Path) -> None:
    """Intact parts: dark faces given to the tray read as 2.8–6.7 mm² missing, shadow given to the part as 6 mm² extra."""
    _, images = placed(name, seed)
    segmentations = [(c, segment_scan(c.name, images[c.name], empty()[c.name])) for c in rig()]
    model = design_model(design(name), tmp_path)
    certain = [View(c, s.mask, s.clear_tray, s.clear_part) for c, s in segmentations]
    found = align(model, certain)
    plain, _ = compute_metrics(model, [View(c, s.mask) for c, s in segmentations], found, np.ones(3))
    judged, _ = compute_metrics(model, certain, found, np.ones(3))
    assert max(r.area_mm2 for r in plain.missing_regions) > 2.0
    assert max((r.area_mm2 for r in judged.missing_regions), default=0.0) < 1.0 and judged.extra_material_mm2 < 3.0


def test_a_thin_spike_reads_shallower_than_its_tip_and_a_rounded_chip_as_deep_as_it_is() -> None:
    """Region depth is the DEPTH_RANK-th deepest pixel: the tip of a spike along a misread outline is a
    pixel or three wide, the bottom of a chip's rounded bite several."""
    view, xs, ys, reach = _outline_at_row_30()
    spike = (xs >= 60) & (xs < 63) & (ys >= 30) & (ys <= 45)
    bite = ((xs - 120) ** 2 + (ys - 30) ** 2 <= 15**2) & (ys >= 30)
    mm_per_px = 0.17
    depths = sorted(
        r.depth_mm / mm_per_px for r in regions(spike | bite, reach, view, mm_per_px, np.eye(4), np.zeros(3))
    )
    assert len(depths) == 2
    spike_depth, bite_depth = depths
    assert spike_depth <= 15.0 - 1.9
    assert bite_depth >= 15.0 - 1.1


def test_clear_tray_beyond_a_dark_face_is_as_deep_as_it_is_wide() -> None:
    """A bite reaches from the photographed outline out to the design's; a speck of clear tray that stops short of
    the photographed part lies beyond a dark face the segmentation gave to the tray (seed 7000's gears and
    bushing read 2.5-2.7 mm deep from specks of 0.4 mm²)."""
    view, xs, ys, reach = _outline_at_row_30()
    bite = (xs >= 40) & (xs < 60) & (ys >= 30) & (ys < 50)
    speck = (xs >= 100) & (xs < 106) & (ys >= 44) & (ys < 50)
    mm_per_px = 0.1
    depths = sorted(
        r.depth_mm / mm_per_px for r in regions(bite | speck, reach, view, mm_per_px, np.eye(4), np.zeros(3))
    )
    assert len(depths) == 2
    speck_depth, bite_depth = depths
    assert speck_depth < 6.0
    assert bite_depth > 17.0


def _outline_at_row_30() -> tuple[View, np.ndarray, np.ndarray, np.ndarray]:
    """A view of a square part, its window's pixel columns and rows, and a reach map (px) of an outline along row 30."""
    calib = rig()[0]
    mask = np.zeros((calib.image_height, calib.image_width), dtype=bool)
    mask[1000:1100, 1200:1300] = True
    view = View(calib, mask)
    ys, xs = np.mgrid[0 : view.sdf_window.height, 0 : view.sdf_window.width]
    return view, xs, ys, np.maximum(ys - 30.0, 0.0).astype(np.float32)


def test_a_missing_region_another_camera_confirms_counts_and_a_lone_small_one_does_not() -> None:
    def region(camera: str, x: float, area: float = 1.0) -> Region:
        return Region(camera=camera, area_mm2=area, depth_mm=0.6, centre_part_mm=[x, 0.0, 0.0])

    def patch(camera: str, x: float) -> SurfaceRegion:
        return SurfaceRegion(camera=camera, area_mm2=1.0, contrast=0.3, centre_part_mm=[x, 0.0, 0.0])

    shading = ShadingComparison([patch("cam05", 30.5)], {}, [(patch("cam03", 20.5), np.zeros((1, 1), bool))])
    found = _confirm_missing(
        [
            region("cam01", 0.0),
            region("cam02", 1.5),
            region("cam01", 10.0),
            region("cam04", 40.0),
            region("cam01", 20.0),
            region("cam02", 30.0),
        ],
        shading,
    )
    assert [r.confirmed for r in found] == [True, True, False, False, True, True]
    assert not _confirm_missing([region("cam01", 0.0), region("cam01", 1.0)], ShadingComparison([], {}))[0].confirmed

    lone = _confirm_missing(
        [region("cam01", 0.0, area=SINGLE_CAMERA_MM2 - 0.5), region("cam02", 50.0, area=1.0)], shading
    )
    assert _missing_area(lone) == 0.0
    large = _confirm_missing([region("cam01", 0.0, area=SINGLE_CAMERA_MM2 + 0.5)], shading)
    assert _missing_area(large) == SINGLE_CAMERA_MM2 + 0.5
    assert _missing_area(found) == 1.0


def test_a_surface_patch_counts_as_a_hollow_only_beside_another_cameras_bite() -> None:
    def bite(camera: str, x: float) -> Region:
        return Region(camera=camera, area_mm2=0.5, depth_mm=0.6, centre_part_mm=[x, 0.0, 0.0])

    def patch(camera: str, x: float, contrast: float) -> SurfaceRegion:
        return SurfaceRegion(camera=camera, area_mm2=1.0, contrast=contrast, centre_part_mm=[x, 0.0, 0.0])

    near = CONFIRM_MM - 0.5
    assert _bitten_patch_contrast([patch("cam02", 0.0, 0.3), patch("cam03", 10.0, 0.4)], [bite("cam01", near)]) == 0.3
    assert _bitten_patch_contrast([patch("cam02", 0.0, 0.3)], [bite("cam02", near)]) == 0.0, (
        "the same camera is no second view"
    )
    assert _bitten_patch_contrast([patch("cam02", 0.0, 0.3)], [bite("cam01", CONFIRM_MM + 0.5)]) == 0.0
    assert _bitten_patch_contrast([], [bite("cam01", 0.0)]) == 0.0
