"""Which pixels of a scan show the part: a comparison with the same camera's empty-tray reference image.

Brightness alone cannot decide it: a part face turned away from the lights can be as dark as the
tray, and the part's own soft shadow darkens the tray as much as a dark face. What a shadow cannot
do is replace the tray's texture (milling marks, speckle), so the local correlation with the
reference is the second cue: high on tray, shadowed or not; near zero on the part. Both are weak
per pixel, so the labelling is a minimum cut that also wants a short outline along sharp steps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import maxflow
import numpy as np

BRIGHT_RATIO = 1.15
DARK_RATIO = 0.25
MIN_EXPECTED_NCC = 0.6
"""The tray's texture tells tray from part where the tray would correlate with itself, through the noise of both
images, at this or more (NCC_TRAY): below it a plate is plain, and the correlation would measure noise."""
NEW_TEXTURE_SNR = 4.0
PLAIN_BRIGHT_RATIO = 1.06
HIDDEN_DARK = 1.2
"""Below CLEAR_PART_EVIDENCE: see _hidden_dark."""
HIDDEN_WIDTH_PX = 41
HIDDEN_MAJORITY_SIGMA_PX = 3.0
DARK_PART_WIDTH_PX = 15
"""A dark part's faces count from this width (see _hidden_dark): a black part's narrow faces (an arm's top, a thin
wall) are narrower than HIDDEN_WIDTH_PX, and its contact shadows join its wide faces whatever the width."""
DARK_PART_RATIO = 0.5
"""A part whose pixels unlike the tray (hiding its texture, lit or not, or brighter) are, in the median, darker than
this share of the tray is a dark part: see _hidden_dark. Dyed-black PA12 reads 0.19-0.31 on the textured trays, grey
and white parts 1 or more. The median counts deep shadows too (leaving them out lost black parts under the soft
boxes, whose highlights lift their lit faces): a grey part whose shadows outnumber its faces would be taken as dark."""
SHADOW_RATIO = 0.5
PART_RATIO = 0.35
"""Where the tray shows no texture to tell a shadow by, a pixel darker than SHADOW_RATIO of the empty tray starts to
count as part, and from PART_RATIO as part (beyond doubt from CLEAR_PART_EVIDENCE, a little darker still): a station's lights overlap, so its shadows on the tray
keep half its light, while a dark part (dyed black PA12 reflects a fifth of what a grey tray does) does not."""
NCC_THRESHOLD = 0.25
NCC_SIGMA_PX = 2.0
SMOOTH_SIGMA_PX = 1.0
NCC_TRAY = 0.6
SCORE_SIGMA_PX = 1.5
MAX_PINHOLE_PX = 300
MIN_COMPONENT_PX = 400
CLEAR_TRAY_EVIDENCE = 0.5
CLEAR_PART_EVIDENCE = 1.5
REF_EDGE_CONTRAST = 0.14
"""Local contrast (std ÷ mean) of the empty-tray reference above which it shows a step, not texture (_near_tray_edge)."""
REF_EDGE_CLEAR_PX = 10
"""How far from such a step no pixel proves material missing (_near_tray_edge)."""
CUT_EVIDENCE_WEIGHT = 0.12
CUT_EDGE_STEP = 0.03
CUT_BLUR_PX = 0.8
CUT_BAND_PX = 24
SEED_MIN_PX = 50
_CHAMFER_STEP = 0.955
"""Length OpenCV's 3x3 L2 distance transform gives a straight step (a diagonal one 1.3693)."""


class SegmentationError(ValueError):
    """Images that cannot be compared; the message names the camera, the problem and the fix."""


@dataclass(frozen=True)
class Segmentation:
    """The part mask of one camera and what it took to get it, for the report and for reuse by the fit."""

    mask: np.ndarray
    gain: float
    area_px: int
    clear_tray: np.ndarray | None = None
    """Pixels whose evidence says tray beyond doubt (bright enough to show its texture, and showing it):
    where the photo can prove material missing. None: everywhere."""
    clear_part: np.ndarray | None = None
    """Pixels whose evidence says part beyond doubt: where the photo can prove material extra. None: everywhere."""

    @property
    def empty(self) -> bool:
        return self.area_px == 0


