"""How the printed part differs from its design, in millimetres, from the five outlines at the found pose.

Every number a profile can judge is computed here and named in `InspectionMetrics`, so adding a
metric is one field and one line of computation, and a criterion can refer to it by name.
Pixel measures become millimetres at the depth of the part in that camera.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import open3d as o3d

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
SHADING_METRICS = ("surface_defect_mm2", "surface_defect_contrast", "missing_material_contrast")
"""The metrics read off the shading comparison, which abstain with it."""


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
    fit = _Fit.of(model, alignment)
    masks = model_masks(model, views, alignment.pose) if masks is None else masks
    surface = ShadingComparison([], {}) if surface is None else surface
    if surface.abstain is not None:
        # What a comparison that cannot judge the part found is no evidence either way: it confirms no bite.
        surface = ShadingComparison([], {}, spread=surface.spread, abstain=surface.abstain)
    seen = [v for v in views if not v.empty]
    cameras = [
        _measure_camera(_Sight.of(v, masks[v.calib.name], fit), [o for o in seen if o is not v], fit) for v in seen
    ]
    surface = surface.confirmed_by([(r.camera, r.centre_part_mm) for c in cameras for r in c.missing])
    missing = _confirm_missing([r for c in cameras for r in c.missing], surface)
    missing.sort(key=lambda r: -r.depth_mm)
    extra = sorted((r for c in cameras for r in c.extra), key=lambda r: -r.depth_mm)
    metrics = _summarise(fit, _Findings(cameras, missing, extra, surface), scale, bend_deg)
    return metrics, _drawn(cameras, surface)


@dataclass(frozen=True)
class _Fit:
    """The design at the found pose, as every camera's measurement needs it."""

    model: DesignModel
    alignment: Alignment
    vertices: np.ndarray
    inverse: np.ndarray
    centre: np.ndarray
    design: o3d.t.geometry.RaycastingScene
    z_range: tuple[float, float]

    @classmethod
    def of(cls, model: DesignModel, alignment: Alignment) -> _Fit:
        pose = alignment.pose
        vertices = transform(pose, model.vertices)
        return cls(
            model,
            alignment,
            vertices,
            np.linalg.inv(pose),
            transform(pose, model.centroid[None])[0],
            triangle_scene(vertices, model.faces),
            (0.0, float(vertices[:, 2].max()) + TOP_MARGIN_MM),
        )


@dataclass(frozen=True)
class _Sight:
    """One camera's photographed and modelled part inside its window, and its scale at the part."""

    view: View
    observed: np.ndarray
    model: np.ndarray
    background: np.ndarray
    mm_per_px: float

    @classmethod
    def of(cls, view: View, model_mask: np.ndarray, fit: _Fit) -> _Sight:
        observed = view.sdf_window.crop(view.mask)
        return cls(view, observed, model_mask, open_to_background(observed), _mm_per_px(view, fit.centre))


@dataclass(frozen=True)
class _CameraFindings:
    """What one camera measured: its metrics, outline deviations (mm), deep regions and the masks to draw."""

    metrics: CameraMetrics
    deviation: np.ndarray
    missing: list[Region]
    extra: list[Region]
    drawn: dict[str, np.ndarray]


@dataclass(frozen=True)
class _Findings:
    """Every camera's findings, with the regions confirmed across cameras and sorted deepest first."""

    cameras: list[_CameraFindings]
    missing: list[Region]
    extra: list[Region]
    surface: ShadingComparison


def _measure_camera(sight: _Sight, others: Sequence[View], fit: _Fit) -> _CameraFindings:
    view, w, scale_mm = sight.view, sight.view.sdf_window, sight.mm_per_px
    deviation = _outline_deviation(sight, fit.alignment.residuals_px.get(view.calib.name, np.zeros(0)))
    missing = sight.model & sight.background & _certain(view.clear_tray, w)
    extra = consistent_extra(sight.observed & ~sight.model & _certain(view.clear_part, w), view, others, fit.z_range)
    to_observed, to_model = reach_maps(sight.model, sight.observed)
    missing_here = _deep(regions(missing, to_observed, view, scale_mm, fit.inverse, fit.centre, fit.design))
    extra_here = _deep(regions(extra, to_model, view, scale_mm, fit.inverse, fit.centre))
    visible = view.calib.visible(fit.vertices, margin_px=2.0)
    return _CameraFindings(
        _camera_metrics(sight, deviation, missing_here, extra_here, float(visible.mean())),
        deviation,
        missing_here,
        extra_here,
        {"model": sight.model, "missing": missing, "extra": extra},
    )


