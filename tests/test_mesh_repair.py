"""Meshes as customers send them: real parts made hostile in the ways CAD exports are, each loaded, recorded
for what it is, and inspected; only a mesh with no usable geometry is refused."""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import cache
from pathlib import Path

import manifold3d
import numpy as np
import pytest
import trimesh

from amflow_edge.drivers.simulator.pose_error import largest_deviation, pose_error
from amflow_edge.inspection.align import View, align, transform
from amflow_edge.inspection.design_cache import check_mesh, design_model, two_sided
from amflow_edge.inspection.designs import (
    DesignLibrary,
    MeshError,
    load_design_mesh,
    load_mesh_mm,
    mesh_processing,
)
from amflow_edge.inspection.geometry.placement import place_on_tray, stable_poses
from amflow_edge.inspection.geometry.raycast import triangle_scene
from amflow_edge.inspection.geometry.silhouette import bounding_window, cast_silhouette, silhouette, window_rays
from amflow_edge.inspection.inspect import InspectionInputError, inspect_scan
from amflow_edge.inspection.mesh_repair import MeshProcessing, bad_edge_counts
from amflow_edge.inspection.profiles import load_profile
from amflow_edge.inspection.segment import segment_scan
from tests.inspection_scenes import demo_light, empty, renderer, rig

REPO = Path(__file__).resolve().parents[1]
MESHES = REPO / "tests" / "data" / "meshes"
SHARED = Path("/work/shared/meshes")


@cache
def real(name: str) -> trimesh.Trimesh:
    """A real part in mm, closed as its file is; callers copy it before changing it."""
    folder = MESHES if (MESHES / name).is_file() else SHARED
    mesh = trimesh.load_mesh(folder / name)
    assert isinstance(mesh, trimesh.Trimesh) and mesh.is_watertight, name
    mesh.apply_scale(1.0 if name.endswith(".stl") else 25.4)  # the trimesh test STLs are in inches
    return mesh


def stl(folder: Path, name: str, mesh: trimesh.Trimesh) -> Path:
    path = folder / name
    path.write_bytes(trimesh.exchange.stl.export_stl(mesh))
    return path


def faces_of(mesh: trimesh.Trimesh, faces: np.ndarray) -> trimesh.Trimesh:
    return trimesh.Trimesh(np.asarray(mesh.vertices), faces, process=False)


def together(meshes: list[trimesh.Trimesh]) -> trimesh.Trimesh:
    """One mesh of several, each keeping its own vertices until a reader merges them."""
    joined = trimesh.util.concatenate(meshes)
    assert isinstance(joined, trimesh.Trimesh)
    return joined


# The hostile variants, each built from a real part.


def touching_along_an_edge() -> trimesh.Trimesh:
    """Two calibration cubes set corner to corner: the edge they share has four faces."""
    cube = real("20mm-xyz-cube.stl")
    other = cube.copy()
    other.apply_translation((cube.extents[0], cube.extents[1], 0.0))
    return together([cube, other])


def with_a_large_hole() -> trimesh.Trimesh:
    """The idler riser with a patch of its top face cut away: a hole of dozens of edges, far beyond fill_holes."""
    mesh = real("idler_riser.STL")
    centres = mesh.triangles_center
    top = centres[np.argmax(centres[:, 2])]
    cut = np.linalg.norm(centres - top, axis=1) < 0.15 * mesh.extents.max()
    return faces_of(mesh, mesh.faces[~cut])


def without_its_top() -> trimesh.Trimesh:
    """The angle block with every upward face removed: open to the top camera, like a tray or a cup."""
    mesh = real("angle_block.STL")
    return faces_of(mesh, mesh.faces[mesh.face_normals[:, 2] < 0.99])


def two_shells_sharing_a_face() -> trimesh.Trimesh:
    """The angle block cut in two closed halves, sent as one mesh: the cut is an internal wall of paired faces."""
    mesh = real("angle_block.STL")
    solid = manifold3d.Manifold(
        manifold3d.Mesh64(vert_properties=np.asarray(mesh.vertices), tri_verts=np.asarray(mesh.faces, np.uint32))
    )
    halves = []
    for half in solid.split_by_plane([1.0, 0.0, 0.0], float(mesh.bounds.mean(axis=0)[0])):
        out = half.to_mesh64()
        halves.append(trimesh.Trimesh(out.vert_properties[:, :3], out.tri_verts, process=False))
    return together(halves)


