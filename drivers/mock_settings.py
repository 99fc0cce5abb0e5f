"""The `[mock]` section: how the mock rig chooses and renders its scenes.

Apart from the driver so that reading a config never loads the renderer.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from amflow_edge.drivers.base import CAMERA_NAMES
from amflow_edge.drivers.simulator.defect_spec import Defect
from amflow_edge.drivers.simulator.looks import DEMO_LOOK_NAME, LookError, load_look, load_material


def _parseable_defect(text: str) -> str:
    Defect.parse(text)
    return text


class MockDriverSettings(BaseModel):
    """How the mock rig chooses and renders its scenes."""

    model_config = ConfigDict(extra="forbid")

    seed: int = Field(
        default=0, description="Seed of the whole run; scene N always shows the same part, pose and noise."
    )
    designs: list[str] = Field(
        default_factory=list,
        description="design_material ids the mock places on the tray, chosen at random per scene; "
        "empty = every design in the library.",
    )
    scene_pool: int = Field(
        default=0,
        ge=0,
        description="0: render a fresh scene per trigger in a background thread, ahead of time. "
        "N > 0: render N scenes once at open() and cycle through them (for benchmarks).",
    )
    prerender: int = Field(
        default=1, ge=1, le=16, description="Scenes rendered ahead of the triggers (background mode)."
    )
    fail_camera: str | None = Field(
        default=None, description="For tests: this camera fails every grab with a GrabError. None: no failures."
    )
    empty_tray: bool = Field(default=False, description="Render the empty tray only (per-camera reference images).")
    materials: bool = Field(
        default=False,
        description="Render each part in its material's reflectance, from the design_material's COLOUR token "
        "(BLACK dark, WHITE bright: drivers.simulator.materials), so one geometry in two materials looks different; "
        "under a look other than demo, as the token's catalogue material. Off: every part renders as grey PA12.",
    )
    defects: list[Annotated[str, AfterValidator(_parseable_defect)]] = Field(
        default_factory=list,
        description="Printing defects the mock may put into a scene's part, as KIND:SIZE "
        "(missing_slab:2, missing_chunk:1.0, extra_blob:3, scale:0.5, warp:2); "
        "one is chosen at random per defective scene.",
    )
    look: str = Field(
        default=DEMO_LOOK_NAME,
        description="The station look: lights, tray and camera noise, by name (config/looks/<name>.toml: demo, "
        "softbox_brushed, dome_white, key_black, ring_anodised) or as the path of a look file.",
    )
    material: str | None = Field(
        default=None,
        description="A material of config/materials.toml (pa12_white, pa12_black, fdm_orange_glossy, …) every part "
        "renders in. None: as `materials` says.",
    )
    defect_rate: float = Field(
        default=0.0,
        ge=0.0,
        le=1.0,
        description="Probability that a scene's part gets one of the defects; which scenes do follows from the seed.",
    )

    @model_validator(mode="after")
    def _defects_for_the_rate(self) -> MockDriverSettings:
        if self.defect_rate > 0 and not self.defects:
            raise ValueError(
                f"defect_rate is {self.defect_rate:g} but no defects are listed; "
                'list them, e.g. defects = ["missing_chunk:1.0"], or set defect_rate = 0'
            )
        return self

    @field_validator("look")
    @classmethod
    def _known_look(cls, value: str) -> str:
        try:
            load_look(value)
        except LookError as exc:
            raise ValueError(str(exc)) from None
        return value

    @field_validator("material")
    @classmethod
    def _known_material(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                load_material(value)
            except LookError as exc:
                raise ValueError(str(exc)) from None
        return value

    @field_validator("fail_camera")
    @classmethod
    def _known_camera(cls, value: str | None) -> str | None:
        if value is not None and value not in CAMERA_NAMES:
            raise ValueError(f"fail_camera must be one of {', '.join(CAMERA_NAMES)} or absent, got {value!r}")
        return value
