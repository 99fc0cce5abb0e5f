"""Printing defects as written in configs and on the command line (``KIND:SIZE``), and the truth of one applied.

Kept apart from the geometry in `defects` so that validating a config or building the command
line does not load the mesh libraries.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

DefectKind = Literal["missing_slab", "missing_chunk", "extra_blob", "scale", "warp"]

SIZE_RANGES: dict[str, tuple[float, float, str]] = {
    "missing_slab": (0.1, 50.0, "mm"),
    "missing_chunk": (0.2, 20.0, "mm"),
    "extra_blob": (0.3, 20.0, "mm"),
    "scale": (0.05, 20.0, "%"),
    "warp": (0.1, 30.0, "°"),
}
_MEANING = {
    "missing_slab": "depth of the slab cut off a face or edge, in mm",
    "missing_chunk": "depth of the chip taken out of an edge, in mm",
    "extra_blob": "diameter of the blob, in mm",
    "scale": "scale error in %, one value (uniform) or x,y,z in the part's frame",
    "warp": "bend of the long axis end to end, in degrees",
}


class DefectError(ValueError):
    """A defect that cannot be written or applied as asked; the message names the problem and the fix."""


def _kinds() -> str:
    return ", ".join(SIZE_RANGES)


def _check_size(kind: str, size: float | tuple[float, ...]) -> None:
    low, high, unit = SIZE_RANGES[kind]
    values = list(size) if isinstance(size, tuple) else [size]
    if isinstance(size, tuple) and (kind != "scale" or len(size) != 3):
        raise DefectError(f"{kind} takes one size ({_MEANING[kind]}); only scale takes three (x,y,z), got {len(size)}")
    if not all(math.isfinite(v) for v in values):
        raise DefectError(f"{kind} size must be a finite number ({_MEANING[kind]})")
    magnitudes = [abs(v) for v in values] if kind == "scale" else values
    if kind == "scale" and isinstance(size, tuple):
        magnitudes = [m for m in magnitudes if m != 0.0]
        if not magnitudes:
            raise DefectError(
                "scale 0,0,0 is no defect; give at least one non-zero x,y,z percentage, e.g. scale:0,0,-0.8"
            )
    for value in magnitudes:
        if not low <= value <= high:
            sign = "±" if kind == "scale" else ""
            raise DefectError(
                f"{kind} size {value:g} {unit} is outside the sensible range {sign}{low:g}–{high:g} {unit} "
                f"({_MEANING[kind]}); use a size in that range"
            )


class Defect(BaseModel):
    """One printing defect to put into a part, as ``KIND:SIZE``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: DefectKind = Field(description="missing_slab, missing_chunk, extra_blob, scale or warp.")
    size: float | tuple[float, float, float] = Field(
        description="Per kind: slab depth (mm), chip depth (mm), blob diameter (mm), "
        "scale error (% uniform, or x,y,z % in the part frame), warp (degrees of bend end to end)."
    )

    @model_validator(mode="after")
    def _sensible_size(self) -> Defect:
        _check_size(self.kind, self.size)
        return self

    @classmethod
    def parse(cls, text: str) -> Defect:
        """``KIND:SIZE`` as in configs and on the command line; raises DefectError naming what is wrong."""
        kind, colon, size_text = str(text).strip().partition(":")
        kind = kind.strip()
        example = "missing_chunk:1.0, scale:0.5 or warp:2"
        if not colon or not size_text.strip():
            raise DefectError(f"defect {text!r} must be written KIND:SIZE, e.g. {example}")
        if kind not in SIZE_RANGES:
            raise DefectError(f"unknown defect kind {kind!r} in {text!r}; use one of {_kinds()} (e.g. {example})")
        try:
            values = tuple(float(part) for part in size_text.split(","))
        except ValueError:
            raise DefectError(
                f"defect {text!r}: size {size_text.strip()!r} is not a number ({_MEANING[kind]})"
            ) from None
        size: float | tuple[float, ...] = values[0] if len(values) == 1 else values
        _check_size(kind, size)
        return cls(kind=kind, size=size)

    @property
    def amount(self) -> float:
        """The size of a one-number defect (all but a per-axis scale)."""
        if isinstance(self.size, tuple):
            raise DefectError(f"{self} has a size per axis, not one amount")
        return float(self.size)

    def __str__(self) -> str:
        if isinstance(self.size, tuple):
            return f"{self.kind}:{','.join(f'{v:g}' for v in self.size)}"
        return f"{self.kind}:{self.size:g}"


class BoundingBox(BaseModel):
    model_config = ConfigDict(extra="forbid")

    min: tuple[float, float, float] = Field(description="Lowest x, y, z (mm, part frame).")
    max: tuple[float, float, float] = Field(description="Highest x, y, z (mm, part frame).")


class DefectTruth(BaseModel):
    """What was done to the part, for checking an inspection against; all geometry in the part's own frame (mm)."""

    model_config = ConfigDict(extra="forbid")

    kind: DefectKind = Field(description="The defect's kind.")
    size: float | tuple[float, float, float] = Field(description="The defect's size, in the unit of its kind.")
    spec: str = Field(description="The defect as KIND:SIZE.")
    location: tuple[float, float, float] = Field(
        description="Centroid of the removed or added material; the part's bounds centre for scale, "
        "the middle of the bent long axis for warp."
    )
    normal: tuple[float, float, float] | None = Field(
        description="Outward direction of the affected surface (cut direction for a slab, the way the ends "
        "moved for a warp); null for scale."
    )
    volume_change_mm3: float = Field(description="Volume after minus volume before (negative: material missing).")
    region: BoundingBox = Field(
        description="Bounding box of the material removed or added (the whole part for scale and warp)."
    )
