"""What reaches the station's settings from outside the file: AMFLOW_… environment variables are settings or errors."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import UnionType
from typing import Union, get_args, get_origin

import pytest
from pydantic import BaseModel

from amflow_edge.cli.main import main
from amflow_edge.config.environment import NON_SETTING_VARIABLES, SETTINGS, setting_variable
from amflow_edge.config.loading import ConfigError, load_config
from amflow_edge.config.station import StationConfig
from amflow_edge.ops.doctor import run_checks_for_file
from tests.mqtt_helpers import free_port
from tests.station_files import write_station

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def demo(tmp_path: Path) -> Path:
    """A copy of the demo config with its calibration and designs."""
    shutil.copytree(REPO / "config", tmp_path / "config")
    return tmp_path / "config" / "demo.toml"


def problems_of(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    return caught.value.problems


def test_a_misspelt_section_in_an_environment_variable_is_an_error_naming_the_near_match(
    demo: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("AMFLOW_MQT__PORT", "1")
    (problem,) = problems_of(demo)
    assert problem.startswith("AMFLOW_MQT__PORT (environment): expected the name of a setting"), problem
    assert "did you mean AMFLOW_MQTT__PORT?" in problem and "rename the variable or unset it" in problem
    assert main(["check-config", str(demo)]) == 2
    assert "AMFLOW_MQT__PORT" in capsys.readouterr().err


def test_run_refuses_to_start_on_a_misspelt_environment_variable(tmp_path: Path) -> None:
    station = write_station(tmp_path, free_port())
    proc = subprocess.run(
        [sys.executable, "-m", "amflow_edge.cli", "run", "--config", str(station)],
        capture_output=True,
        text=True,
        timeout=60,  # without the check the daemon starts and runs until killed here
        cwd=REPO,
        env={"PATH": "/usr/bin:/bin", "AMFLOW_MQT__PORT": "1"},
    )
    assert proc.returncode == 2
    assert "AMFLOW_MQT__PORT (environment)" in proc.stderr and "did you mean AMFLOW_MQTT__PORT?" in proc.stderr


def test_a_misspelt_key_is_reported_once_as_the_variable_it_came_from(
    demo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AMFLOW_MQTT__PROT", "1")
    (problem,) = problems_of(demo)  # not also "mqtt.prot: unknown setting … config/station.example.toml"
    assert problem.startswith("AMFLOW_MQTT__PROT (environment)") and "did you mean AMFLOW_MQTT__PORT?" in problem


def test_a_single_underscore_and_a_list_index_are_named(demo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AMFLOW_MQTT_PORT", "1")
    monkeypatch.setenv("AMFLOW_CAMERAS__0__SERIAL", "1")
    problems = problems_of(demo)
    text = "\n".join(problems)
    assert "AMFLOW_MQTT_PORT (environment)" in text and "did you mean AMFLOW_MQTT__PORT?" in text
    assert "AMFLOW_CAMERAS__0__SERIAL (environment)" in text and "AMFLOW_CAMERAS='[…]'" in text


def test_a_section_that_is_not_json_is_a_config_error_not_a_crash(demo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AMFLOW_MQTT", "port=1999")
    (problem,) = problems_of(demo)
    assert problem.startswith("AMFLOW_MQTT (environment): expected the whole [mqtt] section as JSON"), problem


def test_valid_variables_in_any_case_depth_and_json_and_other_programs_variables_pass(
    demo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("amflow_mqtt__hook__id", "5")
    monkeypatch.setenv("AMFLOW_OUTBOX", '{"retention_s": 60}')
    monkeypatch.setenv("AMFLOW_QC__BUTTONS", '[{"kind": "keyboard"}]')
    monkeypatch.setenv("AMFLOW_INSTALL_SKIP_VENV", "1")  # scripts/install's, not a setting
    cfg = load_config(demo)
    assert (cfg.mqtt.hook.id, cfg.outbox.retention_s, cfg.qc.buttons[0].kind) == (5, 60, "keyboard")


def test_the_doctor_fails_the_config_row_on_a_misspelt_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AMFLOW_DISK__MIN_FRE_BYTES", "1")
    [row] = run_checks_for_file(write_station(tmp_path, free_port()))
    assert row.name == "config" and not row.ok and "did you mean AMFLOW_DISK__MIN_FREE_BYTES?" in row.detail


def _sections(model: type[BaseModel], path: tuple[str, ...] = ()) -> set[tuple[str, ...]]:
    """Every key an AMFLOW_ variable may name, walking the models apart from the code under test: sections and
    optional sections are entered, lists (the cameras, the buttons) are set whole."""
    keys: set[tuple[str, ...]] = set()
    for name, field in model.model_fields.items():
        keys.add((*path, name))
        optional = get_args(field.annotation) if get_origin(field.annotation) in (Union, UnionType) else ()
        for inner in (field.annotation, *optional):
            if isinstance(inner, type) and issubclass(inner, BaseModel):
                keys |= _sections(inner, (*path, name))
    return keys


def test_the_variable_names_are_read_off_the_model_at_every_depth() -> None:
    assert set(SETTINGS) == _sections(StationConfig)
    assert SETTINGS[("mqtt", "tls", "key_file")] == "value" and SETTINGS[("mqtt", "tls")] == "section"
    assert SETTINGS[("cameras",)] == "list" and SETTINGS[("qc", "buttons")] == "list"
    assert setting_variable(("disk", "retention_days")) == "AMFLOW_DISK__RETENTION_DAYS"


def test_every_amflow_variable_the_project_uses_is_a_setting_or_listed_as_another_programs() -> None:
    """The scripts are the project's other programs; a variable one of them reads must not stop the station."""
    used = {
        name
        for path in (REPO / "scripts").iterdir()
        if path.is_file()
        for name in re.findall(r"\bAMFLOW_[A-Z0-9_]*[A-Z0-9]\b", path.read_text(errors="replace"))
    }
    assert "AMFLOW_INSTALL_SKIP_VENV" in used
    settings = {setting_variable(path) for path in SETTINGS}
    assert sorted(used - settings - NON_SETTING_VARIABLES) == []
    assert not NON_SETTING_VARIABLES & settings
