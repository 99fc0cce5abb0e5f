"""Missing and extra material: where one camera's photographed outline and the model's outline disagree, and how deeply.

Segmentation errs along the outline where a dark face meets the part's own soft shadow: a ragged
band a few pixels wide, sometimes a tongue of shadow ten or more pixels long. Area alone cannot
tell that from a 1 mm chip, so a region is judged by its depth (how far it reaches past the other
outline, in mm at the part's depth) and extra material must also be consistent across cameras:
an extra pixel is real material only if some point on its ray, between the tray and the part's
top, lies inside the part mask of every other camera that can see it (visual-hull carving). A
tongue of shadow on the tray fails that test in the cameras looking from the other side; a blob
passes it in all of them.

Only pixels whose evidence is beyond doubt count (`Segmentation.clear_tray` for missing material,
`clear_part` for extra): a dark face the segmentation gave to the tray, or a shadow it gave to the
part, read as up to 67 mm² of material on intact parts; a chip shows tray in full light behind it.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import open3d as o3d

from amflow_edge.inspection.align import EDGE_BIAS_PX, View, transform
from amflow_edge.inspection.geometry.raycast import cast
from amflow_edge.inspection.models import Region

CLEAN_PX = 3
MIN_REGION_PX = 12
DEPTH_FLOOR_MM = 0.3
DEPTH_RANK = 6
TOUCH_PX = 3.0
CARVE_SAMPLES = 24
CARVE_TOLERANCE_PX = 2.5
MAX_CARVE_PIXELS = 1500


def consistent_extra(extra: np.ndarray, view: View, others: Sequence[View], z_range: tuple[float, float]) -> np.ndarray:
    """The extra pixels (window mask of `view`) whose rays pass through the other cameras' visual hull."""
    ys, xs = np.nonzero(extra)
    keep = np.zeros_like(extra)
    if len(xs) == 0 or not others:
        return extra.copy()
    if len(xs) > MAX_CARVE_PIXELS:
        pick = np.random.default_rng(0).choice(len(xs), MAX_CARVE_PIXELS, replace=False)
        ys, xs = ys[pick], xs[pick]
    w = view.sdf_window
    rays = view.calib.rays(np.column_stack([xs + w.x0, ys + w.y0]).astype(np.float64))
    centre = view.calib.centre
    heights = np.linspace(z_range[0], z_range[1], CARVE_SAMPLES)
    t = (heights[None, :] - centre[2]) / rays[:, 2:3]
    points = centre + t[..., None] * rays[:, None, :]
    inside_all = np.ones(points.shape[:2], dtype=bool)
    flat = points.reshape(-1, 3)
    for other in others:
        pixels = other.calib.project(flat)
        size = (other.calib.image_width - 3.0, other.calib.image_height - 3.0)
        seen = (pixels[:, 0] > 3.0) & (pixels[:, 1] > 3.0) & (pixels[:, 0] < size[0]) & (pixels[:, 1] < size[1])
        sdf = other.sample_sdf(pixels)
        inside = ~seen | (sdf <= CARVE_TOLERANCE_PX + EDGE_BIAS_PX)
        inside_all &= inside.reshape(points.shape[:2])
    hit = inside_all.any(axis=1)
    keep[ys[hit], xs[hit]] = True
    if len(xs) < np.count_nonzero(extra):
        keep = cv2.dilate(keep.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool) & extra
    return keep


