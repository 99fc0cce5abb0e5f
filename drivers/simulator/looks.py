"""Station looks and part materials: how a mock station is lit, what its tray is, what its camera adds.

Plants light, tray and expose their stations differently, and an inspection tuned on one look must be
tried on others before it meets them on a line; so a look is configuration (config/looks/<name>.toml),
not code. Part materials are a separate catalogue (config/materials.toml) because any part can be printed
in any of them. The cameras are Mono8, so a colour is its grey reflectance under white light.

Light strengths are irradiances at the tray centre, in units where the demo station's lights add up to 1,
so exposure_dn means the same in every look. Only pydantic and tomllib here: reading a config must not
load the renderer.
"""

from __future__ import annotations

import math
import os
import tomllib
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from amflow_edge.common.shipped import LOOKS, MATERIALS

DEMO_LOOK_NAME = "demo"

Vec3 = tuple[float, float, float]


class LookError(ValueError):
    """A look or material that cannot be used; the message names the file, the field and the fix."""


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RingLight(_Spec):
    """A ring light around every camera's lens, all firing together: shadows a camera hardly sees."""

    kind: Literal["ring"] = Field(description="A ring light around every camera's lens.")
    radius_mm: float = Field(default=45.0, gt=0.0, le=300.0, description="Radius of each ring (mm).")
    share: float = Field(
        default=0.7,
        ge=0.0,
        le=4.0,
        description="Irradiance all rings together give the tray centre (the demo station's total light is 1).",
    )


class DomeLight(_Spec):
    """Uniform light from the whole sky: what fills shadows and lights faces no lamp sees."""

    kind: Literal["dome"] = Field(description="A uniform sky (dome or diffuse room light).")
    share: float = Field(default=0.3, ge=0.0, le=4.0, description="Irradiance the dome gives the open tray.")


class Softbox(_Spec):
    """A large rectangular area light: soft shadows with wide penumbrae."""

    kind: Literal["softbox"] = Field(description="A large rectangular area light.")
    centre_mm: Vec3 = Field(description="Centre of the light's face in the tray frame (mm; z up, tray at z = 0).")
    size_mm: tuple[
        Annotated[float, Field(gt=0.0, le=3000.0)],
        Annotated[float, Field(gt=0.0, le=3000.0)],
    ] = Field(description="Width (horizontal edge) and height of the light's face (mm).")
    aim_mm: Vec3 = Field(default=(0.0, 0.0, 0.0), description="Point the light faces (mm, tray frame).")
    intensity: float = Field(
        ge=0.0, le=4.0, description="Irradiance it gives the tray centre, unshadowed (the demo station's total is 1)."
    )

    @model_validator(mode="after")
    def _faces_the_tray(self) -> Softbox:
        if self.centre_mm[2] <= 0.0:
            raise ValueError(f"centre_mm {list(self.centre_mm)} is not above the tray; give it a z > 0")
        normal = [a - c for a, c in zip(self.aim_mm, self.centre_mm, strict=True)]
        length = math.sqrt(sum(v * v for v in normal))
        if length < 1.0:
            raise ValueError("aim_mm is the light's own centre; aim it at a point on or near the tray")
        to_tray = [-c for c in self.centre_mm]
        facing = (
            sum(n * t for n, t in zip(normal, to_tray, strict=True)) / length / math.dist(self.centre_mm, (0, 0, 0))
        )
        if facing < 0.05:
            raise ValueError(
                f"the light at {list(self.centre_mm)} aimed at {list(self.aim_mm)} turns its back on the tray centre; "
                "aim it at a point on the tray"
            )
        return self


class KeyLight(_Spec):
    """A small hard light (a bare LED or spot): crisp shadows, strong highlights."""

    kind: Literal["key"] = Field(description="A small hard point light.")
    position_mm: Vec3 = Field(description="Where the light is, in the tray frame (mm; z up, tray at z = 0).")
    intensity: float = Field(
        ge=0.0, le=4.0, description="Irradiance it gives the tray centre, unshadowed (the demo station's total is 1)."
    )

    @model_validator(mode="after")
    def _above_the_tray(self) -> KeyLight:
        if self.position_mm[2] <= 0.0:
            raise ValueError(f"position_mm {list(self.position_mm)} is not above the tray; give it a z > 0")
        return self


