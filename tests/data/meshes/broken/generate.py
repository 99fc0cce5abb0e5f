"""Writes the deliberately broken meshes in this folder, so each can be remade and its defect is on record.

Run from the repository root: ``.venv/bin/python tests/data/meshes/broken/generate.py``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import trimesh

HERE = Path(__file__).resolve().parent


def _cube(size: float = 10.0) -> trimesh.Trimesh:
    return trimesh.creation.box(extents=(size, size, size))


def _without_top(mesh: trimesh.Trimesh) -> trimesh.Trimesh:
    top = mesh.face_normals[:, 2] > 0.99
    return trimesh.Trimesh(mesh.vertices, mesh.faces[~top], process=False)


def _stl(mesh: trimesh.Trimesh) -> bytes:
    return trimesh.exchange.stl.export_stl(mesh)


def broken_meshes() -> dict[str, bytes]:
    cube = _cube()
    cup = trimesh.creation.cylinder(radius=8.0, height=12.0, sections=24)
    bowtie_a = _cube()
    bowtie_b = _cube()
    bowtie_b.apply_translation((10.0, 10.0, 0.0))
    bowtie = trimesh.util.concatenate([bowtie_a, bowtie_b])
    assert isinstance(bowtie, trimesh.Trimesh)
    on_edge = cube.vertices[cube.faces[0][:2]]
    sliver = np.array([on_edge[0], on_edge[1], on_edge.mean(axis=0)])
    with_slivers = trimesh.Trimesh(
        np.vstack([cube.vertices, sliver]),
        np.vstack([cube.faces, [[8, 9, 10], [8, 8, 9]]]),
        process=False,
    )
    return {
        # nothing at all, as left behind by an interrupted copy
        "empty.stl": b"",
        # bytes that are neither binary nor ASCII STL
        "garbage.stl": b"this is not a mesh\n"
        + np.random.default_rng(7).integers(0, 256, 300, dtype=np.uint8).tobytes(),
        # a cup: the 24-sided rim is too large a hole for automatic repair
        "open_cup.stl": _stl(_without_top(cup)),
        # two cubes touching along one edge: that edge has four faces, which no repair can fix
        "bowtie.stl": _stl(bowtie),
        # a cube missing its top square: a quad hole that repair can close
        "missing_face.stl": _stl(_without_top(cube)),
        # a cube with every face wound inwards: repair flips it
        "inverted_cube.stl": _stl(trimesh.Trimesh(cube.vertices, cube.faces[:, ::-1], process=False)),
        # a good cube plus two zero-area faces: they are dropped
        "degenerate_faces.stl": _stl(with_slivers),
    }


def main() -> None:
    for name, data in broken_meshes().items():
        (HERE / name).write_bytes(data)
        print(f"wrote {HERE / name} ({len(data)} bytes)")


if __name__ == "__main__":
    main()
