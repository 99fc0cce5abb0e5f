"""The inspection entry points: a report for a scan directory, and verdicts an operator can trust."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import trimesh

from amflow_edge.inspection.inspect import InspectionInputError, inspect_directory, inspect_scan
from amflow_edge.inspection.profiles import load_profile
from tests.inspection_scenes import (
    REPO,
    benchmark_scene,
    demo_light,
    design,
    empty,
    placed,
    renderer,
    rig,
)


def _write_scan(directory: Path, images: dict[str, np.ndarray]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, image in images.items():
        cv2.imwrite(str(directory / f"scan_{name}.png"), image)
        cv2.imwrite(str(directory / f"empty_{name}.png"), empty()[name])
    return directory


@pytest.mark.parametrize(
    ("name", "seed"),
    [
        ("montageblok_mb80", 3),
        ("pipe_clip_pc16", 4),
        ("idler_riser", 6),
        # The block's outline runs along the tray's edge in three cameras, and the correlation with that
        # edge read a strip of its face as tray: missing material (benchmark seed 5007, rejected until 3e35e64).
        pytest.param("montageblok_mb80", 5007, id="montageblok-along-the-tray-edge"),
    ],
)
def test_intact_parts_pass_the_default_profile(name: str, seed: int, tmp_path: Path) -> None:
    _, images = placed(name, seed)
    report = inspect_scan(
        images, empty(), rig(), design(name), name, load_profile("default"), cache_dir=tmp_path, light=demo_light()
    )
    assert report.qc_machine, (
        f"{name}: {report.qc_reasons} {[(c.metric, c.value) for c in report.criteria if c.verdict == 'fail']}"
    )
    assert report.qc_reasons == []


def test_a_speck_of_tray_only_one_camera_sees_does_not_reject_an_intact_part(tmp_path: Path) -> None:
    """Benchmark scene 11027, a ×1.3 cross knob, rejected for 2.45 mm² of missing material that one camera saw."""
    scene = benchmark_scene("cross_knob_ck40", 1.3, 11027)
    report = inspect_scan(
        scene.images,
        scene.reference,
        rig(),
        scene.mesh,
        "cross_knob_ck40_x1.3",
        load_profile("default"),
        cache_dir=tmp_path,
        light=demo_light(),
    )
    assert report.metrics is not None
    lone = [r for r in report.metrics.missing_regions if not r.confirmed]
    assert max((r.area_mm2 for r in lone), default=0.0) > 1.6, (
        "the speck is no longer found: this test no longer tests anything"
    )
    assert report.qc_machine, report.qc_reasons


def test_a_chip_one_camera_sees_faintly_and_another_as_a_small_bite_is_rejected(tmp_path: Path) -> None:
    """Benchmark scene 1006, a flanged bushing with a 1 mm chip: shading 0.49 in cam05 (under 0.5), a bite of
    0.72 mm² in cam04 (under 1.6 mm²) at the same place; it passed, sent to review."""
    scene = benchmark_scene("flanged_bushing_fb20", 1.0, 1006, "missing_chunk:1.0")
    report = inspect_scan(
        scene.images,
        scene.reference,
        rig(),
        scene.mesh,
        "flanged_bushing_fb20",
        load_profile("default"),
        cache_dir=tmp_path,
        light=demo_light(),
    )
    assert report.metrics is not None
    profile = {c.metric: c.threshold for c in load_profile("default").criteria}
    assert report.metrics.surface_defect_contrast < profile["surface_defect_contrast"], "no longer a faint chip"
    assert report.metrics.missing_material_mm2 < profile["missing_material_mm2"], "no longer a small bite"
    failed = [c.metric for c in report.criteria if c.verdict == "fail"]
    assert "missing_material_contrast" in failed and "missing_material" in report.qc_reasons, failed


def test_a_directory_gives_a_report_overlays_and_cli_json(tmp_path: Path) -> None:
    _, images = placed("angle_block", 5)
    scan = _write_scan(tmp_path / "scan", images)
    mesh = REPO / "tests" / "data" / "meshes" / "angle_block.STL"
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "import argparse,sys; from amflow_edge.cli import inspect as c; p=argparse.ArgumentParser(); "
            "s=p.add_subparsers(); c.add_parser(s); a=p.parse_args(sys.argv[1:]); sys.exit(a.func(a))",
            "inspect",
            str(scan),
            "--design",
            str(mesh),
            "--units",
            "inch",
            "--cache",
            str(tmp_path / "cache"),
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)
    assert {"pose", "metrics", "qc_machine", "qc_needs_review", "qc_reasons"} <= set(printed)
    assert len(printed["pose"]) == 4 and printed["profile"] == "default"
    on_disk = json.loads((scan / "inspection_report.json").read_text())
    assert on_disk["id"] == printed["id"]
    for name in ("inspection_overlays.png", *(f"overlay_cam0{i}.png" for i in range(1, 6))):
        assert cv2.imread(str(scan / name)) is not None, name


def test_an_absent_part_is_insufficient_evidence(tmp_path: Path) -> None:
    report = inspect_scan(
        empty(11),
        empty(),
        rig(),
        design("montageblok_mb80"),
        "mb",
        load_profile("default"),
        cache_dir=tmp_path,
        light=demo_light(),
    )
    assert not report.qc_machine and report.qc_reasons == ["insufficient_evidence"] and report.pose is None


def test_a_wrong_design_fails(tmp_path: Path) -> None:
    _, images = placed("montageblok_mb80", 3)
    report = inspect_scan(
        images,
        empty(),
        rig(),
        design("angle_block"),
        "ab",
        load_profile("default"),
        cache_dir=tmp_path,
        light=demo_light(),
    )
    assert not report.qc_machine
    assert set(report.qc_reasons) & {"wrong_part", "misalignment", "missing_material", "extra_material"}


def test_a_propped_part_is_not_passed(tmp_path: Path) -> None:
    mesh = design("pipe_clip_pc16")
    pose, _ = placed("pipe_clip_pc16", 4)
    propped = trimesh.transformations.rotation_matrix(np.radians(15.0), (1, 0, 0), pose[:3, 3]) @ pose
    propped[2, 3] -= (mesh.vertices @ propped[2, :3] + propped[2, 3]).min() - 3.0
    images = renderer().render(mesh, propped, 4)
    report = inspect_scan(
        images, empty(), rig(), mesh, "pc", load_profile("default"), cache_dir=tmp_path, light=demo_light()
    )
    assert not report.qc_machine and "misalignment" in report.qc_reasons


def test_missing_and_wrong_sized_images_are_named(tmp_path: Path) -> None:
    _, images = placed("montageblok_mb80", 3)
    partial = {k: v for k, v in images.items() if k != "cam04"}
    with pytest.raises(InspectionInputError, match="cam04: no scan image"):
        inspect_scan(
            partial, empty(), rig(), design("montageblok_mb80"), "mb", load_profile("default"), light=demo_light()
        )
    small = dict(images, cam02=images["cam02"][:1024, :1224])
    with pytest.raises(InspectionInputError, match="cam02: scan image is 1224×1024"):
        inspect_scan(
            small, empty(), rig(), design("montageblok_mb80"), "mb", load_profile("default"), light=demo_light()
        )
    with pytest.raises(InspectionInputError, match="scan_cam01.png: missing"):
        inspect_directory(tmp_path, REPO / "config" / "designs" / "montageblok_mb80.stl")
