"""Checking the files a station config names: calibrations, designs, profiles, reasons, buttons, TLS.

Kept apart from the config's model so that the model (which every request and command imports)
stays free of what reading those files needs.
"""

from __future__ import annotations

import ssl

from amflow_edge.common.extras import missing
from amflow_edge.config.problems import Area, FileProblem
from amflow_edge.config.station import StationConfig
from amflow_edge.config.tls import tls_problems
from amflow_edge.drivers.replay_settings import source_problem
from amflow_edge.inspection.designs import DesignError, DesignLibrary
from amflow_edge.inspection.geometry.camera import CalibrationError, load_calibration
from amflow_edge.inspection.profiles import ProfileError, load_profile
from amflow_edge.panel.errors import PanelConfigError
from amflow_edge.panel.factory import make_button_sources
from amflow_edge.qc.reasons import ReasonCatalogueError, load_reasons


def file_problems(cfg: StationConfig) -> list[FileProblem]:
    """Problems only the files themselves can show: missing or unreadable calibrations, designs, TLS files (these
    loaded as the MQTT client loads them, and judged as the service user, so that `run` cannot fail on what
    `check-config` passed)."""
    problems: list[FileProblem] = []

    def add(area: Area, text: str) -> None:
        problems.append(FileProblem(area=area, text=text))

    for index, camera in enumerate(cfg.cameras):
        where = f"cameras[{index}].calibration ({camera.name})"
        if not camera.calibration.is_file():
            add("calibration", f"{where}: expected a calibration YAML file (found no file at {camera.calibration})")
            continue
        try:
            calib = load_calibration(camera.calibration)
        except CalibrationError as exc:
            add("calibration", f"{where}: {exc}")
            continue
        if (calib.image_width, calib.image_height) != (camera.width, camera.height):
            add(
                "calibration",
                f"{where}: expected a calibration for {camera.width}×{camera.height} images "
                f"(found {calib.image_width}×{calib.image_height}); recalibrate or fix width/height",
            )
    if not cfg.designs.library.is_file():
        add("designs", f"designs.library: expected a design library TOML (found no file at {cfg.designs.library})")
    else:
        try:
            library = DesignLibrary.load(cfg.designs.library)
        except DesignError as exc:
            add("designs", f"designs.library: {exc}")
        else:
            known = {d.design_material for d in library.designs}
            for wanted in cfg.mock.designs:
                if wanted not in known:
                    add(
                        "designs",
                        f"mock.designs: expected ids from {cfg.designs.library.name} (found unknown {wanted!r})",
                    )
    try:
        load_profile(cfg.inspection.profile)
    except ProfileError as exc:
        add("config", f"inspection.profile: {exc}")
    try:
        load_reasons(cfg.qc.reasons)
    except ReasonCatalogueError as exc:
        add("config", f"qc.reasons: {exc}")
    try:
        make_button_sources(cfg.qc.buttons)
    except PanelConfigError as exc:
        add("config", f"qc.buttons: {exc}")
    if cfg.rig.driver == "pylon" and (problem := missing("pypylon", "pylon")) is not None:
        add("config", f"rig.driver: 'pylon' needs pypylon: {problem}")
    if (
        cfg.rig.driver == "replay"
        and cfg.replay is not None
        and (problem := source_problem(cfg.replay.source, cfg.station.data_root, cfg.backup.path)) is not None
    ):
        add("config", problem)
    if cfg.mqtt.tls is not None:
        for problem in tls_problems(cfg.mqtt.tls):
            add("config", problem)
    for index, hook in enumerate(cfg.webhooks):
        if hook.ca_file is not None:
            try:
                ssl.create_default_context(cafile=str(hook.ca_file))
            except (OSError, ssl.SSLError) as exc:
                add(
                    "config",
                    f"webhooks[{index}].ca_file (hook_id {hook.hook_id}): expected a readable PEM CA certificate "
                    f"(found {hook.ca_file}: {getattr(exc, 'strerror', None) or exc})",
                )
    if cfg.mqtt.username is not None and cfg.mqtt.password is None:
        add(
            "config",
            "mqtt.password: expected a password for user "
            f"{cfg.mqtt.username!r} (found none; set the {cfg.mqtt.password_credential!r} credential or mqtt.password)",
        )
    return problems
