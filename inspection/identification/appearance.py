"""Which material, among designs of one geometry: the part's reflectance against the tray, and the looks the
station knows.

Grey divided by the empty tray's grey at the same pixels cancels what varies across the station and over the
day (exposure, the lights' ageing, vignetting) and leaves what the material does: a black PA12 part reads a
fifth of a white one. Shading varies with the pose (a face turned from the lights is darker, and how much of a
part is turned away depends on the design and how it lies), so the measure is the LIT_PERCENTILE of the part's
pixels, the faces turned most to the lights, which every part and pose has and which are lit alike; then the
median over the cameras. On 57 benchmark scenes of Voron parts its spread per material was 1.6 % (green) and
4.2 % (grey) of its value; at the 80th percentile 10 % and 7 %, where a part showing few lit faces read as
little as 0.62 of its material's mean (a green idler, 0.80 against 1.29). What spread remains is learned per
material from confirmed scans (MaterialLook.spread), not assumed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import cv2
import numpy as np

from amflow_edge.inspection.align import View
from amflow_edge.inspection.identification.models import CandidateDesign
from amflow_edge.inspection.segment import brightness_gain

LIT_PERCENTILE = 95.0
EDGE_PX = 4
"""Pixels next to the outline mix part and tray (blur, anti-aliasing) and are left out."""
MIN_PIXELS = 200
TRAY_SHARE = 0.5
"""Part pixels whose reference is darker than this share of the median reference behind the part are not in front
of the tray: a white front skirt standing 67 mm tall reaches past the tray's edge in the side cameras, and divided
by the dark floor there (20 DN against the tray's 77) it read 7.5 against its material's 3.4."""
SPREAD_FLOOR = 0.01
SPREAD_FLOOR_SHARE = 0.05
"""A look learned from a handful of scans understates its spread: at least 1 % absolute or 5 % of its mean."""
WITHIN = 3.0
"""A measurement within this many spreads of a look matches it."""
APART = 3.0
"""Two looks whose means are fewer than this many spreads apart (the wider look's) cannot be told apart, whatever
the measurement: a look that wide takes in readings on the far side of the narrow one, and naming it there would
give a green part that reads a little low the wrong material."""


def measure(
    views: Sequence[View], images: Mapping[str, np.ndarray], references: Mapping[str, np.ndarray]
) -> float | None:
    """Median over the cameras that see the part of the LIT_PERCENTILE of part-pixel grey ÷ reference grey (the
    reference scaled by the exposure change), over the pixels in front of the tray (TRAY_SHARE); None without
    enough part seen."""
    per_camera = []
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * EDGE_PX + 1, 2 * EDGE_PX + 1))
    for view in views:
        if view.empty:
            continue
        name = view.calib.name
        x, y, w, h = cv2.boundingRect(view.mask.astype(np.uint8))
        inner = cv2.erode(view.mask[y : y + h, x : x + w].astype(np.uint8), kernel).astype(bool)
        if np.count_nonzero(inner) < MIN_PIXELS:
            continue
        image = images[name][y : y + h, x : x + w][inner].astype(np.float32)
        reference = references[name][y : y + h, x : x + w][inner].astype(np.float32)
        on_tray = reference >= TRAY_SHARE * float(np.median(reference))
        if np.count_nonzero(on_tray) < MIN_PIXELS:
            continue
        gain = brightness_gain(images[name], references[name])
        ratio = image[on_tray] / np.maximum(reference[on_tray] * gain, 1.0)
        per_camera.append(float(np.percentile(ratio, LIT_PERCENTILE)))
    return float(np.median(per_camera)) if per_camera else None


def _spread(mean: float, spread: float) -> float:
    return max(spread, SPREAD_FLOOR, SPREAD_FLOOR_SHARE * mean)


def choose_material(members: Sequence[CandidateDesign], appearance: float | None) -> tuple[CandidateDesign | None, str]:
    """The one material of a geometry the appearance matches, or None and why not."""
    if len(members) == 1:
        return members[0], ""
    names = ", ".join(m.design_material for m in members)
    unknown = [m.design_material for m in members if m.look is None]
    if unknown:
        return None, (
            f"the part's geometry is shared by {names}; no look is known for {', '.join(unknown)}, so the "
            "material cannot be told from the photos (confirm one scan of each to teach the station)"
        )
    if appearance is None:
        return None, f"the part's geometry is shared by {names}; too little of the part is seen to measure its look"
    distances = []
    for member in members:
        look = member.look
        assert look is not None
        distances.append(abs(appearance - look.mean) / _spread(look.mean, look.spread))
    order = np.argsort(distances)
    best = members[int(order[0])]
    assert best.look is not None
    if distances[int(order[0])] > WITHIN:
        return None, (
            f"the part's geometry is shared by {names}; its appearance {appearance:.3f} matches none of their "
            f"looks (nearest {best.design_material}: {best.look.mean:.3f} ± {best.look.spread:.3f})"
        )
    for index in order[1:]:
        other = members[int(index)]
        assert other.look is not None
        apart = abs(other.look.mean - best.look.mean) / max(
            _spread(best.look.mean, best.look.spread), _spread(other.look.mean, other.look.spread)
        )
        if apart < APART or distances[int(index)] <= WITHIN:
            return None, (
                f"the part's geometry is shared by {names}; its appearance {appearance:.3f} fits both "
                f"{best.design_material} ({best.look.mean:.3f} ± {best.look.spread:.3f}) and "
                f"{other.design_material} ({other.look.mean:.3f} ± {other.look.spread:.3f})"
            )
    return best, (
        f"appearance {appearance:.3f} matches its material's look {best.look.mean:.3f} ± {best.look.spread:.3f} "
        "and no other of the same geometry"
    )