def shells_sharing_a_face_one_with_a_missing_triangle() -> trimesh.Trimesh:
    """The cut angle block with one side triangle lost: a shell can be joined only once its small hole is filled."""
    mesh = two_shells_sharing_a_face()
    return faces_of(mesh, np.delete(mesh.faces, int(np.argmax(mesh.triangles_center[:, 1])), axis=0))


def shells_sharing_a_face_with_a_hole_at_the_seam() -> trimesh.Trimesh:
    """The cut angle block missing a triangle beside the seam: neither shell closes, so the shared faces go."""
    mesh = two_shells_sharing_a_face()
    return faces_of(mesh, np.delete(mesh.faces, 5, axis=0))


def with_duplicated_faces() -> trimesh.Trimesh:
    """The machined block with every seventh face written twice, as some exporters repeat patches."""
    mesh = real("featuretype.STL")
    return faces_of(mesh, np.vstack([mesh.faces, mesh.faces[::7]]))


def with_flipped_normals() -> trimesh.Trimesh:
    """The idler riser with every third face wound the wrong way round."""
    mesh = real("idler_riser.STL")
    faces = mesh.faces.copy()
    faces[::3] = faces[::3, ::-1]
    return faces_of(mesh, faces)


def inside_out() -> trimesh.Trimesh:
    mesh = real("featuretype.STL")
    return faces_of(mesh, mesh.faces[:, ::-1])


def open_body_touching_a_solid() -> trimesh.Trimesh:
    """A calibration cube touching, along an edge, a copy of itself that lacks a side: non-manifold and open."""
    cube = real("20mm-xyz-cube.stl")
    other = cube.copy()
    other.apply_translation((cube.extents[0], cube.extents[1], 0.0))
    facing_away = other.face_normals[:, 0] > 0.99
    return together([cube, faces_of(other, other.faces[~facing_away])])


@pytest.mark.parametrize(
    ("build", "original", "repair", "used_as_is"),
    [
        (touching_along_an_edge, ("20mm-xyz-cube.stl", 2), "joined 2 shells touching along edges", False),
        (two_shells_sharing_a_face, ("angle_block.STL", 1), "joined 2 shells touching along edges or faces", False),
        (
            shells_sharing_a_face_one_with_a_missing_triangle,
            ("angle_block.STL", 1),
            "joined 2 shells touching along edges or faces",
            False,
        ),
        (shells_sharing_a_face_with_a_hole_at_the_seam, None, "removed 48 internal faces shared by two shells", True),
        (with_duplicated_faces, ("featuretype.STL", 1), "removed 497 duplicate faces", False),
        (with_flipped_normals, ("idler_riser.STL", 1), "fixed inverted or inconsistent normals", False),
        (inside_out, ("featuretype.STL", 1), "fixed inverted or inconsistent normals", False),
        (with_a_large_hole, None, "kept as an open surface (39 open edges, 0 edges", True),
        (without_its_top, None, "kept as an open surface", True),
        (open_body_touching_a_solid, None, "kept as an open surface", True),
    ],
)
def test_each_hostile_mesh_loads_and_says_what_was_done(
    build: Callable[[], trimesh.Trimesh],
    original: tuple[str, int] | None,
    repair: str,
    used_as_is: bool,
    tmp_path: Path,
) -> None:
    hostile = build()
    as_read = hostile.copy()
    as_read.merge_vertices()  # as an STL reader sees it: corners at one place are one vertex
    assert not (as_read.is_watertight and as_read.is_winding_consistent and as_read.volume > 0)
    path = stl(tmp_path, f"{build.__name__}.stl", hostile)
    mesh, processing = load_design_mesh(path, "mm")

    assert any(r.startswith(repair) for r in processing.repairs), processing.repairs
    assert processing.used_as_is is used_as_is
    assert (processing.open_edges, processing.non_manifold_edges) == bad_edge_counts(mesh)
    assert processing.faces == len(mesh.faces) and processing.winding_consistent == mesh.is_winding_consistent
    assert mesh_processing(mesh) == processing  # recorded with the mesh, and kept by the copies Design hands out
    assert np.allclose(mesh.bounds, hostile.bounds, atol=1e-3)
    if original is None:
        assert processing.volume_mm3 is None and not mesh.is_watertight
        assert processing.open_edges + processing.non_manifold_edges > 0
    else:
        name, copies = original
        assert mesh.is_watertight and mesh.is_winding_consistent
        assert processing.open_edges == processing.non_manifold_edges == 0
        assert processing.volume_mm3 == pytest.approx(copies * real(name).volume, rel=1e-6)

    model = design_model(mesh, tmp_path)
    if used_as_is:  # drawn from both sides, and every hole's rim a possible outline edge
        assert len(model.faces) == 2 * len(mesh.faces)
        assert np.array_equal(model.faces, two_sided(mesh.faces))
    poses, probabilities = stable_poses(mesh)
    assert len(poses) >= 1 and np.isclose(probabilities.sum(), 1.0) and np.all(np.isfinite(poses))


