"""Surface defects found by comparing each photo's shading with the design's, and the pose that comparison needs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import trimesh
from scipy.spatial.transform import Rotation

from amflow_edge.drivers.simulator.defects import Defect, apply_defect, defect_rng, settle
from amflow_edge.inspection.design_cache import design_model
from amflow_edge.inspection.designs import load_mesh_mm
from amflow_edge.inspection.geometry.placement import place_on_tray
from amflow_edge.inspection.inspect import inspect_scan
from amflow_edge.inspection.models import Region, SurfaceRegion
from amflow_edge.inspection.profiles import load_profile
from amflow_edge.inspection.report import InspectionReport
from amflow_edge.inspection.shading import ShadingComparison, _outside, _stands, seen_elsewhere
from tests.inspection_scenes import (
    MESHES,
    benchmark_scene,
    demo_light,
    design,
    empty,
    placed,
    renderer,
    rig,
)

NAME, SEED = "montageblok_mb80", 3


def test_a_1mm_chip_fails_the_default_profile_as_a_surface_defect_where_it_is(
    tmp_path: Path,
) -> None:
    pose, _ = placed(NAME, SEED)
    mesh = design(NAME)
    chipped, truth = apply_defect(mesh, Defect.parse("missing_chunk:1"), defect_rng(SEED), pose=pose)
    images = renderer().render(chipped, settle(chipped, pose), SEED)
    report = inspect_scan(
        images,
        empty(),
        rig(),
        mesh,
        NAME,
        load_profile("default"),
        cache_dir=tmp_path,
        out_dir=tmp_path,
        light=demo_light(),
    )
    assert not report.qc_machine and "surface_defect" in report.qc_reasons, report.metrics
    assert report.metrics is not None and report.metrics.surface_defect_contrast > 0.5
    near = [
        r
        for r in report.metrics.surface_regions
        if np.linalg.norm(np.array(r.centre_part_mm) - np.array(truth.location)) < 3.0
    ]
    assert len({r.camera for r in near}) >= 2, report.metrics.surface_regions


def test_an_intact_part_shades_as_its_design_predicts(tmp_path: Path) -> None:
    _, images = placed(NAME, SEED)
    report = inspect_scan(
        images,
        empty(),
        rig(),
        design(NAME),
        NAME,
        load_profile("default"),
        cache_dir=tmp_path,
        light=demo_light(),
    )
    assert report.metrics is not None
    assert report.metrics.surface_defect_contrast < 0.2, report.metrics.surface_regions
    assert report.qc_machine


def _inspected_turn(
    mesh: trimesh.Trimesh, seed: int, cache: Path, reference: dict[str, np.ndarray] | None = None
) -> tuple[InspectionReport, float]:
    """The report on an intact part placed by `seed`, and how far (degrees) its pose is turned from the truth."""
    pose = place_on_tray(mesh, np.random.default_rng(seed))
    images = renderer().render(mesh, pose, seed)
    reference = empty() if reference is None else reference
    report = inspect_scan(
        images, reference, rig(), mesh, "part", load_profile("default"), cache_dir=cache, light=demo_light()
    )
    assert report.pose is not None
    return report, float(np.degrees(Rotation.from_matrix(np.array(report.pose)[:3, :3] @ pose[:3, :3].T).magnitude()))


def test_a_lettered_cube_is_compared_at_its_own_pose_not_at_a_look_alike(
    tmp_path: Path,
) -> None:
    """Its outline is a cube's from every side; only the lettering tells which face is which."""
    report, turn = _inspected_turn(load_mesh_mm(MESHES / "20mm-xyz-cube.stl", "mm"), 1007, tmp_path)
    assert turn < 2.0
    assert report.qc_machine, report.qc_reasons


def test_a_knob_is_told_from_its_quarter_turn_by_its_nut_pocket_in_shadow(tmp_path: Path) -> None:
    """Four arms make a quarter turn a look-alike to outlines; the hex pocket tells it apart, but only with
    its own shadows predicted: scored without them, the shadows of the arms outweighed the pocket."""
    knob = design("cross_knob_ck40").copy()
    knob.apply_scale(1.3)
    report, turn = _inspected_turn(knob, 1028, tmp_path)
    assert min(turn % 180.0, 180.0 - turn % 180.0) < 2.0, turn
    assert report.qc_machine, report.metrics


