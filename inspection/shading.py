"""Surface defects an outline cannot show: each photo against the brightness the design predicts at the found pose.

A 1 mm chip changes an outline by about 0.7 mm over 0.6 mm², which is what segmentation noise
reads on intact parts (inspection.regions), and a chip away from every outline changes none. Its
faces, though, turn to the lights at angles the design has nowhere near there: averaged over a few
pixels they read 100 % and more off the design's prediction (median 115 %), while intact surfaces
read at most 41 % once a second camera must confirm a patch (132 scenes of benchmarks/inspection.py).
The prediction is the station's own light, learned at commissioning from intact parts (inspection.learned_light),
with one unknown gain (exposure × albedo) and gloss per camera, fitted robustly to every compared cell
(learned_light.gain_and_gloss); without it, or where it explains a part poorly, the comparison abstains rather
than guess.

No prediction is made where it cannot be trusted: near the model's outline, depth steps and creases
(the found pose is good to a few tenths of a pixel and the lens blurs). Pixels the segmentation gave
to the tray are compared too: a chip on a rim shows its own hollow, dimmer than the part and brighter
than the tray, so the segmentation takes it from the part while the outline metrics, which count only
clear tray, see nothing missing (a x0.7 bushing's chip, benchmark scene 1029, in three cameras).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial

import cv2
import numpy as np
import open3d as o3d

from amflow_edge.inspection.align import View, seeing, transform
from amflow_edge.inspection.design_cache import DesignModel
from amflow_edge.inspection.geometry.raycast import (
    cast,
    edge_pixels,
    surface_normals,
    triangle_scene,
)
from amflow_edge.inspection.geometry.symmetry import spin
from amflow_edge.inspection.learned_light import LearnedLight, gain_and_gloss
from amflow_edge.inspection.models import CONFIRM_MM, SurfaceRegion

STEP_PX = 1
EDGE_CLEAR_PX = 2.0
DEPTH_STEP_PX = 8.0
SMOOTH_PX = 5
MIN_SUPPORT = 0.5
MIN_IRRADIANCE = 0.05
TOLERANCE = 0.15
MIN_REGION_CELLS = 4
CHOICE_STEP_PX = 2
SPIN_COARSE_STEP_PX = 4
SPIN_STEP_DEG = 6.0
SPIN_STAGES = ((3.0, CHOICE_STEP_PX, 3), (2.0, STEP_PX, 2), (0.5, STEP_PX, 2))
"""(step in degrees, cell size in px, steps either side) of the turns about a spin axis tried after the coarse
search. On a x0.7 bushing 2 px cells scored 24-29 over ±4° of the right turn, so a search at 2 px ended 2-4°
off (pose error 0.36 mm, bolt holes read as defects up to 0.38); 1 px cells scored 0 within 1° of it and 39
at 4°, but cost three times as much, so they only take over inside the 2 px basin."""
PENUMBRA_SHARE = 0.05
"""Where ring lights partly hidden from a cell give more than this share of its predicted irradiance, the
cell is judged against the whole range those lights can give, from hidden to fully lit, not against the
mean of the few ring samples. Dropping such cells, as before, hid chips on rims, which lie in the penumbra
of the lights the rim half hides: a x1.3 bushing's 1 mm chip (seed 1031) went unseen and reads 0.55 against
the range."""
SINGLE_CAMERA_CONTRAST = 1.0
NEAR_TRAY_MM = 1.5
"""Surface this close to the tray is not compared: there the tray throws light back up and the part hides it from
itself, which no learned light predicts well (intact Voron parts read 50-99 % off along their lower edge)."""
MIN_SHADING_CAMERAS = 2
"""A patch is trusted when a second camera confirms it; one camera alone cannot tell a defect from its own glint."""
MIN_SIGNAL_DN = 30.0
SATURATED_SHARE = 0.25
"""A camera in which more of the part than this is clipped is left out of the comparison: the gain fitted to the
rest would be a guess."""
SATURATED_DN = 250
"""Cells with a pixel this bright are not compared: a clipped pixel says only that the face is at least this
bright (a white part under a bright light), so its ratio to any prediction means nothing."""
SPREAD_FACTOR = 3.0
SPREAD_FLOOR = 0.05
"""A part's shading is judged only while the learned light explains it within SPREAD_FACTOR × the spread intact
parts showed at commissioning, and never demands better than SPREAD_FLOOR."""
NO_LIGHT = (
    "the station's light has not been learned, so shading cannot be predicted: commission the station "
    "(amflow-edge commission learn) with a few scans of intact parts"
)
SHADOW_CHECK = 0.5


@dataclass(frozen=True)
class ShadingComparison:
    """What compare_shading found: the regions that stand (confirmed by a second camera, or strong), and where
    they are in each photo."""

    regions: list[SurfaceRegion]
    """Strongest contrast first."""
    masks: dict[str, np.ndarray]
    """Per camera, the anomalous pixels inside its view's window (for the overlays)."""
    pending: list[tuple[SurfaceRegion, np.ndarray]] = field(default_factory=list)
    """Patches one camera saw, too faint to stand alone, with their STEP_PX cells: evidence of another kind
    from another camera at the same place on the part may still confirm them (`confirmed_by`)."""
    spread: float = 0.0
    """Robust spread of photo ÷ prediction − 1 over every compared cell, each averaged over its SMOOTH_PX box: how
    well the light explains this part. It is compared with SPREAD_FACTOR × the spread commissioning measured on
    single samples of intact parts left out of the fit, which the box average only lowers: a conservative test."""
    abstain: str | None = None
    """Why this comparison cannot judge the part (no learned light, a light that does not explain it, too few
    cameras that show its shading); None: it can."""

    def confirmed_by(self, places: Sequence[tuple[str, Sequence[float]]]) -> ShadingComparison:
        """This comparison with the pending patches that another camera's (camera, design-frame point) confirms.

        A chip on a rim faces one camera and bites the outline of another: on seed 1000 two 1 mm chips
        read 0.49 and 0.56 in the one camera that saw them face-on, and an outline bite 0.6-1.2 mm away
        in another. Of the 44 intact scenes' unconfirmed patches, none had a bite within 3 mm.
        """
        regions, masks, pending = list(self.regions), {k: v.copy() for k, v in self.masks.items()}, []
        for region, cells in self.pending:
            if seen_elsewhere(region.camera, region.centre_part_mm, places):
                regions.append(region.model_copy(update={"confirmed": True}))
                _paint(masks[region.camera], cells)
            else:
                pending.append((region, cells))
        return ShadingComparison(sorted(regions, key=lambda r: -r.contrast), masks, pending, self.spread, self.abstain)


