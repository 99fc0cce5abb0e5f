"""From the whole batch to the few designs worth a real fit: footprints from above first, silhouettes in all
cameras second.

A real fit costs a tenth of a second or more per design, so it can be afforded for three designs, not for a
hundred. The footprint comparison is two-dimensional: the top camera's outline, laid on the tray at half the
candidate's height (where parallax errs least), against the design's footprint in each rest pose turned through
every yaw; it costs about a millisecond per rest pose and gives the yaw. Real parts shrink a few percent and
segmentations differ by a pixel or two, so the scalar prefilter's tolerances are wide and the footprint match is
a ranking, not a test. The silhouette comparison then puts the best few poses in all five calibrated cameras,
as the alignment's coarse search does, so that mirror images and parts alike from above are ranked by what the
side cameras see.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from amflow_edge.inspection.align import MEDIUM_SCALE, View, seeing, top_view
from amflow_edge.inspection.geometry.silhouette import silhouette
from amflow_edge.inspection.identification.descriptors import Descriptors
from amflow_edge.inspection.identification.scene import TopOutline

AREA_RATIO = (0.6, 1.65)
"""Scan footprint area ÷ design footprint area that a rest pose may show; wider than shrinkage and segmentation
need, since a tall part seen off-centre shows a side wall too."""
SIDE_RATIO = (0.7, 1.45)
YAW_STEP_DEG = 10.0
YAW_REFINE_DEG = (5.0, 2.5, 1.25)
PEAK_SHARE = 0.85
"""Another yaw (or rest pose) of the same design is kept when its footprint match reaches this share of the best."""
PEAK_APART_DEG = 30.0
HYPOTHESES_PER_DESIGN = 3
VERIFIED_SHARE = 0.6
VERIFIED_HYPOTHESES = 12
"""For the few designs fitted for real, hypotheses down to this share of the best footprint match, this many,
are drawn in all cameras (3.6 ms each at MEDIUM_SCALE). A part standing tall shows the top camera its side
walls, which the parallax erosion undoes only for prisms: an MGN9 xy joint standing 55 mm tall matched its own
rest pose's footprint at 0.77 of the best (a rest pose lying on its side) and ranked tenth of its design's
hypotheses, yet in all five cameras its silhouette was the best by 0.04. Left out, the design was fitted lying
down and lost to a look-alike."""
SILHOUETTE_DESIGNS = 10
"""Designs whose best poses are drawn in all cameras: the true design ranked within the best six by footprint in
the 20 scenes this was tried on (a tall part standing far off the top camera's axis ranks lowest); the rest is
margin for photographs."""
SILHOUETTE_NEAR = 0.1
"""Designs within this footprint IoU of the best are drawn in all cameras too, however many."""
SILHOUETTE_MAX = 16


@dataclass
class Hypothesis:
    """A design in one rest pose at one yaw, and how well it explains the scan so far."""

    group: int
    rest: int
    yaw: float
    footprint_iou: float
    pose: np.ndarray | None = None
    silhouette_iou: float = 0.0


@dataclass(frozen=True)
class FootprintResult:
    hypotheses: list[Hypothesis]
    note: str
    """Why no rest pose qualified, when none did."""


def _yaw_matrix(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    rotation = np.eye(4)
    rotation[:2, :2] = [[c, -s], [s, c]]
    return rotation


def _polygon_area(polygons: list[np.ndarray]) -> float:
    """Area of even-odd contours (RETR_CCOMP holes run the other way round, so signed areas add up)."""
    return abs(sum(float(cv2.contourArea(p.astype(np.float32), oriented=True)) for p in polygons))


def _sides(polygons: list[np.ndarray]) -> np.ndarray:
    (_, _), (w, h), _ = cv2.minAreaRect(np.vstack(polygons).astype(np.float32))
    return np.array([max(w, h), min(w, h)])


def footprint_hypotheses(
    outline: TopOutline,
    design: Descriptors,
    group: int,
    share: float = PEAK_SHARE,
    limit: int = HYPOTHESES_PER_DESIGN,
) -> FootprintResult:
    """The design's best (rest pose, yaw) matches of the top camera's outline, best first.

    Seen from a camera 600 mm up, a 45 mm tall part 170 mm off its axis shows a side wall 13 mm wide: the
    outline is the footprint swept along the radial direction by the part's height times its distance off the
    axis over the camera's height (exactly so for a prism). The outline is eroded by that sweep (a line) before
    it is compared, which for a prism gives back its footprint; without it a standing tensioner matched its own
    footprint with IoU 0.59 and twenty designs before it. Eroding the outline once rather than sweeping every
    turned footprint keeps a comparison at about 10 µs.
    """
    found: list[Hypothesis] = []
    notes = []
    size = design.size
    centre = (size - 1) / 2
    for rest in range(len(design.rest_poses)):
        height = float(design.heights[rest])
        polygons = outline.on_plane(height / 2)
        sweep = outline.parallax(polygons, height)
        sweep_mm = float(np.linalg.norm(sweep))
        area = _polygon_area(polygons)
        expected = float(design.areas[rest])
        ratio = area / max(expected, 1e-6)
        if not AREA_RATIO[0] * expected <= area <= AREA_RATIO[1] * (expected + sweep_mm * float(design.sides[rest][0])):
            notes.append(f"area ×{ratio:.2f}")
            continue
        sides = _sides(polygons)
        low = SIDE_RATIO[0] * design.sides[rest]
        high = SIDE_RATIO[1] * design.sides[rest] + sweep_mm
        if np.any(sides < low) or np.any(sides > high):
            notes.append(f"sides ×{sides[0] / design.sides[rest][0]:.2f}/×{sides[1] / design.sides[rest][1]:.2f}")
            continue
        scan, offset = _scan_raster(polygons, design.mm_per_px, size)
        if scan is None:
            notes.append("outline larger than the design")
            continue
        kernel = _sweep_kernel(sweep / design.mm_per_px)
        if kernel is not None:
            scan = cv2.erode(scan, kernel)
        footprint = np.where(design.footprints[rest] > 127, 255, 0).astype(np.uint8)
        kept = _best_yaws(footprint, scan, centre, offset, share, limit)
        found += [Hypothesis(group, rest, math.radians(a), s) for a, s in kept]
    found.sort(key=lambda h: -h.footprint_iou)
    best = found[0].footprint_iou if found else 0.0
    found = [h for h in found if h.footprint_iou >= share * best][:limit]
    return FootprintResult(found, "; ".join(sorted(set(notes))) if not found else "")


def _best_yaws(
    footprint: np.ndarray, scan: np.ndarray, centre: float, offset: np.ndarray, share: float, limit: int
) -> list[tuple[float, float]]:
    """(yaw in degrees, IoU) of the best few distinct yaws: a coarse sweep, then each peak refined by halving steps."""
    scan_area = cv2.countNonZero(scan)
    scores: dict[int, float] = {}

    def score(angle_deg: float) -> float:
        key = int(round(angle_deg * 100.0)) % 36000
        if key not in scores:
            scores[key] = _footprint_iou(footprint, scan, scan_area, math.radians(key / 100.0), centre, offset)
        return scores[key]

    coarse = np.arange(0.0, 360.0, YAW_STEP_DEG)
    values = np.array([score(a) for a in coarse])
    count = len(coarse)
    peaks = [i for i in range(count) if values[i] >= values[i - 1] and values[i] >= values[(i + 1) % count]]
    peaks.sort(key=lambda i: -values[i])
    kept: list[tuple[float, float]] = []
    for i in peaks:
        if values[i] < share * values[peaks[0]]:
            break
        angle = float(coarse[i])
        for step in YAW_REFINE_DEG:
            angle = max((angle - step, angle, angle + step), key=score)
        if all(abs((angle - k[0] + 180.0) % 360.0 - 180.0) > PEAK_APART_DEG for k in kept):
            kept.append((angle, score(angle)))
        if len(kept) >= limit:
            break
    return kept


def _sweep_kernel(sweep_px: np.ndarray) -> np.ndarray | None:
    """A line structuring element along `sweep_px` (grid px), centred; None when shorter than a pixel."""
    length = float(np.linalg.norm(sweep_px))
    if length < 1.0:
        return None
    half = int(math.ceil(length / 2)) + 1
    kernel = np.zeros((2 * half + 1, 2 * half + 1), dtype=np.uint8)
    a = np.round(half - sweep_px / 2).astype(int)
    b = np.round(half + sweep_px / 2).astype(int)
    cv2.line(kernel, (int(a[0]), int(a[1])), (int(b[0]), int(b[1])), 1, 1)
    return kernel


def _scan_raster(polygons: list[np.ndarray], mm_per_px: float, size: int) -> tuple[np.ndarray | None, np.ndarray]:
    """The outline drawn on the design's footprint grid (centred on the outline's box) and the grid position of
    its area centroid; None when it does not fit on the grid."""
    points = np.vstack(polygons)
    middle = (points.min(axis=0) + points.max(axis=0)) / 2
    centre = (size - 1) / 2
    shift = 4
    fixed = [np.round(((p - middle) / mm_per_px + centre) * (1 << shift)).astype(np.int32) for p in polygons]
    image = np.zeros((size, size), dtype=np.uint8)
    cv2.fillPoly(image, fixed, 1, cv2.LINE_8, shift)
    box = (points.max(axis=0) - points.min(axis=0)) / mm_per_px
    if np.any(box > size - 2) or not image.any():
        return None, np.zeros(2)
    moments = cv2.moments(image, binaryImage=True)
    return image * np.uint8(255), np.array([moments["m10"], moments["m01"]]) / moments["m00"]


def _footprint_iou(
    footprint: np.ndarray, scan: np.ndarray, scan_area: int, angle: float, centre: float, target: np.ndarray
) -> float:
    """IoU of the (0/255) design footprint turned by `angle` about its centroid and moved onto the scan's centroid."""
    c, s = math.cos(angle), math.sin(angle)
    matrix = np.array(
        [[c, -s, target[0] - c * centre + s * centre], [s, c, target[1] - s * centre - c * centre]], dtype=np.float64
    )
    turned = cv2.warpAffine(footprint, matrix, (footprint.shape[1], footprint.shape[0]), flags=cv2.INTER_NEAREST)
    both = cv2.countNonZero(cv2.bitwise_and(turned, scan))
    union = cv2.countNonZero(turned) + scan_area - both
    return both / union if union else 0.0


