"""How the printed part differs from its design, in millimetres, from the five outlines at the found pose.

Every number a profile can judge is computed here and named in `InspectionMetrics`, so adding a
metric is one field and one line of computation, and a criterion can refer to it by name.
Pixel measures become millimetres at the depth of the part in that camera.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import cv2
import numpy as np

from amflow_edge.inspection.align import Alignment, View, transform
from amflow_edge.inspection.design_cache import DesignModel
from amflow_edge.inspection.geometry.raycast import triangle_scene
from amflow_edge.inspection.geometry.silhouette import Window, silhouette
from amflow_edge.inspection.models import (
    SINGLE_CAMERA_MM2,
    CameraMetrics,
    InspectionMetrics,
    Region,
    SurfaceRegion,
)
from amflow_edge.inspection.regions import (
    DEPTH_FLOOR_MM,
    consistent_extra,
    open_to_background,
    reach_maps,
    regions,
)
from amflow_edge.inspection.shading import ShadingComparison, seen_elsewhere

TOP_MARGIN_MM = 3.0


def _mm_per_px(view: View, point_world: np.ndarray) -> float:
    depth = float(view.calib.to_camera(point_world[None])[0, 2])
    return depth / float(view.calib.K[0, 0])


def _percentile(values: np.ndarray, q: float) -> float:
    return float(np.percentile(values, q)) if len(values) else 0.0


def model_masks(model: DesignModel, views: Sequence[View], pose: np.ndarray) -> dict[str, np.ndarray]:
    """Full-resolution model silhouettes inside each view's window (what overlays and metrics compare)."""
    vertices = transform(pose, model.vertices)
    return {v.calib.name: silhouette(v.calib, vertices, model.faces, v.sdf_window) > 0 for v in views if not v.empty}