LightSpec = Annotated[RingLight | DomeLight | Softbox | KeyLight, Field(discriminator="kind")]

TrayKind = Literal["machined_aluminium", "brushed_aluminium", "anodised_aluminium", "matte_black", "white"]


class TrayWear(_Spec):
    """Scratches from years of parts slid on and off: line texture background subtraction must ignore."""

    scratches: int = Field(default=30, ge=0, le=1000, description="How many scratches the tray has.")
    strength: float = Field(
        default=0.08,
        ge=-1.0,
        le=3.0,
        description="Relative albedo change along a scratch: > 0 brighter (bare metal), < 0 darker (grime).",
    )


class TraySpec(_Spec):
    """The tray plate under the parts."""

    kind: TrayKind = Field(
        default="machined_aluminium",
        description="machined_aluminium (face-milled arcs, speckle), brushed_aluminium (fine streaks), "
        "anodised_aluminium (dark, fine speckle, wear marks), matte_black, white.",
    )
    albedo: float = Field(default=0.24, gt=0.0, le=1.0, description="Mean diffuse reflectance of the plate.")
    contrast: float = Field(
        default=1.0, ge=0.0, le=5.0, description="Multiplier of the texture's contrast (0: a flat plate)."
    )
    wear: TrayWear = Field(default_factory=TrayWear, description="Scratches and wear marks.")


def _demo_lights() -> list[LightSpec]:
    return [RingLight(kind="ring"), DomeLight(kind="dome")]


class StationLook(_Spec):
    """Everything that makes one station's pictures look like that station's. The defaults are the demo station."""

    lights: list[LightSpec] = Field(
        default_factory=_demo_lights,
        min_length=1,
        max_length=16,
        description="The lights, all firing at the trigger; each [[lights]] table has a kind: ring, dome, softbox, key.",
    )
    tray: TraySpec = Field(default_factory=TraySpec, description="The tray plate.")
    floor_albedo: float = Field(default=0.07, gt=0.0, le=1.0, description="Reflectance of the floor around the tray.")
    exposure_dn: float = Field(
        default=320.0, gt=0.0, le=5000.0, description="DN a white (albedo 1) surface lit with irradiance 1 gives."
    )
    vignette_corner: float = Field(
        default=0.8, gt=0.0, le=1.0, description="Relative brightness in the image corners (1: no vignetting)."
    )
    blur_sigma_px: float = Field(
        default=0.7, ge=0.1, le=10.0, description="Defocus and lens blur, Gaussian sigma (pixels)."
    )
    electrons_per_dn: float = Field(
        default=41.0, gt=0.0, le=1000.0, description="Sensor gain: fewer electrons per DN means more shot noise."
    )
    read_noise_e: float = Field(default=2.4, ge=0.0, le=200.0, description="Read noise (electrons, rms).")
    tray_bounce: float = Field(
        default=0.0,
        ge=0.0,
        le=1.0,
        description="Share of the light the tray reflects back up onto the part's downward faces "
        "(× tray albedo × tray irradiance × (1 − n_z)/2); 0: none, as in the demo.",
    )

    @model_validator(mode="after")
    def _some_light(self) -> StationLook:
        total = sum(
            light.share if isinstance(light, RingLight | DomeLight) else light.intensity for light in self.lights
        )
        if total <= 0.0:
            raise ValueError("every light is off (all shares and intensities are 0); give one a share or intensity")
        return self


