"""Segmentation: the part's pixels, not its shadow, not sensor noise, not a change of exposure."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from amflow_edge.inspection.geometry.camera import CameraCalibration
from amflow_edge.inspection.geometry.silhouette import full_window, silhouette
from amflow_edge.inspection.regions import open_to_background
from amflow_edge.inspection.segment import (
    CUT_BAND_PX,
    MAX_PINHOLE_PX,
    MIN_COMPONENT_PX,
    SEED_MIN_PX,
    SegmentationError,
    _seeds,
    _solid,
    segment_scan,
)
from tests.inspection_scenes import design, empty, placed, rig


def _truth(name: str, pose: np.ndarray, calib: CameraCalibration) -> np.ndarray:
    mesh = design(name)
    vertices = mesh.vertices @ pose[:3, :3].T + pose[:3, 3]
    return silhouette(calib, vertices, np.asarray(mesh.faces), full_window(calib, 1.0)) > 0


@pytest.mark.parametrize("gain", [1.0, 1.06])
def test_the_part_mask_matches_the_true_silhouette_in_every_camera(gain: float) -> None:
    pose, images = placed("montageblok_mb80", 3)
    for calib in rig():
        image = np.clip(images[calib.name].astype(np.float32) * gain, 0, 255).astype(np.uint8)
        mask = segment_scan(calib.name, image, empty()[calib.name]).mask
        truth = _truth("montageblok_mb80", pose, calib)
        iou = np.count_nonzero(mask & truth) / np.count_nonzero(mask | truth)
        assert iou > 0.93, f"{calib.name}: IoU {iou:.3f} at brightness gain {gain}"
        shadow_side = ~truth & (np.abs(images[calib.name].astype(np.int16) - empty()[calib.name]) > 12)
        assert np.count_nonzero(mask & shadow_side) < 0.05 * np.count_nonzero(shadow_side) + 500


def test_an_empty_tray_gives_an_empty_mask() -> None:
    other = empty(8)
    for calib in rig():
        assert segment_scan(calib.name, other[calib.name], empty()[calib.name]).empty, calib.name


def test_mismatched_images_name_the_camera_and_the_fix() -> None:
    image = empty()["cam02"]
    with pytest.raises(SegmentationError, match="cam02: scan image is 1224×2048 .* reference is 2448×2048"):
        segment_scan("cam02", image[:, ::2], image)
    with pytest.raises(SegmentationError, match="cam02: scan image must be a 2-D 8-bit grey image"):
        segment_scan("cam02", np.dstack([image] * 3), image)


@pytest.mark.parametrize(
    ("name", "seed"), [("angle_bracket_ab60", 1001), ("cross_knob_ck40", 1003), ("montageblok_mb80", 3)]
)
def test_contact_shadows_and_dark_faces_stay_near_the_true_outline(name: str, seed: int) -> None:
    """Thresholding the evidence alone put 11–23 px of contact shadow or tray into these masks; the cut keeps within 7."""
    pose, images = placed(name, seed)
    for calib in rig():
        mask = segment_scan(calib.name, images[calib.name], empty()[calib.name]).mask
        truth = _truth(name, pose, calib)
        beyond_outside = cv2.distanceTransform((~truth).astype(np.uint8), cv2.DIST_L2, 5)[mask & ~truth]
        beyond_inside = cv2.distanceTransform(truth.astype(np.uint8), cv2.DIST_L2, 5)[truth & open_to_background(mask)]
        assert beyond_outside.max(initial=0.0) < 9.0, (
            f"{calib.name}: shadow taken for part {beyond_outside.max():.0f} px out"
        )
        assert beyond_inside.max(initial=0.0) < 9.0, (
            f"{calib.name}: part taken for tray {beyond_inside.max():.0f} px in"
        )


def test_the_cut_fills_pinholes_but_not_notches_open_to_the_tray_beyond_its_box() -> None:
    cut = np.zeros((120, 120), dtype=bool)
    cut[10:110, 0:100] = True
    cut[50:60, 50:60] = False  # a pinhole
    cut[20:30, 0:10] = False  # a notch at the box's left side
    speck = np.zeros_like(cut)
    speck[112:118, 112:118] = True  # far smaller than a part
    assert MIN_COMPONENT_PX > 36 and MAX_PINHOLE_PX > 100
    open_left = _solid(cut | speck, (True, True, True, True))
    assert open_left[55, 55] and not open_left[25, 5] and not open_left[115, 115]
    # The same notch where the box ends at the image's edge is a hole in the part.
    assert _solid(cut, (False, True, True, True))[25, 5]


def test_seeds_keep_sizeable_patches_and_specks_near_them_only() -> None:
    score = np.zeros((400, 400), dtype=np.float32)
    score[100:140, 100:140] = 2.0
    score[150, 150] = 2.0  # a speck within reach of the patch
    score[119, 189] = 2.0  # 50 px straight out: the distance transform reads 47.75, within reach
    score[390, 390] = 2.0  # a speck far from it
    seeds = _seeds(score)
    assert seeds[120, 120] and seeds[150, 150] and seeds[119, 189] and not seeds[390, 390]
    assert 2 * CUT_BAND_PX < 250 and SEED_MIN_PX > 1
    lone = np.zeros_like(score)
    lone[200, 200] = 2.0
    assert not _seeds(lone).any()
