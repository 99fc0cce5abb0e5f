"""Identification among a batch's designs: real Voron 2 meshes, the photographic renderer, the demo rig.

What matters most is what never happens: a part assigned to the wrong design (its mirror image, a part not in
the batch, an empty tray, two parts at once). Naming the right design, or leaving a look-alike to the operator,
comes second.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import numpy as np
import pytest
import trimesh

from amflow_edge.drivers.simulator.materials import albedo_for
from amflow_edge.inspection.align import transform
from amflow_edge.inspection.designs import load_mesh_mm
from amflow_edge.inspection.geometry.placement import place_on_tray
from amflow_edge.inspection.identification import descriptors
from amflow_edge.inspection.identification.appearance import measure
from amflow_edge.inspection.identification.descriptors import file_sha1, full_model
from amflow_edge.inspection.identification.models import CandidateDesign, Identification, MaterialLook
from amflow_edge.inspection.identification.pipeline import (
    _segment,
    identify_and_inspect,
    identify_scan,
    prepare_design,
)
from amflow_edge.inspection.identification.verify import fit_design, half_turns
from amflow_edge.inspection.profiles import load_profile
from tests.inspection_scenes import REPO, renderer, rig

VORON = REPO / "tests" / "data" / "meshes" / "voron2"


MIXED = [
    "Tools__MGN9_rail_guide_x2",
    "Z_Drive__z_motor_mount_a_x2",
    "Z_Drive__z_motor_mount_b_x2",
    "Gantry__AB_Drive_Units__a_drive_frame_upper",
    "Superceded_Parts__Frame_Brackets__raspberry_pi_bracket",
    "Skirts__power_inlet_filtered",
    "Panel_Mounting__deck_support_3mm_x8",
]
MIRRORS = ["Z_Drive__z_motor_mount_a_x2", "Z_Drive__z_motor_mount_b_x2"]
TENSIONERS = ["Gantry__Front_Idlers__[a]_tensioner_left", "Gantry__Front_Idlers__[a]_tensioner_right"]
OUTSIDER = "Spool_Management__spool_holder"
DARK_SEED = 71


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("design-cache")


@cache
def mesh(name: str) -> trimesh.Trimesh:
    return load_mesh_mm(VORON / f"{name}.stl", "mm")


def candidate(name: str, colour: str = "GREY", look: MaterialLook | None = None) -> CandidateDesign:
    path = VORON / f"{name}.stl"
    return CandidateDesign(
        design_material=f"{file_sha1(path)}_SLS_PA12_{colour}", mesh_path=path, units="mm", look=look
    )


@cache
def reference(seed: int = 990_001) -> dict[str, np.ndarray]:
    return renderer().render(None, None, seed)


@cache
def scene(name: str, seed: int, colour: str = "GREY") -> dict[str, np.ndarray]:
    pose = place_on_tray(mesh(name), np.random.default_rng(seed))
    return renderer().render(mesh(name), pose, seed, albedo=albedo_for(f"x_SLS_PA12_{colour}"))


def identify(images: dict[str, np.ndarray], candidates: list[CandidateDesign], cache_dir: Path) -> Identification:
    return identify_scan(images, reference(), rig(), candidates, cache_dir)


@pytest.mark.parametrize(
    ("name", "seed"),
    [
        ("Tools__MGN9_rail_guide_x2", 11),
        ("Gantry__AB_Drive_Units__a_drive_frame_upper", 12),
        ("Skirts__power_inlet_filtered", 13),
    ],
)
def test_each_part_of_a_mixed_batch_is_named(name: str, seed: int, cache_dir: Path) -> None:
    batch = [candidate(n) for n in MIXED]
    found = identify(scene(name, seed), batch, cache_dir)
    assert found.outcome == "identified", found.reason
    assert found.design_material == candidate(name).design_material, found.reason
    assert found.candidates[0].design_material == found.design_material
    assert found.pose is not None and found.appearance is not None


@pytest.mark.parametrize(("pair", "seed"), [(MIRRORS, 21), (TENSIONERS, 22)])
def test_mirror_images_are_told_apart_or_left_to_the_operator_never_swapped(
    pair: list[str], seed: int, cache_dir: Path
) -> None:
    batch = [candidate(n) for n in pair]
    for name in pair:
        found = identify(scene(name, seed), batch, cache_dir)
        assert found.outcome in ("identified", "ambiguous"), found.reason
        if found.outcome == "identified":
            assert found.design_material == candidate(name).design_material, found.reason
        else:
            assert found.design_material is None
            other = candidate(pair[1 - pair.index(name)]).design_material
            assert other in found.reason


def test_the_z_motor_mounts_mirror_images_are_told_apart(cache_dir: Path) -> None:
    """Mirror images whose outlines differ (not all do: the idler tensioners are the same shape turned)."""
    batch = [candidate(n) for n in MIRRORS]
    found = identify(scene(MIRRORS[1], 21), batch, cache_dir)
    assert found.outcome == "identified", found.reason
    assert found.design_material == candidate(MIRRORS[1]).design_material


def test_a_part_not_in_the_batch_is_not_assigned(cache_dir: Path) -> None:
    found = identify(scene(OUTSIDER, 31), [candidate(n) for n in MIXED], cache_dir)
    assert found.outcome == "not_in_batch", found.reason
    assert found.design_material is None


@pytest.mark.parametrize(
    ("shown", "batch_twin", "seed", "colour"),
    [
        (
            "Gantry__AB_Drive_Units__a_drive_frame_upper",
            "Gantry__AB_Drive_Units__b_drive_frame_upper",
            300_011,
            "GREEN",
        ),
        ("Gantry__AB_Drive_Units__b_drive_frame_upper", "Gantry__AB_Drive_Units__a_drive_frame_upper", 300_012, "GREY"),
    ],
)
def test_a_look_alike_of_a_batch_design_is_not_assigned_to_it(
    shown: str, batch_twin: str, seed: int, colour: str, cache_dir: Path
) -> None:
    """A part whose look-alike is in the batch but which is not: the look-alike's outline lies on tray the photos
    show bare where the two differ, which no face too dark to segment explains. (Look-alikes differing by less
    than the segmentation's own error, a 3 mm and a 4 mm deck support, are taken for each other: see
    verify.MAX_ON_TRAY. A belt cover b shown with a in the batch is refused too, but by a hair at seed 300 010,
    too close to the limit for a test.)"""
    found = identify(
        scene(shown, seed, colour), [candidate(batch_twin, colour), candidate(MIXED[0], colour)], cache_dir
    )
    assert found.outcome == "not_in_batch", found.reason
    assert found.design_material is None


def test_a_dark_part_whose_faces_the_segmentation_misses_is_still_named(cache_dir: Path) -> None:
    """A GREEN part loses faces turned from the lights to the tray in the segmentation, which leaves stretches
    of the right design's outline pixels outside the photographed part; where the photo does not show bare tray
    there, they are set aside rather than counted against the design."""
    name = "Gantry__AB_Drive_Units__b_drive_frame_upper"
    batch = [candidate(n, "GREEN") for n in [*MIXED, name]]
    found = identify(scene(name, DARK_SEED, "GREEN"), batch, cache_dir)
    assert found.outcome == "identified", found.reason
    assert found.design_material == candidate(name, "GREEN").design_material


def test_the_twin_of_the_best_fit_is_fitted_wherever_the_silhouettes_ranked_it(cache_dir: Path) -> None:
    """A side skirt standing on its edge: its own design ranked fourth by silhouette, behind its mirror image and
    two other designs, and only three are fitted; the mirror image's fit was refused and the scan left
    unassigned. A twin of the best fit (the same principal extents) is fitted too."""
    skirt, mirror = "Skirts__250__side_skirt_a_250_x2", "Skirts__250__side_skirt_b_250_x2"
    others = ["Skirts__250__rear_center_skirt_250", "Gantry__X_Axis__XY_Joints__xy_joint_right_lower_MGN12"]
    found = identify(scene(skirt, 53040), [candidate(n) for n in [mirror, *others, skirt]], cache_dir)
    assert found.outcome == "identified", found.reason
    assert found.design_material == candidate(skirt).design_material
    assert found.candidates[1].design_material == candidate(mirror).design_material
    assert found.candidates[1].detail.startswith("fitted"), found.candidates[1].detail


def test_a_small_flat_parts_shadow_taken_for_part_does_not_refuse_its_design(cache_dir: Path) -> None:
    """The segmentation takes a 30 mm knob's shadow for part, a ring around its outline and a fill in one of its
    openings: its own design's fit cost 2.3 (more than a part of the batch may) until the shadows the other
    cameras explain were taken away and the fit made again."""
    knob = "Skirts__[a]_btt_knob_light_shield"
    found = identify(scene(knob, 52053), [candidate(knob)], cache_dir)
    assert found.outcome == "identified", found.reason
    assert found.design_material == candidate(knob).design_material


def test_a_near_symmetric_part_is_fitted_the_right_way_round(cache_dir: Path) -> None:
    """An idler tensioner matches its footprint and silhouettes about as well upside down, and the ranking's
    hypotheses held only the wrong one of the two: the fit finished 37 mm off and the part was refused. The
    verification now draws more of a design's poses, and tries its best pose turned half round."""
    name = TENSIONERS[1]
    seed = 732_318
    batch = [candidate(n, "GREEN") for n in [*MIXED, name]]
    found = identify(scene(name, seed, "GREEN"), batch, cache_dir)
    assert found.outcome == "identified", found.reason
    assert found.design_material == candidate(name, "GREEN").design_material
    assert found.pose is not None
    vertices = np.asarray(mesh(name).vertices)
    truth = place_on_tray(mesh(name), np.random.default_rng(seed))
    moved = vertices @ np.asarray(found.pose)[:3, :3].T + np.asarray(found.pose)[:3, 3]
    expected = vertices @ truth[:3, :3].T + truth[:3, 3]
    assert float(np.median(np.linalg.norm(moved - expected, axis=1))) < 1.0