def choose_symmetric(
    model: DesignModel,
    views: Sequence[View],
    pose: np.ndarray,
    images: Mapping[str, np.ndarray],
    model_masks: Mapping[str, np.ndarray],
    light: LearnedLight | None = None,
) -> np.ndarray:
    """Of the poses the design's symmetries make look alike to outlines, the one whose shading fits the photos best.

    A lettered cube, a knob with four arms or a bushing with three bolt holes is fitted to one of its
    look-alike poses at random; compared at the wrong one, its lettering or holes read as surface
    defects. A design that turns freely about an axis is searched about it coarse to fine, over one
    period of its exact turns (120° for three holes). Each candidate is scored by the cells that would
    read as a defect (the mean difference hardly moves: lettering is a small part of a face), on
    CHOICE_STEP_PX cells; at 4 px the strokes of a cube's lettering vanish among the edge cells.
    Shadows are predicted, with one ray per lamp (a choice among turns needs where shadows fall, not their soft
    edges), for every score but the coarse turns': without them the arms' shadows on a
    knob read as ~4000 defect cells at every candidate and the hex pocket's 300 were lost in them
    (a quarter-turned knob rejected as intact); with them the right turn scored 58, the wrong 363.
    """
    if (len(model.symmetries) < 2 and not len(model.spin_axis)) or light is None:
        return pose
    lighting = light
    by_step: dict[int, list[_Frame]] = {}

    def score(motion: np.ndarray, step: int = CHOICE_STEP_PX, shadows: bool = True) -> int:
        """How many cells would read as a surface defect at this candidate: what a wrong one gets wrong."""
        if step not in by_step:
            by_step[step] = frames(views, images, model_masks, step)
        grids = _grids(model, by_step[step], pose @ motion, lighting, shadows, soft=False)
        return sum(
            int(np.count_nonzero(g.valid & (_smooth(g.residual, g.valid, step)[0] > TOLERANCE))) for _, g in grids
        )

    if not len(model.spin_axis):
        return pose @ min(model.symmetries, key=score)
    point, axis = model.spin_axis

    scored: dict[tuple[float, int, bool], int] = {}

    def turned(angle: float, step: int, shadows: bool = True) -> int:
        key = (round(angle, 6), step, shadows)
        if key not in scored:
            scored[key] = score(spin(point, axis, math.radians(angle)), step, shadows)
        return scored[key]

    period = float(model.spin_period_deg)
    best = min(np.arange(0.0, period, SPIN_STEP_DEG), key=lambda a: turned(a, SPIN_COARSE_STEP_PX, False))
    for fine, step, reach in SPIN_STAGES:
        best = _middle_of_best(best + fine * np.arange(-reach, reach + 1), partial(turned, step=step))
    return pose @ spin(point, axis, math.radians(best))


