"""The doctor against a real station on disk and a real broker: one row per area, a fix for every failure."""

from __future__ import annotations

import hashlib
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

from amflow_edge.config.loading import load_config
from amflow_edge.config.service import GIB, BackupSettings, DiskSettings
from amflow_edge.config.station import StationConfig
from amflow_edge.inspection.calibration.board import BoardDefinition
from amflow_edge.inspection.calibration.drift import ImageDrift
from amflow_edge.inspection.calibration.report import REPORT_FILE, CalibrationReport, CameraReport
from amflow_edge.messaging.outbox import Outbox
from amflow_edge.ops.doctor import (
    CheckResult,
    check_backup,
    check_clock,
    check_disk,
    exit_code,
    render_table,
    run_checks,
    run_checks_for_file,
)
from amflow_edge.station.calibration_drift import DRIFT_FILE, CameraDrift, DriftRecord, DriftReport
from amflow_edge.storage.db import DB_FILE, StationDb
from amflow_edge.storage.disk import free_bytes
from tests.mounts import mount_tmpfs
from tests.mqtt_helpers import Broker, free_port, password_broker
from tests.station_files import REPO, write_station

ROWS = ["config", "calibration", "designs", "broker", "outbox", "disk", "backup", "clock", "cameras", "link"]


def by_name(results: list[CheckResult]) -> dict[str, CheckResult]:
    assert [r.name for r in results] == ROWS
    return {r.name: r for r in results}


def synced() -> bool:
    return True


def test_a_healthy_station(tmp_path: Path, broker: Broker) -> None:
    cfg = load_config(write_station(tmp_path, broker.port))
    (tmp_path / "data").mkdir()
    rows = by_name(run_checks(cfg, synchronised=synced))
    failed = {name: r.detail for name, r in rows.items() if not r.ok}
    assert failed == {}
    assert f"127.0.0.1:{broker.port}: MQTT v5 CONNECT accepted anonymously" == rows["broker"].detail
    assert rows["cameras"].detail == "mock driver"
    assert rows["link"].ok and rows["link"].detail == "mock driver: no camera network"
    assert "no database" in rows["outbox"].detail
    assert rows["backup"].warning and "not configured" in rows["backup"].detail
    assert "every mesh loads" in rows["designs"].detail
    assert exit_code(list(rows.values())) == 0


