"""Defects put into a demo part with the simulator's defects fail the default profile, each with its own reason.

Sizes are large enough for the outline criteria to name the defect by its own reason; a 1 mm
chip changes outlines no more than segmentation noise does and is caught by its shading instead
(tests/test_shading.py; rates in benchmarks/inspection.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from amflow_edge.drivers.simulator.defects import Defect, apply_defect, defect_rng, settle
from amflow_edge.inspection.inspect import inspect_scan
from amflow_edge.inspection.profiles import load_profile
from amflow_edge.inspection.report import InspectionReport
from tests.inspection_scenes import demo_light, design, empty, placed, renderer, rig

NAME, SEED = "montageblok_mb80", 3


def _inspect(spec: str, cache: Path) -> InspectionReport:
    pose, _ = placed(NAME, SEED)
    mesh = design(NAME)
    shown, _truth = apply_defect(mesh, Defect.parse(spec), defect_rng(SEED), pose=pose)
    images = renderer().render(shown, settle(shown, pose), SEED)
    return inspect_scan(
        images, empty(), rig(), mesh, NAME, load_profile("default"), cache_dir=cache, light=demo_light()
    )


@pytest.mark.parametrize(
    ("spec", "reason"),
    [
        ("missing_slab:4", "missing_material"),
        ("missing_chunk:4", "missing_material"),
        ("extra_blob:8", "extra_material"),
        ("scale:5", "dimensional_deviation"),
        ("warp:6", "warp"),
    ],
)
def test_a_defect_fails_the_default_profile_with_its_reason(spec: str, reason: str, tmp_path: Path) -> None:
    report = _inspect(spec, tmp_path)
    assert not report.qc_machine, f"{spec}: passed; {report.metrics}"
    assert reason in report.qc_reasons, f"{spec}: {report.qc_reasons}"


def test_the_same_part_intact_passes(tmp_path: Path) -> None:
    _, images = placed(NAME, SEED)
    report = inspect_scan(
        images, empty(), rig(), design(NAME), NAME, load_profile("default"), cache_dir=tmp_path, light=demo_light()
    )
    assert report.qc_machine and report.qc_reasons == []
