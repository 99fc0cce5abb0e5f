"""Shadows told from material by the other cameras: what lies on the tray looks the same darkened to every camera.

A part's shadow on the tray darkens the tray by the share of light the part takes away, and a matte tray sends
what light it gets to every camera alike: photo ÷ empty-tray reference reads the same at that tray point in every
camera that sees it. Material standing above the tray does not: the ray through it meets the tray at a point that
another camera, looking past the part, sees as bare or shadowed tray, lit as it is and not as the material.

One camera alone cannot tell a shadow from a dark part where the tray shows no texture (plain plates), or where the
shadow takes the tray's texture with it (brushed metal's sheen), and the segmentation takes such shadows for part.
Once the design is aligned, the other cameras say which of those pixels are tray: a pixel of the mask beyond the
design's drawn outline is explained as tray when its tray point, seen by two other cameras whose drawn design does
not hide it, reads the same there. Only then: before the pose is known, a low flat part's own faces (the same
material seen by another camera a few millimetres away) would explain each other away.

What lies on the tray's plane cannot be told from the tray this way, material included (a brim, an elephant's
foot): pixels the segmentation proved part (`clear_part`: brighter than the tray, or without its texture) stay,
and a camera votes only where height shows in it (a millimetre up the ray moves its view by PARALLAX_PX or more).

Where two other cameras cannot see the tray point (inside a U-shaped part, whose walls hide its floor from most
cameras) or cannot be trusted to (beside a dark part: dark material hides the tray point from them too), a
commissioned station has a second witness: its learned light (learned_light), which casts the posed design's
shadow on the tray. A pixel reading the share of light the design leaves its tray point, with no camera that sees
that point reading otherwise, is that shadow (`LitTray`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import open3d as o3d

from amflow_edge.inspection.align import Alignment, View, refit, transform
from amflow_edge.inspection.design_cache import DesignModel
from amflow_edge.inspection.geometry.raycast import triangle_scene
from amflow_edge.inspection.geometry.silhouette import Window
from amflow_edge.inspection.learned_light import LearnedLight
from amflow_edge.inspection.metrics import model_masks
from amflow_edge.inspection.segment import brightness_gain, noise_variance

RATIO_SIGMA_PX = 2.0
"""Both ratio images are smoothed so: the tray point is found to a pixel or so (calibration, the tray's flatness)."""
BEYOND_OUTLINE_PX = 3
"""Mask pixels this far beyond the design's drawn outline are candidates: nearer, the outline's own blur."""
HIDDEN_MARGIN_PX = 4
"""A camera's drawn design grown by this much hides a tray point: the pose is good to a pixel or two."""
AGREE_RATIO = 0.06
"""Photo ÷ reference agreeing within this (plus the noise's share) is the same tray point, lit alike."""
NOISE_SIGMAS = 3.0
DARKENED = 0.9
"""Only a pixel darker than this share of its reference can be a shadow; one about as bright as the tray is in the
mask because it lacks the tray's texture, which a shadow keeps, and it would agree with bare tray anywhere."""
REFIT_SHARE = 0.02
"""When shadows explained away are this share of the masks or more, the pose is fitted again without them: a hard
shadow taken for part pulls the outline fit by a millimetre or more (key light over matte black)."""
MIN_OTHERS = 2
"""Cameras that must agree: one alone may see, instead of the tray point, extra material that hides it and reads
as the material in front of the first camera does (a 6 mm block beside a grey plate lost 10-50 % of its pixels in
three cameras to one camera's agreement, none to two's; a hard shadow on a black tray is still 81 % explained)."""
PARALLAX_PX = 4.0
"""A camera votes only where a millimetre up the first camera's ray moves its view by this much: nearer the same
line of sight, material on the ray and the tray point behind it look alike to it."""
DARK_PART = 0.5
"""A part darker than this share of the tray (in the median over its drawn outline) is left as it is: dark material
beside it, which hides the tray point from the other cameras as well, reads as its shadow does (a 6 mm block
beside a dyed-black plate lost half its pixels), and none of it is proven material. The learned light still
explains its shadows (LitTray)."""
LIT_AGREE_RATIO = 0.06
"""Photo ÷ reference within this (plus the noise's share) of the learned light's share at the tray point is its
shadow, with no camera that sees that point reading otherwise. A black bracket's shadow between its arms reads
within 0.06 of the prediction either way under the soft boxes (0.04 left a tenth of it unexplained): 96 %
explained; a block of black material in the bracket's shadow loses a tenth of its pixels in one camera (at 0.08:
99 % and an eighth)."""


@dataclass(frozen=True)
class LitTray:
    """The station's learned light over the tray around the posed design: how much of it reaches a tray point past
    the design, as a share of what reaches it with no part on the tray (photo ÷ reference, for a matte tray)."""

    light: LearnedLight
    scene: o3d.t.geometry.RaycastingScene

    @classmethod
    def of(cls, light: LearnedLight, model: DesignModel, pose: np.ndarray) -> LitTray:
        """The light over the tray with the design at `pose` in the way."""
        return cls(light, triangle_scene(transform(pose, model.vertices), model.faces))

    def share(self, points: np.ndarray) -> np.ndarray:
        """(N,) share of the light reaching (N, 3) tray points (z = 0); NaN for a point not given."""
        result = np.full(len(points), np.nan, dtype=np.float32)
        valid = np.isfinite(points).all(axis=1)
        if not valid.any():
            return result
        at = points[valid].astype(np.float32)
        up = np.zeros_like(at)
        up[:, 2] = 1.0
        shadowed = self.light.predict(self.scene, at, up, None, shadows=True).matte
        open_tray = self.light.predict(self.scene, at, up, None, shadows=False).matte
        result[valid] = shadowed / np.maximum(open_tray, 1e-6)
        return result


@dataclass(frozen=True)
class RatioImage:
    """One camera's smoothed photo ÷ reference around its part (its view's window): a tray point another camera
    projects outside it is near no part here, and has no vote."""

    ratio: np.ndarray
    reference: np.ndarray
    window: Window
    noise_variance: float

    def at(self, col: np.ndarray, row: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(ratio, whether inside) at full-image pixel positions."""
        x, y = col - self.window.x0, row - self.window.y0
        inside = (x >= 0) & (y >= 0) & (x < self.window.width) & (y < self.window.height)
        values = self.ratio[np.clip(y, 0, self.window.height - 1), np.clip(x, 0, self.window.width - 1)]
        return values, inside


def ratio_images(
    images: Mapping[str, np.ndarray], references: Mapping[str, np.ndarray], views: Sequence[View]
) -> dict[str, RatioImage]:
    """Per camera with a part in view, what explain_shadows compares, over the view's window."""
    return {
        v.calib.name: _ratio(images[v.calib.name], references[v.calib.name], v.sdf_window) for v in views if not v.empty
    }


def _ratio(image: np.ndarray, reference: np.ndarray, window: Window) -> RatioImage:
    gain = brightness_gain(image, reference)
    noise = noise_variance(image, reference, gain)
    pad = int(4 * RATIO_SIGMA_PX) + 1
    height, width = image.shape
    x0, y0 = max(window.x0 - pad, 0), max(window.y0 - pad, 0)
    x1, y1 = min(window.x0 + window.width + pad, width), min(window.y0 + window.height + pad, height)
    ref = cv2.GaussianBlur(reference[y0:y1, x0:x1].astype(np.float32) * np.float32(gain), (0, 0), RATIO_SIGMA_PX)
    photo = cv2.GaussianBlur(image[y0:y1, x0:x1].astype(np.float32), (0, 0), RATIO_SIGMA_PX)
    inner = (
        slice(window.y0 - y0, window.y0 - y0 + window.height),
        slice(window.x0 - x0, window.x0 + window.width - x0),
    )
    ratio = (photo / np.maximum(ref, 1.0))[inner]
    return RatioImage(ratio, ref[inner], window, noise)


def without_shadows(
    model: DesignModel,
    views: Sequence[View],
    alignment: Alignment,
    images: Mapping[str, np.ndarray],
    references: Mapping[str, np.ndarray],
    masks: Mapping[str, np.ndarray],
    light: LearnedLight | None = None,
) -> tuple[list[View], Alignment, dict[str, np.ndarray]]:
    """The views with the shadows the other cameras (and the station's learned `light`, if it is known to hold)
    explain removed, the alignment (fitted again when they were many), and the model masks of those views at it.
    The shadows are explained from the first pose, then again from the second, each time from the segmentation's
    own masks."""
    ratios = ratio_images(images, references, views)
    lit = None if light is None else LitTray.of(light, model, alignment.pose)
    refined, removed = explain_shadows(views, ratios, masks, lit)
    if not removed:
        return list(views), alignment, dict(masks)
    area = sum(int(v.mask.sum()) for v in views if not v.empty)
    if sum(removed.values()) >= REFIT_SHARE * max(area, 1):
        alignment = refit(model, refined, alignment, alignment.pose)
        masks = model_masks(model, views, alignment.pose)
        lit = None if light is None else LitTray.of(light, model, alignment.pose)
        refined, removed = explain_shadows(views, ratios, masks, lit)
    changed = [v for v in refined if v.calib.name in removed]
    return refined, alignment, {**masks, **model_masks(model, changed, alignment.pose)}


def explain_shadows(
    views: Sequence[View],
    ratios: Mapping[str, RatioImage],
    masks: Mapping[str, np.ndarray],
    lit: LitTray | None = None,
) -> tuple[list[View], dict[str, int]]:
    """The views with the mask pixels beyond the drawn design that other cameras see as the same tray, or that read
    as the `lit` tray's shadow there, removed, and per camera how many were; `ratios` are `ratio_images` of the scan,
    `masks` `metrics.model_masks` of `views` at the aligned pose (those of views left as they were stay valid)."""
    seen = [v for v in views if not v.empty and v.calib.name in masks and v.calib.name in ratios]
    if len(seen) < MIN_OTHERS + 1:
        return list(views), {}
    hidden: dict[str, np.ndarray] = {v.calib.name: _grown(masks[v.calib.name], HIDDEN_MARGIN_PX) for v in seen}
    refined: list[View] = []
    removed: dict[str, int] = {}
    names = {v.calib.name for v in seen}
    for view in views:
        if view.calib.name not in names:
            refined.append(view)
            continue
        name = view.calib.name
        window = view.sdf_window
        drawn = _grown(masks[name], BEYOND_OUTLINE_PX)
        beyond = window.crop(view.mask) & ~drawn
        ys, xs = np.nonzero(beyond)
        if len(xs) == 0:
            refined.append(view)
            continue
        mine = ratios[name]
        dark_part = float(np.median(mine.ratio[masks[name]])) < DARK_PART
        if dark_part and lit is None:
            refined.append(view)
            continue
        pixels = np.column_stack([xs + window.x0, ys + window.y0]).astype(np.float64)
        own = mine.ratio[ys, xs]
        candidate = own < DARKENED
        if view.clear_part is not None:
            candidate &= ~view.clear_part[pixels[:, 1].astype(int), pixels[:, 0].astype(int)]
        if not candidate.any():
            refined.append(view)
            continue
        ys, xs, pixels, own = ys[candidate], xs[candidate], pixels[candidate], own[candidate]
        own_ref = mine.reference[ys, xs]
        noise = NOISE_SIGMAS * _smoothed_noise(mine.noise_variance) / np.maximum(own_ref, 1.0)
        points, raised = _on_tray(view, pixels)
        others = [_vote(other, points, raised, ratios, hidden) for other in seen if other.calib.name != name]
        agreeing = np.zeros(len(pixels), dtype=np.int32)
        for valid, theirs in others:
            agreeing += valid & (np.abs(theirs - own) <= AGREE_RATIO + noise)
        explained = (agreeing >= MIN_OTHERS) & (not dark_part)
        if lit is not None:
            # Where two other cameras can vote, theirs is the better witness for a grey or white part.
            voters = np.sum([valid for valid, _ in others], axis=0)
            asked = ~explained & (dark_part | (voters < MIN_OTHERS))
            explained |= _lit_shadow(lit, points, own, noise, others, asked)
        if not explained.any():
            refined.append(view)
            continue
        mask = view.mask.copy()
        mask[ys[explained] + window.y0, xs[explained] + window.x0] = False
        clear_part = None if view.clear_part is None else view.clear_part & mask
        refined.append(View(view.calib, mask, view.clear_tray, clear_part))
        removed[name] = int(explained.sum())
    return refined, removed


def _lit_shadow(
    lit: LitTray,
    points: np.ndarray,
    own: np.ndarray,
    noise: np.ndarray,
    others: Sequence[tuple[np.ndarray, np.ndarray]],
    asked: np.ndarray,
) -> np.ndarray:
    """Of the `asked` pixels, those reading the share of light the posed design leaves their tray `points`, which no
    other camera that sees the point (`others`: `_vote`s) reads otherwise than this one or than that share."""
    share = np.full(len(points), np.nan, dtype=np.float32)
    share[asked] = lit.share(points[asked])
    tolerance = LIT_AGREE_RATIO + noise
    contradicted = np.zeros(len(points), dtype=bool)
    for valid, theirs in others:
        contradicted |= valid & ((np.abs(theirs - own) > AGREE_RATIO + noise) | (np.abs(theirs - share) > tolerance))
    return (np.abs(own - share) <= tolerance) & ~contradicted


def _smoothed_noise(noise_variance_dn2: float) -> float:
    """The noise's standard deviation (DN) left after the RATIO_SIGMA_PX Gaussian: σ ÷ (2σ_blur√π) for white noise."""
    return float(np.sqrt(noise_variance_dn2)) / (2.0 * RATIO_SIGMA_PX * np.sqrt(np.pi))


def _grown(mask: np.ndarray, px: int) -> np.ndarray:
    size = 2 * px + 1
    return cv2.dilate(mask.astype(np.uint8), cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size))).astype(bool)