def compute_metrics(
    model: DesignModel,
    views: Sequence[View],
    alignment: Alignment,
    scale: np.ndarray,
    bend_deg: float = 0.0,
    masks: Mapping[str, np.ndarray] | None = None,
    surface: ShadingComparison | None = None,
) -> tuple[InspectionMetrics, dict[str, dict[str, np.ndarray]]]:
    """The metrics, and per camera the masks (model, missing, extra, surface) the overlays draw.

    `masks` are `model_masks` at the alignment's pose when the caller has them already; without
    `surface` (inspection.shading.compare_shading) the surface figures stay 0.
    """
    pose = alignment.pose
    inverse = np.linalg.inv(pose)
    centre = transform(pose, model.centroid[None])[0]
    masks = model_masks(model, views, pose) if masks is None else masks
    surface = ShadingComparison([], {}) if surface is None else surface
    per_camera: list[CameraMetrics] = []
    deviations: list[np.ndarray] = []
    missing_regions: list[Region] = []
    extra_regions: list[Region] = []
    drawn: dict[str, dict[str, np.ndarray]] = {}
    vertices = transform(pose, model.vertices)
    design = triangle_scene(vertices, model.faces)
    z_range = (0.0, float(vertices[:, 2].max()) + TOP_MARGIN_MM)
    for view in views:
        if view.empty:
            continue
        name = view.calib.name
        w = view.sdf_window
        observed = w.crop(view.mask)
        model_mask = masks[name]
        scale_mm = _mm_per_px(view, centre)
        union = np.count_nonzero(observed | model_mask)
        iou = np.count_nonzero(observed & model_mask) / union if union else 0.0
        model_outline = alignment.residuals_px.get(name, np.zeros(0))
        inside = model_mask.astype(np.uint8)
        model_sdf = cv2.distanceTransform(1 - inside, cv2.DIST_L2, 5) - cv2.distanceTransform(inside, cv2.DIST_L2, 5)
        background = open_to_background(observed)
        edge = observed & cv2.dilate(background.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
        observed_outline = model_sdf[edge]
        deviation = np.abs(np.concatenate([model_outline, observed_outline])) * scale_mm
        deviations.append(deviation)
        missing = model_mask & background & _certain(view.clear_tray, w)
        others = [v for v in views if v is not view and not v.empty]
        extra = consistent_extra(observed & ~model_mask & _certain(view.clear_part, w), view, others, z_range)
        to_observed, to_model = reach_maps(model_mask, observed)
        missing_here = [
            r
            for r in regions(missing, to_observed, view, scale_mm, inverse, centre, design)
            if r.depth_mm >= DEPTH_FLOOR_MM
        ]
        extra_here = [
            r for r in regions(extra, to_model, view, scale_mm, inverse, centre) if r.depth_mm >= DEPTH_FLOOR_MM
        ]
        missing_regions += missing_here
        extra_regions += extra_here
        visible = view.calib.visible(vertices, margin_px=2.0)
        per_camera.append(
            CameraMetrics(
                camera=name,
                silhouette_iou=round(iou, 4),
                contour_p95_mm=round(_percentile(deviation, 95), 4),
                contour_p99_mm=round(_percentile(deviation, 99), 4),
                contour_max_mm=round(float(deviation.max()) if len(deviation) else 0.0, 4),
                missing_mm2=max((r.area_mm2 for r in missing_here), default=0.0),
                extra_mm2=max((r.area_mm2 for r in extra_here), default=0.0),
                visible_fraction=round(float(visible.mean()), 4),
                mm_per_px=round(scale_mm, 5),
            )
        )
        drawn[name] = {"model": model_mask, "missing": missing, "extra": extra}
    surface = surface.confirmed_by([(r.camera, r.centre_part_mm) for r in missing_regions])
    missing_regions = _confirm_missing(missing_regions, surface)
    for name, pixels in surface.masks.items():
        if name in drawn:
            drawn[name]["surface"] = pixels
    everything = np.concatenate(deviations) if deviations else np.zeros(0)
    missing_regions.sort(key=lambda r: -r.depth_mm)
    extra_regions.sort(key=lambda r: -r.depth_mm)
    scale_pct = (np.asarray(scale) - 1.0) * 100.0
    residuals = np.concatenate(list(alignment.residuals_px.values())) if alignment.residuals_px else np.zeros(0)
    mean_scale = float(np.mean([c.mm_per_px for c in per_camera])) if per_camera else 0.0
    metrics = InspectionMetrics(
        silhouette_iou_min=min((c.silhouette_iou for c in per_camera), default=0.0),
        silhouette_iou_mean=round(float(np.mean([c.silhouette_iou for c in per_camera])) if per_camera else 0.0, 4),
        contour_p95_mm=round(_percentile(everything, 95), 4),
        contour_p99_mm=round(_percentile(everything, 99), 4),
        contour_max_mm=round(float(everything.max()) if len(everything) else 0.0, 4),
        missing_material_mm2=_missing_area(missing_regions),
        missing_material_depth_mm=max((r.depth_mm for r in missing_regions), default=0.0),
        extra_material_mm2=max((r.area_mm2 for r in extra_regions), default=0.0),
        extra_material_depth_mm=max((r.depth_mm for r in extra_regions), default=0.0),
        surface_defect_mm2=max((r.area_mm2 for r in surface.regions), default=0.0),
        surface_defect_contrast=max((r.contrast for r in surface.regions), default=0.0),
        missing_material_contrast=_bitten_patch_contrast(surface.regions, missing_regions),
        scale_x_pct=round(float(scale_pct[0]), 3),
        scale_y_pct=round(float(scale_pct[1]), 3),
        scale_z_pct=round(float(scale_pct[2]), 3),
        scale_max_abs_pct=round(float(np.abs(scale_pct).max()), 3),
        tilt_deg=round(tilt_deg(model, pose), 3),
        warp_deg=round(abs(bend_deg), 3),
        lift_mm=round(float(vertices[:, 2].min()), 4),
        alignment_residual_mm=round(
            float(np.median(np.abs(residuals))) * mean_scale if len(residuals) else math.inf, 4
        ),
        alignment_inlier_fraction=round(alignment.inlier_fraction, 4),
        visible_fraction=min((c.visible_fraction for c in per_camera), default=0.0),
        cameras_seeing_part=len(per_camera),
        missing_regions=missing_regions[:10],
        extra_regions=extra_regions[:10],
        surface_regions=surface.regions[:10],
        per_camera=per_camera,
    )
    return metrics, drawn


def _certain(mask: np.ndarray | None, window: Window) -> np.ndarray | bool:
    """The window's part of a segmentation's certainty mask; views made without one are certain everywhere."""
    return True if mask is None else window.crop(mask)


def tilt_deg(model: DesignModel, pose: np.ndarray) -> float:
    """How far the part's up direction is from that of the nearest stable resting pose: propped or stacked parts show it."""
    up_now = pose[:3, :3].T @ np.array([0.0, 0.0, 1.0])
    ups = model.all_rest_poses[:, :3, :3].transpose(0, 2, 1) @ np.array([0.0, 0.0, 1.0])
    cosines = np.clip(ups @ up_now, -1.0, 1.0)
    return math.degrees(math.acos(float(cosines.max())))


def _confirm_missing(missing: list[Region], surface: ShadingComparison) -> list[Region]:
    """The regions, each marked whether another camera saw a bite or a shading patch (standing or not) near it.

    A chip is a hollow in a solid: the cameras it faces see its shading, those it turns its edge to a
    bite out of the outline. A speck of tray the segmentation finds beside a dark face or between
    gear teeth is one camera's. On seed 11000, new then, three intact parts were rejected for such
    specks of 1.6-2.5 mm² in one camera (and one on seed 7000, 1.9 mm²), while no 1 mm chip of
    seeds 1000 and 11000 was rejected for its area: their bites are under a square millimetre, and
    their shading rejects them. An unconfirmed region still counts from SINGLE_CAMERA_MM2, a bite
    that large being more than a segmentation slip (intact parts read at most 2.5 mm² unconfirmed).
    """
    places = [(r.camera, r.centre_part_mm) for r in missing]
    places += [(r.camera, r.centre_part_mm) for r in surface.regions]
    places += [(r.camera, r.centre_part_mm) for r, _ in surface.pending]
    return [r.model_copy(update={"confirmed": seen_elsewhere(r.camera, r.centre_part_mm, places)}) for r in missing]


def _missing_area(missing: Sequence[Region]) -> float:
    """The largest region that counts: confirmed by another camera, or large enough alone."""
    return max((r.area_mm2 for r in missing if r.confirmed or r.area_mm2 >= SINGLE_CAMERA_MM2), default=0.0)


def _bitten_patch_contrast(patches: Sequence[SurfaceRegion], missing: Sequence[Region]) -> float:
    """The strongest surface patch that another camera's outline bite lies beside, 0 for none.

    A chip is a hollow: a camera facing it sees its faces turned to the lights at the wrong angles, one
    looking along it a bite out of the outline. Each alone is also what intact parts give (a bore under
    a half-seen light, a speck of tray beside a dark face), which is why surface_defect_contrast and
    missing_material_mm2 are judged from thresholds above what intact parts read; both at one place on
    the part, from two cameras, is what a chip gives and no intact benchmark part did. confirmed_by
    pairs the same two to let a faint patch stand; this says which standing patches such a pair made.
    """
    bites = [(r.camera, r.centre_part_mm) for r in missing]
    return max((p.contrast for p in patches if seen_elsewhere(p.camera, p.centre_part_mm, bites)), default=0.0)
