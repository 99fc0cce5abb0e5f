"""Parametric demo parts, so a station without customer CAD still has real-looking designs to scan.

Parts are built with manifold3d booleans, which always give closed manifold solids, and are written
as canonically ordered binary STL: the same geometry gives the same bytes, hence the same
design_material id, on every run.

Run ``python -m amflow_edge.drivers.simulator.demo_parts`` to (re)write ``config/designs/``.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import trimesh
from manifold3d import CrossSection, Manifold, OpType

from amflow_edge.common.shipped import DEMO_DESIGNS

DEFAULT_OUT = DEMO_DESIGNS
LIBRARY_NAME = "designs.toml"
SEGMENTS = 64


@dataclass(frozen=True)
class DemoPart:
    """What the library needs to know about a demo part besides its geometry."""

    name: str
    title: str
    part_id: str
    process: str
    material: str
    colour: str
    build: Callable[[], Manifold]


def _cylinder(radius: float, height: float, x: float = 0.0, y: float = 0.0, z: float = 0.0) -> Manifold:
    return Manifold.cylinder(height, radius, circular_segments=SEGMENTS).translate((x, y, z))


def _box(x0: float, y0: float, z0: float, x1: float, y1: float, z1: float) -> Manifold:
    return Manifold.cube((x1 - x0, y1 - y0, z1 - z0)).translate((x0, y0, z0))


def _union(solids: list[Manifold]) -> Manifold:
    return Manifold.batch_boolean(solids, OpType.Add)


def _profile_xz(section: CrossSection, width: float) -> Manifold:
    """Extrude a profile drawn in the XZ plane along Y, centred on y = 0."""
    return section.extrude(width).rotate((90.0, 0.0, 0.0)).translate((0.0, width / 2, 0.0))


def montageblok() -> Manifold:
    """80 × 50 × 34 mounting block: a step, two counterbored M8 holes, two M6 holes and a cross bore."""
    body = _box(-40, -25, 0, 40, 25, 34) - _box(-41, -26, 20, -10, 26, 35)
    holes = [_cylinder(4.25, 36, x=20, y=y, z=-1) + _cylinder(7.5, 10, x=20, y=y, z=26) for y in (-14.0, 14.0)] + [
        _cylinder(3.3, 22, x=-25, y=y, z=-1) for y in (-14.0, 14.0)
    ]
    cross_bore = Manifold.cylinder(52, 4.0, circular_segments=SEGMENTS).rotate((0.0, 90.0, 0.0)).translate((-11, 0, 27))
    return body - _union(holes + [cross_bore])


def angle_bracket() -> Manifold:
    """60 × 40 × 50 angle bracket, 6 mm walls, an inner fillet, a chamfered heel and two holes per leg."""
    wall, fillet, chamfer = 6.0, 8.0, 4.0
    leg_h = CrossSection.square((60.0, wall))
    leg_v = CrossSection.square((wall, 50.0))
    fillet_block = CrossSection.square((fillet, fillet)).translate((wall, wall))
    fillet_round = CrossSection.circle(fillet, SEGMENTS).translate((wall + fillet, wall + fillet))
    heel = CrossSection([np.array([[-1.0, -1.0], [chamfer + 1, -1.0], [-1.0, chamfer + 1]])])
    profile = leg_h + leg_v + (fillet_block - fillet_round) - heel
    body = _profile_xz(profile, 40.0)
    base_holes = [_cylinder(3.3, wall + 2, x=40, y=y, z=-1) for y in (-10.0, 10.0)]
    wall_holes = [
        Manifold.cylinder(wall + 2, 3.3, circular_segments=SEGMENTS).rotate((0.0, 90.0, 0.0)).translate((-1, y, 34))
        for y in (-10.0, 10.0)
    ]
    return body - _union(base_holes + wall_holes)


def snap_clip() -> Manifold:
    """Snap-on pipe clip for a 16 mm tube: a C-ring with lead-in lips on a base with two screw holes."""
    base = CrossSection.square((40.0, 4.0)).translate((-20.0, 0.0))
    centre_z, inner, outer, half_opening = 13.0, 8.0, 11.0, math.radians(50.0)
    ring = CrossSection.circle(outer, SEGMENTS) - CrossSection.circle(inner, SEGMENTS)
    spread = 20.0 * math.tan(half_opening)
    opening = CrossSection([np.array([[0.0, 0.0], [spread, 20.0], [-spread, 20.0]])])
    mid = (inner + outer) / 2
    lips = [
        CrossSection.circle(1.6, 32).translate((side * mid * math.sin(half_opening), mid * math.cos(half_opening)))
        for side in (-1.0, 1.0)
    ]
    clip = (ring - opening + lips[0] + lips[1]).translate((0.0, centre_z))
    body = _profile_xz(base + clip - CrossSection.circle(inner, SEGMENTS).translate((0.0, centre_z)), 16.0)
    screw_holes = [_cylinder(2.25, 6, x=x, z=-1) for x in (-15.5, 15.5)]
    return body - _union(screw_holes)


def flanged_bushing() -> Manifold:
    """Ø40 flanged bushing, Ø20 × 30 tube with a Ø12 bore chamfered at both ends, three flange holes."""
    bore, tube, flange, length, flange_t, c = 6.0, 10.0, 20.0, 30.0, 5.0, 1.0
    half_profile = np.array(
        [
            [bore + c, 0.0],
            [flange, 0.0],
            [flange, flange_t],
            [tube, flange_t],
            [tube, length],
            [bore + c, length],
            [bore, length - c],
            [bore, c],
        ]
    )
    body = CrossSection([half_profile]).revolve(circular_segments=SEGMENTS * 2)
    holes = [
        _cylinder(2.25, flange_t + 2, x=15.0 * math.cos(a), y=15.0 * math.sin(a), z=-1)
        for a in (math.pi / 2 + k * 2 * math.pi / 3 for k in range(3))
    ]
    return body - _union(holes)


def spur_gear(teeth: int = 20, module: float = 2.5, pressure_deg: float = 20.0) -> Manifold:
    """Involute spur gear Z20 m2.5 (Ø55 tip), 10 mm face, Ø20 hub and a D-shaped Ø8 bore."""
    pitch_r = module * teeth / 2
    tip_r = pitch_r + module
    root_r = pitch_r - 1.25 * module
    base_r = pitch_r * math.cos(math.radians(pressure_deg))

    def involute(r: float) -> float:
        alpha = math.acos(min(1.0, base_r / r))
        return math.tan(alpha) - alpha

    def half_angle(r: float) -> float:
        return math.pi / (2 * teeth) + involute(pitch_r) - involute(max(r, base_r))

    flank_r = np.linspace(max(root_r, base_r), tip_r, 10)
    points: list[tuple[float, float]] = []
    for k in range(teeth):
        centre = 2 * math.pi * k / teeth
        rising = [(r, centre - half_angle(r)) for r in flank_r]
        if root_r < base_r:
            rising.insert(0, (root_r, centre - half_angle(base_r)))
        falling = [(r, centre + half_angle(r)) for r in reversed(flank_r)]
        if root_r < base_r:
            falling.append((root_r, centre + half_angle(base_r)))
        tip = [(tip_r, a) for a in np.linspace(rising[-1][1], falling[0][1], 4)[1:-1]]
        next_start = 2 * math.pi * (k + 1) / teeth - half_angle(base_r)
        root = [(root_r, a) for a in np.linspace(falling[-1][1], next_start, 5)[1:-1]]
        points.extend((r * math.cos(a), r * math.sin(a)) for r, a in rising + tip + falling + root)
    outline = CrossSection([np.array(points)])
    bore = CrossSection.circle(4.0, SEGMENTS) - CrossSection.square((4.0, 10.0)).translate((3.5, -5.0))
    gear = (outline - bore).extrude(10.0)
    hub = (CrossSection.circle(10.0, SEGMENTS) - bore).extrude(6.0).translate((0.0, 0.0, 10.0))
    return gear + hub


def cross_knob() -> Manifold:
    """40 mm four-lobed clamping knob with a raised hub, an M6 clearance bore and a hex nut pocket."""
    arm = CrossSection.batch_hull([CrossSection.circle(6.0, SEGMENTS).translate((x, 0.0)) for x in (-14.0, 14.0)])
    grip = arm + arm.rotate(90.0) + CrossSection.circle(11.0, SEGMENTS)
    body = grip.extrude(12.0) + Manifold.cylinder(8.0, 9.0, 7.0, SEGMENTS).translate((0.0, 0.0, 12.0))
    nut_pocket = Manifold.cylinder(5.2, 5.9, circular_segments=6).translate((0.0, 0.0, -0.1))
    return body - (_cylinder(3.2, 22.0, z=-1.0) + nut_pocket)


DEMO_PARTS: tuple[DemoPart, ...] = (
    DemoPart("montageblok_mb80", "Montageblok MB-80", "MB-80", "SLS", "PA12", "GREY", montageblok),
    DemoPart("angle_bracket_ab60", "Angle bracket AB-60", "AB-60", "SLS", "PAGF", "BLACK", angle_bracket),
    DemoPart("pipe_clip_pc16", "Pipe clip PC-16", "PC-16", "SLS", "PA12", "WHITE", snap_clip),
    DemoPart("flanged_bushing_fb20", "Flanged bushing FB-20", "FB-20", "SLS", "PA12", "BLACK", flanged_bushing),
    DemoPart("spur_gear_z20m25", "Spur gear Z20 m2.5", "SG-20-25", "SLS", "PAGF", "GREY", spur_gear),
    DemoPart("cross_knob_ck40", "Cross knob CK-40 (M6)", "CK-40", "SLS", "PA12", "BLACK", cross_knob),
)


def to_trimesh(solid: Manifold) -> trimesh.Trimesh:
    """Convert with a canonical vertex and face order, so identical geometry gives identical STL bytes."""
    raw = solid.to_mesh()
    vertices = np.asarray(raw.vert_properties, dtype=np.float32)[:, :3]
    faces = np.asarray(raw.tri_verts, dtype=np.int64)
    unique, inverse = np.unique(vertices, axis=0, return_inverse=True)
    faces = inverse.reshape(-1)[faces]
    first = np.argmin(faces, axis=1)
    faces = np.stack([np.roll(f, -s) for f, s in zip(faces, first, strict=True)]) if len(faces) else faces
    faces = faces[np.lexsort(faces.T[::-1])]
    return trimesh.Trimesh(unique.astype(np.float64), faces, process=False)


def _seated(mesh: trimesh.Trimesh) -> trimesh.Trimesh:
    """Centre the part in x and y and stand it on z = 0, as it lies on the tray."""
    low, high = mesh.bounds
    return mesh.apply_translation((-(low[0] + high[0]) / 2, -(low[1] + high[1]) / 2, -low[2]))


def build_demo_parts() -> dict[str, trimesh.Trimesh]:
    """Every demo part by file stem, in mm, z up, resting on z = 0."""
    parts: dict[str, trimesh.Trimesh] = {}
    for part in DEMO_PARTS:
        solid = part.build()
        if solid.status().name != "NoError" or solid.is_empty():
            raise RuntimeError(f"demo part {part.name}: manifold3d failed ({solid.status().name})")
        parts[part.name] = _seated(to_trimesh(solid))
    return parts


def stl_bytes(mesh: trimesh.Trimesh) -> bytes:
    return trimesh.exchange.stl.export_stl(mesh)


def _toml_string(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)


def library_toml(parts: Sequence[DemoPart] = DEMO_PARTS) -> str:
    lines = [
        "# Demo parts of the station, generated by `python -m amflow_edge.drivers.simulator.demo_parts`.",
        "# Regenerating rewrites this file; list customer designs in a library file of their own.",
        "",
    ]
    for part in parts:
        lines += [
            "[[design]]",
            f"file = {_toml_string(part.name + '.stl')}",
            'units = "mm"',
            f"process = {_toml_string(part.process)}",
            f"material = {_toml_string(part.material)}",
            f"colour = {_toml_string(part.colour)}",
            f"title = {_toml_string(part.title)}",
            f"part_id = {_toml_string(part.part_id)}",
            "",
        ]
    return "\n".join(lines)


def write_demo_parts(out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, mesh in build_demo_parts().items():
        path = out / f"{name}.stl"
        path.write_bytes(stl_bytes(mesh))
        written.append(path)
    library = out / LIBRARY_NAME
    library.write_text(library_toml(), encoding="utf-8")
    written.append(library)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write the demo parts as binary STL and their design library.")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default: {DEFAULT_OUT})")
    args = parser.parse_args(argv)
    for path in write_demo_parts(args.out):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