def check_pair(name: str, image: np.ndarray, reference: np.ndarray, size: tuple[int, int] | None = None) -> None:
    for what, array in (("scan image", image), ("empty-tray reference", reference)):
        if not isinstance(array, np.ndarray) or array.ndim != 2:
            shape = getattr(array, "shape", None)
            raise SegmentationError(
                f"{name}: {what} must be a 2-D 8-bit grey image, got shape {shape}; save the camera's Mono8 frame as is"
            )
    if image.shape != reference.shape:
        raise SegmentationError(
            f"{name}: scan image is {image.shape[1]}×{image.shape[0]} but its empty-tray reference is "
            f"{reference.shape[1]}×{reference.shape[0]}; take the reference with the same camera settings"
        )
    if size is not None and (image.shape[1], image.shape[0]) != size:
        raise SegmentationError(
            f"{name}: image is {image.shape[1]}×{image.shape[0]} but the calibration is for {size[0]}×{size[1]}; "
            "use this camera's own calibration or capture at full sensor resolution"
        )


def brightness_gain(image: np.ndarray, reference: np.ndarray) -> float:
    """Global exposure/illumination change, from the median ratio: the part covers a small part of the view."""
    step = 8
    a = image[::step, ::step].astype(np.float32)
    b = reference[::step, ::step].astype(np.float32)
    usable = b > 10
    if not np.any(usable):
        return 1.0
    return float(np.median(a[usable] / b[usable]))


def segment(
    name: str, image: np.ndarray, reference: np.ndarray, roi: tuple[int, int, int, int] | None = None
) -> Segmentation:
    """Part mask (bool, full image size) of one camera.

    `roi` (x0, y0, x1, y1) limits the work to where the part can be; outside it the mask is empty.
    """
    check_pair(name, image, reference)
    gain = brightness_gain(image, reference)
    height, width = image.shape
    x0, y0, x1, y1 = roi if roi is not None else (0, 0, width, height)
    pad = int(4 * NCC_SIGMA_PX) + 2
    ax0, ay0, ax1, ay1 = max(x0 - pad, 0), max(y0 - pad, 0), min(x1 + pad, width), min(y1 + pad, height)
    im = image[ay0:ay1, ax0:ax1].astype(np.float32)
    ref = reference[ay0:ay1, ax0:ax1].astype(np.float32) * np.float32(gain)
    local, evidence = _part_pixels(im, ref, noise_variance(image, reference, gain))
    mask = np.zeros((height, width), dtype=bool)
    mask[ay0:ay1, ax0:ax1] = local
    clear_tray = np.ones((height, width), dtype=bool)
    clear_tray[ay0:ay1, ax0:ax1] = evidence.clear_tray
    clear_part = np.zeros((height, width), dtype=bool)
    clear_part[ay0:ay1, ax0:ax1] = evidence.clear_part
    if roi is not None:
        keep = np.zeros_like(mask)
        keep[y0:y1, x0:x1] = True
        mask &= keep
    return Segmentation(mask, gain, int(mask.sum()), clear_tray, clear_part)


@dataclass(frozen=True)
class Evidence:
    """Per pixel of a crop: how strongly it looks like part (above 1 part, below 1 tray, shadowed or
    not), and where that is beyond doubt either way."""

    score: np.ndarray
    clear_tray: np.ndarray
    clear_part: np.ndarray


def noise_variance(image: np.ndarray, reference: np.ndarray, gain: float) -> float:
    """Each image's per-pixel sensor noise variance (DN²), from the scan's difference with its reference over the
    whole view: half the robust variance of the difference, which the part (a few percent of the view) does not move.

    A tray's texture tells a shadow from a part only where it stands out of this noise: a dark anodised plate
    under a noisy sensor shows none, and its correlation with the reference is then noise, whatever lies on it.
    """
    step = 3
    diff = image[::step, ::step].astype(np.float32) - reference[::step, ::step].astype(np.float32) * np.float32(gain)
    mad = float(np.median(np.abs(diff - np.median(diff))))
    return max((1.4826 * mad) ** 2 / 2.0, 0.25)