def test_the_design_cache_knows_which_turns_leave_a_design_in_place(
    tmp_path: Path,
) -> None:
    cube = design_model(load_mesh_mm(MESHES / "20mm-xyz-cube.stl", "mm"), tmp_path)
    block = design_model(design(NAME), tmp_path)
    assert cube.symmetries.shape == (24, 4, 4)
    assert block.symmetries.shape == (1, 4, 4)
    np.testing.assert_allclose(cube.symmetries[0], np.eye(4))
    for motion in cube.symmetries:
        moved = cube.vertices @ motion[:3, :3].T + motion[:3, 3]
        assert np.abs(np.ptp(moved, axis=0) - np.ptp(cube.vertices, axis=0)).max() < 0.5


def _region(camera: str, centre: list[float], contrast: float = 0.8, confirmed: bool = True) -> SurfaceRegion:
    return SurfaceRegion(camera=camera, area_mm2=1.0, contrast=contrast, centre_part_mm=centre, confirmed=confirmed)


def test_a_patch_one_camera_alone_sees_stands_only_when_it_is_strong() -> None:
    """A chip on a rim may face one camera only; a model mismatch in a bore reads up to 0.64 in one."""
    assert not _stands(_region("cam01", [0.0, 0.0, 5.0], contrast=0.64, confirmed=False))
    assert _stands(_region("cam01", [0.0, 0.0, 5.0], contrast=1.14, confirmed=False))
    assert _stands(_region("cam01", [0.0, 0.0, 5.0], contrast=0.3, confirmed=True))


def test_a_region_one_camera_alone_sees_is_not_confirmed() -> None:
    alone = _region("cam01", [0.0, 0.0, 5.0])
    same_camera = _region("cam01", [0.5, 0.0, 5.0])
    far = _region("cam02", [10.0, 0.0, 5.0])
    near = _region("cam03", [1.0, 0.5, 5.0])

    def places(*regions: SurfaceRegion) -> list[tuple[str, list[float]]]:
        return [(r.camera, r.centre_part_mm) for r in regions]

    assert not seen_elsewhere(alone.camera, alone.centre_part_mm, places(alone, same_camera, far))
    assert seen_elsewhere(alone.camera, alone.centre_part_mm, places(alone, same_camera, far, near))


def test_a_faint_patch_is_confirmed_by_an_outline_bite_another_camera_sees_at_the_same_place() -> None:
    faint = _region("cam02", [1.0, -13.0, 8.0], contrast=0.56, confirmed=False)
    pixels = np.zeros((20, 20), dtype=bool)
    pixels[5:8, 5:8] = True
    comparison = ShadingComparison([], {"cam02": np.zeros((30, 30), dtype=bool)}, [(faint, pixels)])
    assert comparison.confirmed_by([("cam02", [1.0, -13.0, 8.0]), ("cam05", [1.0, -3.0, 8.0])]).regions == []
    confirmed = comparison.confirmed_by([("cam05", [1.8, -12.2, 8.5])])
    assert [(r.camera, r.contrast, r.confirmed) for r in confirmed.regions] == [("cam02", 0.56, True)]
    assert confirmed.masks["cam02"].sum() == 9 and confirmed.pending == []
    assert not comparison.masks["cam02"].any(), "confirming returns a new comparison"


def _inspected_benchmark_chip(stem: str, factor: float, seed: int, cache: Path) -> tuple[InspectionReport, np.ndarray]:
    """A benchmark scene's 1 mm chip inspected against its own reference, and where the chip is in the design's
    frame at the fitted pose: a look-alike pose (a quarter-turned knob, a turned bushing) still finds it."""
    scene = benchmark_scene(stem, factor, seed, "missing_chunk:1.0")
    report = inspect_scan(
        scene.images,
        scene.reference,
        rig(),
        scene.mesh,
        stem,
        load_profile("default"),
        cache_dir=cache,
        light=demo_light(),
    )
    assert report.metrics is not None and report.pose is not None and scene.truth is not None
    return report, (np.linalg.inv(np.array(report.pose)) @ scene.pose @ np.r_[scene.truth.location, 1.0])[:3]