def _outline_deviation(sight: _Sight, model_outline: np.ndarray) -> np.ndarray:
    """Both ways round, in mm: the design's outline points from the photo's, the photo's outline from the design's."""
    inside = sight.model.astype(np.uint8)
    model_sdf = cv2.distanceTransform(1 - inside, cv2.DIST_L2, 5) - cv2.distanceTransform(inside, cv2.DIST_L2, 5)
    edge = sight.observed & cv2.dilate(sight.background.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    return np.abs(np.concatenate([model_outline, model_sdf[edge]])) * sight.mm_per_px


def _deep(found: list[Region]) -> list[Region]:
    return [r for r in found if r.depth_mm >= DEPTH_FLOOR_MM]


def _camera_metrics(
    sight: _Sight, deviation: np.ndarray, missing: Sequence[Region], extra: Sequence[Region], visible: float
) -> CameraMetrics:
    union = np.count_nonzero(sight.observed | sight.model)
    iou = np.count_nonzero(sight.observed & sight.model) / union if union else 0.0
    return CameraMetrics(
        camera=sight.view.calib.name,
        silhouette_iou=round(iou, 4),
        contour_p95_mm=round(_percentile(deviation, 95), 4),
        contour_p99_mm=round(_percentile(deviation, 99), 4),
        contour_max_mm=round(float(deviation.max()) if len(deviation) else 0.0, 4),
        missing_mm2=max((r.area_mm2 for r in missing), default=0.0),
        extra_mm2=max((r.area_mm2 for r in extra), default=0.0),
        visible_fraction=round(visible, 4),
        mm_per_px=round(sight.mm_per_px, 5),
    )


def _drawn(cameras: Sequence[_CameraFindings], surface: ShadingComparison) -> dict[str, dict[str, np.ndarray]]:
    drawn = {c.metrics.camera: dict(c.drawn) for c in cameras}
    for name, pixels in surface.masks.items():
        if name in drawn:
            drawn[name]["surface"] = pixels
    return drawn


def _summarise(fit: _Fit, found: _Findings, scale: np.ndarray, bend_deg: float) -> InspectionMetrics:
    per_camera = [c.metrics for c in found.cameras]
    everything = np.concatenate([c.deviation for c in found.cameras]) if found.cameras else np.zeros(0)
    scale_pct = (np.asarray(scale) - 1.0) * 100.0
    missing, extra, surface = found.missing, found.extra, found.surface
    return InspectionMetrics(
        silhouette_iou_min=min((c.silhouette_iou for c in per_camera), default=0.0),
        silhouette_iou_mean=round(float(np.mean([c.silhouette_iou for c in per_camera])) if per_camera else 0.0, 4),
        contour_p95_mm=round(_percentile(everything, 95), 4),
        contour_p99_mm=round(_percentile(everything, 99), 4),
        contour_max_mm=round(float(everything.max()) if len(everything) else 0.0, 4),
        missing_material_mm2=_missing_area(missing),
        missing_material_depth_mm=max((r.depth_mm for r in missing), default=0.0),
        extra_material_mm2=max((r.area_mm2 for r in extra), default=0.0),
        extra_material_depth_mm=max((r.depth_mm for r in extra), default=0.0),
        surface_defect_mm2=max((r.area_mm2 for r in surface.regions), default=0.0),
        surface_defect_contrast=max((r.contrast for r in surface.regions), default=0.0),
        missing_material_contrast=_bitten_patch_contrast(surface.regions, missing),
        scale_x_pct=round(float(scale_pct[0]), 3),
        scale_y_pct=round(float(scale_pct[1]), 3),
        scale_z_pct=round(float(scale_pct[2]), 3),
        scale_max_abs_pct=round(float(np.abs(scale_pct).max()), 3),
        tilt_deg=round(tilt_deg(fit.model, fit.alignment.pose), 3),
        warp_deg=round(abs(bend_deg), 3),
        lift_mm=round(float(fit.vertices[:, 2].min()), 4),
        alignment_residual_mm=round(_alignment_residual_mm(fit.alignment, per_camera), 4),
        alignment_inlier_fraction=round(fit.alignment.inlier_fraction, 4),
        visible_fraction=min((c.visible_fraction for c in per_camera), default=0.0),
        cameras_seeing_part=len(per_camera),
        shading_spread=round(surface.spread, 4),
        abstained={} if surface.abstain is None else dict.fromkeys(SHADING_METRICS, surface.abstain),
        missing_regions=missing[:10],
        extra_regions=extra[:10],
        surface_regions=surface.regions[:10],
        per_camera=per_camera,
    )


def _alignment_residual_mm(alignment: Alignment, per_camera: Sequence[CameraMetrics]) -> float:
    """The fit's median outline residual, at the cameras' mean scale; infinite without residuals."""
    residuals = np.concatenate(list(alignment.residuals_px.values())) if alignment.residuals_px else np.zeros(0)
    mean_scale = float(np.mean([c.mm_per_px for c in per_camera])) if per_camera else 0.0
    return float(np.median(np.abs(residuals))) * mean_scale if len(residuals) else math.inf


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
