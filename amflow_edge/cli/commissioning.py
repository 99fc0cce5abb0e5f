"""What the commissioning commands (`calibrate capture`, `cameras …`) share: the station config read without its
calibration files, and the rig opened so that the command itself fires the cameras.

Commissioning comes before calibration: on a new station `cameras[].calibration` names files `calibrate solve`
has yet to write, and load_config's check that they exist would refuse the very commands that make them.
Every other file is still checked. The mock is the exception: it renders its pictures through the
calibrations, so for it a missing one stays an error.

A station triggered on Line1 by its part-present sensor has nothing to pulse Line1 while it is commissioned
(no part passes), so these commands fire the cameras by software trigger instead; every other camera setting
is the station's.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from amflow_edge.config.files import file_problems
from amflow_edge.config.loading import ConfigError, parse_config

if TYPE_CHECKING:
    from amflow_edge.config.station import StationConfig
    from amflow_edge.drivers.base import CameraDriver
    from amflow_edge.drivers.pylon_settings import PylonSettings


def load_uncalibrated(path: Path) -> StationConfig | None:
    """The config as load_config checks it, but the calibration files (unless the mock renders with them); None after
    printing every problem."""
    try:
        cfg = parse_config(path)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return None
    problems = []
    for problem in file_problems(cfg):
        if problem.area != "calibration":
            problems.append(problem.text)
        elif cfg.rig.driver == "mock":
            problems.append(
                f"{problem.text} (the mock driver renders its pictures through the calibrations, so it needs them; "
                "point the mock at a rig such as config/calibration/demo)"
            )
    if problems:
        print(ConfigError(Path(path), problems), file=sys.stderr)
        return None
    return cfg


def software_triggered(settings: PylonSettings, command: str) -> PylonSettings:
    """`settings` with Line1 triggering replaced by software triggering (said on stderr); others as they are."""
    if settings.trigger != "line1":
        return settings
    print(f"pylon.trigger = 'line1': {command} fires the cameras by software trigger instead", file=sys.stderr)
    return settings.model_copy(update={"trigger": "software"})


def commissioning_driver(cfg: StationConfig, command: str) -> CameraDriver:
    """The station's rig (not yet opened) for a commissioning command: pylon triggered by software, or the mock
    showing an empty tray (and the calibration board when asked), never a part. A replay has only the scans it
    recorded, no board: DriverError."""
    if cfg.rig.driver == "replay":
        from amflow_edge.drivers.base import DriverError

        raise DriverError(
            f"{command} needs the station's cameras, and rig.driver = 'replay' plays recorded scans only; "
            "run it with the station's own rig.driver ('pylon', or 'mock')"
        )
    if cfg.rig.driver == "mock":
        from amflow_edge.drivers.mock import MockDriver

        settings = cfg.mock.model_copy(update={"empty_tray": True, "designs": [], "defect_rate": 0.0, "defects": []})
        return MockDriver(cfg.cameras, settings, _NoDesigns())
    from amflow_edge.drivers.pylon import PylonDriver

    return PylonDriver(cfg.cameras, software_triggered(cfg.pylon, command))


class _NoDesigns:
    """The mock's design source while commissioning: nothing is placed on the tray."""

    @property
    def designs(self) -> list[Any]:
        return []

    def get(self, design_material: str) -> NoReturn:
        raise KeyError(f"{design_material}: commissioning places no parts")
