"""What identification takes and gives, as plain data: the daemon ships these across a process boundary and
publishes them, so they import no geometry library."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Outcome = Literal[
    "identified",
    "ambiguous",
    "material_ambiguous",
    "not_in_batch",
    "empty_tray",
    "several_parts",
    "out_of_view",
    "no_candidates",
]

IDENTIFICATION_NAME = "identification.json"


APPEARANCE_MEASURE = "lit95"
"""The name of the appearance measure (identification.appearance: the 95th percentile of part ÷ tray grey), kept
with every appearance and every look learned from one: looks learned with another measure are not comparable."""


class MaterialLook(BaseModel):
    """How a material looks on this station's tray, learned from confirmed scans or set in config."""

    model_config = ConfigDict(extra="forbid")

    mean: float = Field(
        ge=0.0,
        description="Mean appearance (part grey ÷ empty-tray grey at the same pixels, see Identification.appearance).",
    )
    spread: float = Field(
        ge=0.0, description="Standard deviation of the appearance over the scans it was learned from."
    )
    samples: int = Field(ge=0, description="How many confirmed scans the look was learned from (0: set by hand).")


class CandidateDesign(BaseModel):
    """One design of the batch the part may be."""

    model_config = ConfigDict(extra="forbid")

    design_material: str = Field(
        min_length=41,
        description="<40 hex SHA-1 of the mesh file>_<PROCESS>_<MATERIAL>_<COLOUR>; designs sharing the first 40 "
        "hex digits share geometry and are told apart by appearance only.",
    )
    mesh_path: Path = Field(description="The design's mesh file.")
    units: Literal["mm", "inch", "m"] = Field(description="Units the mesh file is in.")
    look: MaterialLook | None = Field(
        default=None, description="The material's known look; None when the station has not learned it yet."
    )


class CandidateScore(BaseModel):
    """How well one candidate explains the scan."""

    model_config = ConfigDict(extra="forbid")

    design_material: str = Field(description="The candidate.")
    score: float = Field(ge=0.0, le=1.0, description="Fit quality, higher is better (1: a perfect fit).")
    detail: str = Field(
        description="What the score was made of (stage reached, outline cost, IoU, inliers, appearance)."
    )


class Identification(BaseModel):
    """The answer for one scan: the design on the tray, or why none is named."""

    model_config = ConfigDict(extra="forbid")

    outcome: Outcome = Field(description="identified, or why no design was chosen.")
    design_material: str | None = Field(description="The design on the tray; set only when outcome is identified.")
    candidates: list[CandidateScore] = Field(description="Candidates that were scored, best first.")
    reason: str = Field(description="Why this design, or why none, naming the close candidates.")
    pose: list[list[float]] | None = Field(
        description="4×4 part→tray pose of the best fit (of the chosen design when identified), to inspect with."
    )
    rest_pose_index: int | None = Field(
        ge=0,
        description="Rest pose the best fit started from, index into the design's rest poses (a near-symmetric part "
        "found upside down ends on another face).",
    )
    appearance: float | None = Field(
        ge=0.0,
        description="Measured appearance of the part: median over the cameras of the 95th percentile (its most lit faces) "
        "of part-pixel grey ÷ the empty-tray reference's grey at the same pixels; reported whenever a part is "
        "seen, so the station can learn material looks from confirmed scans.",
    )
    appearance_measure: str | None = Field(
        default=None, description="How the appearance was measured (APPEARANCE_MEASURE); None without one."
    )
    timings_s: dict[str, float] = Field(description="Seconds per stage, and total.")
