"""Where the part lies: the 6-DoF pose of the design that best explains the five silhouettes.

A part on a tray rests on one of a few faces, so the search runs over (rest pose, yaw) with x, y
taken from the top camera, keeps several hypotheses (symmetric and near-symmetric parts give
several good ones), and refines the best in all six degrees of freedom against the outline in
every camera. The outline residual uses a Cauchy loss so that a missing chunk or a blob, which
moves a part of the outline by millimetres, does not drag the fit.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np
import open3d as o3d
from scipy.optimize import least_squares
from scipy.spatial.transform import Rotation

from amflow_edge.inspection.design_cache import DesignModel
from amflow_edge.inspection.geometry.camera import CameraCalibration
from amflow_edge.inspection.geometry.raycast import triangle_scene
from amflow_edge.inspection.geometry.silhouette import (
    Window,
    bounding_window,
    cast_silhouette,
    outer_outline_points,
    silhouette,
    to_scaled,
    window_rays,
)

COARSE_SCALE = 0.125
MEDIUM_SCALE = 0.25
YAW_STEP_DEG = 12.0
TOP_HYPOTHESES = 8
PER_REST_HYPOTHESES = 2
PLAUSIBLE_FRACTION = 0.8
REFINED_HYPOTHESES = 4
FINAL_HYPOTHESES = 2
GAP_FREE_MM = 0.5
GAP_COST_PER_MM = 0.02
CONTOUR_SPACING_PX = 3.0
MAX_POINTS_PER_CAMERA = 400
OUTLINE_BESIDE_PX = 1.0
"""How far past a contour edge (full-resolution pixels) the ray that tells an outer outline from a hidden or
inner one looks for the part."""
SDF_CLIP_PX = 40.0
LOSS_SCALE_PX = 1.5
INLIER_PX = 2.0
OUTER_ITERATIONS = 4
EDGE_BIAS_PX = 1.0
CONVERGED_MM = 0.005
"""A refinement step whose every component (rotation × radius and translation, mm) is below this ends it."""
CONTACT_MM = 0.3
"""Outline points lower than this above the tray are left out of the scale and bend fits (outline_inliers)."""
SAME_POSE_DEG = 1.0
SAME_POSE_MM = 0.3
FIT_TOLERANCE = 1e-4
FIT_STOP = {"ftol": FIT_TOLERANCE, "xtol": FIT_TOLERANCE, "gtol": FIT_TOLERANCE}
"""least_squares' stopping tolerances. Its default (1e-8) took 17 evaluations per fit, this one 7, and the
pose error of 15 benchmark scenes stayed within 0.003 mm: outlines carry no more than that. The
scale and bend fits took a quarter less time and read within 0.002 % and 0.013° of before."""


@dataclass
class View:
    """One camera's evidence for the fit: its calibration and the segmented part mask as a signed distance field."""

    calib: CameraCalibration
    mask: np.ndarray
    clear_tray: np.ndarray | None = None
    clear_part: np.ndarray | None = None
    sdf: np.ndarray = field(init=False)
    sdf_window: Window = field(init=False)
    grad_x: np.ndarray = field(init=False)
    grad_y: np.ndarray = field(init=False)
    small: dict[float, tuple[np.ndarray, Window]] = field(init=False, default_factory=dict)
    empty: bool = field(init=False)
    """No part pixel in the mask (the mask is not changed after the view is made)."""

    def __post_init__(self) -> None:
        # boundingRect of a binary image: the box of its non-zero pixels, 20x cheaper than np.nonzero.
        bx, by, bw, bh = cv2.boundingRect(np.asarray(self.mask, dtype=bool).view(np.uint8))
        height, width = self.mask.shape
        self.empty = bw == 0
        if self.empty:
            x0, y0, x1, y1 = 0, 0, 1, 1
        else:
            pad = 60
            x0, y0 = max(bx - pad, 0), max(by - pad, 0)
            x1, y1 = min(bx + bw + pad, width), min(by + bh + pad, height)
        self.sdf_window = Window(x0, y0, x1 - x0, y1 - y0, 1.0)
        inside = self.mask[y0:y1, x0:x1].astype(np.uint8)
        outside = cv2.distanceTransform(1 - inside, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
        inner = cv2.distanceTransform(inside, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
        self.sdf = np.clip(outside - inner + EDGE_BIAS_PX, -SDF_CLIP_PX, SDF_CLIP_PX).astype(np.float32)
        self.grad_x = cv2.Sobel(self.sdf, cv2.CV_32F, 1, 0, ksize=3) / 8.0
        self.grad_y = cv2.Sobel(self.sdf, cv2.CV_32F, 0, 1, ksize=3) / 8.0

    def scaled_mask(self, scale: float) -> tuple[np.ndarray, Window]:
        """The mask at a reduced resolution, cropped to the part with room around it."""
        if scale not in self.small:
            w = self.sdf_window
            pad = 0.3 * max(w.width, w.height)
            corners = np.array([[w.x0 - pad, w.y0 - pad], [w.x0 + w.width + pad, w.y0 + w.height + pad]])
            window = bounding_window(corners, self.calib, scale, 0)
            assert window is not None
            full = cv2.resize(
                self.mask.astype(np.uint8) * 255,
                (int(round(self.mask.shape[1] * scale)), int(round(self.mask.shape[0] * scale))),
                interpolation=cv2.INTER_AREA,
            )
            crop = window.crop(full) > 127
            self.small[scale] = (crop, window)
        return self.small[scale]

    def sample_sdf(self, pixels: np.ndarray) -> np.ndarray:
        """Bilinear signed distance (px, positive outside the part) at full-resolution pixel positions."""
        return self._sample(self.sdf, pixels, SDF_CLIP_PX)

    def sample_gradient(self, pixels: np.ndarray) -> np.ndarray:
        return np.column_stack([self._sample(self.grad_x, pixels, 0.0), self._sample(self.grad_y, pixels, 0.0)])

    def _sample(self, field_: np.ndarray, pixels: np.ndarray, outside: float) -> np.ndarray:
        w = self.sdf_window
        x = pixels[:, 0] - w.x0
        y = pixels[:, 1] - w.y0
        inside = (x >= 0) & (y >= 0) & (x <= w.width - 1.001) & (y <= w.height - 1.001)
        out = np.full(len(pixels), outside, dtype=np.float64)
        if not np.any(inside):
            return out
        xi, yi = x[inside], y[inside]
        x0, y0 = np.floor(xi).astype(np.int64), np.floor(yi).astype(np.int64)
        fx, fy = xi - x0, yi - y0
        s = field_
        out[inside] = (
            s[y0, x0] * (1 - fx) * (1 - fy)
            + s[y0, x0 + 1] * fx * (1 - fy)
            + s[y0 + 1, x0] * (1 - fx) * fy
            + s[y0 + 1, x0 + 1] * fx * fy
        )
        return out


@dataclass(frozen=True)
class Alignment:
    """The fit's answer and how much to believe it."""

    pose: np.ndarray
    rest_index: int
    residuals_px: dict[str, np.ndarray]
    inlier_fraction: float
    median_residual_px: float
    coarse_iou: float
    hypotheses: int


class AlignmentError(ValueError):
    """Nothing to align to (no camera saw the part); the caller reports insufficient evidence."""


def transform(pose: np.ndarray, points: np.ndarray) -> np.ndarray:
    return points @ pose[:3, :3].T + pose[:3, 3]


def _yaw(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    rotation = np.eye(4)
    rotation[:2, :2] = [[c, -s], [s, c]]
    return rotation


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.count_nonzero(a | b)
    return np.count_nonzero(a & b) / union if union else 0.0


def top_view(views: Sequence[View]) -> View:
    return min(views, key=lambda v: v.calib.optical_axis[2])


def _ray_at_height(calib: CameraCalibration, pixel: np.ndarray, z: float) -> np.ndarray:
    direction = calib.rays(pixel.reshape(1, 2))[0]
    centre = calib.centre
    t = (z - centre[2]) / direction[2]
    return centre + t * direction


def coarse_search(model: DesignModel, views: Sequence[View]) -> list[tuple[float, np.ndarray, int]]:
    """(score, pose, rest index) hypotheses, best first, from silhouettes at reduced resolution."""
    top = top_view(views)
    if top.empty:
        raise AlignmentError("the top camera sees no part on the tray")
    observed_top, window_top = top.scaled_mask(COARSE_SCALE)
    centroid_px = _centroid(top.mask)
    target_small = to_scaled(centroid_px[None], COARSE_SCALE)[0] - (window_top.x0, window_top.y0)
    mm_per_px = abs(top.calib.centre[2]) / top.calib.K[0, 0] / COARSE_SCALE
    scene = triangle_scene(model.coarse_vertices, model.coarse_faces)
    rays_top = window_rays(top.calib, window_top)
    candidates: list[tuple[float, np.ndarray, int]] = []
    for index, rest in enumerate(model.rest_poses):
        height = float(np.ptp(transform(rest, model.coarse_vertices)[:, 2]))
        anchor = _ray_at_height(top.calib, centroid_px, height / 2)
        for yaw in np.radians(np.arange(0.0, 360.0, YAW_STEP_DEG)):
            pose = _yaw(float(yaw)) @ rest
            pose[:2, 3] += anchor[:2]
            hit = cast_silhouette(scene, top.calib.centre, rays_top, pose, window_top)
            if not hit.any():
                candidates.append((0.0, pose, index))
                continue
            # Centred on the part's centroid by moving the rendered outline, not by rendering it again:
            # from above, a shift of a few millimetres moves the outline and hardly changes it.
            shift_px = target_small - _centroid(hit)
            rendered = hit.astype(np.uint8) * 255
            shift_world = top.calib.R.T @ np.array([shift_px[0], shift_px[1], 0.0]) * mm_per_px
            pose[:2, 3] += shift_world[:2]
            moved = cv2.warpAffine(
                rendered, np.array([[1, 0, shift_px[0]], [0, 1, shift_px[1]]], dtype=np.float32), rendered.shape[::-1]
            )
            candidates.append((_iou(moved > 127, observed_top), pose, index))
    candidates.sort(key=lambda c: -c[0])
    rescored = []
    for _, pose, index in _diverse(candidates):
        vertices = transform(pose, model.coarse_vertices)
        scores = []
        for view in seeing(views).values():
            observed, window = view.scaled_mask(MEDIUM_SCALE)
            scores.append(_iou(silhouette(view.calib, vertices, model.coarse_faces, window) > 0, observed))
        rescored.append((float(np.mean(scores)), pose, index))
    rescored.sort(key=lambda c: -c[0])
    return rescored


def _centroid(mask: np.ndarray) -> np.ndarray:
    """(x, y) mean of a non-empty mask's pixels, from its image moments (np.nonzero on a full frame costs 20 ms)."""
    moments = cv2.moments(np.asarray(mask, dtype=bool).view(np.uint8), binaryImage=True)
    return np.array([moments["m10"] / moments["m00"], moments["m01"] / moments["m00"]])


def _diverse(candidates: list[tuple[float, np.ndarray, int]]) -> list[tuple[float, np.ndarray, int]]:
    """The best few overall, plus the best of every rest pose that looks plausible from above.

    From the top camera a gear lying hub-up and hub-down give the same outline; without this,
    the many yaw variants of one face fill every slot and the other face is never looked at.
    """
    best = candidates[0][0] if candidates else 0.0
    chosen = list(candidates[:TOP_HYPOTHESES])
    for index in sorted({c[2] for c in candidates}):
        of_rest = [c for c in candidates if c[2] == index and c[0] >= PLAUSIBLE_FRACTION * best]
        chosen += [c for c in of_rest[:PER_REST_HYPOTHESES] if not any(c is k for k in chosen)]
    return chosen


def contour_points(model: DesignModel, view: View, pose: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Part-frame points on the outer outline of the model as `view` sees it at `pose`."""
    vertices = transform(pose, model.vertices)
    points = outer_outline_points(
        view.calib,
        design_scene(model),
        pose,
        vertices,
        model.faces,
        model.edges,
        model.edge_faces,
        CONTOUR_SPACING_PX,
        OUTLINE_BESIDE_PX,
    )
    if len(points) == 0:
        return np.zeros((0, 3))
    pixels = view.calib.project(points)
    margin = 3
    inside_image = (
        (pixels[:, 0] > margin)
        & (pixels[:, 1] > margin)
        & (pixels[:, 0] < view.calib.image_width - margin)
        & (pixels[:, 1] < view.calib.image_height - margin)
    )
    chosen = points[inside_image]
    if len(chosen) > MAX_POINTS_PER_CAMERA:
        chosen = chosen[rng.choice(len(chosen), MAX_POINTS_PER_CAMERA, replace=False)]
    inverse = np.linalg.inv(pose)
    return transform(inverse, chosen)


_SCENES: OrderedDict[str, o3d.t.geometry.RaycastingScene] = OrderedDict()
_SCENES_SIZE = 24
_SCENES_LOCK = threading.Lock()


def design_scene(model: DesignModel) -> o3d.t.geometry.RaycastingScene:
    """The design in its own frame as a ray-casting scene, for every pose and camera; the most recent kept."""
    with _SCENES_LOCK:
        found = _SCENES.get(model.sha1)
        if found is not None:
            _SCENES.move_to_end(model.sha1)
            return found
    scene = triangle_scene(model.vertices, model.faces)
    with _SCENES_LOCK:
        _SCENES[model.sha1] = scene
        while len(_SCENES) > _SCENES_SIZE:
            _SCENES.popitem(last=False)
    return scene


def moved_pose(pose: np.ndarray, x: np.ndarray, centre: np.ndarray, radius: float) -> np.ndarray:
    """Pose moved by x = (rotation vector × radius [mm], translation [mm]) about the part's centre."""
    delta = np.eye(4)
    rotation = Rotation.from_rotvec(x[:3] / radius).as_matrix()
    delta[:3, :3] = rotation
    delta[:3, 3] = centre - rotation @ centre + x[3:]
    return delta @ pose


def seeing(views: Sequence[View]) -> dict[str, View]:
    """The views in which a part was segmented, by camera name: the only ones a fit can use."""
    return {v.calib.name: v for v in views if not v.empty}


def outline_at(
    model: DesignModel, by_name: dict[str, View], pose: np.ndarray, rng: np.random.Generator
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Per camera, the model's outline points (part frame) at `pose` and their residuals there."""
    points = {name: contour_points(model, view, pose, rng) for name, view in by_name.items()}
    return points, residuals(points, by_name, pose)


def outline_inliers(
    model: DesignModel, views: Sequence[View], pose: np.ndarray, seed: int, within_px: float
) -> tuple[dict[str, View], dict[str, np.ndarray]] | None:
    """The views that see the part and their outline points within `within_px` of the photo at `pose`
    and clear of the tray, for fits that must not be dragged by a chip or a shadow tongue; None when
    fewer than 12 are.

    Where the part meets the tray its contact shadow is as dark as a face turned from the lights and
    the segmentation takes a pixel or two of it for part: the x0.7 spur gear's 7 mm rim read 4 % too
    thick and 4.7° bent (seed 9041), 0.4 % and 0.3° from the outline above CONTACT_MM.
    """
    by_name = seeing(views)
    points, start = outline_at(model, by_name, pose, np.random.default_rng(seed))
    points = {
        name: p[(np.abs(start[name]) < within_px) & (transform(pose, p)[:, 2] > CONTACT_MM)]
        for name, p in points.items()
    }
    if sum(len(p) for p in points.values()) < 12:
        return None
    return by_name, points


def residuals(model_points: dict[str, np.ndarray], views: dict[str, View], pose: np.ndarray) -> dict[str, np.ndarray]:
    """Signed outline distance (px) of every model outline point, per camera."""
    out = {}
    for name, points in model_points.items():
        view = views[name]
        out[name] = view.sample_sdf(view.calib.project(transform(pose, points))) if len(points) else np.zeros(0)
    return out


def world_gradients(
    points: dict[str, np.ndarray], views: dict[str, View], pose: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Every outline point's world position and d residual / d world position, stacked in `residuals` order.

    With a pinhole projection: distortion bends the outline by a few pixels but changes its
    derivative by well under a percent, and analytic Jacobians built on this are six times
    cheaper than finite differences."""
    worlds, grads = [], []
    for name, local in points.items():
        view = views[name]
        if len(local) == 0:
            continue
        world = transform(pose, local)
        calib = view.calib
        cam = calib.to_camera(world)
        z = cam[:, 2]
        fx, fy = calib.K[0, 0], calib.K[1, 1]
        du = np.column_stack([fx / z, np.zeros_like(z), -fx * cam[:, 0] / z**2]) @ calib.R
        dv = np.column_stack([np.zeros_like(z), fy / z, -fy * cam[:, 1] / z**2]) @ calib.R
        grad = view.sample_gradient(calib.project(world))
        worlds.append(world)
        grads.append(grad[:, :1] * du + grad[:, 1:] * dv)
    if not worlds:
        return np.zeros((0, 3)), np.zeros((0, 3))
    return np.vstack(worlds), np.vstack(grads)


def pose_jacobian(world: np.ndarray, d_world: np.ndarray, pivot: np.ndarray, radius: float) -> np.ndarray:
    """d residual / d (rotation×radius, translation) of `moved_pose` from `world_gradients`."""
    return np.hstack([np.cross(world - pivot, d_world) / radius, d_world])


def _jacobian(
    points: dict[str, np.ndarray], views: dict[str, View], pose: np.ndarray, pivot: np.ndarray, radius: float
) -> np.ndarray:
    return pose_jacobian(*world_gradients(points, views, pose), pivot, radius)


def _step_residuals(
    x: np.ndarray,
    points: dict[str, np.ndarray],
    views: dict[str, View],
    pose: np.ndarray,
    centre: np.ndarray,
    radius: float,
) -> np.ndarray:
    return np.concatenate(list(residuals(points, views, moved_pose(pose, x, centre, radius)).values()))


def _step_jacobian(
    x: np.ndarray,
    points: dict[str, np.ndarray],
    views: dict[str, View],
    pose: np.ndarray,
    centre: np.ndarray,
    radius: float,
) -> np.ndarray:
    return _jacobian(points, views, moved_pose(pose, x, centre, radius), centre + x[3:], radius)


def refine(
    model: DesignModel,
    views: Sequence[View],
    pose: np.ndarray,
    outer: int = OUTER_ITERATIONS,
    seed: int = 0,
    finish: bool = True,
) -> tuple[np.ndarray, float, dict[str, np.ndarray]]:
    """Six-DoF refinement; returns the pose, the robust cost per point of its last step (the mean
    log1p((r / LOSS_SCALE_PX)²) that fits are compared by, see `_robust_cost`) and the final residuals,
    which without `finish` are left empty: screening hypotheses compares costs only."""
    rng = np.random.default_rng(seed)
    by_name = seeing(views)
    radius = max(model.extent_mm / 2, 1.0)
    cost = math.inf
    points: dict[str, np.ndarray] = {}
    converged = False
    for _ in range(outer):
        points = {name: contour_points(model, view, pose, rng) for name, view in by_name.items()}
        if sum(len(p) for p in points.values()) < 12:
            break
        centre = transform(pose, model.centroid[None])[0]
        result = least_squares(
            _step_residuals,
            np.zeros(6),
            jac=_step_jacobian,
            args=(points, by_name, pose, centre, radius),
            loss="cauchy",
            f_scale=LOSS_SCALE_PX,
            max_nfev=30,
            x_scale=0.5,
            **FIT_STOP,
        )
        pose = moved_pose(pose, result.x, centre, radius)
        # least_squares' Cauchy cost is ½·LOSS_SCALE_PX²·Σ log1p((r / LOSS_SCALE_PX)²).
        cost = 2 * float(result.cost) / max(len(result.fun), 1) / LOSS_SCALE_PX**2
        if np.abs(result.x).max() < CONVERGED_MM:
            converged = True
            break
    if not finish:
        return pose, cost, {}
    if converged:
        # A step this small leaves the outline where it was: the points just fitted are the pose's own.
        return pose, cost, residuals(points, by_name, pose)
    _, final = outline_at(model, by_name, pose, rng)
    return pose, cost, final


def align(model: DesignModel, views: Sequence[View]) -> Alignment:
    if all(v.empty for v in views):
        raise AlignmentError("no camera sees a part on the tray")
    hypotheses = coarse_search(model, views)
    screened: list[tuple[float, np.ndarray, int, float]] = []
    for score, pose, index in hypotheses[:REFINED_HYPOTHESES]:
        refined, cost, _ = refine(model, views, pose, outer=1, finish=False)
        screened.append((cost + _gap_cost(model, refined), refined, index, score))
    screened.sort(key=lambda c: c[0])
    # Near-symmetric parts (a block with one chamfer turned by 180°) give look-alike hypotheses
    # whose one-step costs are within noise of each other; the finished fits tell them apart. A
    # hypothesis that is one finished already, or a look-alike the design cache lists (shading
    # decides between those), is passed over for the next.
    distinct = [screened[0]]
    for candidate in screened[1:]:
        if len(distinct) < FINAL_HYPOTHESES and not any(look_alike(model, d[1], candidate[1]) for d in distinct):
            distinct.append(candidate)
    finished: list[tuple[float, np.ndarray, int, float, dict[str, np.ndarray]]] = []
    for _, refined, index, score in distinct:
        pose, _, final = refine(model, views, refined)
        finished.append((_robust_cost(final), pose, index, score, final))
    best = _on_the_tray(model, finished)
    _, pose, _, _, final = best
    return _finished(model, views, pose, final, best[2], best[3], len(hypotheses))


def _robust_cost(final: dict[str, np.ndarray]) -> float:
    """Mean Cauchy cost per outline point of a fit's final residuals: what finished fits are compared by."""
    everything = np.concatenate(list(final.values())) if final else np.zeros(0)
    return float(np.mean(np.log1p((everything / LOSS_SCALE_PX) ** 2))) if len(everything) else math.inf


def look_alike(model: DesignModel, pose: np.ndarray, other: np.ndarray) -> bool:
    """Whether `other` is `pose` again or one of its look-alikes, which inspection.shading.choose_symmetric
    decides between after the fit: refining it to the end would only find the same outline again.

    In 44 intact benchmark scenes the two best hypotheses were the same pose in 17 and look-alikes in 19;
    on a x0.7 spur gear both were sunk 4 mm into the tray hub-down, and the third, resting on it, was right.
    """
    motion = np.linalg.inv(pose) @ other
    centre = model.centroid
    for candidate in model.symmetries:
        turn = Rotation.from_matrix(candidate[:3, :3].T @ motion[:3, :3]).magnitude()
        slide = float(np.linalg.norm(transform(motion, centre[None]) - transform(candidate, centre[None])))
        if math.degrees(turn) < SAME_POSE_DEG and slide < SAME_POSE_MM:
            return True
    if len(model.spin_axis):
        point, axis = model.spin_axis
        rotvec = Rotation.from_matrix(motion[:3, :3]).as_rotvec()
        off_axis = np.linalg.norm(rotvec - axis * float(rotvec @ axis))
        slide = float(np.linalg.norm(transform(motion, point[None])[0] - point))
        return math.degrees(off_axis) < SAME_POSE_DEG and slide < SAME_POSE_MM
    return False


def refit(model: DesignModel, views: Sequence[View], start: Alignment, pose: np.ndarray) -> Alignment:
    """The alignment refined again from `pose`: a look-alike of `start`'s (inspection.shading.choose_symmetric)
    that maps the design onto itself only to within a few tenths of a millimetre."""
    pose, _, final = refine(model, views, pose)
    return _finished(model, views, pose, final, start.rest_index, start.coarse_iou, start.hypotheses)


def _finished(
    model: DesignModel,
    views: Sequence[View],
    pose: np.ndarray,
    final: dict[str, np.ndarray],
    rest_index: int,
    coarse_iou: float,
    hypotheses: int,
) -> Alignment:
    pose, final = _resting(model, views, pose, final)
    everything = np.concatenate(list(final.values())) if final else np.zeros(0)
    inliers = float(np.mean(np.abs(everything) < INLIER_PX)) if len(everything) else 0.0
    median = float(np.median(np.abs(everything))) if len(everything) else math.inf
    return Alignment(pose, rest_index, final, inliers, median, coarse_iou, hypotheses)


def _on_the_tray(
    model: DesignModel, finished: list[tuple[float, np.ndarray, int, float, dict[str, np.ndarray]]]
) -> tuple[float, np.ndarray, int, float, dict[str, np.ndarray]]:
    """The best fit, counting a gap under the part against it.

    A gear lying hub-down can be mimicked by the hub-up pose floating 4 mm above the tray, with
    an outline residual within the few percent the residual varies by between runs. Parts rest
    on the tray, so each millimetre of gap costs a little; a propped part lifts every
    hypothesis alike, so it is still fitted, and reported by the lift metric.
    """

    return min(finished, key=lambda fit: fit[0] + _gap_cost(model, fit[1]))


def _gap_cost(model: DesignModel, pose: np.ndarray) -> float:
    """What a gap between the part and the tray (or a part sunk into it) adds to a fit's robust cost.

    Counted when hypotheses are screened too: on a x0.7 spur gear the two best one-step fits were
    both the hub-up pose floating 4.4 mm high, and only the finished fits' comparison knew the gap.
    """
    gap = abs(float(transform(pose, model.coarse_vertices)[:, 2].min()))
    return GAP_COST_PER_MM * max(0.0, gap - GAP_FREE_MM)


def _resting(
    model: DesignModel, views: Sequence[View], pose: np.ndarray, final: dict[str, np.ndarray]
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The pose set down on the tray when the fit leaves it within GAP_FREE_MM of it, and its residuals there.

    Outlines fix the height poorly: lifting a part 0.1 mm changes them by well under a pixel, and
    the fits came out 0.1–0.2 mm high, the largest part of the pose error. A part that close to the
    tray rests on it; one propped or lying on something keeps the height the fit found.
    """
    lift = float(transform(pose, model.vertices)[:, 2].min())
    if abs(lift) >= GAP_FREE_MM or lift == 0.0:
        return pose, final
    settled = pose.copy()
    settled[2, 3] -= lift
    _, final = outline_at(model, seeing(views), settled, np.random.default_rng(0))
    return settled, final


SCALE_INLIER_PX = 4.0
SCALE_PRIOR_PCT = 1.0
SCALE_PRIOR_POINTS = 40.0
SCALE_LIMIT = 0.15
STANDING_MM = 2.0


def fit_scale(model: DesignModel, views: Sequence[View], pose: np.ndarray, seed: int = 1) -> np.ndarray:
    """Per-axis scale (part frame) that best explains the outlines at the found pose.

    Shrinkage is the commonest dimensional fault of sintered parts and looks like a pose error
    to a rigid fit; estimating it jointly with a small pose correction keeps the two apart. Only
    outline points already within SCALE_INLIER_PX of the photo and above CONTACT_MM take part (a
    chip, a shadow tongue or the contact shadow must not stretch an axis), and a weak prior towards
    1 (worth SCALE_PRIOR_POINTS points off by a pixel per SCALE_PRIOR_PCT %) keeps an axis the
    cameras barely see, such as the depth of a thin part, from wandering: unconstrained it read 8 %
    on intact parts.

    A part on the tray stands on it: it is scaled about its centroid's foot on the tray and not shifted
    up or down. Without its outline along the tray, a change of height and a vertical shift move the
    top edges alike, and a cube 2 % too low read -0.04 %. The rigid fit trades a wrong height for depth
    (a block 2 % too low sank 0.6 mm into the tray, one 2 % too large floated 0.8 mm), so the fit starts
    from the pose set down on the tray. A part more than STANDING_MM off it is propped, and scaled about
    its centroid.
    """
    inliers = outline_inliers(model, views, pose, seed, SCALE_INLIER_PX)
    if inliers is None:
        return np.ones(3)
    by_name, points = inliers
    radius = max(model.extent_mm / 2, 1.0)
    pivot, free = model.centroid, np.arange(6)
    lowest = float(transform(pose, model.vertices)[:, 2].min())
    if lowest < STANDING_MM:
        pose = pose.copy()
        pose[2, 3] -= lowest
        foot = transform(pose, model.centroid[None])[0]
        foot[2] = 0.0
        pivot, free = transform(np.linalg.inv(pose), foot[None])[0], np.arange(5)
    centre = transform(pose, model.centroid[None])[0]
    prior = math.sqrt(SCALE_PRIOR_POINTS) / (SCALE_PRIOR_PCT / 100.0)
    n = len(free)
    offsets = np.vstack([p - pivot for p in points.values() if len(p)])

    def motion(x: np.ndarray) -> np.ndarray:
        full = np.zeros(6)
        full[free] = x[:n]
        return full

    def fun(x: np.ndarray) -> np.ndarray:
        scaled = {name: pivot + (p - pivot) * (1.0 + x[n:]) for name, p in points.items()}
        data = np.concatenate(list(residuals(scaled, by_name, moved_pose(pose, motion(x), centre, radius)).values()))
        return np.concatenate([data, prior * x[n:]])

    def jac(x: np.ndarray) -> np.ndarray:
        scaled = {name: pivot + (p - pivot) * (1.0 + x[n:]) for name, p in points.items()}
        step = motion(x)
        moved = moved_pose(pose, step, centre, radius)
        world, d_world = world_gradients(scaled, by_name, moved)
        along = (d_world @ moved[:3, :3]) * offsets
        data = np.hstack([pose_jacobian(world, d_world, centre + step[3:], radius)[:, free], along])
        return np.vstack([data, np.hstack([np.zeros((3, n)), prior * np.eye(3)])])

    bounds = (np.r_[[-np.inf] * n, [-SCALE_LIMIT] * 3], np.r_[[np.inf] * n, [SCALE_LIMIT] * 3])
    result = least_squares(
        fun, np.zeros(n + 3), jac=jac, loss="soft_l1", f_scale=2.0, max_nfev=12, bounds=bounds, **FIT_STOP
    )
    return 1.0 + result.x[n:]
