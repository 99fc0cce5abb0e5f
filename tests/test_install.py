"""scripts/install staged into a DESTDIR: the files land where systemd looks, a station config is never overwritten.

The venv step is left out (AMFLOW_INSTALL_SKIP_VENV=1): it is `python3 -m venv` and
`pip install <checkout>`, which downloads numpy, OpenCV and open3d and takes minutes; pip
with --no-deps would still need setuptools from the network for the isolated build.
Everything else runs for real, systemd-sysusers and systemd-tmpfiles included (with --root).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "install"


def install(destdir: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "DESTDIR": str(destdir), "AMFLOW_INSTALL_SKIP_VENV": "1", **env}
    return subprocess.run(
        ["bash", str(SCRIPT)], env=environment, capture_output=True, text=True, timeout=120, check=False
    )


def group_id(destdir: Path, name: str) -> int:
    line = next(line for line in (destdir / "etc/group").read_text().splitlines() if line.startswith(f"{name}:"))
    return int(line.split(":")[2])


@pytest.fixture
def needs_root_tools() -> None:
    if shutil.which("systemd-sysusers") is None:
        pytest.skip("systemd-sysusers is not installed here; the installer cannot create the user below DESTDIR")
    if os.geteuid() != 0:
        pytest.skip("systemd-tmpfiles --root needs root to hand the directories to amflow-edge")


def test_files_land_where_systemd_reads_them(tmp_path: Path, needs_root_tools: None) -> None:
    dest = tmp_path / "root"
    result = install(dest)
    assert result.returncode == 0, result.stderr + result.stdout

    for source, target in [
        ("systemd/amflow-edge.service", "etc/systemd/system/amflow-edge.service"),
        ("systemd/amflow-edge.sysusers.conf", "etc/sysusers.d/amflow-edge.conf"),
        ("systemd/amflow-edge.tmpfiles.conf", "etc/tmpfiles.d/amflow-edge.conf"),
        ("config/station.example.toml", "etc/amflow-edge/station.toml"),
        ("README.md", "opt/amflow-edge/README.md"),
    ]:
        assert (dest / target).read_bytes() == (REPO / source).read_bytes(), target
    assert (dest / "etc/systemd/system/amflow-edge.service").stat().st_mode & 0o777 == 0o644

    gid = group_id(dest, "amflow-edge")
    station = (dest / "etc/amflow-edge/station.toml").stat()
    assert (station.st_uid, station.st_gid, station.st_mode & 0o777) == (0, gid, 0o640)
    password = (dest / "etc/amflow-edge/mqtt_password").stat()
    assert (password.st_uid, password.st_mode & 0o777, password.st_size) == (0, 0o600, 0)
    pin = (dest / "etc/amflow-edge/http_pin").stat()
    assert (pin.st_uid, pin.st_mode & 0o777, pin.st_size) == (0, 0o600, 0)
    assert (dest / "data/scans").stat().st_gid == gid and (dest / "var/lib/amflow-edge").is_dir()
    assert not (dest / "opt/amflow-edge/venv").exists()

    assert "skipped systemctl daemon-reload" in result.stdout and f"below {dest}" in result.stdout
    # Nothing outside DESTDIR: this machine has no amflow-edge user after the run.
    assert "amflow-edge:" not in Path("/etc/passwd").read_text()


def test_an_existing_station_config_is_never_overwritten(tmp_path: Path, needs_root_tools: None) -> None:
    dest = tmp_path / "root"
    assert install(dest).returncode == 0
    station = dest / "etc/amflow-edge/station.toml"
    station.write_text('[station]\nid = "amq-line7"\n')
    (dest / "etc/amflow-edge/mqtt_password").write_text("s3cret\n")
    unit = dest / "etc/systemd/system/amflow-edge.service"
    unit.write_text("# stale\n")

    result = install(dest)
    assert result.returncode == 0, result.stderr
    assert station.read_text() == '[station]\nid = "amq-line7"\n'
    assert (dest / "etc/amflow-edge/mqtt_password").read_text() == "s3cret\n"
    assert "kept the existing" in result.stdout
    assert unit.read_bytes() == (REPO / "systemd/amflow-edge.service").read_bytes()  # the unit is upgraded


def test_prefix_moves_the_venv_and_execstart(tmp_path: Path, needs_root_tools: None) -> None:
    dest = tmp_path / "root"
    result = install(dest, PREFIX="/srv/amflow")
    assert result.returncode == 0, result.stderr
    unit = (dest / "etc/systemd/system/amflow-edge.service").read_text()
    assert "ExecStart=/srv/amflow/venv/bin/amflow-edge run --config /etc/amflow-edge/station.toml" in unit
    assert "/opt/amflow-edge" not in unit
    assert (dest / "srv/amflow/README.md").is_file()


def test_refusals_name_the_fix(tmp_path: Path) -> None:
    result = install(tmp_path / "root", PREFIX="relative/path")
    assert result.returncode != 0 and "PREFIX must be an absolute path" in result.stderr

    # Without DESTDIR and without root: refused before anything is touched. As root, run it as nobody.
    command = ["bash", str(SCRIPT)]
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv: cannot try the installer as an ordinary user")
        command = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *command]
    environment = {k: v for k, v in os.environ.items() if k != "DESTDIR"}
    refused = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=60, check=False)
    assert refused.returncode != 0 and "run as root" in refused.stderr


def test_every_dependency_an_install_takes_is_pinned_by_the_constraints() -> None:
    """Two stations installed a month apart run the same versions: nothing pip installs is left to the day."""
    import tomllib

    from packaging.requirements import Requirement

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = [*project["dependencies"], *project["optional-dependencies"]["pylon"]]
    wanted += project["optional-dependencies"]["panel"]
    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            requirement = Requirement(line)
            pins[requirement.name.lower().replace("_", "-")] = requirement
    for text in wanted:
        requirement = Requirement(text)
        name = requirement.name.lower().replace("_", "-")
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue
        assert name in pins, f"{name} is not pinned in constraints.txt"
        [spec] = pins[name].specifier
        assert spec.operator == "==" and requirement.specifier.contains(spec.version), f"{name}: {spec}"
    assert "-c constraints.txt" in SCRIPT.read_text().replace('"$CHECKOUT/constraints.txt"', "constraints.txt")
