"""The design library and its meshes: ids, units, checks, and the generated demo parts."""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import trimesh

from amflow_edge.drivers.simulator import demo_parts
from amflow_edge.inspection import designs
from amflow_edge.inspection.designs import (
    DESIGN_MATERIAL_PATTERN,
    DesignError,
    DesignLibrary,
    MeshError,
    design_material_id,
    load_mesh_mm,
)

REPO = Path(__file__).resolve().parents[1]
MESHES = REPO / "tests" / "data" / "meshes"
BROKEN = MESHES / "broken"
DEMO_DIR = REPO / "config" / "designs"
TRAY_MM = (300.0, 240.0)

CUBE_ID = "4ab8a81b539bbde9a1a78eb15bd6237201ec83a0_SLS_PA12_GREY"
ANGLE_BLOCK_ID = "70c9db63c7d7cc85d1b418f2d06495407c75a45a_SLS_PAGF_GREY"


def fits_tray(mesh: trimesh.Trimesh) -> bool:
    """Footprint as designed (z up) fits the tray in one of the two 90° orientations."""
    x, y = mesh.extents[:2]
    width, depth = TRAY_MM
    return (x <= width and y <= depth) or (y <= width and x <= depth)


def table(**fields: object) -> str:
    """One [[design]] table; a field given as None is left out."""
    values: dict[str, object] = {"file": "cube.stl", "units": "mm", "process": "SLS", "material": "PA12"}
    values |= {"colour": "GREY", "title": "Cube"} | fields
    lines = [f"{key} = {json.dumps(value)}" for key, value in values.items() if value is not None]
    return "[[design]]\n" + "\n".join(lines) + "\n\n"