def _middle_of_best(angles: np.ndarray, score: Callable[[float], int]) -> float:
    """The middle of the angles that score lowest: a score counts cells, and near the right turn several
    turns a fraction of a degree apart leave none wrong; the first of them is not the best guess."""
    scores = np.array([score(float(a)) for a in angles])
    best = angles[scores == scores.min()]
    return float(best[len(best) // 2])


def compare_shading(
    model: DesignModel,
    views: Sequence[View],
    pose: np.ndarray,
    images: Mapping[str, np.ndarray],
    model_masks: Mapping[str, np.ndarray],
    light: LearnedLight | None = None,
    light_doubt: str | None = None,
) -> ShadingComparison:
    """Regions where a photo's shading departs from the design's at `pose`, per camera that sees the part.

    Without the station's learned light (`amflow-edge commission learn`) nothing can be predicted, and the
    comparison abstains; so it does when the light explains this part's surface far worse than it explained
    intact parts at commissioning (SPREAD_FACTOR): a lamp has failed or the part's material glints.
    """
    if light is None or light_doubt is not None:
        return ShadingComparison([], {}, abstain=light_doubt or NO_LIGHT)
    inverse = np.linalg.inv(pose)
    grids = _grids(model, frames(views, images, model_masks, STEP_PX, segmented=False), pose, light, shadows=True)
    found = [item for view, grid in grids for item in _regions(grid, view, inverse)]
    masks: dict[str, np.ndarray] = {
        v.calib.name: np.zeros(model_masks[v.calib.name].shape, dtype=bool) for v in seeing(views).values()
    }
    places = [(r.camera, r.centre_part_mm) for r, _ in found]
    standing, pending = [], []
    for region, cells in found:
        region.confirmed = seen_elsewhere(region.camera, region.centre_part_mm, places)
        if _stands(region):
            standing.append(region)
            _paint(masks[region.camera], cells)
        else:
            pending.append((region, cells))
    spread = _spread(grids)
    limit = max(SPREAD_FACTOR * light.spread, SPREAD_FLOOR)
    abstain = None
    if len(grids) < MIN_SHADING_CAMERAS:
        abstain = (
            f"only {len(grids)} camera(s) show enough of the part's shading to compare: the part is clipped "
            f"(overexposed, {SATURATED_DN} DN and up), too dark (a dyed-black part: dimmer than {MIN_SIGNAL_DN:g} DN "
            "under the fitted light), or too small in the others; shading is judged from two cameras or more"
        )
    elif spread > limit:
        abstain = (
            f"the station's learned light explains this part's shading poorly (spread {spread:.3f}, intact parts "
            f"{light.spread:.3f} at commissioning): has a lamp or the tray changed, or does this material glint? "
            "Check the station's light and commission it again if it changed"
        )
    return ShadingComparison(sorted(standing, key=lambda r: -r.contrast), masks, pending, spread, abstain)


def _spread(grids: Sequence[tuple[View, _Grid]]) -> float:
    """1.4826 × the median |residual| of every compared cell of every camera, each averaged over its SMOOTH_PX box
    as regions are judged: a robust spread of what the light gets wrong, which neither a defect's few cells nor
    the part's grain and the sensor's noise move."""
    values = [_smooth(g.residual, g.valid, g.step)[0][g.valid] for _, g in grids if np.any(g.valid)]
    return 1.4826 * float(np.median(np.concatenate(values))) if values else 0.0


def _paint(mask: np.ndarray, cells: np.ndarray) -> None:
    """Mark a region's STEP_PX cells in a camera's window mask of pixels."""
    full = np.repeat(np.repeat(cells, STEP_PX, axis=0), STEP_PX, axis=1)
    mask[: full.shape[0], : full.shape[1]] |= full


def _stands(region: SurfaceRegion) -> bool:
    """Whether a patch counts as a surface defect: confirmed by a second camera, or strong enough alone.

    A chip on a tube's rim or a clip's inner face may face one camera only, so an unconfirmed patch
    still stands from SINGLE_CAMERA_CONTRAST: on the 44 intact scenes of seed 1000 none read above
    0.28 (0.41 on seed 9000, 0.76 on seed 5000, a x1.3 spur gear), while 3 of the 7 chips that no
    second camera saw read 1.14-1.62 (counted before the comparison took in every silhouette pixel).
    """
    return region.confirmed or region.contrast >= SINGLE_CAMERA_CONTRAST


def seen_elsewhere(camera: str, centre_part_mm: Sequence[float], places: Sequence[tuple[str, Sequence[float]]]) -> bool:
    """Whether another camera saw something at the same place on the part: of (camera, design-frame point)
    `places`, one of another camera than `camera` within CONFIRM_MM of `centre_part_mm`.

    A matte surface looks the same to every camera, so a real defect departs from the design in
    each camera that sees it, while a mismatch of the model (the inside of a bore under a light
    it half sees) shows in one; likewise a chip bites the outline in the cameras it turns its edge to,
    while a speck of tray the segmentation finds beside a dark face is one camera's (metrics).
    """
    centre = np.array(centre_part_mm)
    return any(other != camera and np.linalg.norm(np.array(point) - centre) <= CONFIRM_MM for other, point in places)


def _grids(
    model: DesignModel,
    frames: Sequence[_Frame],
    pose: np.ndarray,
    lighting: LearnedLight,
    shadows: bool,
    soft: bool = True,
) -> list[tuple[View, _Grid]]:
    """Each camera's comparison at `pose`, two at a time: ray casting and numpy release the GIL."""
    scene = triangle_scene(transform(pose, model.vertices), model.faces)

    def one(frame: _Frame) -> tuple[View, _Grid | None]:
        return frame.view, _residuals(model, frame, scene, pose, lighting, shadows, soft)

    with ThreadPoolExecutor(max_workers=2) as pool:
        return [(view, grid) for view, grid in pool.map(one, frames) if grid is not None]


@dataclass(frozen=True)
class _Frame:
    """One camera's photo on a grid of `step`-pixel cells inside its window, and the rays through the cells
    a comparison can use: the same for every pose a look-alike search tries, so it is made once."""

    view: View
    index: int
    step: int
    shape: tuple[int, int]
    photo: np.ndarray
    usable: np.ndarray
    cells: np.ndarray
    rays: np.ndarray


def frames(
    views: Sequence[View],
    images: Mapping[str, np.ndarray],
    model_masks: Mapping[str, np.ndarray],
    step: int,
    segmented: bool = True,
) -> list[_Frame]:
    """A frame per camera that sees the part; `model_masks` (the design's pixels at the fitted pose, per
    camera) limit the cells, and with `segmented` so does the segmentation. The look-alike search keeps
    it: without, the chipped x0.7 bushing of seed 1029 was turned worse (pose error 0.063 → 0.107 mm)."""
    index = {id(v): i for i, v in enumerate(views)}
    frames = []
    for view in seeing(views).values():
        w = view.sdf_window
        model_mask = model_masks[view.calib.name]
        rows, cols = model_mask.shape[0] // step, model_mask.shape[1] // step
        span = (slice(0, rows * step), slice(0, cols * step))
        usable = ((model_mask & w.crop(view.mask)) if segmented else model_mask)[span].astype(np.float32)
        usable = cv2.resize(usable, (cols, rows), interpolation=cv2.INTER_AREA) > 0.999
        crop = w.crop(images[view.calib.name])[span]
        photo = cv2.resize(crop.astype(np.float32), (cols, rows), interpolation=cv2.INTER_AREA)
        clipped = cv2.resize((crop >= SATURATED_DN).astype(np.float32), (cols, rows), interpolation=cv2.INTER_AREA) > 0
        if np.count_nonzero(usable & clipped) > SATURATED_SHARE * max(int(np.count_nonzero(usable)), 1):
            continue
        usable &= ~clipped
        cells = np.flatnonzero(usable)
        centre_px = (step - 1) / 2.0
        pixels = np.column_stack([cells % cols * step + centre_px + w.x0, cells // cols * step + centre_px + w.y0])
        rays = view.calib.rays(pixels).astype(np.float32)
        frames.append(_Frame(view, index[id(view)], step, (rows, cols), photo.ravel(), usable, cells, rays))
    return frames


@dataclass(frozen=True)
class _Grid:
    """One camera's comparison on a grid of STEP-pixel cells inside its window."""

    residual: np.ndarray
    valid: np.ndarray
    world: np.ndarray
    depth: np.ndarray
    step: int
    focal: float


def _residuals(
    model: DesignModel,
    frame: _Frame,
    scene: o3d.t.geometry.RaycastingScene,
    pose: np.ndarray,
    lighting: LearnedLight,
    shadows: bool,
    soft: bool = True,
) -> _Grid | None:
    """Photo ÷ (gain × the design's expected irradiance) − 1 per cell where a prediction can be trusted, and in
    penumbrae how far outside the range the half-hidden lights allow (PENUMBRA_SHARE)."""
    surface = surface_of(model, frame, scene, pose)
    focal = float(frame.view.calib.K[0, 0])
    prediction = _unshadowed(frame, surface, trusted_cells(frame, surface, focal), scene, lighting)
    if shadows:
        _shadow(prediction, frame, surface, scene, lighting, soft)
    _drop_dim(frame.photo, prediction)
    if np.count_nonzero(prediction.valid) < MIN_REGION_CELLS:
        return None
    rows, cols = frame.shape
    return _Grid(
        _judged(frame.photo, prediction).reshape(rows, cols),
        prediction.valid.reshape(rows, cols),
        surface.world.reshape(rows, cols, 3),
        surface.depth.reshape(rows, cols),
        frame.step,
        focal,
    )


@dataclass(frozen=True)
class _Surface:
    """Where each cell's ray meets the design at the pose, per cell of the frame's grid (flattened)."""

    hit: np.ndarray
    depth: np.ndarray
    """0 where the ray misses."""
    normals: np.ndarray
    world: np.ndarray


@dataclass(frozen=True)
class _Prediction:
    """Per cell, flattened: the design's expected matte brightness and highlights per unit gain, how far half-hidden
    lamps may move the matte part (0 outside penumbrae), and whether the cell is compared. The arrays are refined
    in place by `_shadow`."""

    expected: np.ndarray
    glint: np.ndarray
    spread: np.ndarray
    valid: np.ndarray


def surface_of(model: DesignModel, frame: _Frame, scene: o3d.t.geometry.RaycastingScene, pose: np.ndarray) -> _Surface:
    rows, cols = frame.shape
    cells = frame.cells
    # Rays only where a comparison can be made: cells beside them count as misses, which edge_pixels
    # then marks, so the outlines of model and photo are kept clear of as they should be.
    rays = np.zeros((rows * cols, 3), dtype=np.float32)
    rays[cells] = frame.rays
    centre = frame.view.calib.centre.astype(np.float32)
    hits = cast(scene, centre, frame.rays)
    t = np.full(rows * cols, np.inf, dtype=np.float32)
    t[cells] = hits["t_hit"]
    hit = np.isfinite(t)
    normals = np.zeros((len(t), 3), dtype=np.float32)
    rotation = pose[:3, :3].astype(np.float32)
    landed = np.isfinite(hits["t_hit"])
    normals[cells[landed]] = surface_normals(
        model.corner_normals,
        rotation,
        {k: v[landed] for k, v in hits.items()},
        frame.rays[landed].T,
    ).T
    depth = np.where(hit, t, 0.0)
    return _Surface(hit, depth, normals, centre + rays * depth[:, None])


def trusted_cells(frame: _Frame, surface: _Surface, focal: float) -> np.ndarray:
    """The cells where a prediction can be trusted: covered by the design and the photo, clear of its outlines,
    depth steps and creases."""
    rows, cols = frame.shape
    step = frame.step
    edges = edge_pixels(
        surface.hit.reshape(rows, cols),
        surface.depth.reshape(rows, cols),
        surface.normals.reshape(rows, cols, 3),
        step * DEPTH_STEP_PX / focal,
    )
    reach = 2 * int(np.ceil(EDGE_CLEAR_PX / step)) + 1
    near_edge = cv2.dilate(edges.astype(np.uint8), np.ones((reach, reach), np.uint8)).astype(bool)
    above_tray = (surface.world[:, 2] > NEAR_TRAY_MM).reshape(rows, cols)
    return (surface.hit.reshape(rows, cols) & frame.usable & ~near_edge & above_tray).ravel()


def _unshadowed(
    frame: _Frame,
    surface: _Surface,
    valid: np.ndarray,
    scene: o3d.t.geometry.RaycastingScene,
    lighting: LearnedLight,
) -> _Prediction:
    expected = np.zeros(len(valid), dtype=np.float32)
    glint = np.zeros(len(valid), dtype=np.float32)
    found = lighting.predict(scene, surface.world[valid], surface.normals[valid], frame.view.calib.centre, False)
    expected[valid] = found.matte
    glint[valid] = found.glint
    valid &= expected > MIN_IRRADIANCE
    return _Prediction(expected, glint, np.zeros(len(valid), dtype=np.float32), valid)


def _shadow(
    prediction: _Prediction,
    frame: _Frame,
    surface: _Surface,
    scene: o3d.t.geometry.RaycastingScene,
    lighting: LearnedLight,
    soft: bool = True,
) -> None:
    """Shadow rays cost half the comparison, and only matter where the photo is darker or brighter
    than the unshadowed prediction: elsewhere the part is lit as if nothing were in the way."""
    valid, spread = prediction.valid, prediction.spread
    shape, step = frame.shape, frame.step
    rough = _residual(frame.photo, prediction)
    doubtful = _smooth(rough.reshape(shape), valid.reshape(shape), step)[0] > SHADOW_CHECK * TOLERANCE
    size = max(SMOOTH_PX // step, 1)
    doubtful = cv2.dilate(doubtful.astype(np.uint8), np.ones((size, size), np.uint8)).astype(bool).ravel() & valid
    found = lighting.predict(
        scene, surface.world[doubtful], surface.normals[doubtful], frame.view.calib.centre, shadows=True, soft=soft
    )
    prediction.expected[doubtful] = found.matte
    prediction.glint[doubtful] = found.glint
    spread[doubtful] = np.where(found.penumbra > PENUMBRA_SHARE * found.matte, found.penumbra, 0.0)
    valid[doubtful] &= found.matte + spread[doubtful] > MIN_IRRADIANCE


def _judged(photo: np.ndarray, prediction: _Prediction) -> np.ndarray:
    """The residual of each compared cell; in a penumbra, how far it lies outside the range its lamps allow."""
    expected, spread, valid = prediction.expected, prediction.spread, prediction.valid
    matte, residual = _matte(photo, prediction)
    penumbra = np.flatnonzero(valid & (spread > 0))
    if len(penumbra):
        lo = np.maximum(expected[penumbra] - spread[penumbra], 1e-6)
        residual[penumbra] = _outside(matte[penumbra], lo, expected[penumbra] + spread[penumbra])
    return residual


def _drop_dim(photo: np.ndarray, prediction: _Prediction) -> None:
    """Leave out cells the fitted light makes dimmer than MIN_SIGNAL_DN: on a dyed-black part or a face turned from
    every lamp, the sensor's noise and the faintest glint are a large share of what the cell shows, so its ratio to
    the prediction says nothing of its shape. A hollow that is dark on a bright face is predicted bright and stays."""
    valid = prediction.valid
    if not np.any(valid):
        return
    gain, _ = gain_and_gloss(photo[valid], prediction.expected[valid], prediction.glint[valid])
    valid &= gain * prediction.expected >= MIN_SIGNAL_DN


def _outside(value: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """How far each value lies outside [lo, hi], relative to the bound it passed; 0 inside."""
    return np.where(value > hi, value / hi - 1.0, np.where(value < lo, value / lo - 1.0, 0.0)).astype(np.float32)


def _residual(photo: np.ndarray, prediction: _Prediction) -> np.ndarray:
    """Photo ÷ (gain × matte + gloss × highlights) − 1 on valid cells (learned_light.gain_and_gloss)."""
    return _matte(photo, prediction)[1]


def _matte(photo: np.ndarray, prediction: _Prediction) -> tuple[np.ndarray, np.ndarray]:
    """Each valid cell's photo with the fitted highlights taken off, per unit gain (what the matte prediction
    predicts), and its residual against that prediction; zeros elsewhere.

    The gain (exposure × albedo) and the gloss are the camera's, fitted over every compared cell: a defect's
    few cells do not move them, and a glossy part's highlights are then predicted rather than read as defects.
    """
    valid = prediction.valid
    matte = np.zeros(len(photo), dtype=np.float32)
    residual = np.zeros(len(photo), dtype=np.float32)
    if not np.any(valid):
        return matte, residual
    expected, glint = prediction.expected[valid], prediction.glint[valid]
    gain, gloss = gain_and_gloss(photo[valid], expected, glint)
    matte[valid] = (photo[valid] - gloss * glint) / gain
    residual[valid] = matte[valid] / np.maximum(expected, 1e-6) - 1.0
    return matte, residual


def _smooth(residual: np.ndarray, valid: np.ndarray, step: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """|Mean residual| over SMOOTH_PX boxes of valid cells, and the fraction of each box that is valid."""
    weight = valid.astype(np.float32)
    size = (max(SMOOTH_PX // step, 1),) * 2
    support = cv2.boxFilter(weight, -1, size, normalize=True)
    smooth = cv2.boxFilter(residual, -1, size, normalize=True) / np.maximum(support, 1e-6)
    return np.abs(smooth) * (support >= MIN_SUPPORT), support


def _regions(grid: _Grid, view: View, inverse: np.ndarray) -> list[tuple[SurfaceRegion, np.ndarray]]:
    """Connected cells whose smoothed residual exceeds TOLERANCE, each with its cells."""
    smooth, _ = _smooth(grid.residual, grid.valid, grid.step)
    off = grid.valid & (smooth > TOLERANCE)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(off.astype(np.uint8), connectivity=8)
    found = []
    for label in range(1, count):
        inside = labels == label
        if stats[label, cv2.CC_STAT_AREA] < MIN_REGION_CELLS:
            continue
        cell_mm = grid.step * grid.depth[inside] / grid.focal
        middle = transform(inverse, grid.world[inside].mean(axis=0)[None])[0]
        found.append(
            (
                SurfaceRegion(
                    camera=view.calib.name,
                    area_mm2=round(float(np.sum(cell_mm**2)), 3),
                    contrast=round(float(smooth[inside].max()), 3),
                    centre_part_mm=[round(float(v), 2) for v in middle],
                ),
                inside,
            )
        )
    return found
