"""Shadows told from material by the other cameras and by the station's light (inspection.tray_views), on rendered
scenes with known poses."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import cv2
import numpy as np
import pytest
import trimesh

from amflow_edge.drivers.simulator.looks import load_look, load_material
from amflow_edge.drivers.simulator.render import Renderer
from amflow_edge.inspection.align import View
from amflow_edge.inspection.design_cache import design_model
from amflow_edge.inspection.designs import load_mesh_mm
from amflow_edge.inspection.geometry.placement import place_on_tray
from amflow_edge.inspection.geometry.silhouette import full_window, silhouette
from amflow_edge.inspection.inspect import inspect_scan, segment_views
from amflow_edge.inspection.learned_light import LearnedLight, LearnedLightRecord
from amflow_edge.inspection.metrics import model_masks
from amflow_edge.inspection.profiles import load_profile
from amflow_edge.inspection.tray_views import LitTray, explain_shadows, ratio_images
from tests.inspection_scenes import REPO, rig

PLATE = REPO / "tests" / "data" / "meshes" / "voron2" / "Gantry__AB_Drive_Units__b_drive_frame_upper.stl"
BRACKET = REPO / "tests" / "data" / "meshes" / "voron2" / "Gantry__Front_Idlers__[a]_tensioner_left.stl"
SEED = 1003
BRACKET_SEED = 1007
"""A placement of the bracket whose arms open towards cam04, which sees the tray between them in their shadow."""


@cache
def _plate() -> trimesh.Trimesh:
    return load_mesh_mm(PLATE, "mm")


def _scene(
    look: str, shown: trimesh.Trimesh, pose: np.ndarray, material: str = "pa12_white", seed: int = SEED
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    renderer = Renderer(rig(), look=load_look(look))
    try:
        images = renderer.render(shown, pose, seed, material=load_material(material))
        return images, renderer.render(None, None, seed + 500_000)
    finally:
        renderer.close()


def _beyond(views: list[View], masks: dict[str, np.ndarray]) -> int:
    """Mask pixels more than 3 px beyond the drawn design, over all cameras."""
    total = 0
    for view in views:
        drawn = cv2.dilate(masks[view.calib.name].astype(np.uint8), np.ones((7, 7), np.uint8)).astype(bool)
        total += int((view.sdf_window.crop(view.mask) & ~drawn).sum())
    return total


def test_a_hard_shadow_on_a_black_tray_is_tray_to_the_other_cameras() -> None:
    """Under one hard key light over a matte black tray, a white plate's shadow is as dark as nothing on the tray
    could be, and the segmentation takes it for part, tens of pixels out. Every camera that sees that tray point
    reads it darkened alike, so it is tray."""
    plate = _plate()
    pose = place_on_tray(plate, np.random.default_rng(SEED))
    images, references = _scene("key_black", plate, pose)
    model = design_model(plate)
    views = segment_views(images, references, rig())
    masks = model_masks(model, views, pose)
    before = _beyond(views, masks)
    refined, removed = explain_shadows(views, ratio_images(images, references, views), masks)
    after = _beyond(refined, model_masks(model, refined, pose))
    assert before > 20_000, before
    assert after < 0.3 * before, (before, after, removed)


def _with_block(plate: trimesh.Trimesh, pose: np.ndarray) -> trimesh.Trimesh:
    """The posed plate, in the tray frame, with a 6 mm block of extra material grown on its far +x side."""
    posed = plate.copy()
    posed.apply_transform(pose)
    side = posed.vertices[np.argmax(posed.vertices[:, 0])]
    block = trimesh.creation.box(extents=(6.0, 6.0, 6.0))
    block.apply_translation((side[0] + 2.5, side[1], 3.0))
    joined = trimesh.util.concatenate([posed, block])
    assert isinstance(joined, trimesh.Trimesh)
    return joined


@pytest.mark.parametrize("material", ["pa12_grey", "pa12_black"])
def test_material_standing_beyond_the_design_stays_part(material: str) -> None:
    """A block of extra material stands above the tray beside the part: the ray through it meets the tray where
    the other cameras see bare tray, lit as it is, so they do not explain it away. (One camera can: where the block
    itself hides that tray point from it and its face reads as the block's face does, so two must agree. Two can
    too, on the block's faces in its own shadow that none of them proves material: up to a tenth of its pixels.)"""
    plate = _plate()
    pose = place_on_tray(plate, np.random.default_rng(SEED))
    shown = _with_block(plate, pose)
    images, references = _scene("demo", shown, np.eye(4), material)
    views = segment_views(images, references, rig())
    masks = model_masks(design_model(plate), views, pose)
    refined, _ = explain_shadows(views, ratio_images(images, references, views), masks)
    posed = plate.vertices @ pose[:3, :3].T + pose[:3, 3]
    for before, after in zip(views, refined, strict=True):
        window = full_window(before.calib, 1.0)
        block = silhouette(before.calib, np.asarray(shown.vertices), np.asarray(shown.faces), window) > 0
        block &= ~(silhouette(before.calib, posed, np.asarray(plate.faces), window) > 0)
        seen = int((before.mask & block).sum())
        assert seen >= 0.8 * block.sum(), (
            f"{material} {before.calib.name}: the segmentation saw {seen} of {block.sum()}"
        )
        kept = (after.mask & block).sum() / seen
        assert kept >= 0.9, f"{material} {before.calib.name}: {kept:.3f} of the block's {seen} px kept"


def test_an_inspection_that_explained_shadows_draws_its_overlays_on_the_views_it_measured(tmp_path: Path) -> None:
    """The measured views' windows shrink where a shadow at the mask's edge is explained; the overlays are drawn
    in them."""
    plate = _plate()
    pose = place_on_tray(plate, np.random.default_rng(SEED))
    images, references = _scene("key_black", plate, pose)
    report = inspect_scan(images, references, rig(), plate, "plate", load_profile("default"), out_dir=tmp_path)
    assert report.timings_s["shadows"] > 0 and report.overlays, report.notes
    assert all((tmp_path / name).is_file() for name in report.overlays), report.overlays


def _softbox_light() -> LearnedLight:
    """The soft-box look's light as commissioning learned it from eight intact scans of the tuning parts, white and
    black (benchmarks/inspection.py --looks softbox_brushed --materials pa12_white,pa12_black --commission 8)."""
    return LearnedLightRecord.model_validate_json(
        (REPO / "tests" / "data" / "lights" / "softbox_brushed.json").read_text()
    ).light()


def _bracket_in_its_shadow(
    shown: trimesh.Trimesh | None = None,
) -> tuple[list[View], list[View], dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The dyed-black bracket (or `shown`, in the tray frame) under the soft boxes: its views before and after the
    shadows the light explains, and the bracket's model masks at its true pose in each."""
    bracket = load_mesh_mm(BRACKET, "mm")
    pose = place_on_tray(bracket, np.random.default_rng(BRACKET_SEED))
    images, references = _scene(
        "softbox_brushed",
        bracket if shown is None else shown,
        pose if shown is None else np.eye(4),
        "pa12_black",
        BRACKET_SEED,
    )
    model = design_model(bracket)
    views = segment_views(images, references, rig())
    masks = model_masks(model, views, pose)
    refined, _ = explain_shadows(
        views, ratio_images(images, references, views), masks, LitTray.of(_softbox_light(), model, pose)
    )
    return views, refined, masks, model_masks(model, refined, pose)


def test_the_shadow_between_a_black_brackets_arms_is_the_shadow_the_station_light_casts() -> None:
    """Between a dyed-black bracket's arms the tray lies in their shadow, too dark to show its texture and as dark
    as the bracket: the segmentation takes it for part, and the other cameras, whose view of it the arms hide or
    which would see dark material there as dark, cannot say otherwise. The station's light can: the tray there
    reads the share of light the posed bracket leaves it."""
    views, refined, masks, refined_masks = _bracket_in_its_shadow()
    before = _beyond(views, masks)
    after = _beyond(refined, refined_masks)
    cam04 = [v for v in views if v.calib.name == "cam04"]
    assert _beyond(cam04, masks) > 1_000, "cam04 should see the shaded tray between the arms as part"
    assert after < 0.1 * before, (before, after)


def test_black_material_beside_a_black_part_is_no_shadow_of_the_station_light() -> None:
    """A 6 mm block of the same dyed black beside the bracket reads as dark as its shadows, but not as dark as the
    light leaves the tray behind it: it stays part. (Where the tray behind it lies in the bracket's shadow, its own
    shaded face reads as that shadow does: a tenth of its pixels in one camera.)"""
    bracket = load_mesh_mm(BRACKET, "mm")
    pose = place_on_tray(bracket, np.random.default_rng(BRACKET_SEED))
    shown = _with_block(bracket, pose)
    views, refined, _, _ = _bracket_in_its_shadow(shown)
    posed = bracket.vertices @ pose[:3, :3].T + pose[:3, 3]
    for before, after in zip(views, refined, strict=True):
        window = full_window(before.calib, 1.0)
        block = silhouette(before.calib, np.asarray(shown.vertices), np.asarray(shown.faces), window) > 0
        block &= ~(silhouette(before.calib, posed, np.asarray(bracket.faces), window) > 0)
        if not block.any():
            continue  # behind the bracket
        seen = int((before.mask & block).sum())
        assert seen >= 0.8 * block.sum(), f"{before.calib.name}: the segmentation saw {seen} of {block.sum()}"
        kept = (after.mask & block).sum() / seen
        assert kept >= 0.85, f"{before.calib.name}: {kept:.3f} of the block's {seen} px kept"