def write_library(folder: Path, body: str) -> Path:
    path = folder / "designs.toml"
    path.write_text(body, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def demo() -> dict[str, trimesh.Trimesh]:
    return demo_parts.build_demo_parts()


# ids


def test_id_is_sha1_of_the_file_then_the_tokens() -> None:
    path = MESHES / "20mm-xyz-cube.stl"
    design_material = design_material_id(path, "SLS", "PA12", "GREY")
    assert DESIGN_MATERIAL_PATTERN.fullmatch(design_material)
    assert design_material == hashlib.sha1(path.read_bytes()).hexdigest() + "_SLS_PA12_GREY"
    assert design_material == CUBE_ID


@pytest.mark.parametrize(
    ("process", "material", "colour"), [("sls", "PA12", "GREY"), ("SLS", "PA 12", "GREY"), ("SLS", "PA12", "")]
)
def test_id_refuses_tokens_that_are_not_upper_case_alphanumerics(process: str, material: str, colour: str) -> None:
    with pytest.raises(ValueError, match="upper-case letters and digits"):
        design_material_id(MESHES / "20mm-xyz-cube.stl", process, material, colour)


def test_library_ids_are_stable_and_formed_right() -> None:
    library = DesignLibrary.load(MESHES / "designs.toml")
    assert len(library) == 4
    for design in library.designs:
        assert DESIGN_MATERIAL_PATTERN.fullmatch(design.design_material)
        recomputed = design_material_id(design.path, design.process, design.material, design.colour)
        assert design.design_material == recomputed
    assert library.get(CUBE_ID).title == "Calibration cube XYZ-20"
    assert library.get(CUBE_ID).part_id == "XYZ-20"
    assert library.get(ANGLE_BLOCK_ID).units == "inch"
    assert library.get(ANGLE_BLOCK_ID).part_id is None


# units


@pytest.mark.parametrize(
    ("name", "units", "extents_mm"),
    [
        ("angle_block.STL", "inch", (34.0, 25.4, 34.34)),
        ("featuretype.STL", "inch", (127.0, 63.5, 34.925)),
        ("idler_riser.STL", "inch", (67.46, 75.01, 15.875)),
        ("20mm-xyz-cube.stl", "mm", (20.0, 20.0, 20.0)),
    ],
)
def test_meshes_come_out_in_mm(name: str, units: designs.Units, extents_mm: tuple[float, float, float]) -> None:
    mesh = load_mesh_mm(MESHES / name, units)
    np.testing.assert_allclose(mesh.extents, extents_mm, atol=0.02)
    assert mesh.is_watertight and mesh.volume > 0


def test_metres_are_scaled_to_mm(tmp_path: Path) -> None:
    path = tmp_path / "cube_m.stl"
    trimesh.creation.box(extents=(0.02, 0.03, 0.04)).export(path)
    np.testing.assert_allclose(load_mesh_mm(path, "m").extents, (20.0, 30.0, 40.0), atol=1e-4)


def test_design_mesh_of_the_library_is_in_mm() -> None:
    mesh = DesignLibrary.load(MESHES / "designs.toml").get(ANGLE_BLOCK_ID).mesh()
    np.testing.assert_allclose(mesh.extents, (34.0, 25.4, 34.34), atol=0.02)


def test_wrong_units_too_large_suggests_mm() -> None:
    with pytest.raises(MeshError, match=r'larger than any part.*set units = "mm"') as caught:
        load_mesh_mm(MESHES / "plate_holes.STL", "inch")
    assert caught.value.path == MESHES / "plate_holes.STL"


def test_wrong_units_too_small_suggests_m(tmp_path: Path) -> None:
    path = tmp_path / "cube_m.stl"
    trimesh.creation.box(extents=(0.02, 0.02, 0.02)).export(path)
    with pytest.raises(MeshError, match=r'smaller than any part.*set units = "m"'):
        load_mesh_mm(path, "mm")


# the library file


def test_library_reports_every_problem_at_once(tmp_path: Path) -> None:
    shutil.copy(MESHES / "20mm-xyz-cube.stl", tmp_path / "cube.stl")
    (tmp_path / "notes.txt").write_text("not a mesh")
    library = write_library(
        tmp_path,
        table()
        + table(title="Cube again")
        + table(file="nope.stl", title="Missing")
        + table(file="gone.stl", units="cm", colour="BLACK", title="Centimetres")
        + table(process="sls", colour="Grey", title="Lower case")
        + table(material="PA11", title=None, colour_code=7)
        + table(file="notes.txt", title="Notes"),
    )
    with pytest.raises(DesignError) as caught:
        DesignLibrary.load(library)
    error = caught.value
    message = str(error)
    assert message.startswith(f"{library}: 9 problems")
    expected = [
        ("#2 ('Cube again')", "same design_material", "#1 ('Cube')"),
        ("#3 ('Missing')", "nope.stl", "not found"),
        ("#4 ('Centimetres')", "units", "'cm'"),
        ("#4 ('Centimetres')", "gone.stl", "not found"),
        ("#5 ('Lower case')", "process: 'sls'", "Fix: write 'SLS'"),
        ("#5 ('Lower case')", "colour: 'Grey'", "Fix: write 'GREY'"),
        ("#6 (no title)", "missing key 'title'", "Fix: add"),
        ("#6 (no title)", "unknown key 'colour_code'", "Fix: remove it"),
        ("#7 ('Notes')", "unsupported mesh format '.txt'", ".stl"),
    ]
    assert len(error.problems) == len(expected)
    for fragments in expected:
        assert any(all(f in problem for f in fragments) for problem in error.problems), (fragments, error.problems)


def test_library_with_invalid_toml_names_file_and_line(tmp_path: Path) -> None:
    library = write_library(tmp_path, '[[design]]\nfile = "cube.stl\n')
    with pytest.raises(DesignError, match=r"invalid TOML.*line 2") as caught:
        DesignLibrary.load(library)
    assert str(caught.value).startswith(str(library))


def test_library_without_designs_says_what_to_add(tmp_path: Path) -> None:
    with pytest.raises(DesignError, match=r"no \[\[design\]\] tables"):
        DesignLibrary.load(write_library(tmp_path, "# nothing yet\n"))


def test_missing_library_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(DesignError, match="library file not found") as caught:
        DesignLibrary.load(tmp_path / "absent.toml")
    assert caught.value.library == tmp_path / "absent.toml"


def test_unknown_id_lists_the_known_ones() -> None:
    library = DesignLibrary.load(MESHES / "designs.toml")
    unknown = "0" * 40 + "_SLS_PA12_GREY"
    with pytest.raises(KeyError) as caught:
        library.get(unknown)
    message = str(caught.value)
    assert unknown in message
    assert all(d.design_material in message for d in library.designs)
    assert unknown not in library and CUBE_ID in library


def test_check_meshes_reports_every_bad_mesh(tmp_path: Path) -> None:
    for name in ("empty.stl", "open_cup.stl", "missing_face.stl"):
        shutil.copy(BROKEN / name, tmp_path / name)
    # An open cup is printable and now used as an open surface; a mesh of zero-area faces has nothing to compare.
    flat = trimesh.Trimesh([[0, 0, 0], [10, 0, 0], [20, 0, 0], [0, 0, 5]], [[0, 1, 2], [0, 2, 1]], process=False)
    (tmp_path / "flat.stl").write_bytes(trimesh.exchange.stl.export_stl(flat))
    body = (
        table(file="open_cup.stl", title="Cup")
        + table(file="missing_face.stl", title="Box")
        + table(file="flat.stl", title="Flat")
    )
    library = DesignLibrary.load(write_library(tmp_path, body))
    with pytest.raises(DesignError) as caught:
        library.check_meshes()
    assert len(caught.value.problems) == 1
    assert "flat.stl" in caught.value.problems[0] and "degenerate" in caught.value.problems[0]


def test_empty_mesh_file_is_a_library_problem(tmp_path: Path) -> None:
    shutil.copy(BROKEN / "empty.stl", tmp_path / "empty.stl")
    library = write_library(tmp_path, table(file="empty.stl"))
    with pytest.raises(DesignError, match=r"'empty.stl': file is empty"):
        DesignLibrary.load(library)


# the mesh cache


def test_mesh_is_loaded_once_across_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    design = DesignLibrary.load(MESHES / "designs.toml").get(CUBE_ID)
    calls: list[int] = []
    real = designs._mesh_from_bytes

    def slow_load(data: bytes, path: Path, file_type: str, units: str) -> trimesh.Trimesh:
        calls.append(1)
        time.sleep(0.05)
        return real(data, path, file_type, units)

    monkeypatch.setattr(designs, "_mesh_from_bytes", slow_load)
    barrier = threading.Barrier(8)
    results: list[trimesh.Trimesh] = []

    def worker() -> None:
        barrier.wait()
        results.append(design.mesh())

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == 1
    assert len(results) == 8
    assert all(np.array_equal(r.vertices, results[0].vertices) for r in results)


def test_mesh_callers_cannot_corrupt_the_cache() -> None:
    design = DesignLibrary.load(MESHES / "designs.toml").get(CUBE_ID)
    first = design.mesh()
    first.apply_translation((100.0, 0.0, 0.0))
    assert design.mesh().bounds[1][0] < 50.0


def test_mesh_file_changed_after_loading_the_library(tmp_path: Path) -> None:
    shutil.copy(MESHES / "20mm-xyz-cube.stl", tmp_path / "cube.stl")
    library = DesignLibrary.load(write_library(tmp_path, table()))
    shutil.copy(MESHES / "angle_block.STL", tmp_path / "cube.stl")
    with pytest.raises(MeshError, match="changed since the design library was loaded.*reload"):
        library.get(CUBE_ID).mesh()


# mesh checks and repairs


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("empty.stl", "file is empty"),
        ("garbage.stl", "no triangles could be read"),
    ],
)
def test_broken_meshes_give_clear_errors(name: str, problem: str) -> None:
    with pytest.raises(MeshError, match=problem) as caught:
        load_mesh_mm(BROKEN / name, "mm")
    assert caught.value.path == BROKEN / name
    assert str(caught.value).startswith(str(BROKEN / name))
    assert "Fix: " in str(caught.value)