def test_an_unreachable_broker_fails_with_the_reason_and_a_fix(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    cfg = load_config(write_station(tmp_path, port))
    results = run_checks(cfg, synchronised=synced, broker_timeout_s=2.0)
    broker = by_name(results)["broker"]
    assert not broker.ok
    assert f"127.0.0.1:{port}" in broker.detail and "connection refused" in broker.detail
    assert broker.fix and "mqtt.host" in broker.fix
    assert exit_code(results) == 1
    table = render_table(results)
    assert "broker" in table and "FAIL" in table and f"fix: {broker.fix}" in table


def test_a_wrong_password_is_named(tmp_path: Path) -> None:
    broker = password_broker(tmp_path, "station", "right")
    try:
        station = write_station(tmp_path, broker.port, {"mqtt": {"username": "station", "password": "wrong"}})
        row = by_name(run_checks(load_config(station), synchronised=synced))["broker"]
        assert not row.ok and "refused CONNECT as user 'station'" in row.detail
        assert "bad user name or password" in row.detail.lower() or "not authorized" in row.detail.lower()
        assert row.fix and "mqtt_password" in row.fix and "wrong" not in row.detail + row.fix

        # From the file, outside systemd: the password comes from where LoadCredential= reads it.
        plain = write_station(tmp_path, broker.port, {"mqtt": {"username": "station"}})
        credentials = tmp_path / "etc-amflow-edge"
        credentials.mkdir()
        (credentials / "mqtt_password").write_text("right\n")
        rows = by_name(run_checks_for_file(plain, credentials_dir=credentials, synchronised=synced))
        assert rows["config"].ok and rows["broker"].ok, rows["broker"].detail
        rows = by_name(run_checks_for_file(plain, credentials_dir=tmp_path / "nowhere", synchronised=synced))
        assert not rows["config"].ok and "mqtt.password" in rows["config"].detail
    finally:
        broker.stop()


def test_outbox_backlog_is_read_without_writing_the_database(tmp_path: Path) -> None:
    station = write_station(tmp_path, free_port(), {"outbox": {"max_backlog_events": 3}})
    cfg = load_config(station)
    db = StationDb(cfg.station.state_dir / DB_FILE)
    with db.transaction() as conn:
        for _ in range(2):
            Outbox.add(conn, "scan.capture", None, "amflow/test/event/scan.capture", b"{}")
    db.close()
    path = cfg.station.state_dir / DB_FILE
    files_before = sorted(p.name for p in path.parent.iterdir())
    content_before = hashlib.sha256(path.read_bytes()).hexdigest()

    row = by_name(run_checks(cfg, synchronised=synced, broker_timeout_s=1.0))["outbox"]
    assert row.ok and row.detail.startswith("2 unsent")
    assert sorted(p.name for p in path.parent.iterdir()) == files_before
    assert hashlib.sha256(path.read_bytes()).hexdigest() == content_before

    db = StationDb(path)
    with db.transaction() as conn:
        Outbox.add(conn, "scan.capture", None, "amflow/test/event/scan.capture", b"{}")
    db.close()
    files_before = sorted(p.name for p in path.parent.iterdir())
    content_before = hashlib.sha256(path.read_bytes()).hexdigest()
    row = by_name(run_checks(cfg, synchronised=synced, broker_timeout_s=1.0))["outbox"]
    assert not row.ok and "3 unsent" in row.detail and "capture is paused" in row.detail
    assert sorted(p.name for p in path.parent.iterdir()) == files_before
    assert hashlib.sha256(path.read_bytes()).hexdigest() == content_before

    # The station running: its connection open, the newest rows still in the -wal file.
    db = StationDb(path)
    with db.transaction() as conn:
        Outbox.add(conn, "scan.capture", None, "amflow/test/event/scan.capture", b"{}")
    files_before = sorted(p.name for p in path.parent.iterdir())
    assert f"{DB_FILE}-wal" in files_before
    row = by_name(run_checks(cfg, synchronised=synced, broker_timeout_s=1.0))["outbox"]
    assert "4 unsent" in row.detail
    assert sorted(p.name for p in path.parent.iterdir()) == files_before
    db.close()

    path.write_bytes(b"not a database at all")
    row = by_name(run_checks(cfg, synchronised=synced, broker_timeout_s=1.0))["outbox"]
    assert not row.ok and str(path) in row.detail


def test_file_problems_land_in_their_own_rows(tmp_path: Path, broker: Broker) -> None:
    cfg = load_config(write_station(tmp_path, broker.port))
    (tmp_path / "calibration" / "cam03.yaml").unlink()
    rows = by_name(run_checks(cfg, synchronised=synced))
    assert rows["config"].ok and rows["designs"].ok and rows["broker"].ok
    assert not rows["calibration"].ok and "cam03" in rows["calibration"].detail

    # load_config() refuses this file; the doctor still shows every other row.
    rows = by_name(run_checks_for_file(tmp_path / "station.toml", synchronised=synced))
    assert not rows["calibration"].ok and rows["broker"].ok and rows["config"].ok


def test_a_mesh_that_does_not_load_fails_the_designs_row(tmp_path: Path, broker: Broker) -> None:
    library = tmp_path / "designs" / "designs.toml"
    library.parent.mkdir()
    (library.parent / "garbage.stl").write_bytes((REPO / "tests/data/meshes/broken/garbage.stl").read_bytes())
    library.write_text(
        '[[design]]\nfile = "garbage.stl"\nunits = "mm"\nprocess = "SLS"\nmaterial = "PA12"\n'
        'colour = "GREY"\ntitle = "Garbage"\n'
    )
    cfg = load_config(write_station(tmp_path, broker.port, {"designs": {"library": str(library)}}))
    row = by_name(run_checks(cfg, synchronised=synced))["designs"]
    assert not row.ok and "garbage.stl" in row.detail and row.fix and str(library) in row.fix


def test_an_invalid_config_file_is_one_failing_row(tmp_path: Path) -> None:
    station = write_station(tmp_path, 1883, {"mqtt": {"prot": 1883}})
    results = run_checks_for_file(station, synchronised=synced)
    assert [(r.name, r.ok) for r in results] == [("config", False)]
    assert "mqtt.prot: unknown setting" in results[0].detail
    (tmp_path / "broken.toml").write_text("[station\n")
    results = run_checks_for_file(tmp_path / "broken.toml")
    assert [(r.name, r.ok) for r in results] == [("config", False)] and "not valid TOML" in results[0].detail
    assert exit_code(results) == 1


def test_clock(tmp_path: Path) -> None:
    cfg = load_config(write_station(tmp_path, 1883))
    unknown = check_clock(cfg, None)
    assert unknown.ok and unknown.warning and "unknown" in unknown.detail  # a warning, not a failure
    off = check_clock(cfg, False)
    assert not off.ok and "NOT synchronised" in off.detail and off.fix and "NTP" in off.fix
    good = check_clock(cfg, True)
    assert good.ok and not good.warning and "Europe/Amsterdam" in good.detail


def test_cameras_hook_for_real_drivers(tmp_path: Path) -> None:
    cfg = load_config(write_station(tmp_path, free_port()))
    pylon = cfg.model_copy(update={"rig": cfg.rig.model_copy(update={"driver": "pylon"})})
    unchecked = by_name(run_checks(pylon, synchronised=synced, broker_timeout_s=1.0))["cameras"]
    assert unchecked.ok and unchecked.warning and "not checked" in unchecked.detail

    def enumerate_cameras(station: StationConfig) -> CheckResult:
        return CheckResult(
            name="cameras",
            ok=False,
            detail=f"found 4 of {len(station.cameras)}: 40012305 missing",
            fix="check the USB cable of cam05",
        )

    row = by_name(run_checks(pylon, enumerate_cameras, synchronised=synced, broker_timeout_s=1.0))["cameras"]
    assert not row.ok and row.detail == "found 4 of 5: 40012305 missing"

    def crashing(station: StationConfig) -> CheckResult:
        raise RuntimeError("pylon runtime not found")

    row = by_name(run_checks(pylon, crashing, synchronised=synced, broker_timeout_s=1.0))["cameras"]
    assert not row.ok and "RuntimeError: pylon runtime not found" in row.detail  # a crash is a row, not a traceback


def test_disk_and_backup_rows(tmp_path: Path) -> None:
    cfg = load_config(write_station(tmp_path, 1883))
    missing = check_disk(cfg)
    assert not missing.ok and "does not exist" in missing.detail and missing.fix and "tmpfiles" in missing.fix
    (tmp_path / "data").mkdir()
    assert check_disk(cfg).ok
    assert check_backup(cfg).warning


def test_render_table_aligns_columns() -> None:
    results = [
        CheckResult(name="config", ok=True, detail="station a"),
        CheckResult(name="calibration", ok=False, detail="cameras[0]: missing\ncameras[1]: missing", fix="copy them"),
        CheckResult(name="clock", ok=True, warning=True, detail="unknown", fix="run NTP"),
    ]
    lines = render_table(results).splitlines()
    column = lines[0].index("DETAIL")
    assert lines[0].startswith("CHECK")
    assert lines[1][column:] == "station a" and lines[1][:column].split() == ["config", "ok"]
    assert lines[2][column:] == "cameras[0]: missing" and lines[2][:column].split() == ["calibration", "FAIL"]
    assert lines[3] == " " * column + "cameras[1]: missing"
    assert lines[4] == " " * column + "fix: copy them"
    assert lines[5][:column].split() == ["clock", "WARN"] and lines[6] == " " * column + "fix: run NTP"
    assert lines[-1] == "1 failed, 1 warning(s), 1 ok"
    assert exit_code(results) == 1 and exit_code([results[0], results[2]]) == 0


def with_service_sections(cfg: StationConfig, disk: DiskSettings, backup: BackupSettings) -> StationConfig:
    return cfg.model_copy(update={"disk": disk, "backup": backup})


def test_disk_and_backup_rows_follow_the_service_settings(tmp_path: Path) -> None:
    cfg = load_config(write_station(tmp_path, 1883))
    (tmp_path / "data").mkdir()
    free = free_bytes(tmp_path / "data")
    low = DiskSettings(min_free_bytes=free + GIB, resume_free_bytes=free + 2 * GIB)
    row = check_disk(with_service_sections(cfg, low, BackupSettings()))
    assert not row.ok and "capture pauses below" in row.detail

    missing = check_backup(with_service_sections(cfg, DiskSettings(), BackupSettings(path=tmp_path / "usb")))
    assert not missing.ok and "is the backup disk mounted" in missing.detail and missing.fix
    (tmp_path / "same-disk").mkdir()
    same = check_backup(with_service_sections(cfg, DiskSettings(), BackupSettings(path=tmp_path / "same-disk")))
    assert same.ok and same.warning and "same file system" in same.detail
    mount_tmpfs(tmp_path / "usb", "4m")
    try:
        good = check_backup(with_service_sections(cfg, DiskSettings(), BackupSettings(path=tmp_path / "usb")))
        assert good.ok and not good.warning and "4.0 MiB free" in good.detail
    finally:
        subprocess.run(["umount", "-l", str(tmp_path / "usb")], check=False)


def test_a_port_that_is_not_an_mqtt_broker(tmp_path: Path) -> None:
    import socket
    import threading

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]

    def answer_like_a_web_server() -> None:
        conn, _ = server.accept()
        with conn:
            conn.recv(1024)
            conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")

    thread = threading.Thread(target=answer_like_a_web_server, daemon=True)
    thread.start()
    try:
        cfg = load_config(write_station(tmp_path, port))
        row = by_name(run_checks(cfg, synchronised=synced, broker_timeout_s=5.0))["broker"]
    finally:
        server.close()
    assert not row.ok and "no MQTT v5 broker answered CONNECT" in row.detail
    assert row.fix and "mqtt.port" in row.fix


