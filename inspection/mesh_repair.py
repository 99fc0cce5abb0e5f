"""Making a customer's mesh usable: repaired into a closed solid when that is safe, kept as a surface when not.

CAD exports that a slicer prints without complaint are often not closed solids: two bodies touching
along an edge, internal walls where shells were joined, a hole no small repair closes. Refusing them
refuses real orders, yet the inspection needs no closed volume (outlines are drawn from every face,
ray casts hit either side), so a mesh is refused only when it has no usable geometry, and what was
done to every other one is recorded in a `MeshProcessing` report.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    import trimesh

_BOUNDS_TOLERANCE = 1e-3
"""A repaired solid's bounds may move by this fraction of the part's size (the repair only rejoins surfaces)."""
_VOLUME_TOLERANCE = 1e-4
_ANGLE_TIE_RAD = 1e-7
"""Faces about an edge closer in angle than this are coincident (two shells' sides of one face)."""


class UnusableMeshError(ValueError):
    """A mesh with no geometry the station can compare a scan with; says what is wrong and the fix."""

    def __init__(self, problem: str, fix: str) -> None:
        self.problem = problem
        self.fix = fix
        super().__init__(f"{problem}. Fix: {fix}")


class MeshProcessing(BaseModel):
    """What loading did to a design mesh, so an engineer reviewing a result knows which geometry it was judged on."""

    model_config = ConfigDict(extra="forbid")

    watertight_input: bool = Field(description="The mesh as read (vertices merged) was one or more closed solids.")
    input_open_edges: int = Field(ge=0, description="Edges of only one face in the mesh as read: the rims of holes.")
    input_non_manifold_edges: int = Field(
        ge=0, description="Edges of more than two faces in the mesh as read: bodies touching, internal walls."
    )
    repairs: list[str] = Field(description="Each change made to the geometry, in the order made; empty if none.")
    used_as_is: bool = Field(
        description="No repair gave a closed solid, so the mesh is used as an open surface: outlines and ray "
        "casts work, volume and mass properties are estimates from its convex hull."
    )
    open_edges: int = Field(ge=0, description="Open edges left in the mesh the station uses.")
    non_manifold_edges: int = Field(ge=0, description="Edges of more than two faces left in the mesh the station uses.")
    winding_consistent: bool = Field(description="Neighbouring faces of the mesh used agree on which side is outside.")
    bodies: int = Field(ge=1, description="Connected pieces of the mesh used.")
    faces: int = Field(ge=1, description="Triangles of the mesh used.")
    volume_mm3: float | None = Field(description="Enclosed volume of the mesh used; None when it encloses none.")

    def summary(self) -> str:
        """One line for the log: what the mesh was and what was done to it."""
        if self.watertight_input and not self.repairs:
            return "closed solid, used unchanged"
        found = f"{self.input_open_edges} open and {self.input_non_manifold_edges} non-manifold edges as read"
        done = "; ".join(self.repairs) if self.repairs else "no repairs"
        return f"{found}; {done}"


def bad_edge_counts(mesh: trimesh.Trimesh) -> tuple[int, int]:
    """(open edges, edges of more than two faces), by vertex index: what makes a mesh not watertight."""
    if len(mesh.faces) == 0:
        return 0, 0
    _, counts = np.unique(mesh.edges_sorted, axis=0, return_counts=True)
    return int((counts == 1).sum()), int((counts > 2).sum())


def is_closed_solid(mesh: trimesh.Trimesh) -> bool:
    """Watertight, consistently wound and enclosing a positive volume: the form mass properties are exact for."""
    try:
        return bool(mesh.is_watertight and mesh.is_winding_consistent and mesh.volume > 0)
    except Exception:  # noqa: BLE001 - trimesh's cached properties fail in many ways on broken meshes
        return False


def prepare_mesh(mesh: trimesh.Trimesh) -> tuple[trimesh.Trimesh, MeshProcessing]:
    """The mesh to inspect against (a new object) and what was done to get it; raises UnusableMeshError.

    Tried in order, keeping the first that gives a closed solid: trimesh's cleanup (merge vertices, drop
    degenerate and duplicate faces); a manifold3d union of the closed shells that touch along edges or
    faces; trimesh's filling of small holes, and the union again; cancelling internal walls; fixing
    normals. Otherwise the cleaned mesh is kept open, each piece turned to face outwards as far as that
    can be told.
    """
    import trimesh

    _check_usable(mesh)
    work = trimesh.Trimesh(np.asarray(mesh.vertices, dtype=np.float64), np.asarray(mesh.faces), process=False)
    work.merge_vertices()
    watertight_input = bool(work.is_watertight)
    input_open, input_overused = bad_edge_counts(work)
    repairs = _clean(work)
    joined = _join_shells(work)
    if joined is None and not work.is_watertight:
        filled = _fill_small_holes(work)
        if filled:
            repairs.append(filled)
            joined = _join_shells(work)  # a shell with a small hole could not be joined before
    if joined is None and not work.is_watertight:
        walls = _cancel_walls(work)
        if walls:
            repairs.append(f"removed {walls} internal faces shared by two shells")
    if joined is not None:
        result, shells = joined
        repairs.append(f"joined {shells} shells touching along edges or faces into one closed solid (manifold3d union)")
        return result, _report(result, watertight_input, input_open, input_overused, repairs, False)
    if work.is_watertight:
        if not work.is_winding_consistent or work.volume < 0:
            trimesh.repair.fix_normals(work, multibody=True)
            repairs.append("fixed inverted or inconsistent normals")
    else:
        trimesh.repair.fix_normals(work, multibody=True)
    used_as_is = not is_closed_solid(work)
    if used_as_is:
        open_edges, overused = bad_edge_counts(work)
        flipped = 0 if overused else _orient_open_pieces(work)
        if flipped:
            repairs.append(f"turned {flipped} inward-facing pieces outwards")
        repairs.append(
            f"kept as an open surface ({open_edges} open edges, {overused} edges shared by more than two faces): "
            "outlines and ray casts use it as it is"
        )
    return work, _report(work, watertight_input, input_open, input_overused, repairs, used_as_is)


def _join_shells(mesh: trimesh.Trimesh) -> tuple[trimesh.Trimesh, int] | None:
    """The union of the mesh's shells where edges of more than two faces say shells touch; None otherwise."""
    if mesh.is_watertight or not bad_edge_counts(mesh)[1]:
        return None
    return _union_of_shells(mesh)


def _fill_small_holes(mesh: trimesh.Trimesh) -> str | None:
    """trimesh's hole filling (triangles and quads); what it did, or None if it added nothing."""
    import trimesh

    faces_before = len(mesh.faces)
    open_before = bad_edge_counts(mesh)[0]
    trimesh.repair.fill_holes(mesh)
    mesh.merge_vertices()
    added = len(mesh.faces) - faces_before
    if added <= 0:
        return None
    if mesh.is_watertight:
        return f"closed holes ({open_before} open edges filled by trimesh)"
    return (
        f"filled small holes with {added} faces ({open_before - bad_edge_counts(mesh)[0]} open edges closed by trimesh)"
    )


def _check_usable(mesh: trimesh.Trimesh) -> None:
    export_again = "export the design again as a triangle mesh"
    if len(mesh.faces) == 0 or len(mesh.vertices) == 0:
        raise UnusableMeshError("the mesh has no triangles", export_again)
    if not np.all(np.isfinite(mesh.vertices)):
        raise UnusableMeshError(
            "the mesh has vertices with NaN or infinite coordinates", f"{export_again}; the file is corrupt"
        )


def _clean(mesh: trimesh.Trimesh) -> list[str]:
    """Drops faces that carry no surface: degenerate ones and exact copies."""
    repairs: list[str] = []
    degenerate = ~mesh.nondegenerate_faces()
    if degenerate.all():
        raise UnusableMeshError(
            f"every face ({len(mesh.faces)}) is degenerate (zero area), so the mesh has no surface",
            "export the design again; check the export's unit and precision settings",
        )
    if degenerate.any():
        mesh.update_faces(~degenerate)
        repairs.append(f"removed {int(degenerate.sum())} degenerate faces")
    copies, _ = _duplicate_faces(mesh.faces)
    if copies.any():
        mesh.update_faces(~copies)
        repairs.append(f"removed {int(copies.sum())} duplicate faces")
    if repairs:
        mesh.remove_unreferenced_vertices()
    return repairs


def _cancel_walls(mesh: trimesh.Trimesh) -> int:
    """Removes face pairs wound against each other when that leaves fewer bad edges; returns how many faces.

    Cancelling a wall is right only when it closes the seam between two shells; a two-sided sheet
    would lose its surface instead.
    """
    import trimesh

    _, walls = _duplicate_faces(mesh.faces)
    if not walls.any() or walls.all():
        return 0
    without = trimesh.Trimesh(mesh.vertices, mesh.faces[~walls], process=False)
    if sum(bad_edge_counts(without)) >= sum(bad_edge_counts(mesh)):
        return 0
    mesh.update_faces(~walls)
    mesh.remove_unreferenced_vertices()
    return int(walls.sum())


def _duplicate_faces(faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Masks of (repeated copies of a face wound the same way, face pairs wound opposite ways).

    Two shells joined face to face each keep their side of the shared face: the pair is an internal
    wall whose edges belong to four faces. Copies wound alike are an export's repetition; one stays.
    """
    faces = np.asarray(faces, dtype=np.int64)
    copies = np.zeros(len(faces), dtype=bool)
    walls = np.zeros(len(faces), dtype=bool)
    if len(faces) == 0:
        return copies, walls
    # A face's key regardless of winding is its sorted corners; its winding is the parity of the sort.
    order = np.argsort(faces, axis=1)
    key = np.take_along_axis(faces, order, axis=1)
    parity = _permutation_parity(order)
    _, group, counts = np.unique(key, axis=0, return_inverse=True, return_counts=True)
    group = group.ravel()
    repeated = np.isin(group, np.flatnonzero(counts > 1))
    for index in np.unique(group[repeated]):
        members = np.flatnonzero(group == index)
        even, odd = members[parity[members] == 0], members[parity[members] == 1]
        copies[even[1:]] = True
        copies[odd[1:]] = True
        if len(even) and len(odd):
            walls[even[0]] = walls[odd[0]] = True
    return copies, walls


def _permutation_parity(order: np.ndarray) -> np.ndarray:
    """0 for an even permutation of three, 1 for an odd one (a face wound the other way)."""
    inversions = (order[:, 0] > order[:, 1]).astype(int) + (order[:, 0] > order[:, 2]) + (order[:, 1] > order[:, 2])
    return np.asarray(inversions % 2, dtype=np.int64)


def _union_of_shells(mesh: trimesh.Trimesh) -> tuple[trimesh.Trimesh, int] | None:
    """The closed solid the mesh's shells make together, with the number of shells, when each shell is closed and
    their union keeps the mesh's size and volume; None otherwise.

    Shells meeting along an edge or a face share vertices and edges, which no local repair can
    untangle; as separate solids a boolean union joins them exactly. A closed shell wound inwards
    is a cavity and is cut out of the union.
    """
    import manifold3d
    import trimesh

    groups = _shells(mesh)
    if groups is None or len(groups) < 2:
        return None
    outer: list[tuple[Any, float]] = []  # (manifold3d.Manifold, volume)
    cavities: list[tuple[Any, float]] = []
    for group in groups:
        shell = trimesh.Trimesh(mesh.vertices, mesh.faces[group], process=False)
        shell.remove_unreferenced_vertices()
        if not (shell.is_watertight and shell.is_winding_consistent) or shell.volume == 0:
            return None
        solid = manifold3d.Manifold(
            manifold3d.Mesh64(
                vert_properties=np.asarray(shell.vertices, dtype=np.float64),
                tri_verts=np.asarray(shell.faces if shell.volume > 0 else shell.faces[:, ::-1], dtype=np.uint32),
            )
        )
        if solid.status() != manifold3d.Error.NoError:
            return None
        (outer if shell.volume > 0 else cavities).append((solid, abs(float(shell.volume))))
    if not outer:
        return None
    union = manifold3d.Manifold.batch_boolean([s for s, _ in outer], manifold3d.OpType.Add)
    if cavities:
        union = manifold3d.Manifold.batch_boolean([union, *(s for s, _ in cavities)], manifold3d.OpType.Subtract)
    if union.status() != manifold3d.Error.NoError or union.is_empty():
        return None
    out = union.to_mesh64()
    joined = trimesh.Trimesh(
        np.array(out.vert_properties, dtype=np.float64)[:, :3].copy(),
        np.array(out.tri_verts, dtype=np.int64),
        process=False,
    )
    largest = max(v for _, v in outer) - sum(v for _, v in cavities)
    total = sum(v for _, v in outer)
    size = float(mesh.extents.max())
    plausible = (
        is_closed_solid(joined)
        and np.allclose(joined.bounds, mesh.bounds, atol=_BOUNDS_TOLERANCE * size)
        and largest * (1 - _VOLUME_TOLERANCE) <= joined.volume <= total * (1 + _VOLUME_TOLERANCE)
    )
    return (joined, len(groups)) if plausible else None


def _shells(mesh: trimesh.Trimesh) -> list[np.ndarray] | None:
    """Face indices of each shell, or None when the faces around an edge cannot be told apart into shells.

    Around an edge of more than two faces, the faces are ordered by their angle about it. An outward
    face whose edge runs along the axis has its solid just below its angle, one whose edge runs against
    it just above, so each face of the second kind closes a solid wedge with the next face, which must
    be of the first kind. Coincident faces (two shells' sides of a shared face) are ordered first-kind
    first: a wedge of zero angle is the wall between two shells, not a solid.
    """
    import trimesh

    faces = np.asarray(mesh.faces, dtype=np.int64)
    vertices = np.asarray(mesh.vertices, dtype=np.float64)
    directed = faces[:, [0, 1, 1, 2, 2, 0]].reshape(-1, 2)
    third = faces[:, [2, 0, 1]].ravel()
    owner = np.repeat(np.arange(len(faces)), 3)
    key = np.sort(directed, axis=1)
    _, group, sizes = np.unique(key, axis=0, return_inverse=True, return_counts=True)
    group = group.ravel()
    order = np.argsort(group, kind="stable")
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    two = sizes == 2
    pairs = [np.column_stack([owner[order[starts[two]]], owner[order[starts[two] + 1]]])]
    for index in np.flatnonzero(sizes > 2):
        members = order[starts[index] : starts[index] + sizes[index]]
        paired = _pair_around_edge(vertices, directed[members], third[members])
        if paired is None:
            return None
        pairs.append(owner[members][paired])
    adjacency = np.vstack(pairs) if pairs else np.zeros((0, 2), dtype=np.int64)
    return [np.asarray(g) for g in trimesh.graph.connected_components(adjacency, nodes=np.arange(len(faces)))]


def _pair_around_edge(vertices: np.ndarray, directed: np.ndarray, third: np.ndarray) -> np.ndarray | None:
    """(K, 2) positions in `directed` of the faces that bound one solid wedge together (see _shells)."""
    start, end = directed[0]
    axis = vertices[end] - vertices[start]
    axis /= np.linalg.norm(axis)
    across = np.cross(axis, [1.0, 0.0, 0.0] if abs(axis[0]) < 0.9 else [0.0, 1.0, 0.0])
    across /= np.linalg.norm(across)
    up = np.cross(axis, across)
    radial = vertices[third] - vertices[start]
    angle = np.arctan2(radial @ up, radial @ across)
    along = directed[:, 0] == start
    ticks = np.round(angle / _ANGLE_TIE_RAD).astype(np.int64)
    ring = np.lexsort((~along, ticks))
    if along.sum() * 2 != len(along):
        return None
    paired = []
    for place, face in enumerate(ring):
        if along[face]:
            continue
        following = ring[(place + 1) % len(ring)]
        if not along[following]:
            return None
        paired.append((face, following))
    return np.asarray(paired, dtype=np.int64)


def _orient_open_pieces(mesh: trimesh.Trimesh) -> int:
    """Turns each connected piece so that most of it faces away from its own centre; returns how many were turned.

    An open surface has no inside to point away from, but a part with a hole still mostly surrounds its
    centre: its signed volume about that centre is positive when it faces outwards.
    """
    import trimesh

    groups = trimesh.graph.connected_components(mesh.face_adjacency, nodes=np.arange(len(mesh.faces)))
    flip = np.zeros(len(mesh.faces), dtype=bool)
    turned = 0
    for group in groups:
        triangles = mesh.triangles[group]
        centred = triangles - triangles.reshape(-1, 3).mean(axis=0)
        signed = np.einsum("ij,ij->i", centred[:, 0], np.cross(centred[:, 1], centred[:, 2])).sum()
        if signed < 0:
            flip[group] = True
            turned += 1
    if turned:
        mesh.faces = np.where(flip[:, None], mesh.faces[:, ::-1], mesh.faces)
    return turned


def _report(
    mesh: trimesh.Trimesh,
    watertight_input: bool,
    input_open: int,
    input_overused: int,
    repairs: list[str],
    used_as_is: bool,
) -> MeshProcessing:
    open_edges, overused = bad_edge_counts(mesh)
    closed = is_closed_solid(mesh)
    return MeshProcessing(
        watertight_input=watertight_input,
        input_open_edges=input_open,
        input_non_manifold_edges=input_overused,
        repairs=repairs,
        used_as_is=used_as_is,
        open_edges=open_edges,
        non_manifold_edges=overused,
        winding_consistent=bool(mesh.is_winding_consistent),
        bodies=max(1, int(mesh.body_count)),
        faces=len(mesh.faces),
        volume_mm3=round(float(mesh.volume), 6) if closed else None,
    )