def test_what_each_kind_of_mesh_is_identified_as(tmp_path: Path) -> None:
    """The report tells the kinds apart from the mesh as read, not only by what was done."""
    touching = load_design_mesh(stl(tmp_path, "a.stl", touching_along_an_edge()), "mm")[1]
    holed = load_design_mesh(stl(tmp_path, "b.stl", with_a_large_hole()), "mm")[1]
    shells = load_design_mesh(stl(tmp_path, "c.stl", two_shells_sharing_a_face()), "mm")[1]
    closed = load_design_mesh(MESHES / "idler_riser.STL", "inch")[1]
    assert (touching.input_open_edges, touching.input_non_manifold_edges > 0) == (0, True)
    assert touching.bodies == 2 and not touching.watertight_input
    assert (holed.input_open_edges, holed.input_non_manifold_edges) == (39, 0)
    assert shells.input_non_manifold_edges > 0 and shells.bodies == 1
    assert closed == MeshProcessing(
        watertight_input=True,
        input_open_edges=0,
        input_non_manifold_edges=0,
        repairs=[],
        used_as_is=False,
        open_edges=0,
        non_manifold_edges=0,
        winding_consistent=True,
        bodies=1,
        faces=1572,
        volume_mm3=closed.volume_mm3,
    )
    assert closed.volume_mm3 == pytest.approx(real("idler_riser.STL").volume, rel=1e-9)
    assert closed.summary() == "closed solid, used unchanged"


def test_an_open_surface_is_outlined_where_it_is_seen_through_its_hole(tmp_path: Path) -> None:
    """The top camera looks into the topless block: its outline is the block's, not the sides turned to it."""
    mesh = load_mesh_mm(stl(tmp_path, "topless.stl", without_its_top()), "mm")
    model = design_model(mesh, tmp_path)
    pose = np.eye(4)
    pose[:3, 3] = -mesh.bounds.mean(axis=0) + (0.0, 0.0, mesh.extents[2] / 2)
    vertices = transform(pose, model.vertices)
    for calib in rig():
        window = bounding_window(calib.project(vertices), calib, 0.5, 4)
        assert window is not None
        drawn = silhouette(calib, vertices, model.faces, window) > 0
        cast = cast_silhouette(
            triangle_scene(mesh.vertices, mesh.faces), calib.centre, window_rays(calib, window), pose, window
        )
        one_sided = silhouette(calib, vertices, np.asarray(mesh.faces), window) > 0
        assert np.count_nonzero(drawn & cast) / np.count_nonzero(drawn | cast) > 0.95, calib.name
        if calib.name == "cam01":  # the test's own check: drawn one-sided, the top view loses the inside
            assert np.count_nonzero(one_sided) < 0.8 * np.count_nonzero(cast)


@pytest.mark.parametrize(("build", "seed"), [(with_a_large_hole, 6), (without_its_top, 3)])
def test_an_open_part_is_inspected_end_to_end(build: Callable[[], trimesh.Trimesh], seed: int, tmp_path: Path) -> None:
    """Drawn one-sided, as a closed solid is, the holed riser read its hole as extra material and was rejected,
    and the topless block was fitted 0.36° off and rejected as the wrong part."""
    mesh = load_mesh_mm(stl(tmp_path, "open.stl", build()), "mm")
    pose = place_on_tray(mesh, np.random.default_rng(seed))
    images = renderer().render(mesh, pose, seed)
    report = inspect_scan(
        images, empty(), rig(), mesh, "open", load_profile("default"), cache_dir=tmp_path, light=demo_light()
    )
    assert report.pose is not None and report.metrics is not None, report.notes
    distance, angle = pose_error(mesh, pose, np.array(report.pose))
    assert distance < 0.3 and angle < 0.75, (distance, angle)
    assert largest_deviation(mesh, pose, np.array(report.pose)) < 0.5
    assert report.metrics.silhouette_iou_min > 0.9
    assert report.qc_machine, report.qc_reasons