def test_an_unreadable_file_and_a_wrong_setting_get_each_their_own_fix(tmp_path: Path) -> None:
    [unreadable] = run_checks_for_file(tmp_path / "missing.toml", synchronised=synced)
    [invalid] = run_checks_for_file(write_station(tmp_path, 1883, {"mqtt": {"prot": 1883}}), synchronised=synced)
    assert unreadable.fix == "fix the station TOML"
    assert invalid.fix == "edit the station TOML; see config/station.example.toml"


def test_the_disk_row_names_the_file_system_by_its_mount_point(tmp_path: Path) -> None:
    cfg = load_config(write_station(tmp_path, 1883))
    disk = tmp_path / "srv"
    mount_tmpfs(disk, "8m")
    try:
        root = disk / "data"
        root.mkdir()
        station = cfg.station.model_copy(update={"data_root": root})
        row = check_disk(cfg.model_copy(update={"station": station, "disk": DiskSettings(min_free_bytes=0)}))
        assert row.ok and f"free of 8.0 MiB on {disk} (the file system holding {root})" in row.detail, row.detail
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def test_a_tls_file_the_client_cannot_load_fails_the_config_row(tmp_path: Path) -> None:
    from tests.test_tls import make_ca

    ca_key, _ = make_ca(tmp_path, "plant-ca")
    station = write_station(tmp_path, free_port(), {"mqtt.tls": {"ca_file": str(ca_key)}})
    rows = by_name(run_checks_for_file(station, synchronised=synced, broker_timeout_s=1.0))
    assert not rows["config"].ok
    assert (
        f"mqtt.tls.ca_file: expected a PEM CA certificate (found no certificate in {ca_key})" in rows["config"].detail
    )


