"""A whole station on disk for tests: config TOML, a quarter-resolution copy of the demo rig, the demo designs.

Quarter resolution (612×512) keeps hundreds of scans within seconds while every part of
the real path still runs: rendering, PNG, fsync, rename, database, relay, broker.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from amflow_edge.inspection.geometry.camera import load_rig, save_calibration

if TYPE_CHECKING:
    from tests.mqtt_helpers import Broker

REPO = Path(__file__).resolve().parent.parent
SCALE = 0.25
DESIGN_CACHE = Path(tempfile.gettempdir()) / f"amflow-test-design-cache-{os.getuid()}"
"""Processed designs shared by the test stations (entries are keyed by mesh hash and written atomically): every
station processes its batch at start, and doing the demo designs again in each test would cost minutes. Tests
of processing itself give their station a cache of its own."""


def scaled_rig(directory: Path, scale: float = SCALE) -> tuple[int, int]:
    directory.mkdir(parents=True, exist_ok=True)
    width = height = 0
    for calib in load_rig(REPO / "config" / "calibration" / "demo"):
        k = np.asarray(calib.camera_matrix, dtype=float)
        k[0, 0] *= scale
        k[1, 1] *= scale
        k[0, 2] = (k[0, 2] + 0.5) * scale - 0.5
        k[1, 2] = (k[1, 2] + 0.5) * scale - 0.5
        width, height = round(calib.image_width * scale), round(calib.image_height * scale)
        small = calib.model_copy(update={"camera_matrix": k.tolist(), "image_width": width, "image_height": height})
        save_calibration(small, directory / f"{calib.name}.yaml")
    return width, height


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return str(value)


def write_station(
    root: Path,
    mqtt_port: int,
    sections: dict[str, dict[str, Any]] | None = None,
    station_id: str = "test-station",
    serials: list[str] | None = None,
) -> Path:
    """Write root/station.toml (data in root/data, state in root/state); `sections` adds or overrides keys."""
    width, height = scaled_rig(root / "calibration")
    base: dict[str, dict[str, Any]] = {
        "station": {"id": station_id, "data_root": str(root / "data"), "state_dir": str(root / "state")},
        "rig": {"driver": "mock", "grab_timeout_s": 30.0},
        "mock": {"seed": 3, "scene_pool": 3},
        "designs": {"library": str(REPO / "config" / "designs" / "designs.toml"), "cache_dir": str(DESIGN_CACHE)},
        "mqtt": {"host": "127.0.0.1", "port": mqtt_port},
        "capture": {},
        "session": {"batch_id": "TEST_BATCH", "batch_title": "test batch"},
        "inspection": {"enabled": False},  # tests of inspection in the daemon turn it on
    }
    for name, values in (sections or {}).items():
        base.setdefault(name, {}).update(values)
    lines = []
    for name, values in base.items():
        lines.append(f"[{name}]")
        lines.extend(f"{key} = {_toml_value(value)}" for key, value in values.items())
        lines.append("")
    for index in range(1, 6):
        lines += [
            "[[cameras]]",
            f'name = "cam{index:02d}"',
            f'serial = "{serials[index - 1] if serials else f"4001230{index}"}"',
            f'calibration = "{root / "calibration" / f"cam{index:02d}.yaml"}"',
            f"width = {width}",
            f"height = {height}",
            "",
        ]
    path = root / "station.toml"
    path.write_text("\n".join(lines))
    return path


def demo_env(tmp_path: Path, broker: Broker, **settings: str) -> dict[str, str]:
    """The demo config in a subprocess, pointed at the test's broker and directories (never the repo's run/)."""
    return {
        "AMFLOW_MQTT__PORT": str(broker.port),
        "AMFLOW_STATION__DATA_ROOT": str(tmp_path / "data"),
        "AMFLOW_STATION__STATE_DIR": str(tmp_path / "state"),
        "AMFLOW_INSPECTION__ENABLED": "false",
        "AMFLOW_HTTP__LISTEN": "127.0.0.1:0",  # never the real port: tests run in parallel
        "PATH": "/usr/bin:/bin",
        **settings,
    }


def batch_station(root: Path, mqtt_port: int) -> Path:
    """A station with inspection on and a batch mesh folder (root/batch_meshes) that session requests name."""
    meshes = root / "batch_meshes"
    meshes.mkdir(exist_ok=True)
    return write_station(
        root,
        mqtt_port,
        {
            "mock": {"scene_pool": 1},
            "inspection": {"enabled": True},
            "designs": {
                "library": str(REPO / "config" / "designs" / "designs.toml"),
                "batch_meshes": str(meshes),
                "cache_dir": str(DESIGN_CACHE),
            },
        },
    )
