"""TLS to the broker: the right CA connects; a certificate the station cannot trust is named, and capture goes on."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.mqtt_helpers import Broker
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
