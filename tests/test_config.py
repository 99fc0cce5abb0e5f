"""Bad configs are refused with every problem listed: where, what was expected, what was found."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import get_args

import pytest
from pydantic import BaseModel

from amflow_edge.cli.main import main
from amflow_edge.common.config_file import is_config_path
from amflow_edge.config.loading import ConfigError, load_config, resolve_paths
from amflow_edge.config.qc import EvdevButtons, QcSettings
from amflow_edge.config.station import StationConfig

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "config" / "demo.toml"


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    """A copy of the demo config with its calibration and designs, so tests can break it."""
    shutil.copytree(REPO / "config", tmp_path / "config")
    return tmp_path / "config"


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, old
    path.write_text(text.replace(old, new, 1))


def test_demo_config_is_valid_and_paths_resolve_next_to_the_file(config_dir: Path) -> None:
    cfg = load_config(config_dir / "demo.toml")
    assert cfg.station.id == "demo-station"
    assert [c.name for c in cfg.cameras] == ["cam01", "cam02", "cam03", "cam04", "cam05"]
    assert cfg.cameras[0].calibration == config_dir / "calibration" / "demo" / "cam01.yaml"
    assert cfg.station.data_root == (config_dir / ".." / "run" / "data").resolve()
    assert cfg.topic("event", "scan.capture") == "amflow/demo-station/event/scan.capture"


def test_every_problem_is_listed_at_once(config_dir: Path) -> None:
    path = config_dir / "demo.toml"
    edit(path, 'id = "demo-station"', 'id = "demo station/1"')
    edit(path, 'timezone = "Europe/Amsterdam"', 'timezone = "Mars/Olympus"')
    edit(path, "port = 1883", 'port = "eighteen"')
    edit(path, "[capture]", "[capture]\nintervall = 3")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    problems = caught.value.problems
    assert len(problems) == 4, problems
    text = "\n".join(problems)
    assert "station.id: string should match pattern '^[A-Za-z0-9_.-]+$' (found 'demo station/1')" in text
    assert "station.timezone: unknown time zone 'Mars/Olympus'; use an IANA name" in text
    assert "mqtt.port: input should be a valid integer" in text and "(found 'eighteen')" in text
    assert "capture.intervall: unknown setting" in text


def test_cameras_must_be_exactly_cam01_to_cam05_with_distinct_serials(config_dir: Path) -> None:
    path = config_dir / "demo.toml"
    edit(path, 'name = "cam05"', 'name = "cam04"')
    edit(path, 'serial = "40012302"', 'serial = "40012301"')
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    (problem,) = caught.value.problems
    assert "missing cam05" in problem and "duplicated cam04" in problem and "serial 40012301" in problem


def test_missing_and_broken_files_are_named(config_dir: Path) -> None:
    (config_dir / "calibration" / "demo" / "cam03.yaml").unlink()
    (config_dir / "calibration" / "demo" / "cam04.yaml").write_text("%YAML:1.0\n---\nimage_width: 10\n")
    edit(config_dir / "demo.toml", 'library = "designs/designs.toml"', 'library = "designs/nowhere.toml"')
    with pytest.raises(ConfigError) as caught:
        load_config(config_dir / "demo.toml")
    text = "\n".join(caught.value.problems)
    assert "cameras[2].calibration (cam03): expected a calibration YAML file" in text
    assert "cameras[3].calibration (cam04)" in text
    assert "designs.library: expected a design library TOML" in text


def test_environment_overrides_the_file(config_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AMFLOW_MQTT__PORT", "1999")
    monkeypatch.setenv("AMFLOW_STATION__ID", "other")
    cfg = load_config(config_dir / "demo.toml")
    assert cfg.mqtt.port == 1999 and cfg.station.id == "other"
    assert cfg.mqtt.host == "127.0.0.1"  # the rest of the section still comes from the file


def test_password_comes_from_the_credentials_directory(
    config_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "mqtt_password").write_text("s3cret\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    edit(config_dir / "demo.toml", 'topic_prefix = "amflow"', 'topic_prefix = "amflow"\nusername = "station"')
    cfg = load_config(config_dir / "demo.toml")
    assert cfg.mqtt.password is not None and cfg.mqtt.password.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(cfg)


def test_username_without_password_is_a_problem(config_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    edit(config_dir / "demo.toml", 'topic_prefix = "amflow"', 'topic_prefix = "amflow"\nusername = "station"')
    with pytest.raises(ConfigError, match="mqtt.password: expected a password for user 'station'"):
        load_config(config_dir / "demo.toml")


def test_not_toml_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[station\nid = 1")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "absent.toml")


def test_check_config_command_prints_problems_and_exits_non_zero(
    config_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["check-config", str(config_dir / "demo.toml")]) == 0
    assert "OK" in capsys.readouterr().out
    edit(config_dir / "demo.toml", "grab_timeout_s = 20.0", "grab_timeout_s = -1")
    assert main(["check-config", str(config_dir / "demo.toml")]) == 2
    assert "rig.grab_timeout_s: input should be greater than 0 (found -1)" in capsys.readouterr().err


def test_daemon_refuses_to_start_on_a_bad_config(config_dir: Path) -> None:
    edit(config_dir / "demo.toml", 'driver = "mock"', 'driver = "webcam"')
    proc = subprocess.run(
        [sys.executable, "-m", "amflow_edge.cli", "run", "--config", str(config_dir / "demo.toml")],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert proc.returncode == 2
    assert "rig.driver: input should be 'mock', 'pylon' or 'replay' (found 'webcam')" in proc.stderr


def test_the_example_station_config_is_valid_apart_from_its_station_files(monkeypatch: pytest.MonkeyPatch) -> None:
    from amflow_edge.config.loading import read_toml
    from amflow_edge.config.station import StationConfig

    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(REPO / "tests" / "data"))
    cfg = StationConfig(**read_toml(REPO / "config" / "station.example.toml"))
    assert cfg.rig.driver == "pylon" and cfg.mqtt.tls is not None and cfg.outbox.max_backlog_events == 100000
    with pytest.raises(ConfigError) as caught:
        load_config(REPO / "config" / "station.example.toml")
    assert any("cameras[0].calibration (cam01)" in p for p in caught.value.problems)


def test_file_settings_resolve_next_to_the_config_and_device_paths_stay_as_written(tmp_path: Path) -> None:
    qc = QcSettings(
        reasons=Path("reasons.toml"),
        buttons=[EvdevButtons(device=Path("by-id/pedal"), approve_keys=["KEY_B"], reject_keys=["KEY_C"])],
    )
    resolved = resolve_paths(qc, tmp_path)
    assert resolved.reasons == (tmp_path / "reasons.toml").resolve()
    assert isinstance(resolved.buttons[0], EvdevButtons) and resolved.buttons[0].device == Path("by-id/pedal")


def _plain_path_fields(model: type[BaseModel], seen: set[type[BaseModel]]) -> set[str]:
    """Path settings not marked ConfigPath, at any depth of the config model."""
    found: set[str] = set()
    seen.add(model)
    for name, field in model.model_fields.items():
        annotation = str(field.annotation)
        if "Path" in annotation and not is_config_path(field):
            found.add(f"{model.__name__}.{name}")
        for inner in _models_in(field.annotation):
            if inner not in seen:
                found |= _plain_path_fields(inner, seen)
    return found


def _models_in(annotation: object) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [model for argument in get_args(annotation) for model in _models_in(argument)]


def test_every_path_setting_says_whether_it_lies_next_to_the_config() -> None:
    """A new path setting is a file next to the config (ConfigPath) unless it is a device node, listed here."""
    assert _plain_path_fields(StationConfig, set()) == {"EvdevButtons.device", "GpiodButtons.chip", "GpiodLamps.chip"}


def test_a_credential_that_cannot_be_read_is_named_not_taken_for_a_missing_password(
    config_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "mqtt_password").symlink_to(creds / "mqtt_password")  # unreadable even for root: a link loop
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    with pytest.raises(ConfigError, match="cannot read the 'mqtt_password' credential"):
        load_config(config_dir / "demo.toml")