def _evidence(im: np.ndarray, ref: np.ndarray, noise_var: float = 0.25) -> Evidence:
    blur = lambda a, s: cv2.GaussianBlur(a, (0, 0), s)  # noqa: E731
    smooth_im, smooth_ref = blur(im, SMOOTH_SIGMA_PX), blur(ref, SMOOTH_SIGMA_PX)
    ratio = smooth_im / np.maximum(smooth_ref, 1.0)
    weight = (ratio < BRIGHT_RATIO).astype(np.float32)
    norm = np.maximum(blur(weight, NCC_SIGMA_PX), 1e-3)
    wi, wr = weight * im, weight * ref
    mi, mr = blur(wi, NCC_SIGMA_PX) / norm, blur(wr, NCC_SIGMA_PX) / norm
    cov = blur(wi * ref, NCC_SIGMA_PX) / norm - mi * mr
    var_i = blur(wi * im, NCC_SIGMA_PX) / norm - mi * mi
    var_r = blur(wr * ref, NCC_SIGMA_PX) / norm - mr * mr
    ncc = cov / np.sqrt(np.maximum(var_i * var_r, 1e-2))
    # A plate is plain where its texture does not stand out of the noise, texture ÷ (texture + noise) below
    # MIN_EXPECTED_NCC; on any other the correlation is judged above DARK_RATIO as it always was, and below it, where
    # a deep shadow may scale the texture into the noise (r·t / √((r²·t + noise)(t + noise)), what the tray would
    # still correlate at), a darkness hiding it counts as _hidden_dark.
    texture = np.maximum(var_r - noise_var, 0.0)
    plain_tray = texture < MIN_EXPECTED_NCC / (1.0 - MIN_EXPECTED_NCC) * noise_var
    r = np.clip(ratio, 0.0, 1.0)
    shown = r * texture / np.sqrt(np.maximum((r * r * texture + noise_var) * (texture + noise_var), 1e-6))
    lit = ~plain_tray & (ratio > DARK_RATIO)
    deep = ~plain_tray & ~lit
    bright = (ratio - 1.0) / (BRIGHT_RATIO - 1.0)
    uncorrelated = (NCC_TRAY - ncc) / (NCC_TRAY - NCC_THRESHOLD)
    hidden = deep & (shown < MIN_EXPECTED_NCC)
    faces = hidden | (lit & (uncorrelated > 1.0))
    dark_part = faces.any() and float(np.median(ratio[faces | (bright > 1.0)])) < DARK_PART_RATIO
    in_the_dark = np.where(_hidden_dark(hidden, faces if dark_part else None), HIDDEN_DARK, 0.0)
    plain = _plain_tray_evidence(im, ref, ratio, noise_var)
    # In a dark part's view, where even tray would not show its texture (a shadow under a black bracket's arch, the
    # part's own dim faces), no correlation proves part: its shadows and its faces read alike there. So extra
    # material on a dark part is proven only where it is brighter than the tray (grey and white keep the rule).
    judged = uncorrelated
    if dark_part:
        judged = np.where(shown < MIN_EXPECTED_NCC, np.minimum(uncorrelated, HIDDEN_DARK), uncorrelated)
    cues = np.maximum(bright, np.where(lit, judged, np.where(deep, in_the_dark, plain)))
    score = blur(np.clip(cues, 0.0, 2.0).astype(np.float32), SCORE_SIGMA_PX)
    clear_tray = (score < CLEAR_TRAY_EVIDENCE) & (ratio > DARK_RATIO) & ~_near_tray_edge(ref)
    return Evidence(score, clear_tray, score > CLEAR_PART_EVIDENCE)