def _on_tray(view: View, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where each pixel's ray meets the tray's plane (z = 0, the tray frame), and where it is 1 mm above it, (N, 3)
    each; NaN for a ray that does not."""
    directions = view.calib.rays(pixels)
    origin = view.calib.centre
    with np.errstate(divide="ignore", invalid="ignore"):
        t = -origin[2] / directions[:, 2]
        t_raised = (1.0 - origin[2]) / directions[:, 2]
    t = np.where(t > 0, t, np.nan)
    t_raised = np.where(t_raised > 0, t_raised, np.nan)
    return origin + directions * t[:, None], origin + directions * t_raised[:, None]


def _vote(
    other: View,
    points: np.ndarray,
    raised: np.ndarray,
    ratios: Mapping[str, RatioImage],
    hidden: Mapping[str, np.ndarray],
) -> tuple[np.ndarray, np.ndarray]:
    """Per tray point, whether `other` sees it (in its image, not behind its drawn design or material it proved,
    with the height along the first camera's ray showing: `raised`, 1 mm up it), and what it reads there."""
    valid = np.isfinite(points).all(axis=1) & np.isfinite(raised).all(axis=1)
    votes = np.zeros(len(points), dtype=bool)
    readings = np.full(len(points), np.nan, dtype=np.float32)
    if not valid.any():
        return votes, readings
    calib = other.calib
    index = np.flatnonzero(valid)
    inside = calib.visible(points[index], margin_px=2.0)
    index = index[inside]
    if len(index) == 0:
        return votes, readings
    q = calib.project(points[index])
    parallax = np.linalg.norm(calib.project(raised[index]) - q, axis=1) >= PARALLAX_PX
    col, row = np.rint(q[:, 0]).astype(int), np.rint(q[:, 1]).astype(int)
    window = other.sdf_window
    in_window = (col >= window.x0) & (col < window.x0 + window.width) & (row >= window.y0)
    in_window &= row < window.y0 + window.height
    behind = np.zeros(len(index), dtype=bool)
    drawn = hidden[calib.name]
    behind[in_window] = drawn[row[in_window] - window.y0, col[in_window] - window.x0]
    if other.clear_part is not None:
        # Material proven there (extra material the drawn design lacks) hides the tray point as well.
        behind |= other.clear_part[
            np.clip(row, 0, other.clear_part.shape[0] - 1), np.clip(col, 0, other.clear_part.shape[1] - 1)
        ]
    theirs, near_part = ratios[calib.name].at(col, row)
    votes[index] = near_part & parallax & ~behind
    readings[index] = theirs
    return votes, readings