def test_an_open_non_manifold_part_is_aligned(tmp_path: Path) -> None:
    mesh, processing = load_design_mesh(stl(tmp_path, "pair.stl", open_body_touching_a_solid()), "mm")
    assert processing.used_as_is and processing.non_manifold_edges > 0 and processing.open_edges > 0
    pose = place_on_tray(mesh, np.random.default_rng(21))
    images = renderer().render(mesh, pose, 21)
    views = [View(c, segment_scan(c.name, images[c.name], empty()[c.name]).mask) for c in rig()]
    found = align(design_model(mesh, tmp_path), views)
    distance, angle = pose_error(mesh, pose, found.pose)
    assert distance < 0.3 and angle < 0.75, (distance, angle)


def test_a_library_design_keeps_its_processing_record(tmp_path: Path) -> None:
    stl(tmp_path, "cup.stl", without_its_top())
    (tmp_path / "designs.toml").write_text(
        '[[design]]\nfile = "cup.stl"\nunits = "mm"\nprocess = "SLS"\nmaterial = "PA12"\ncolour = "GREY"\n'
        'title = "Topless block"\n'
    )
    library = DesignLibrary.load(tmp_path / "designs.toml")
    library.check_meshes()
    [design] = library.designs
    assert design.processing().used_as_is and design.processing().open_edges > 0


# What is still refused: no usable geometry.


def _all_degenerate(folder: Path) -> Path:
    mesh = real("angle_block.STL")
    squashed = mesh.vertices.copy()
    squashed[:, 1:] = 0.0  # every triangle flattened onto a line
    return stl(folder, "squashed.stl", faces_of(trimesh.Trimesh(squashed, process=False), mesh.faces))


def _nan_vertex(folder: Path) -> Path:
    """One corrupt corner: trimesh would silently drop its six triangles and leave a holed part."""
    mesh = real("20mm-xyz-cube.stl")
    vertices = mesh.vertices.copy()
    vertices[0] = np.nan
    return stl(folder, "nan.stl", trimesh.Trimesh(vertices, mesh.faces, process=False))


def _all_nan(folder: Path) -> Path:
    mesh = real("20mm-xyz-cube.stl")
    return stl(folder, "all_nan.stl", trimesh.Trimesh(np.full_like(mesh.vertices, np.nan), mesh.faces, process=False))


def _empty(folder: Path) -> Path:
    path = folder / "empty.stl"
    path.write_bytes(b"")
    return path


def _enormous(folder: Path) -> Path:
    mesh = real("idler_riser.STL").copy()
    mesh.apply_scale(1000.0)
    return stl(folder, "enormous.stl", mesh)


@pytest.mark.parametrize(
    ("make", "problem", "fix"),
    [
        (_all_degenerate, r"every face \(704\) is degenerate \(zero area\)", "export the design again"),
        (_nan_vertex, r"^\d of 260 triangles have NaN or infinite vertex coordinates", "the file is corrupt"),
        (_all_nan, "260 of 260 triangles have NaN", "the file is corrupt"),
        (_empty, r"file is empty \(0 bytes\)", "export the design again"),
        (_enormous, "larger than any part the station scans", "check the units"),
    ],
)
def test_a_mesh_with_no_usable_geometry_is_refused_with_the_fix(
    make: Callable[[Path], Path], problem: str, fix: str, tmp_path: Path
) -> None:
    path = make(tmp_path)
    with pytest.raises(MeshError) as caught:
        load_design_mesh(path, "mm")
    assert caught.value.path == path
    assert caught.value.problem and caught.value.fix
    message = str(caught.value)
    assert message.startswith(str(path)) and "Fix: " in message
    assert re.search(problem, caught.value.problem), caught.value.problem
    assert fix in caught.value.fix, caught.value.fix


@pytest.mark.parametrize(
    ("mesh", "problem"),
    [
        (trimesh.Trimesh(np.zeros((0, 3)), np.zeros((0, 3), dtype=np.int64), process=False), "empty"),
        (trimesh.Trimesh([[0, 0, 0], [1, 0, 0], [2, 0, 0]], [[0, 1, 2]], process=False), "zero area"),
        (trimesh.Trimesh(np.array([[0, 0, 0], [1, 0, 0], [np.nan, 0, 1]]), [[0, 1, 2]], process=False), "non-finite"),
    ],
)
def test_the_design_cache_refuses_only_meshes_without_a_surface(mesh: trimesh.Trimesh, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        check_mesh(mesh)


def test_inspecting_against_a_mesh_without_a_surface_says_so() -> None:
    flat = trimesh.Trimesh([[0, 0, 0], [10, 0, 0], [20, 0, 0]], [[0, 1, 2]], process=False)
    with pytest.raises(InspectionInputError, match="zero area"):
        inspect_scan(empty(), empty(), rig(), flat, "flat", load_profile("default"), light=demo_light())