def regions(
    diff: np.ndarray,
    reach: np.ndarray,
    view: View,
    mm_per_px: float,
    inverse_pose: np.ndarray,
    depth_point: np.ndarray,
    design: o3d.t.geometry.RaycastingScene | None = None,
) -> list[Region]:
    """Connected regions of `diff` (window mask) with their depth and their core area.

    A region's centre is placed where the ray through its pixel nearest its centroid meets `design` (a
    ray-casting scene of the design at the fitted pose) when given and hit, else at `depth_point`'s
    depth: missing material is design the photo lacks, so its ray meets the design where the material
    was, which is what ties an outline bite to a shading patch another camera saw (inspection.shading).

    The depth is the DEPTH_RANK-th largest `reach` (px) inside the region: a chip's rounded bottom
    has several pixels near its deepest, while the thin tip of a sliver along a misread outline has
    few (on 22 intact scenes the median depth fell from 0.66 to 0.48 mm). Only pixels reaching past DEPTH_FLOOR_MM count
    towards the area, so a long ragged sliver along the outline adds nothing while a chip counts
    with most of its area.

    A region that does not come within TOUCH_PX of the other outline reaches only across itself: a
    bite out of a part shows tray from the design's outline to the photographed one, while a speck of
    clear tray at the far side of a dark face the segmentation gave to the tray is as deep as it is
    wide, not as the face (an intact bushing and x0.7 gear of seed 7000 read 2.5 and 2.7 mm deep from specks
    of 0.4 mm²)."""
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (CLEAN_PX, CLEAN_PX))
    cleaned = cv2.morphologyEx(diff.astype(np.uint8), cv2.MORPH_OPEN, kernel)
    count, labels, stats, centroids = cv2.connectedComponentsWithStats(cleaned, connectivity=8)
    if count <= 1:
        return []
    floor_px = DEPTH_FLOOR_MM / mm_per_px
    areas = np.zeros(count)
    depth_px = np.zeros(count)
    for i in np.nonzero(stats[:, cv2.CC_STAT_AREA] >= MIN_REGION_PX)[0]:
        if i == 0:
            continue
        x, y, bw, bh = (int(stats[i, k]) for k in range(4))
        values = reach[y : y + bh, x : x + bw][labels[y : y + bh, x : x + bw] == i]
        depth_px[i] = float(np.partition(values, -DEPTH_RANK)[-DEPTH_RANK]) if len(values) >= DEPTH_RANK else 0.0
        if depth_px[i] and values.min() > TOUCH_PX:
            depth_px[i] -= float(values.min())
        areas[i] = float(np.count_nonzero(values >= floor_px))
    w = view.sdf_window
    depth = float(view.calib.to_camera(depth_point[None])[0, 2])
    chosen = [i for i in range(1, count) if areas[i] > 0]
    if not chosen:
        return []
    pixels = np.array([_nearest_pixel(labels, i, stats[i], centroids[i]) for i in chosen], dtype=np.float64) + (
        w.x0,
        w.y0,
    )
    rays = view.calib.rays(pixels)
    along = depth / (rays @ view.calib.optical_axis)
    if design is not None:
        hit = cast(design, view.calib.centre.astype(np.float32), rays.astype(np.float32))["t_hit"]
        along = np.where(np.isfinite(hit), hit, along)
    world = transform(inverse_pose, view.calib.centre + along[:, None] * rays)
    found = [
        Region(
            camera=view.calib.name,
            area_mm2=round(float(areas[i]) * mm_per_px**2, 3),
            depth_mm=round(float(depth_px[i]) * mm_per_px, 3),
            centre_part_mm=[round(float(v), 2) for v in point],
        )
        for i, point in zip(chosen, world, strict=True)
    ]
    return sorted(found, key=lambda r: -r.depth_mm)


def _nearest_pixel(labels: np.ndarray, label: int, box: np.ndarray, centroid: np.ndarray) -> tuple[int, int]:
    """(x, y) of the region's pixel nearest its centroid: a crescent's centroid lies outside it."""
    x, y, width, height = (int(v) for v in box[:4])
    ys, xs = np.nonzero(labels[y : y + height, x : x + width] == label)
    nearest = int(np.argmin((xs + x - centroid[0]) ** 2 + (ys + y - centroid[1]) ** 2))
    return int(xs[nearest]) + x, int(ys[nearest]) + y


def open_to_background(observed: np.ndarray) -> np.ndarray:
    """Pixels not on the part that connect to the window's border: where material could be seen to be missing.

    A hole in the part mask that is enclosed by part pixels is a dark bore wall or an unlit pocket the
    segmentation gave to the tray; a chip taken out of the part opens onto the background in every
    camera whose outline it changes, so only background reachable from outside counts as missing.
    """
    background = (~observed).astype(np.uint8)
    count, labels = cv2.connectedComponents(background, connectivity=4)
    border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    outside = np.zeros(count, dtype=bool)
    outside[border] = True
    outside[0] = False
    return outside[labels]


def reach_maps(model_mask: np.ndarray, observed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per pixel: distance (px) to the observed part (depth of missing material) and to the model (of extra material)."""
    to_observed = cv2.distanceTransform((~observed).astype(np.uint8), cv2.DIST_L2, 5)
    to_model = cv2.distanceTransform((~model_mask).astype(np.uint8), cv2.DIST_L2, 5)
    return to_observed, to_model