def test_a_fit_started_upside_down_or_end_for_end_finds_the_part(cache_dir: Path) -> None:
    """fit_design given only the tensioner's true pose turned half round (the ranking's hypotheses held only such
    a pose for it) tries the half turns of its best pose too, and finishes at the truth."""
    name = TENSIONERS[1]
    seed = 732_318
    views = _segment(scene(name, seed, "GREEN"), reference(), rig())
    model = full_model(VORON / f"{name}.stl", "mm", cache_dir)
    truth = place_on_tray(mesh(name), np.random.default_rng(seed))
    vertices = model.vertices
    for wrong in half_turns(model, truth):
        assert float(np.median(np.linalg.norm(transform(wrong, vertices) - transform(truth, vertices), axis=1))) > 10
        fit = fit_design(0, model, views, [(wrong, 0, 0.0)])
        error = np.linalg.norm(transform(fit.alignment.pose, vertices) - transform(truth, vertices), axis=1)
        assert float(np.median(error)) < 1.0


def test_a_design_out_of_memory_is_read_back_from_the_cache_without_its_mesh(
    cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker fits a dozen of a 50-design batch's designs per scan, more than it keeps in memory; reading and
    repairing each evicted design's mesh again cost about 50 ms per scan."""
    name = MIRRORS[0]
    prepare_design(VORON / f"{name}.stl", "mm", cache_dir)
    first = full_model(VORON / f"{name}.stl", "mm", cache_dir)
    monkeypatch.setattr(descriptors, "_MODELS", type(descriptors._MODELS)())
    monkeypatch.setattr(descriptors, "_MESHES", type(descriptors._MESHES)())

    def no_mesh(*_: object) -> None:
        raise AssertionError("the mesh was read again")

    monkeypatch.setattr(descriptors, "load_mesh_mm", no_mesh)
    again = full_model(VORON / f"{name}.stl", "mm", cache_dir)
    assert again is not first and again.sha1 == first.sha1
    assert np.array_equal(again.vertices, first.vertices) and np.array_equal(again.faces, first.faces)


def test_descriptors_of_another_geometry_are_made_again_when_the_design_is_prepared(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """full_model reads the model its descriptors name; after a change to the mesh repair they would name the
    old geometry, and identification would fit another model than the one inspection measures."""
    for memory in ("_MEMORY", "_MODELS", "_MESHES"):  # what other tests left there is not written to tmp_path
        monkeypatch.setattr(descriptors, memory, type(getattr(descriptors, memory))())
    path, other = (VORON / f"{name}.stl" for name in MIRRORS[::-1])
    prepare_design(path, "mm", tmp_path)
    prepare_design(other, "mm", tmp_path)
    stored = descriptors.descriptor_path(tmp_path, file_sha1(path), "mm")
    with np.load(stored) as data:
        arrays = {key: data[key] for key in data.files}
    right = str(arrays["geometry_sha1"])
    arrays["geometry_sha1"] = np.array(full_model(other, "mm", tmp_path).sha1)
    np.savez(stored, **arrays)
    monkeypatch.setattr(descriptors, "_MEMORY", type(descriptors._MEMORY)())
    monkeypatch.setattr(descriptors, "_MODELS", type(descriptors._MODELS)())
    prepare_design(path, "mm", tmp_path)
    assert full_model(path, "mm", tmp_path).sha1 == right


def test_an_empty_tray_is_not_assigned(cache_dir: Path) -> None:
    found = identify(renderer().render(None, None, 32), [candidate(n) for n in MIXED], cache_dir)
    assert found.outcome == "empty_tray", found.reason
    assert found.design_material is None and found.pose is None


def test_two_parts_on_the_tray_are_not_assigned(cache_dir: Path) -> None:
    first, second = mesh(MIXED[0]).copy(), mesh(MIXED[3]).copy()
    first.apply_transform(place_on_tray(first, np.random.default_rng(41), tray_size_mm=(120.0, 200.0)))
    moved = place_on_tray(second, np.random.default_rng(42), tray_size_mm=(100.0, 200.0))
    moved[0, 3] += 100.0
    second.apply_transform(moved)
    both = trimesh.util.concatenate([first, second])
    assert isinstance(both, trimesh.Trimesh)
    images = renderer().render(both, np.eye(4), 43)
    found = identify(images, [candidate(n) for n in MIXED], cache_dir)
    assert found.outcome == "several_parts", found.reason
    assert found.design_material is None


def _look(name: str, colour: str, seed: int) -> MaterialLook:
    """The colour's look as a station learns it: measured on a confirmed scan (here one, with a 5 % spread)."""
    images = scene(name, seed, colour)
    value = measure(_segment(images, reference(), rig()), images, reference())
    assert value is not None
    return MaterialLook(mean=value, spread=0.05 * value, samples=1)


def test_one_geometry_in_two_materials_is_told_apart_by_its_look(cache_dir: Path) -> None:
    name = "Superceded_Parts__Frame_Brackets__raspberry_pi_bracket"
    grey, white = _look(MIXED[0], "GREY", 51), _look(MIXED[0], "WHITE", 52)
    batch = [candidate(name, "GREY", grey), candidate(name, "WHITE", white), candidate(MIXED[1])]
    for colour in ("WHITE", "GREY"):
        found = identify(scene(name, 53, colour), batch, cache_dir)
        assert found.outcome == "identified", found.reason
        assert found.design_material == candidate(name, colour).design_material, found.reason


def test_a_part_standing_past_the_trays_edge_reads_its_materials_look() -> None:
    """A white front skirt standing 67 mm tall reaches past the tray's edge in the side cameras; divided by the
    dark floor behind it there, it read 7.5, more than twice its material's look, and the scan was left to the
    operator. Only pixels in front of the tray are measured."""
    white = _look(MIXED[0], "WHITE", 52)
    images = scene("Skirts__300__front_skirt_a_300", 54006, "WHITE")
    value = measure(_segment(images, reference(), rig()), images, reference())
    assert value is not None
    assert abs(value - white.mean) <= 3 * white.spread, (value, white.mean)


def test_one_geometry_in_two_materials_without_known_looks_is_left_to_the_operator(cache_dir: Path) -> None:
    name = "Superceded_Parts__Frame_Brackets__raspberry_pi_bracket"
    batch = [candidate(name, "GREY"), candidate(name, "WHITE")]
    found = identify(scene(name, 53, "WHITE"), batch, cache_dir)
    assert found.outcome == "material_ambiguous", found.reason
    assert found.design_material is None
    assert found.appearance is not None and found.pose is not None
    assert all(c.design_material in found.reason for c in batch)


def test_identify_and_inspect_aligns_once_and_inspects_at_the_identified_pose(cache_dir: Path, tmp_path: Path) -> None:
    name = "Z_Drive__z_motor_mount_a_x2"
    for n in MIXED:
        prepare_design(VORON / f"{n}.stl", "mm", cache_dir)
    found, report = identify_and_inspect(
        scene(name, 61),
        reference(),
        rig(),
        [candidate(n) for n in MIXED],
        load_profile("default"),
        cache_dir,
        tmp_path,
        None,
    )
    assert found.outcome == "identified", found.reason
    assert report is not None
    assert report.design_material == found.design_material
    assert report.pose == found.pose
    assert "segment" not in report.timings_s
    assert report.timings_s["align"] < 0.01
    written = json.loads((tmp_path / "identification.json").read_text())
    assert written["design_material"] == found.design_material