def _plain_tray_evidence(im: np.ndarray, ref: np.ndarray, ratio: np.ndarray, noise_var: float) -> np.ndarray:
    """Part evidence on a plain plate (white, black, anodised), whose texture does not stand out of the noise, so a
    shadow cannot be told by it: a part is what brightens it beyond its noise (PLAIN_BRIGHT_RATIO), brings texture
    of its own (its grain, its faces' edges), which a soft shadow never does (NEW_TEXTURE_SNR), or darkens it more
    than the station's overlapping lights let a shadow (SHADOW_RATIO). Only brightness proves part beyond doubt
    there: a deep shadow can be as dark, and a window straddling a part's edge gains the edge's texture, so those
    cues reach HIDDEN_DARK at most and no material is judged extra on them."""
    blur = lambda a, s: cv2.GaussianBlur(a, (0, 0), s)  # noqa: E731
    mean_i, mean_r = blur(im, NCC_SIGMA_PX), blur(ref, NCC_SIGMA_PX)
    var_i = blur(im * im, NCC_SIGMA_PX) - mean_i * mean_i
    var_r = blur(ref * ref, NCC_SIGMA_PX) - mean_r * mean_r
    new_texture = (var_i - var_r - noise_var) / (NEW_TEXTURE_SNR * noise_var)
    brighter = (ratio - 1.0) / (PLAIN_BRIGHT_RATIO - 1.0)
    darker = (SHADOW_RATIO - ratio) / (SHADOW_RATIO - PART_RATIO)
    return np.maximum(brighter, np.minimum(np.maximum(new_texture, darker), HIDDEN_DARK))


def _hidden_dark(dark: np.ndarray, dark_faces: np.ndarray | None = None) -> np.ndarray:
    """Of a textured tray's pixels so dark that its texture cannot show, those in patches at least HIDDEN_WIDTH_PX
    across: a dyed-black part's face, or the floor of a hole seen from above, as part for the fit (HIDDEN_DARK,
    never part beyond doubt, so no material is judged extra on it); not the contact shadow along a part's
    base or under its arms, up to HIDDEN_WIDTH_PX wide, which would widen every outline it runs along (a propped
    part read 2.9° of curl from it; a knob's shadow was taken for part 15-22 px out).

    A dyed-black part's face straddles DARK_RATIO: its darkest pixels lie scattered among lit ones that show no
    texture either, and alone they made patches too narrow to count (a black plate lost up to two thirds of its
    silhouette). For a dark part (`dark_faces`: its pixels unlike the tray, lit or not) the patch is measured on
    all of them, mostly so within HIDDEN_MAJORITY_SIGMA_PX to bridge the noise. The price: a contact shadow along
    a black face joins its patch and counts as part (black parts on the demo rig: shadow taken for part 4 → 10 px
    out in the median view, part taken for tray 37 → 3 px), which is why a grey or white part keeps the rule above
    (its lit faces would carry their shadows along too: demo rig, 16 → 33 px at worst). Joined, a shadow no longer
    depends on the patch width, so a dark part's patches count from DARK_PART_WIDTH_PX: at 41 px the top of a black
    bracket's arm was lost (tuning parts under soft boxes: part taken for tray 28 → 3 px at p90, shadow taken for
    part unchanged). Commissioned, tray_views tells the joined shadows by the station's light.
    """
    if not dark.any():
        return dark
    if dark_faces is None:
        return _opened(dark, HIDDEN_WIDTH_PX)
    mostly = cv2.GaussianBlur(dark_faces.astype(np.float32), (0, 0), HIDDEN_MAJORITY_SIGMA_PX) > 0.5
    return dark & _opened(mostly, DARK_PART_WIDTH_PX)


def _opened(mask: np.ndarray, width_px: int) -> np.ndarray:
    """The mask's patches at least `width_px` across."""
    disc = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (width_px, width_px))
    return cv2.morphologyEx(mask.astype(np.uint8), cv2.MORPH_OPEN, disc).astype(bool)


