"""Turning config problems into lines an integrator can act on: where, what was expected, what was found."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

if TYPE_CHECKING:
    from amflow_edge.config import StationConfig

_MAX_SHOWN = 60


def _location(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def _found(error: dict[str, Any]) -> str:
    if error["type"] == "missing":
        return "nothing"
    value = error.get("input")
    text = repr(value)
    return text if len(text) <= _MAX_SHOWN else text[: _MAX_SHOWN - 1] + "…"


def describe_validation_error(exc: ValidationError) -> list[str]:
    lines = []
    for error in exc.errors(include_url=False):
        where = _location(error["loc"])
        if error["type"] == "extra_forbidden":
            lines.append(f"{where}: unknown setting (found {_found(error)}); check the spelling against config/station.example.toml")
            continue
        message = error["msg"].removeprefix("Value error, ")
        lines.append(f"{where}: {message[0].lower()}{message[1:]} (found {_found(error)})")
    return lines


def file_problems(cfg: StationConfig) -> list[str]:
    """Problems only the files themselves can show: missing or unreadable calibrations, designs, TLS files."""
    from inspection.camera import CalibrationError, load_calibration
    from inspection.designs import DesignError, DesignLibrary

    problems: list[str] = []
    for index, camera in enumerate(cfg.cameras):
        where = f"cameras[{index}].calibration ({camera.name})"
        if not camera.calibration.is_file():
            problems.append(f"{where}: expected a calibration YAML file (found no file at {camera.calibration})")
            continue
        try:
            calib = load_calibration(camera.calibration)
        except CalibrationError as exc:
            problems.append(f"{where}: {exc}")
            continue
        if (calib.image_width, calib.image_height) != (camera.width, camera.height):
            problems.append(
                f"{where}: expected a calibration for {camera.width}×{camera.height} images "
                f"(found {calib.image_width}×{calib.image_height}); recalibrate or fix width/height"
            )
    if not cfg.designs.library.is_file():
        problems.append(f"designs.library: expected a design library TOML (found no file at {cfg.designs.library})")
    else:
        try:
            library = DesignLibrary.load(cfg.designs.library)
        except DesignError as exc:
            problems.append(f"designs.library: {exc}")
        else:
            known = {d.design_material for d in library.designs}
            for wanted in cfg.mock.designs:
                if wanted not in known:
                    problems.append(f"mock.designs: expected ids from {cfg.designs.library.name} (found unknown {wanted!r})")
    from inspection.profiles import ProfileError, load_profile

    try:
        load_profile(cfg.inspection.profile)
    except ProfileError as exc:
        problems.append(f"inspection.profile: {exc}")
    from amflow_edge.qc_reasons import ReasonCatalogueError, load_reasons

    try:
        load_reasons(cfg.qc.reasons)
    except ReasonCatalogueError as exc:
        problems.append(f"qc.reasons: {exc}")
    from amflow_edge.panel.errors import PanelConfigError
    from amflow_edge.panel.factory import make_button_sources

    try:
        make_button_sources(cfg.qc.buttons)
    except PanelConfigError as exc:
        problems.append(f"qc.buttons: {exc}")
    if cfg.mqtt.tls is not None:
        for key, value in cfg.mqtt.tls.model_dump().items():
            if value is not None and not value.is_file():
                problems.append(f"mqtt.tls.{key}: expected a readable file (found no file at {value})")
    if cfg.mqtt.username is not None and cfg.mqtt.password is None:
        problems.append(
            "mqtt.password: expected a password for user "
            f"{cfg.mqtt.username!r} (found none; set the {cfg.mqtt.password_credential!r} credential or mqtt.password)"
        )
    return problems