@pytest.mark.parametrize(
    ("name", "repair", "used_as_is"),
    [
        # a 24-sided rim is too large a hole for fill_holes: a slicer prints the cup, so it is kept open
        ("open_cup.stl", "kept as an open surface (24 open edges", True),
        # two cubes touching along an edge: joined into one closed solid by a manifold3d union
        ("bowtie.stl", "joined 2 shells touching along edges", False),
    ],
)
def test_printable_meshes_that_are_not_closed_are_accepted_and_recorded(
    name: str, repair: str, used_as_is: bool
) -> None:
    mesh, processing = designs.load_design_mesh(BROKEN / name, "mm")
    assert not processing.watertight_input
    assert processing.used_as_is is used_as_is and mesh.is_watertight is not used_as_is
    assert any(r.startswith(repair) for r in processing.repairs), processing.repairs
    assert designs.mesh_processing(mesh) == processing == designs.mesh_processing(mesh.copy())


@pytest.mark.parametrize(
    ("name", "repair"),
    [
        ("missing_face.stl", "closed holes"),
        ("inverted_cube.stl", "fixed inverted"),
        ("degenerate_faces.stl", "removed 2 degenerate"),
    ],
)
def test_repairable_meshes_are_repaired(name: str, repair: str, caplog: pytest.LogCaptureFixture) -> None:
    raw = trimesh.load_mesh(BROKEN / name)
    assert not (raw.is_watertight and raw.volume > 0 and len(raw.faces) == 12)
    with caplog.at_level(logging.WARNING, logger="amflow_edge.inspection.designs"):
        mesh = load_mesh_mm(BROKEN / name, "mm")
    assert mesh.is_watertight and mesh.is_winding_consistent
    assert len(mesh.faces) == 12
    assert mesh.volume == pytest.approx(1000.0)
    assert name in caplog.text and repair in caplog.text