def _commissioning_record(folder: Path, rms: dict[str, float]) -> None:
    cameras = [
        CameraReport(
            camera=name,
            serial=f"4001230{index}",
            rms_px=value,
            corners=400,
            rejected_corners=0,
            coverage=0.55,
            focal_px=(872.0, 872.0),
            centre_mm=(0.0, 0.0, 600.0),
            views=[],
        )
        for index, (name, value) in enumerate(sorted(rms.items()), start=1)
    ]
    report = CalibrationReport(
        solved_at=datetime.now(UTC) - timedelta(days=40),
        capture=str(folder / "capture"),
        board=BoardDefinition(),
        rms_px=max(rms.values()),
        cameras=cameras,
    )
    (folder / REPORT_FILE).write_text(report.model_dump_json())


def test_the_calibration_row_gives_age_rms_and_drift(tmp_path: Path, broker: Broker) -> None:
    cfg = load_config(write_station(tmp_path, broker.port))
    (tmp_path / "data").mkdir()
    row = by_name(run_checks(cfg, synchronised=synced))["calibration"]
    assert row.ok and row.warning and "no commissioning record" in row.detail and "no drift check yet" in row.detail

    _commissioning_record(tmp_path / "calibration", {f"cam{i:02d}": 0.12 for i in range(1, 6)})
    drift = DriftReport(
        measured_at=datetime(2026, 12, 7, 5, 0, tzinfo=UTC),
        scan_session="4c7e9a2b-1f3d-4e5a-8b6c-7d8e9f0a1b2c",
        max_drift_px=1.0,
        cameras=[
            CameraDrift(
                camera=f"cam{i:02d}",
                drift=ImageDrift(shift_px=0.03, dx_px=0.02, dy_px=0.01, rotation_deg=0.0, correlation=0.99),
                moved=False,
                problem=None,
                commissioning="references",
                calibration_sha256="0123456789ab",
            )
            for i in range(1, 6)
        ],
    )
    cfg.station.state_dir.mkdir(parents=True, exist_ok=True)
    (cfg.station.state_dir / DRIFT_FILE).write_text(DriftRecord(latest=drift).model_dump_json())
    row = by_name(run_checks(cfg, synchronised=synced))["calibration"]
    assert row.ok and not row.warning, row.detail
    assert "cam03: solved 40 days ago, reprojection RMS 0.12 px" in row.detail
    assert "cam05 0.03 px" in row.detail

    moved = drift.model_copy(deep=True)
    moved.cameras[1] = moved.cameras[1].model_copy(
        update={
            "moved": True,
            "drift": ImageDrift(shift_px=2.4, dx_px=2.3, dy_px=0.5, rotation_deg=0.01, correlation=0.98),
        }
    )
    (cfg.station.state_dir / DRIFT_FILE).write_text(DriftRecord(latest=moved).model_dump_json())
    row = by_name(run_checks(cfg, synchronised=synced))["calibration"]
    assert not row.ok and "cam02 moved more than 1.0 px" in row.detail and row.fix and "calibrate" in row.fix
    assert "drift at 2026-12-07 05:00 UTC" in row.detail

    _commissioning_record(tmp_path / "calibration", {f"cam{i:02d}": 0.12 if i != 4 else 0.45 for i in range(1, 6)})
    (cfg.station.state_dir / DRIFT_FILE).write_text(DriftRecord(latest=drift).model_dump_json())
    row = by_name(run_checks(cfg, synchronised=synced))["calibration"]
    assert row.ok and row.warning and "cam04's reprojection RMS 0.45 px is over the 0.3 px target" in row.detail
