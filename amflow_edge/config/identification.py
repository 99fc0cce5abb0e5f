"""Config of identification: what the station knows of its materials' looks before it has learned them.

A material's look is the part's reflectance against the tray (part grey ÷ tray grey where the
part lies), the one cue that tells the same geometry in two materials apart. The station learns
it from scans the plant has confirmed; an integrator who has measured it at commissioning, or a
plant that knows black PA12 from white, can give it here so the first batch is told apart too.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

MaterialKey = Annotated[str, StringConstraints(pattern=r"^[A-Z0-9]+_[A-Z0-9]+_[A-Z0-9]+$")]
"""<PROCESS>_<MATERIAL>_<COLOUR>: the part of a design_material after its geometry hash."""


class MaterialLookSetting(BaseModel):
    """A material's reflectance against the tray, as measured at commissioning."""

    model_config = ConfigDict(extra="forbid")

    mean: float = Field(
        gt=0.0,
        le=20.0,
        description="Typical part grey ÷ tray grey of parts in this material, as the station measures it (lit95: the "
        "95th percentile over the part's pixels, median over the cameras; `amflow-edge identify` prints it as "
        "appearance). Looks measured with the 80th percentile before 2026-12 read lower and must be measured again.",
    )
    spread: float = Field(
        gt=0.0, le=10.0, description="How far one part's measure strays from the mean (one standard deviation)."
    )


class IdentificationSettings(BaseModel):
    """How the station recognises which of the batch's designs is on the tray."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(
        default=True,
        description="Identify scans that arrive without a design_material among the session's designs. Off: such "
        "scans are left for the operator (assign request).",
    )
    looks: dict[MaterialKey, MaterialLookSetting] = Field(
        default_factory=dict,
        description='Known looks per material, keyed "<PROCESS>_<MATERIAL>_<COLOUR>" (e.g. "SLS_PA12_BLACK"); a look '
        "the station learns from confirmed scans refines these.",
    )
    learn_after: int = Field(
        default=3,
        ge=1,
        le=1000,
        description="Confirmed scans of a material before its learned look replaces the configured one.",
    )