def test_missing_and_unsupported_files(tmp_path: Path) -> None:
    with pytest.raises(MeshError, match="file not found"):
        load_mesh_mm(tmp_path / "absent.stl", "mm")
    step = tmp_path / "part.step"
    step.write_text("ISO-10303-21;")
    with pytest.raises(MeshError, match=r"unsupported mesh format '.step'.*\.stl"):
        load_mesh_mm(step, "mm")


def test_several_objects_become_one_mesh(tmp_path: Path) -> None:
    left = trimesh.creation.box(extents=(10, 10, 10))
    right = left.copy().apply_translation((30.0, 0.0, 0.0))
    path = tmp_path / "two.obj"
    trimesh.Scene({"left": left, "right": right}).export(path)
    mesh = load_mesh_mm(path, "mm")
    assert mesh.body_count == 2
    np.testing.assert_allclose(mesh.extents, (40.0, 10.0, 10.0))


# demo parts


def test_tray_check_can_say_no() -> None:
    assert not fits_tray(load_mesh_mm(MESHES / "plate_holes.STL", "mm"))
    assert fits_tray(load_mesh_mm(MESHES / "featuretype.STL", "inch"))


def test_demo_parts_are_watertight_and_fit_the_tray(demo: dict[str, trimesh.Trimesh]) -> None:
    assert len(demo) >= 5
    for name, mesh in demo.items():
        assert mesh.is_watertight and mesh.is_winding_consistent and mesh.volume > 0, name
        assert mesh.body_count == 1, name
        assert 20.0 <= mesh.extents.max() <= 120.0, (name, mesh.extents)
        assert fits_tray(mesh), name
        assert mesh.bounds[0][2] == pytest.approx(0.0), name


def test_demo_parts_have_their_features(demo: dict[str, trimesh.Trimesh]) -> None:
    genus = {name: (2 - mesh.euler_number) // 2 for name, mesh in demo.items()}
    assert genus == {
        "montageblok_mb80": 5,
        "angle_bracket_ab60": 4,
        "pipe_clip_pc16": 2,
        "flanged_bushing_fb20": 4,
        "spur_gear_z20m25": 1,
        "cross_knob_ck40": 1,
    }


def test_regenerating_demo_parts_gives_the_committed_bytes(tmp_path: Path) -> None:
    assert demo_parts.main(["--out", str(tmp_path)]) == 0
    generated = sorted(p.name for p in tmp_path.iterdir())
    batch = "demo_batch.toml"  # written by hand from the generated ids: the demo's batch, not a generated file
    committed = sorted(p.name for p in DEMO_DIR.iterdir() if p.suffix in {".stl", ".toml"} and p.name != batch)
    assert generated == committed
    for name in generated:
        assert (tmp_path / name).read_bytes() == (DEMO_DIR / name).read_bytes(), (
            f"{name} differs from config/designs/{name}: run `python -m amflow_edge.drivers.simulator.demo_parts` and note the ids changed"
        )


def test_committed_demo_library_loads_with_checked_meshes() -> None:
    library = DesignLibrary.load(DEMO_DIR / "designs.toml")
    library.check_meshes()
    assert {d.path.stem for d in library.designs} == {p.name for p in demo_parts.DEMO_PARTS}
    for design in library.designs:
        assert re.fullmatch(r"[0-9a-f]{40}_SLS_(PA12|PAGF)_(GREY|BLACK|WHITE)", design.design_material)
        assert design.units == "mm"
