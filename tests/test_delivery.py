"""Durable delivery: every event reaches the broker, in order, across broker outages and daemon crashes."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from amflow_edge.config.loading import load_config
from amflow_edge.messaging.outbox import Outbox
from amflow_edge.station.build import build_station
from amflow_edge.station.capture import Trigger
from amflow_edge.station.station import RunOptions
from amflow_edge.storage.db import DB_FILE, StationDb
from amflow_edge.storage.record import ScanRecord
from amflow_edge.storage.store import RECORD_FILE
from tests.mqtt_helpers import Broker, Subscriber, password_broker
from tests.station_files import write_station

REPO = Path(__file__).resolve().parent.parent
CAPTURE_TOPIC = "amflow/test-station/event/scan.capture"


def receive_until(subscriber: Subscriber, wanted: set[str], timeout_s: float) -> tuple[list[str], int]:
    """Scan uuids in order of first arrival, and how many duplicates arrived, until every wanted uuid came."""
    order: list[str] = []
    seen_events: set[str] = set()
    duplicates = 0
    deadline = time.monotonic() + timeout_s
    while not wanted <= set(order):
        message = subscriber.next(timeout_s=max(0.1, deadline - time.monotonic()), topic=CAPTURE_TOPIC)
        event_id = message.user_properties["event_id"]
        scan = json.loads(message.payload)["data"]["uuid"]
        if event_id in seen_events or scan in order:
            duplicates += 1
            continue
        seen_events.add(event_id)
        order.append(scan)
    return order, duplicates


def stored_scans(data_root: Path) -> list[ScanRecord]:
    records = [
        ScanRecord.model_validate_json((d / RECORD_FILE).read_bytes())
        for d in (data_root / "scans").iterdir()
        if not d.name.startswith(".")
    ]
    return sorted(records, key=lambda r: (r.scan.created, r.scan.uuid))


def test_every_event_arrives_in_order_across_broker_outages(
    tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    broker = Broker(tmp_path, persistence=True)
    broker.start()
    subscriber = Subscriber(broker, [CAPTURE_TOPIC], client_id="mes-test")
    cfg = load_config(write_station(tmp_path, broker.port, {"capture": {"timer_interval_s": 0.05}}))
    station = build_station(cfg)
    outages = 0
    try:
        station.start(RunOptions(max_scans=200))
        while not station.stop_event.is_set():
            time.sleep(random.uniform(0.3, 0.8))
            broker.stop(graceful=True)
            outages += 1
            time.sleep(random.uniform(0.2, 0.6))  # scans keep coming while the broker is away
            broker.start()
        records = stored_scans(cfg.station.data_root)
        assert len(records) == 200
        order, duplicates = receive_until(subscriber, {r.scan.uuid for r in records}, timeout_s=120)
    finally:
        station.shutdown()
        subscriber.close()
        broker.stop()
    print(f"200 scans, {outages} broker outages, {duplicates} duplicate deliveries")
    record_property("duplicates", duplicates)
    assert outages >= 3
    assert order == [r.scan.uuid for r in records]  # every scan, in capture order


def test_scan_stored_but_not_announced_before_a_crash_is_announced_at_start(tmp_path: Path, broker: Broker) -> None:
    """The window between the directory rename and the database commit, closed deterministically."""
    cfg = load_config(write_station(tmp_path, broker.port))
    orphan = build_station(cfg)  # only its store is used, as if the process died right after the rename
    orphan.store.prepare()
    from tests.factories import make_images, make_record

    record = make_record()
    orphan.store.write_scan(record, make_images(cfg.cameras[0].height, cfg.cameras[0].width))
    orphan.db.close()
    subscriber = Subscriber(broker, [CAPTURE_TOPIC])
    station = build_station(cfg)
    try:
        station.start(RunOptions())
        message = subscriber.next(topic=CAPTURE_TOPIC)
        assert json.loads(message.payload)["data"]["uuid"] == record.scan.uuid
    finally:
        station.shutdown()
        subscriber.close()


def _start_daemon(config: Path, log_file: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "amflow_edge.cli", "--log-json", "run", "--config", str(config)],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=log_file.open("ab"),
    )


def _wait_for_log(log_file: Path, text: str, after: int, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if log_file.read_bytes()[after:].count(text.encode()) > 0:
            return
        time.sleep(0.05)
    raise AssertionError(f"daemon did not log {text!r} within {timeout_s} s:\n{log_file.read_text()[-3000:]}")


def test_daemon_killed_repeatedly_loses_no_event_and_leaves_no_half_scan(tmp_path: Path, broker: Broker) -> None:
    config = write_station(tmp_path, broker.port, {"capture": {"timer_interval_s": 0.05}})
    subscriber = Subscriber(broker, [CAPTURE_TOPIC], client_id="mes-kill-test")
    log_file = tmp_path / "daemon.log"
    rng = random.Random(11)
    try:
        for _ in range(5):
            offset = log_file.stat().st_size if log_file.exists() else 0
            daemon = _start_daemon(config, log_file)
            _wait_for_log(log_file, "station running", offset)
            time.sleep(rng.uniform(0.2, 1.2))
            daemon.send_signal(signal.SIGKILL)
            daemon.wait(timeout=30)
        # Whatever a kill left half-written sits in .incoming, invisible to readers.
        for scan_dir in (tmp_path / "data" / "scans").iterdir():
            if not scan_dir.name.startswith("."):
                names = {p.name for p in scan_dir.iterdir()}
                assert names == {RECORD_FILE} | {f"scan_cam{i:02d}.png" for i in range(1, 6)}
                ScanRecord.model_validate_json((scan_dir / RECORD_FILE).read_bytes())
        offset = log_file.stat().st_size
        daemon = _start_daemon(config, log_file)
        _wait_for_log(log_file, "station running", offset)
        daemon.send_signal(signal.SIGTERM)  # a clean stop drains the outbox
        assert daemon.wait(timeout=60) == 0
        records = stored_scans(tmp_path / "data")
        assert len(records) >= 5
        assert list((tmp_path / "data" / "scans" / ".incoming").iterdir()) == []
        order, duplicates = receive_until(subscriber, {r.scan.uuid for r in records}, timeout_s=60)
        print(f"{len(records)} scans over 5 SIGKILLs, {duplicates} duplicate deliveries")
        assert set(order) == {r.scan.uuid for r in records}
        assert order == [r.scan.uuid for r in records]
    finally:
        subscriber.close()


def test_backlog_bound_pauses_capture_and_recovery_resumes_it(tmp_path: Path, broker: Broker) -> None:
    cfg = load_config(write_station(tmp_path, broker.port, {"outbox": {"max_backlog_events": 3}}))
    station = build_station(cfg)
    broker.stop()
    try:
        station.start(RunOptions())
        results = [station.loop.capture(Trigger(source="test")) for _ in range(4)]
        assert [r.ok for r in results] == [True, True, True, False]
        assert results[3].error is not None and "outbox backlog of 3 events" in results[3].error
        state = station.state()
        assert state.mode == "paused" and state.outbox.backlog == 3 and not state.broker_connected
        assert len(stored_scans(cfg.station.data_root)) == 3
        broker.start()
        assert station.relay.drain(30)
        assert station.loop.capture(Trigger(source="test")).ok
        assert station.state().mode == "running"
    finally:
        station.shutdown()


def test_outbox_commands_show_status_and_replay(
    tmp_path: Path, broker: Broker, capsys: pytest.CaptureFixture[str]
) -> None:
    from amflow_edge.cli.main import main

    config = write_station(tmp_path, broker.port)
    station = build_station(load_config(config))
    try:
        station.start(RunOptions())
        assert station.loop.capture(Trigger(source="test")).ok
        assert station.relay.drain(30)
    finally:
        station.shutdown()
    assert main(["outbox", "status", "--config", str(config)]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["mqtt"]["backlog"] == 0 and status["mqtt"]["sent"] == 1 and status["webhooks"] == []
    assert main(["outbox", "replay", "--config", str(config), "--since", "1h"]) == 0
    assert "1 event(s) queued" in capsys.readouterr().out
    assert Outbox(StationDb(tmp_path / "state" / DB_FILE)).stats().backlog == 1
    assert main(["outbox", "replay", "--config", str(config), "--since", "yesterday"]) == 2
    assert "expected an ISO 8601 time" in capsys.readouterr().err


def test_wrong_password_is_named_and_the_station_keeps_capturing(tmp_path: Path) -> None:
    broker = password_broker(tmp_path, "station", "right")
    config = write_station(
        tmp_path,
        broker.port,
        {"mqtt": {"username": "station", "password": "Xy7-not-the-password"}, "capture": {"timer_interval_s": 0.2}},
    )
    log_file = tmp_path / "daemon.log"
    daemon = _start_daemon(config, log_file)
    try:
        _wait_for_log(log_file, "the MQTT broker refused the connection", 0)
        text = log_file.read_text()
        assert "check mqtt.username and the mqtt_password credential" in text
        assert "Xy7-not-the-password" not in text  # the password is never logged
        _wait_for_log(log_file, "scan stored", 0)  # capture goes on; events wait in the outbox
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=60)
        broker.stop()
    assert Outbox(StationDb(tmp_path / "state" / DB_FILE)).stats().backlog >= 1


def test_unreadable_tls_file_stops_the_start_as_a_config_problem_naming_the_setting(
    tmp_path: Path, broker: Broker
) -> None:
    bad_ca = tmp_path / "ca.pem"
    bad_ca.write_text("-----BEGIN CERTIFICATE-----\nnot a certificate\n-----END CERTIFICATE-----\n")
    config = write_station(tmp_path, broker.port, {"mqtt.tls": {"ca_file": str(bad_ca)}})
    proc = subprocess.run(
        [sys.executable, "-m", "amflow_edge.cli", "run", "--config", str(config)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2  # a config problem: systemd's RestartPreventExitStatus=2 ends the restart loop
    assert "mqtt.tls.ca_file: expected a PEM CA certificate" in proc.stderr and str(bad_ca) in proc.stderr


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_dead_network_thread_is_restarted_and_delivery_resumes(tmp_path: Path, broker: Broker) -> None:
    cfg = load_config(write_station(tmp_path, broker.port))
    subscriber = Subscriber(broker, [CAPTURE_TOPIC])
    station = build_station(cfg)
    try:
        station.start(RunOptions(supervise_interval_s=0.2))
        assert station.mqtt.connected.wait(10)

        def die(*args: object) -> None:
            raise SystemExit("simulated death of paho's thread")  # not an Exception: no guard catches it

        station.mqtt._client.on_publish = die
        assert station.loop.capture(Trigger(source="test")).ok
        deadline = time.monotonic() + 10
        while station.mqtt.network_thread_alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not station.mqtt.network_thread_alive()
        from amflow_edge.messaging.mqtt import _guarded

        station.mqtt._client.on_publish = _guarded(station.mqtt._handle_publish)
        second = station.loop.capture(Trigger(source="test"))
        uuids = {json.loads(subscriber.next(topic=CAPTURE_TOPIC).payload)["data"]["uuid"] for _ in range(2)}
        assert second.uuid in uuids
        assert station.relay.drain(30)
    finally:
        station.shutdown()
        subscriber.close()


def test_prune_forgets_only_acknowledged_events_past_retention(tmp_path: Path) -> None:
    from tests.factories import make_record

    db = StationDb(tmp_path / "station.db")
    outbox = Outbox(db)
    with db.transaction() as conn:
        for record in (make_record(), make_record(), make_record()):
            Outbox.add(conn, "scan.capture", record.scan.uuid, "t", b"{}")
    outbox.mark_sent([1, 2])
    with db.transaction() as conn:
        conn.execute("UPDATE outbox SET sent = sent - 3600 WHERE seq = 1")
    assert outbox.prune(older_than_s=60) == 1
    stats = outbox.stats()
    assert (stats.sent, stats.backlog) == (1, 1)
    assert [row.seq for row in outbox.unsent(0, 10)] == [3]


def test_replay_while_the_station_runs_sends_the_events_again(
    tmp_path: Path, broker: Broker, capsys: pytest.CaptureFixture[str]
) -> None:
    from amflow_edge.cli.main import main

    config = write_station(tmp_path, broker.port)
    subscriber = Subscriber(broker, [CAPTURE_TOPIC])
    station = build_station(load_config(config))
    try:
        station.start(RunOptions())
        assert station.loop.capture(Trigger(source="test")).ok
        first = subscriber.next(topic=CAPTURE_TOPIC)
        assert station.relay.drain(30)
        assert main(["outbox", "replay", "--config", str(config), "--since", "10m"]) == 0
        again = subscriber.next(topic=CAPTURE_TOPIC, timeout_s=10)
        assert again.user_properties["event_id"] == first.user_properties["event_id"]
        assert again.payload == first.payload
    finally:
        station.shutdown()
        subscriber.close()
