"""How bright a material renders: a design_material's colour token mapped to the part's albedo or catalogue material.

Identification tells designs of one geometry apart by their look, so the mock must show one geometry in
materials of clearly different reflectance; the values are rough diffuse reflectances of sintered and
printed polymers, not measurements. The demo station keeps the albedos it was tuned with (ALBEDO_BY_COLOUR);
other station looks render the token's material from the catalogue (config/materials.toml), gloss and grain too.
"""

from __future__ import annotations

from amflow_edge.drivers.simulator.looks import PartMaterial, load_material
from amflow_edge.inspection.geometry.lighting import PART_ALBEDO

ALBEDO_BY_COLOUR: dict[str, float] = {
    "BLACK": 0.08,
    "GREY": PART_ALBEDO,
    "GRAY": PART_ALBEDO,
    "WHITE": 0.8,
    "GREEN": 0.3,
    "NATURAL": 0.6,
}

MATERIAL_BY_COLOUR: dict[str, str] = {
    "BLACK": "pa12_black",
    "GREY": "pa12_grey",
    "GRAY": "pa12_grey",
    "WHITE": "pa12_white",
    "GREEN": "pa12_green",
    "RED": "pa12_red",
    "NATURAL": "pa12_natural",
}
DEFAULT_MATERIAL = "pa12_grey"


def colour_of(design_material: str) -> str:
    """The COLOUR token of `<sha1>_<PROCESS>_<MATERIAL>_<COLOUR>` (upper case; '' when there is none)."""
    parts = design_material.split("_")
    return parts[-1].upper() if len(parts) >= 4 else ""


def albedo_for(design_material: str) -> float:
    """The albedo the demo station renders a design_material's part with; unknown colours render as grey PA12."""
    return ALBEDO_BY_COLOUR.get(colour_of(design_material), PART_ALBEDO)


def material_name_for(design_material: str) -> str:
    """The catalogue material other station looks render a design_material's part in; unknown colours: grey PA12."""
    return MATERIAL_BY_COLOUR.get(colour_of(design_material), DEFAULT_MATERIAL)


def material_for(design_material: str) -> PartMaterial:
    return load_material(material_name_for(design_material))