def _near_tray_edge(ref: np.ndarray) -> np.ndarray:
    """Pixels near a step in the empty-tray reference (the tray's own edge), where the correlation measures
    that step rather than the tray's texture.

    A part whose outline lies along the tray's edge in some camera, with a face as bright as the
    tray beside it, steps where the reference steps: the correlation reads 1, tray, for several
    pixels into the face. The mask stays as the cut makes it, but such pixels cannot prove material
    missing (a montageblok at the tray's edge, benchmark seed 5007, read 2.5 mm² missing).
    The tray's texture varies by 3-5 %; REF_EDGE_CONTRAST is three times that, and on the demo rig
    only the tray's edge exceeds it. The correlation window and the evidence blur carry the step up
    to REF_EDGE_CLEAR_PX into the face: at 6 px seed 5007 still read 1.1 mm², at 10 px nothing.
    """
    mean = cv2.GaussianBlur(ref, (0, 0), NCC_SIGMA_PX)
    var = cv2.GaussianBlur(ref * ref, (0, 0), NCC_SIGMA_PX) - mean * mean
    edged = (var > REF_EDGE_CONTRAST**2 * np.maximum(mean * mean, 1.0)).astype(np.uint8)
    near = np.zeros(ref.shape, dtype=bool)
    box = _padded_box(edged, REF_EDGE_CLEAR_PX)
    if box is not None:
        size = 2 * REF_EDGE_CLEAR_PX + 1
        near[box] = cv2.dilate(edged[box], cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size))).astype(bool)
    return near


def _padded_box(mask: np.ndarray, pad: int) -> tuple[slice, slice] | None:
    """The box of a mask's non-zero pixels grown by `pad` (clipped), or None for an empty mask: a dilation
    reaching `pad` pixels marks nothing outside it. (Not so a chamfer distance, which undercounts: _seeds.)"""
    x, y, w, h = cv2.boundingRect(mask)
    if w == 0:
        return None
    return slice(max(y - pad, 0), y + h + pad), slice(max(x - pad, 0), x + w + pad)


