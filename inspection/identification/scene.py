"""What is on the tray before any design is tried: nothing, one part, several, or a part the cameras cannot see
whole, and the top camera's outline of it on the tray.

These are decided from the segmentation alone, so that a scan no design could honestly be named for is never
given to the ranking: an assignment made to the best of fifty fits of two parts at once would look confident
and be wrong.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from amflow_edge.inspection.align import View, top_view
from amflow_edge.inspection.identification.models import Outcome

BORDER_PX = 3
"""A top-camera mask this close to the image border may be cut off by it."""
SPECK_MM2 = 20.0
"""Less than this seen from above is a speck of dirt or noise, not a part (the smallest Voron part covers 120 mm²)."""
COMPONENT_SHARE = 0.5
"""A second patch counts as a part when it covers at least this share of the smallest candidate's smallest footprint."""
SEPARATE_MM = 2.0
"""Patches closer than this may be one part the segmentation split along a thin dark feature; farther, two parts."""
CONFIRM_SHARE = 0.6
"""Share of a patch's core that another camera must see as part for the patch to be a part, not a shadow or glare."""
SIDE_VIEWS_FOR_PART = 2


@dataclass(frozen=True)
class Verdict:
    """Why no design is tried on this scan."""

    outcome: Outcome
    reason: str


@dataclass(frozen=True)
class TopOutline:
    """The top camera's part mask as contours whose pixels are kept with their rays, so that the outline can be
    laid on the tray at the height each candidate pose predicts (parallax makes a 30 mm tall part look 5 % larger)."""

    contours: list[np.ndarray]
    """Per contour (outer outlines and holes alike; even-odd filling restores the mask), its (N, 2) pixels."""
    rays: list[np.ndarray]
    centre: np.ndarray
    area_px: int

    def parallax(self, polygons: list[np.ndarray], height: float) -> np.ndarray:
        """(2,) mm: how far apart the top camera sees a part's bottom and top edges on the plane at half its height,
        for a part of `height` at the outline's place (radially outward from the camera's foot on the tray)."""
        points = np.vstack(polygons)
        off_axis = (points.min(axis=0) + points.max(axis=0)) / 2 - self.centre[:2]
        return off_axis * height / max(float(self.centre[2]) - height / 2, 1.0)

    def on_plane(self, z: float) -> list[np.ndarray]:
        """The contours as (N, 2) tray points (mm) where their rays meet the plane at height z."""
        out = []
        for ray in self.rays:
            t = (z - self.centre[2]) / ray[:, 2]
            out.append(self.centre[:2] + t[:, None] * ray[:, :2])
        return out


def mm_per_px(view: View, z: float) -> float:
    """Size of a top-camera pixel on the plane at height z, at the image centre."""
    calib = view.calib
    depth = float(calib.to_camera(np.array([[0.0, 0.0, z]]))[0, 2])
    return depth / float(calib.K[0, 0])