class PartMaterial(_Spec):
    """How a part's surface renders: diffuse grey reflectance, gloss and the grain of its surface."""

    description: str = Field(min_length=1, max_length=300, description="One line: what the material is.")
    albedo: float = Field(gt=0.0, le=1.0, description="Diffuse reflectance under white light (grey level).")
    specular: float = Field(default=0.05, ge=0.0, le=2.0, description="Strength of the Blinn-Phong highlight.")
    shininess: float = Field(
        default=8.0, ge=1.0, le=1024.0, description="Blinn-Phong exponent: higher is a smaller, sharper highlight."
    )
    grain: float = Field(
        default=1.0, ge=0.0, le=5.0, description="Surface grain relative to sintered PA12 (0: perfectly smooth)."
    )


def look_path(name_or_path: str | os.PathLike[str]) -> Path:
    text = str(name_or_path)
    if text.endswith(".toml") or os.sep in text or "/" in text:
        return Path(text)
    return LOOKS / f"{text}.toml"


def known_looks() -> list[str]:
    return sorted(p.stem for p in LOOKS.glob("*.toml"))


def load_look(name_or_path: str | os.PathLike[str]) -> StationLook:
    """A look by name (config/looks/<name>.toml) or by path; every problem is listed."""
    path = look_path(name_or_path)
    if not path.is_file():
        raise LookError(
            f"{path}: no such station look; use one of {', '.join(known_looks()) or '(none)'} "
            "or give the path of a .toml file"
        )
    data = _read_toml(path)
    try:
        return StationLook.model_validate(data)
    except ValidationError as exc:
        raise LookError(_problems(path, exc, "lights", "[[lights]]")) from None


def load_materials(path: Path = MATERIALS) -> dict[str, PartMaterial]:
    """The material catalogue: one [name] table per material."""
    data = _read_toml(path)
    materials = {}
    problems = []
    for name, table in data.items():
        if not isinstance(table, dict):
            problems.append(f"{name}: is a value, not a table; write it as [{name}] with albedo = … beneath")
            continue
        try:
            materials[name] = PartMaterial.model_validate(table)
        except ValidationError as exc:
            problems.extend(f"[{name}].{line}" for line in _error_lines(exc))
    if problems:
        raise LookError(f"{path}: {len(problems)} problem(s):\n" + "\n".join(f"  - {p}" for p in problems))
    return materials


def known_materials() -> list[str]:
    return sorted(load_materials())


def load_material(name: str) -> PartMaterial:
    """A material of the catalogue (config/materials.toml) by name."""
    materials = load_materials()
    material = materials.get(name)
    if material is None:
        raise LookError(
            f"{MATERIALS}: no material {name!r}; use one of {', '.join(sorted(materials))} "
            "or add a [" + name + "] table to the catalogue"
        )
    return material


def _read_toml(path: Path) -> dict[str, object]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise LookError(f"{path}: cannot be read ({exc.strerror}); check the path and its permissions") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise LookError(f"{path}: not valid TOML ({exc}); fix the syntax") from None


def _problems(path: Path, exc: ValidationError, array: str, table: str) -> str:
    lines = _error_lines(exc, array, table)
    return f"{path}: {len(lines)} problem(s):\n" + "\n".join(f"  - {p}" for p in lines)


def _error_lines(exc: ValidationError, array: str = "", table: str = "") -> list[str]:
    """One line per error: where (an array of tables counted from 1, as a person reads the file) and what is wrong."""
    lines = []
    for error in exc.errors(include_url=False):
        loc = list(error["loc"])
        if array and len(loc) > 1 and loc[0] == array and isinstance(loc[1], int):
            head = f"{table} #{loc[1] + 1}"
            rest = [str(p) for p in loc[2:] if not (isinstance(p, str) and p in _KINDS)]
            where = head + ("." + ".".join(rest) if rest else "")
        else:
            where = ".".join(str(p) for p in loc)
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "not a known field; remove it or check its spelling"
        elif error["type"] == "union_tag_invalid":
            message = f"unknown kind {error['input'].get('kind')!r}; use one of {', '.join(_KINDS)}"
        elif error["type"] == "union_tag_not_found":
            message = f"has no kind; add kind = one of {', '.join(_KINDS)}"
        lines.append(f"{where or '(file)'}: {message}")
    return lines


_KINDS = ("ring", "dome", "softbox", "key")
