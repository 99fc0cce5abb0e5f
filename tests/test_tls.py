"""TLS to the broker: the right CA connects; a certificate the station cannot trust is named, and capture goes on."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from amflow_edge.cli.main import main
from amflow_edge.config.loading import ConfigError, load_config
from amflow_edge.config.station import TlsSettings
from amflow_edge.config.tls import SERVICE_USER, TlsFileError, tls_context_for, tls_problems
from tests.mqtt_helpers import Broker, free_port
from tests.station_files import write_station

REPO = Path(__file__).resolve().parent.parent


def make_ca(directory: Path, name: str) -> tuple[Path, Path]:
    key, cert = directory / f"{name}.key", directory / f"{name}.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            f"/CN={name}",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return key, cert


def make_server_cert(directory: Path, ca_key: Path, ca_cert: Path) -> tuple[Path, Path]:
    key, csr, cert = directory / "server.key", directory / "server.csr", directory / "server.pem"
    ext = directory / "san.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1\n")
    subprocess.run(
        [
            "openssl",
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(csr),
        ],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        [
            "openssl",
            "x509",
            "-req",
            "-in",
            str(csr),
            "-CA",
            str(ca_cert),
            "-CAkey",
            str(ca_key),
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            str(ext),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return key, cert


def run_briefly(config: Path, until: str, log_file: Path, timeout_s: float = 60) -> str:
    daemon = subprocess.Popen(
        [sys.executable, "-m", "amflow_edge.cli", "--log-json", "run", "--config", str(config)],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=log_file.open("wb"),
    )
    try:
        deadline = time.monotonic() + timeout_s
        while until not in log_file.read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        return log_file.read_text()
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=60)


def test_tls_connects_with_the_right_ca_and_names_an_untrusted_certificate(tmp_path: Path) -> None:
    ca_key, ca_cert = make_ca(tmp_path, "plant-ca")
    server_key, server_cert = make_server_cert(tmp_path, ca_key, ca_cert)
    _, other_ca = make_ca(tmp_path, "other-ca")
    broker = Broker(tmp_path, tls={"cafile": ca_cert, "certfile": server_cert, "keyfile": server_key})
    broker.start()
    try:
        good = write_station(tmp_path / "good", broker.port, {"mqtt.tls": {"ca_file": str(ca_cert)}})
        text = run_briefly(good, "connected to the MQTT broker", tmp_path / "good.log")
        assert "connected to the MQTT broker" in text

        bad = write_station(
            tmp_path / "bad",
            broker.port,
            {"mqtt.tls": {"ca_file": str(other_ca)}, "capture": {"timer_interval_s": 0.2}},
        )
        text = run_briefly(bad, "scan stored", tmp_path / "bad.log")
        failures = [
            json.loads(line)
            for line in text.splitlines()
            if line.startswith("{") and "cannot connect to the MQTT broker" in line
        ]
        assert failures, text[-2000:]
        assert failures[0]["reason"].startswith("the broker's TLS certificate was not accepted")
        assert "check mqtt.tls.ca_file" in failures[0]["reason"]
        assert "scan stored" in text  # the station keeps capturing into the outbox
    finally:
        broker.stop()


# --- TLS files checked before the start, as `run` uses them ----------------------------------------------------


def amflow_edge(*args: str, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "amflow_edge.cli", *args], cwd=REPO, capture_output=True, text=True, timeout=timeout_s
    )


def tls_station(root: Path, tls: dict[str, str]) -> Path:
    """A station whose broker port has no listener: nothing here may get as far as connecting."""
    return write_station(root, free_port(), {"mqtt.tls": tls})


def test_a_ca_file_that_is_not_a_certificate_stops_check_config_and_run_alike_with_exit_2(tmp_path: Path) -> None:
    ca_key, _ = make_ca(tmp_path, "plant-ca")  # the CA's private key given instead of its certificate
    station = tls_station(tmp_path / "station", {"ca_file": str(ca_key)})
    check = amflow_edge("check-config", str(station))
    run = amflow_edge("run", "--config", str(station))
    assert (check.returncode, run.returncode) == (2, 2), (check.stdout, check.stderr[-2000:], run.stderr[-2000:])
    problem = f"mqtt.tls.ca_file: expected a PEM CA certificate (found no certificate in {ca_key})"
    assert problem in check.stderr and problem in run.stderr


def test_a_directory_given_as_ca_file_is_called_a_directory(tmp_path: Path) -> None:
    station = tls_station(tmp_path / "station", {"ca_file": str(tmp_path)})
    check = amflow_edge("check-config", str(station))
    assert check.returncode == 2
    assert f"mqtt.tls.ca_file: expected a PEM CA certificate file (found a directory at {tmp_path})" in check.stderr
    assert "found no file" not in check.stderr


def test_a_key_that_does_not_match_its_certificate_is_refused_before_the_start(tmp_path: Path) -> None:
    _, ca_cert = make_ca(tmp_path, "plant-ca")
    _, client_cert = make_ca(tmp_path, "station")
    other_key, _ = make_ca(tmp_path, "other")
    station = tls_station(
        tmp_path / "station", {"ca_file": str(ca_cert), "cert_file": str(client_cert), "key_file": str(other_key)}
    )
    check = amflow_edge("check-config", str(station))
    assert check.returncode == 2, check.stdout
    assert (
        f"mqtt.tls.key_file: expected the private key of {client_cert} (found the key of another certificate "
        f"in {other_key})"
    ) in check.stderr

    good = tls_station(
        tmp_path / "good",
        {"ca_file": str(ca_cert), "cert_file": str(client_cert), "key_file": str(tmp_path / "station.key")},
    )
    assert amflow_edge("check-config", str(good)).returncode == 0


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory every user may enter (pytest's tmp_path lies below a root-only one), removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="amflow-tls-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


def nobody_or_skip() -> str:
    if os.geteuid() != 0:
        pytest.skip("needs root: the check models what another user may read")
    try:
        pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no user 'nobody' on this machine")
    return "nobody"


def test_a_tls_file_the_service_user_cannot_read_is_named_with_its_fix(
    open_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    user = nobody_or_skip()
    monkeypatch.setattr("amflow_edge.config.tls.SERVICE_USER", user)
    _, ca_cert = make_ca(open_dir, "plant-ca")
    ca_cert.chmod(0o644)
    station = tls_station(tmp_path / "station", {"ca_file": str(ca_cert)})
    assert main(["check-config", str(station)]) == 0

    ca_cert.chmod(0o600)
    with pytest.raises(ConfigError) as caught:
        load_config(station)
    (problem,) = caught.value.problems
    assert problem.startswith(
        f"mqtt.tls.ca_file: expected a file the service user {user!r} can read (found {ca_cert}, mode 0600, "
        "owner root:root)"
    ), problem
    assert f"chmod g+r {ca_cert}" in problem

    ca_cert.chmod(0o644)
    open_dir.chmod(0o700)
    with pytest.raises(ConfigError) as caught:
        load_config(station)
    (problem,) = caught.value.problems
    assert f"found {ca_cert} in the directory {open_dir}, mode 0700, owner root:root, which {user!r} cannot enter" in (
        problem
    ), problem


def test_the_service_user_is_the_one_the_unit_runs_as() -> None:
    unit = (REPO / "systemd" / "amflow-edge.service").read_text().splitlines()
    assert f"User={SERVICE_USER}" in unit
    sysusers = (REPO / "systemd" / "amflow-edge.sysusers.conf").read_text().splitlines()
    assert any(line.split()[:2] == ["u", SERVICE_USER] for line in sysusers if line.strip())


def test_without_the_service_user_on_this_machine_only_this_process_reading_counts(open_dir: Path) -> None:
    _, ca_cert = make_ca(open_dir, "plant-ca")
    ca_cert.chmod(0o600)
    assert tls_problems(TlsSettings(ca_file=ca_cert), service_user="amflow-edge-not-on-this-machine") == []


def test_the_client_builds_its_context_with_the_words_of_the_check(tmp_path: Path) -> None:
    ca_key, ca_cert = make_ca(tmp_path, "plant-ca")
    context = tls_context_for(TlsSettings(ca_file=ca_cert))
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname

    broken = TlsSettings(ca_file=ca_key)
    [problem] = tls_problems(broken)
    with pytest.raises(TlsFileError) as caught:
        tls_context_for(broken)
    assert str(caught.value) == problem

    class SetupError(Exception):
        pass

    with pytest.raises(SetupError, match="mqtt.tls.ca_file"):
        tls_context_for(broken, error=SetupError)  # the MQTT client keeps raising its own MqttSetupError


def test_each_bad_client_file_is_named_for_what_is_wrong_with_it(tmp_path: Path) -> None:
    key, cert = make_ca(tmp_path, "station")
    encrypted = tmp_path / "encrypted.key"
    subprocess.run(
        ["openssl", "pkey", "-in", str(key), "-aes256", "-passout", "pass:secret", "-out", str(encrypted)],
        check=True,
        capture_output=True,
    )
    [problem] = tls_problems(TlsSettings(cert_file=key, key_file=key))
    assert problem.startswith(
        f"mqtt.tls.cert_file: expected the station's PEM client certificate (found no certificate in {key})"
    )
    [problem] = tls_problems(TlsSettings(cert_file=cert, key_file=cert))
    assert problem.startswith(
        f"mqtt.tls.key_file: expected the PEM private key of {cert} (found no PEM private key in {cert})"
    )
    [problem] = tls_problems(TlsSettings(cert_file=cert, key_file=encrypted))  # never a pass phrase prompt
    assert problem.startswith(
        f"mqtt.tls.key_file: expected an unencrypted PEM private key (found an encrypted key in {encrypted})"
    )
    [problem] = tls_problems(TlsSettings(cert_file=cert, key_file=tmp_path / "absent.key"))
    assert problem.startswith(
        f"mqtt.tls.key_file: expected a PEM private key file (found no file at {tmp_path / 'absent.key'})"
    )
    assert tls_problems(TlsSettings(cert_file=cert, key_file=key)) == []