def pose_of(hypothesis: Hypothesis, design: Descriptors, outline: TopOutline) -> np.ndarray:
    """The part→tray pose the hypothesis stands for: rest pose, yaw, footprint centroid on the outline's."""
    rest = design.rest_poses[hypothesis.rest]
    polygons = outline.on_plane(float(design.heights[hypothesis.rest]) / 2)
    target = _area_centroid(polygons)
    pose = _yaw_matrix(hypothesis.yaw) @ rest
    turned = pose[:2, :2] @ design.centroids[hypothesis.rest]
    pose[:2, 3] += target - turned
    return pose


def _area_centroid(polygons: list[np.ndarray]) -> np.ndarray:
    total, weighted = 0.0, np.zeros(2)
    for polygon in polygons:
        x, y = polygon[:, 0], polygon[:, 1]
        xn, yn = np.roll(x, -1), np.roll(y, -1)
        cross = x * yn - xn * y
        total += float(cross.sum()) / 2
        weighted += np.array([((x + xn) * cross).sum(), ((y + yn) * cross).sum()]) / 6
    return weighted / total if abs(total) > 1e-9 else np.vstack(polygons).mean(axis=0)


def silhouette_scores(
    hypotheses: Sequence[Hypothesis], designs: Sequence[Descriptors], views: Sequence[View], outline: TopOutline
) -> None:
    """Sets each hypothesis's pose (centred on the top camera's outline) and its mean silhouette IoU over the
    cameras that see the part, drawn from the light mesh at a quarter of full resolution."""
    top = top_view(views)
    by_name = seeing(views)
    observed_top, window_top = top.scaled_mask(MEDIUM_SCALE)
    target = _mask_centroid(observed_top)
    for hypothesis in hypotheses:
        design = designs[hypothesis.group]
        pose = pose_of(hypothesis, design, outline)
        height = float(design.heights[hypothesis.rest])
        vertices = design.coarse_vertices @ pose[:3, :3].T + pose[:3, 3]
        drawn = silhouette(top.calib, vertices, design.coarse_faces, window_top) > 0
        if drawn.any() and target is not None:
            # Parallax moves a tall part's outline from its footprint's place: the drawn outline is moved onto the
            # photographed one, as the alignment's coarse search does.
            shift_px = (target - _mask_centroid(drawn)) / MEDIUM_SCALE
            depth = float(top.calib.to_camera(pose[:3, 3][None] + [0.0, 0.0, height / 2])[0, 2])
            shift = top.calib.R.T @ np.array([shift_px[0], shift_px[1], 0.0]) * depth / float(top.calib.K[0, 0])
            pose[:2, 3] += shift[:2]
            vertices = design.coarse_vertices @ pose[:3, :3].T + pose[:3, 3]
        scores = []
        for view in by_name.values():
            observed, window = view.scaled_mask(MEDIUM_SCALE)
            drawn = silhouette(view.calib, vertices, design.coarse_faces, window) > 0
            union = np.count_nonzero(drawn | observed)
            scores.append(np.count_nonzero(drawn & observed) / union if union else 0.0)
        hypothesis.pose = pose
        hypothesis.silhouette_iou = float(np.mean(scores)) if scores else 0.0


def _mask_centroid(mask: np.ndarray) -> np.ndarray | None:
    moments = cv2.moments(mask.astype(np.uint8), binaryImage=True)
    if moments["m00"] == 0:
        return None
    return np.array([moments["m10"], moments["m01"]]) / moments["m00"]