def _near(regions: list[SurfaceRegion] | list[Region], chip: np.ndarray) -> list[str]:
    return [r.camera for r in regions if np.linalg.norm(np.array(r.centre_part_mm) - chip) < 2.0]


def test_a_chip_one_camera_sees_face_on_and_another_in_its_outline_fails(tmp_path: Path) -> None:
    """Benchmark scene (seed 1025, a x0.7 knob): the chip reads 0.56 in the one camera facing it, which alone
    does not stand, and bites cam05's outline 1.2 mm from that patch, which confirms it; the pair is also
    what missing_material_contrast judges."""
    report, chip = _inspected_benchmark_chip("cross_knob_ck40", 0.7, 1025, tmp_path)
    assert report.metrics is not None
    assert report.metrics is not None and not report.qc_machine, report.metrics.surface_regions
    assert sorted(report.qc_reasons) == ["missing_material", "surface_defect"]
    assert _near(report.metrics.missing_regions, chip), "the bite is located on the design where the chip is"


def test_a_bushing_is_turned_about_its_axis_until_its_bolt_holes_match(tmp_path: Path) -> None:
    """Outlines fix every degree of freedom but the turn about its axis; its three bolt holes fix that. This
    small one (benchmark scene 1029, with its own reference) ended 4° off when the finest turns were scored on
    2 px cells, which its bolt holes hardly change; compared there, its holes read as surface defects."""
    bushing = design("flanged_bushing_fb20").copy()
    bushing.apply_scale(0.7)
    model = design_model(bushing, tmp_path)
    assert model.spin_axis.shape == (2, 3)
    assert float(model.spin_period_deg) == 120.0
    block = design_model(design(NAME), tmp_path)
    assert block.spin_axis.shape == (0, 3) and float(block.spin_period_deg) == 360.0
    seed = 1029
    report, turn = _inspected_turn(bushing, seed, tmp_path, reference=renderer().render(None, None, seed + 500_000))
    assert min(turn % 120.0, 120.0 - turn % 120.0) < 2.0, turn
    assert report.qc_machine, report.metrics


def test_a_chip_in_a_rim_the_segmentation_took_from_the_part_is_seen_by_the_cameras_whose_outline_it_is_in(
    tmp_path: Path,
) -> None:
    """Benchmark scene (seed 1029, a x0.7 bushing): three cameras see the chip's hollow in their outline, dimmer
    than the part and brighter than the tray. The segmentation gave it to the tray and, not being clear tray,
    the outline metrics counted nothing missing there; compared with the design's shading, it stands out."""
    report, chip = _inspected_benchmark_chip("flanged_bushing_fb20", 0.7, 1029, tmp_path)
    assert report.metrics is not None
    assert not report.qc_machine and report.qc_reasons == ["surface_defect"], report.metrics.surface_regions
    assert len(set(_near(report.metrics.surface_regions, chip))) >= 3, report.metrics.surface_regions


def test_a_chip_in_the_penumbra_of_the_lights_its_rim_half_hides_is_judged_there(tmp_path: Path) -> None:
    """Benchmark scene (seed 1031, a x1.3 bushing): the chip lies where the rim half hides some ring lights, so
    the prediction there is uncertain. Such cells were dropped and the chip went unseen; judged against the
    whole range those lights allow, it still stands out."""
    report, chip = _inspected_benchmark_chip("flanged_bushing_fb20", 1.3, 1031, tmp_path)
    assert report.metrics is not None
    assert not report.qc_machine and report.qc_reasons == ["surface_defect"], report.metrics.surface_regions
    assert _near(report.metrics.surface_regions, chip), report.metrics.surface_regions


def test_a_penumbra_cell_reads_only_how_far_it_lies_outside_the_range_its_lights_allow() -> None:
    lo, hi = np.array([0.5, 0.5, 0.5]), np.array([1.0, 1.0, 1.0])
    assert np.allclose(_outside(np.array([0.7, 1.5, 0.25]), lo, hi), [0.0, 0.5, -0.5])
