"""How bright a material renders: a design_material's colour token mapped to the part's diffuse albedo.

Identification tells designs of one geometry apart by their look, so the mock must show one geometry in
materials of clearly different reflectance; the values are rough diffuse reflectances of sintered and
printed polymers, not measurements.
"""

from __future__ import annotations

from amflow_edge.inspection.geometry.lighting import PART_ALBEDO

ALBEDO_BY_COLOUR: dict[str, float] = {
    "BLACK": 0.08,
    "GREY": PART_ALBEDO,
    "GRAY": PART_ALBEDO,
    "WHITE": 0.8,
    "GREEN": 0.3,
    "NATURAL": 0.6,
}


def colour_of(design_material: str) -> str:
    """The COLOUR token of `<sha1>_<PROCESS>_<MATERIAL>_<COLOUR>` (upper case; '' when there is none)."""
    parts = design_material.split("_")
    return parts[-1].upper() if len(parts) >= 4 else ""


def albedo_for(design_material: str) -> float:
    """The albedo the mock renders a design_material's part with; unknown colours render as grey PA12."""
    return ALBEDO_BY_COLOUR.get(colour_of(design_material), PART_ALBEDO)