def _cut(threshold: np.ndarray, evidence: np.ndarray, im: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """The part/tray labelling that best trades the per-pixel evidence against a short outline.

    Per pixel the evidence is weak (the tray's texture is a few percent, shadows darken it into the
    noise), and thresholding it leaves tongues of shadow and bites out of dark faces several pixels
    deep. A minimum cut (Boykov-Kolmogorov, PyMaxflow) adds what a threshold cannot use: the outline
    is short, and it runs where the image divided by the reference steps sharply, which a part's edge
    does and a shadow's soft edge does not. On the 220 views of benchmarks/segmentation.py it cut the
    pixels wrong by more than 3 px from 1414 to 139 per view and the outward bias from 1.24 to 0.20 px.

    Building the graph costs ten times more than cutting it, and the cut moves the outline of
    `threshold` (the seeds) by at most 18 px on the inspection benchmark's scenes, so only a band of
    CUT_BAND_PX either side of it is a graph; the pixels beyond keep the threshold's label and pull on
    their band neighbours as fixed terminals. The masks came out identical on 150 views, in 0.14-0.31 s
    instead of 0.5-1.35 s per view for the largest part.
    """
    inside = cv2.distanceTransform(threshold, cv2.DIST_L2, 3)
    outside = cv2.distanceTransform(1 - threshold, cv2.DIST_L2, 3)
    band = np.where(threshold > 0, inside, outside) <= CUT_BAND_PX
    ids = np.full(evidence.shape, -1, dtype=np.int64)
    count = int(np.count_nonzero(band))
    ids[band] = np.arange(count)

    ratio = cv2.GaussianBlur(im, (0, 0), CUT_BLUR_PX) / np.maximum(cv2.GaussianBlur(ref, (0, 0), CUT_BLUR_PX), 1.0)
    gx = cv2.Sobel(ratio, cv2.CV_32F, 1, 0, ksize=3) / 8.0
    gy = cv2.Sobel(ratio, cv2.CV_32F, 0, 1, ksize=3) / 8.0
    step2 = gx * gx + gy * gy
    scale = np.float32(-1.0 / (2.0 * CUT_EDGE_STEP**2))
    unary = CUT_EVIDENCE_WEIGHT * (evidence[band] - 1.0)
    to_part, to_tray = np.maximum(unary, 0.0), np.maximum(-unary, 0.0)
    graph = maxflow.Graph[float]()
    graph.add_nodes(count)
    for axis in (0, 1):
        n = evidence.shape[axis] - 1
        first = tuple(slice(0, n) if a == axis else slice(None) for a in (0, 1))
        second = tuple(slice(1, n + 1) if a == axis else slice(None) for a in (0, 1))
        weight = np.exp(np.maximum(step2[first], step2[second]) * scale)
        a, b = ids[first], ids[second]
        both = (a >= 0) & (b >= 0)
        graph.add_edges(a[both], b[both], weight[both], weight[both])
        # A neighbour beyond the band has its threshold label: a pull towards it, not a node.
        for node, other in ((a, second), (b, first)):
            edge = (node >= 0) & ~band[other]
            fixed_part = threshold[other][edge] > 0
            np.add.at(to_part, node[edge][fixed_part], weight[edge][fixed_part])
            np.add.at(to_tray, node[edge][~fixed_part], weight[edge][~fixed_part])
    graph.add_grid_tedges(np.arange(count), to_part, to_tray)
    graph.maxflow()
    part = threshold.astype(bool)
    part[band] = ~graph.get_grid_segments(np.arange(count))
    return part


def _seeds(score: np.ndarray) -> np.ndarray:
    """Pixels above the evidence threshold that can belong to a part: specks far from any sizeable
    patch are sensor noise on the tray.

    A few hundred such specks sit around a large part, each costing the cut a band of its own (and
    the cut's box reaching out to them); on 150 views dropping them changed no mask, as the cut
    cannot grow a speck to MIN_COMPONENT_PX.
    """
    threshold = (score > 1.0).astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(threshold, connectivity=8)
    sizeable = np.zeros(count, dtype=np.uint8)
    sizeable[1:] = stats[1:, cv2.CC_STAT_AREA] >= SEED_MIN_PX
    seeds = np.zeros_like(threshold)
    big = np.flatnonzero(sizeable)
    if len(big) == 0:
        return seeds
    reach = 2 * CUT_BAND_PX
    # The 3x3 chamfer distance counts 0.955 per straight step, so a pixel n steps beyond the patches' box
    # can read as little as 0.955·n: the box is grown until that exceeds the reach.
    pad = math.ceil(reach / _CHAMFER_STEP) + 1
    x0, y0 = stats[big, cv2.CC_STAT_LEFT].min(), stats[big, cv2.CC_STAT_TOP].min()
    x1 = (stats[big, cv2.CC_STAT_LEFT] + stats[big, cv2.CC_STAT_WIDTH]).max()
    y1 = (stats[big, cv2.CC_STAT_TOP] + stats[big, cv2.CC_STAT_HEIGHT]).max()
    box = slice(max(y0 - pad, 0), y1 + pad), slice(max(x0 - pad, 0), x1 + pad)
    near = cv2.distanceTransform(1 - sizeable[labels[box]], cv2.DIST_L2, 3) <= reach
    seeds[box] = threshold[box] * near
    return seeds


def _part_pixels(im: np.ndarray, ref: np.ndarray, noise_var: float = 0.25) -> tuple[np.ndarray, Evidence]:
    """The part mask of an image crop and the evidence behind it."""
    evidence = _evidence(im, ref, noise_var)
    seeds = _seeds(evidence.score)
    bx, by, bw, bh = cv2.boundingRect(seeds)
    part = np.zeros(im.shape, dtype=np.uint8)
    if bw == 0:
        return part.astype(bool), evidence
    y0, x0 = max(by - CUT_BAND_PX, 0), max(bx - CUT_BAND_PX, 0)
    y1, x1 = by + bh + CUT_BAND_PX, bx + bw + CUT_BAND_PX
    box = (slice(y0, y1), slice(x0, x1))
    open_sides = (x0 > 0, y0 > 0, x1 < im.shape[1], y1 < im.shape[0])
    part[box] = _solid(_cut(seeds[box], evidence.score[box], im[box], ref[box]), open_sides)
    return part.astype(bool), evidence


def _solid(cut: np.ndarray, open_sides: tuple[bool, bool, bool, bool]) -> np.ndarray:
    """The cut's patches of MIN_COMPONENT_PX or more with their pinholes filled; a hole reaching a side of the
    cut's box where the image goes on (`open_sides`: left, top, right, bottom) is open to the tray beyond."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats(cut.astype(np.uint8), connectivity=8)
    keep = np.zeros(count, dtype=bool)
    keep[1:] = stats[1:, cv2.CC_STAT_AREA] >= MIN_COMPONENT_PX
    part = keep[labels]
    count, labels, stats, _ = cv2.connectedComponentsWithStats((~part).astype(np.uint8), connectivity=4)
    left, top = stats[:, cv2.CC_STAT_LEFT], stats[:, cv2.CC_STAT_TOP]
    right, bottom = left + stats[:, cv2.CC_STAT_WIDTH], top + stats[:, cv2.CC_STAT_HEIGHT]
    height, width = part.shape
    reaches_out = (
        (open_sides[0] & (left == 0))
        | (open_sides[1] & (top == 0))
        | (open_sides[2] & (right == width))
        | (open_sides[3] & (bottom == height))
    )
    pinholes = (stats[:, cv2.CC_STAT_AREA] < MAX_PINHOLE_PX) & ~reaches_out
    pinholes[0] = False
    return part | pinholes[labels]


ROI_SCALE = 0.25
ROI_CHANGE = 0.08
ROI_MIN_PX = 12
ROI_PAD_FRACTION = 0.15
ROI_PAD_PX = 48


def change_roi(image: np.ndarray, reference: np.ndarray, gain: float) -> tuple[int, int, int, int] | None:
    """(x0, y0, x1, y1) of everything that changed against the reference, found at quarter resolution.

    Full-resolution segmentation costs a few hundred milliseconds per image, but the part and
    its shadow cover a few percent of it; None when nothing changed (an empty tray).
    """
    size = (max(1, int(image.shape[1] * ROI_SCALE)), max(1, int(image.shape[0] * ROI_SCALE)))
    small = cv2.resize(image, size, interpolation=cv2.INTER_AREA).astype(np.float32)
    small_ref = cv2.resize(reference, size, interpolation=cv2.INTER_AREA).astype(np.float32) * np.float32(gain)
    ratio = cv2.GaussianBlur(small, (0, 0), 1.0) / np.maximum(cv2.GaussianBlur(small_ref, (0, 0), 1.0), 1.0)
    changed: np.ndarray = (np.abs(ratio - 1.0) > ROI_CHANGE).astype(np.uint8)
    changed = cv2.morphologyEx(changed, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
    count, _, stats, _ = cv2.connectedComponentsWithStats(changed, connectivity=8)
    big = [i for i in range(1, count) if stats[i, cv2.CC_STAT_AREA] >= ROI_MIN_PX]
    if not big:
        return None
    x0 = min(stats[i, cv2.CC_STAT_LEFT] for i in big) / ROI_SCALE
    y0 = min(stats[i, cv2.CC_STAT_TOP] for i in big) / ROI_SCALE
    x1 = max(stats[i, cv2.CC_STAT_LEFT] + stats[i, cv2.CC_STAT_WIDTH] for i in big) / ROI_SCALE
    y1 = max(stats[i, cv2.CC_STAT_TOP] + stats[i, cv2.CC_STAT_HEIGHT] for i in big) / ROI_SCALE
    pad_x = ROI_PAD_FRACTION * (x1 - x0) + ROI_PAD_PX
    pad_y = ROI_PAD_FRACTION * (y1 - y0) + ROI_PAD_PX
    height, width = image.shape
    return (
        int(max(0, x0 - pad_x)),
        int(max(0, y0 - pad_y)),
        int(min(width, x1 + pad_x)),
        int(min(height, y1 + pad_y)),
    )


def segment_scan(name: str, image: np.ndarray, reference: np.ndarray) -> Segmentation:
    """The part mask of one camera's scan; empty when nothing but noise differs from the reference."""
    check_pair(name, image, reference)
    gain = brightness_gain(image, reference)
    roi = change_roi(image, reference, gain)
    if roi is None:
        return Segmentation(np.zeros(image.shape, dtype=bool), gain, 0)
    return segment(name, image, reference, roi=roi)