def top_outline(views: Sequence[View], mask: np.ndarray | None = None) -> TopOutline:
    top = top_view(views)
    source = top.mask if mask is None else mask
    contours, _ = cv2.findContours(source.astype(np.uint8), cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    kept = [c.reshape(-1, 2).astype(np.float64) for c in contours if len(c) >= 3]
    rays = [top.calib.rays(c) for c in kept]
    return TopOutline(kept, rays, top.calib.centre, int(np.count_nonzero(source)))


def examine(views: Sequence[View], smallest_footprint_mm2: float) -> tuple[Verdict | None, np.ndarray | None]:
    """A verdict when the scan shows no single part wholly in view, else None and the top mask to identify by
    (the part's patches, specks dropped)."""
    top = top_view(views)
    side_seeing = sum(1 for v in views if v is not top and not v.empty)
    scale = mm_per_px(top, 0.0)
    area_mm2 = float(np.count_nonzero(top.mask)) * scale * scale if not top.empty else 0.0
    if area_mm2 < SPECK_MM2:
        if side_seeing >= SIDE_VIEWS_FOR_PART:
            return Verdict(
                "out_of_view",
                f"the top camera sees no part but {side_seeing} side cameras do; put the part in the middle of the tray",
            ), None
        return Verdict("empty_tray", "no camera sees a part on the tray"), None
    height, width = top.mask.shape
    frame = np.zeros_like(top.mask)
    frame[:BORDER_PX, :] = frame[-BORDER_PX:, :] = True
    frame[:, :BORDER_PX] = frame[:, -BORDER_PX:] = True
    if np.any(top.mask & frame):
        return Verdict(
            "out_of_view", "the part reaches the edge of the top camera's image; put it in the middle of the tray"
        ), None
    count, labels, stats, _ = cv2.connectedComponentsWithStats(top.mask.astype(np.uint8), connectivity=8)
    areas = stats[1:, cv2.CC_STAT_AREA] * scale * scale
    floor = max(SPECK_MM2, COMPONENT_SHARE * smallest_footprint_mm2)
    parts = [i + 1 for i in np.argsort(-areas) if areas[i] >= floor]
    if not parts:
        parts = [int(np.argmax(areas)) + 1]
    keep = np.isin(labels, [i + 1 for i in range(count - 1) if areas[i] >= SPECK_MM2])
    if len(parts) >= 2:
        several = _separate_parts(views, top, labels, parts, scale)
        if several:
            return Verdict(
                "several_parts",
                f"{several} separate parts on the tray (seen from above and confirmed by a side camera); "
                "scan one part at a time",
            ), None
    return None, keep


def _separate_parts(views: Sequence[View], top: View, labels: np.ndarray, parts: list[int], scale: float) -> int:
    """How many of the patches are parts of their own: confirmed by a side camera and apart from the others.

    A patch the segmentation split off one part lies within a line's width of the rest; a part put beside
    another lies farther. A shadow or a glint is seen by the top camera only.
    """
    confirmed = [p for p in parts if _confirmed(views, top, labels == p)]
    if len(confirmed) < 2:
        return 0
    groups: list[np.ndarray] = []
    for part in confirmed:
        mask = (labels == part).astype(np.uint8)
        distance = cv2.distanceTransform(1 - mask, cv2.DIST_L2, 3)
        merged = False
        for index, group in enumerate(groups):
            if float(distance[group > 0].min()) * scale < SEPARATE_MM:
                groups[index] = group | mask
                merged = True
                break
        if not merged:
            groups.append(mask)
    return len(groups) if len(groups) >= 2 else 0


def _confirmed(views: Sequence[View], top: View, patch: np.ndarray) -> bool:
    """Whether another camera sees part where this top-camera patch's core meets the tray.

    The core (pixels at least half the patch's inner radius from its edge) lies on the part's own footprint,
    which every camera sees as part, in front of the part or behind it; the rim may be a tall part's top
    face leaning out by parallax.
    """
    inner = cv2.distanceTransform(patch.astype(np.uint8), cv2.DIST_L2, 3)
    core = np.argwhere(inner >= 0.5 * inner.max())[:, ::-1].astype(np.float64)
    if len(core) > 300:
        core = core[np.linspace(0, len(core) - 1, 300).astype(int)]
    rays = top.calib.rays(core)
    t = -top.calib.centre[2] / rays[:, 2]
    points = top.calib.centre + t[:, None] * rays
    for view in views:
        if view is top or view.empty:
            continue
        pixels = view.calib.project(points)
        x, y = np.round(pixels[:, 0]).astype(int), np.round(pixels[:, 1]).astype(int)
        inside = (x >= 0) & (y >= 0) & (x < view.mask.shape[1]) & (y < view.mask.shape[0])
        if inside.mean() < 0.9:
            continue
        if float(view.mask[y[inside], x[inside]].mean()) >= CONFIRM_SHARE:
            return True
    return False
