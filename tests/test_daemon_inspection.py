"""In the daemon: scan.capture, then inspection in a worker process, then scan.quality_control per the 3.7 rules."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from amflow_edge.config.loading import load_config
from amflow_edge.qc.rules import final_decision
from amflow_edge.station.build import build_station
from amflow_edge.station.capture import Trigger
from amflow_edge.station.station import RunOptions
from amflow_edge.storage.record import ScanRecord
from tests.mqtt_helpers import Broker, Subscriber
from tests.station_files import write_station

REPO = Path(__file__).resolve().parent.parent
PREFIX = "amflow/test-station/event"


def test_a_scan_is_inspected_and_its_verdict_published(tmp_path: Path, broker: Broker) -> None:
    config = write_station(tmp_path, broker.port, {"mock": {"scene_pool": 1}, "inspection": {"enabled": True}})
    cfg = load_config(config)
    subscriber = Subscriber(broker, [f"{PREFIX}/#"])
    station = build_station(cfg)
    try:
        station.start(RunOptions())
        reference = station.store.reference_dir(station.scan_session)
        assert sorted(p.name for p in reference.iterdir()) == [f"empty_cam{i:02d}.png" for i in range(1, 6)]
        assert station.loop.capture(Trigger(source="test")).ok
        capture = json.loads(subscriber.next(topic=f"{PREFIX}/scan.capture", timeout_s=60).payload)["data"]
        quality = json.loads(subscriber.next(topic=f"{PREFIX}/scan.quality_control", timeout_s=180).payload)["data"]
    finally:
        station.shutdown()
        subscriber.close()
    assert quality["uuid"] == capture["uuid"] and quality["created"] == capture["created"]
    assert quality["modified"] > capture["modified"]
    assert isinstance(quality["qc_machine"], bool)
    assert quality["qc_pass"] == final_decision(quality["qc_machine"], quality["qc_needs_review"], None)
    scan_dir = cfg.station.data_root / "scans" / capture["uuid"]
    report = json.loads((scan_dir / "inspection_report.json").read_text())
    assert report["id"] == quality["inspectionreport"]
    assert report["qc_machine"] == quality["qc_machine"] and report["qc_reasons"] == quality["qc_reasons"]
    assert (scan_dir / "inspection_overlays.png").is_file()
    mirror = ScanRecord.model_validate_json((scan_dir / "scan.json").read_bytes())
    assert mirror.scan.model_dump() == quality  # scan.json mirrors the last published state
    # Scanning without a batch, the station identified the part among its library; the verdict carries it.
    assert quality["design_material"] == mirror.station.rig["mock_scene"]["design_material"]
    assert capture["design_material"] is None and quality["assignment"] is None


def test_reevaluate_publishes_a_new_verdict(tmp_path: Path, broker: Broker) -> None:
    config = write_station(tmp_path, broker.port, {"mock": {"scene_pool": 1}, "inspection": {"enabled": True}})
    cfg = load_config(config)
    subscriber = Subscriber(broker, [f"{PREFIX}/#"])
    try:
        station = build_station(cfg)
        try:
            station.start(RunOptions())
            result = station.loop.capture(Trigger(source="test"))
            assert result.ok and result.uuid
            first = json.loads(subscriber.next(topic=f"{PREFIX}/scan.quality_control", timeout_s=180).payload)
        finally:
            station.shutdown()
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "amflow_edge.cli",
                "reevaluate",
                result.uuid,
                "--config",
                str(config),
                "--profile",
                "strict",
            ],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        scan = json.loads(proc.stdout)
        restarted = build_station(cfg)  # the queued event goes out through the station's relay
        try:
            restarted.start(RunOptions())
            second = json.loads(subscriber.next(topic=f"{PREFIX}/scan.quality_control", timeout_s=60).payload)
        finally:
            restarted.shutdown()
    finally:
        subscriber.close()
    assert second["data"]["inspectionreport"] == scan["inspectionreport"] != first["data"]["inspectionreport"]
    report = json.loads((cfg.station.data_root / "scans" / result.uuid / "inspection_report.json").read_text())
    assert report["profile"] == "strict" and report["id"] == scan["inspectionreport"]


def test_reevaluate_names_an_unknown_scan_and_profile(tmp_path: Path, broker: Broker) -> None:
    config = write_station(tmp_path, broker.port)
    unknown = subprocess.run(
        [
            sys.executable,
            "-m",
            "amflow_edge.cli",
            "reevaluate",
            "0f9e1c2a-0000-11f1-8000-000000000000",
            "--config",
            str(config),
            "--profile",
            "default",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert unknown.returncode == 1 and "is not known to this station" in unknown.stderr
    bad_profile = subprocess.run(
        [sys.executable, "-m", "amflow_edge.cli", "reevaluate", "x", "--config", str(config), "--profile", "nope"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad_profile.returncode == 2 and "no such inspection profile" in bad_profile.stderr


def test_a_scan_left_uninspected_by_a_stop_is_inspected_at_the_next_start(tmp_path: Path, broker: Broker) -> None:
    session = {"scan_session": "cbe45ba7-da35-444d-b598-4e70587a33cc"}
    before = load_config(write_station(tmp_path, broker.port, {"mock": {"scene_pool": 1}, "session": session}))
    station = build_station(before)  # inspection off: as if the daemon died before the inspection finished
    try:
        station.start(RunOptions())
        result = station.loop.capture(Trigger(source="test"))
        assert result.ok
    finally:
        station.shutdown()
    after = load_config(
        write_station(
            tmp_path, broker.port, {"mock": {"scene_pool": 1}, "session": session, "inspection": {"enabled": True}}
        )
    )
    subscriber = Subscriber(broker, [f"{PREFIX}/scan.quality_control"])
    station = build_station(after)
    try:
        station.start(RunOptions())
        quality = json.loads(subscriber.next(topic=f"{PREFIX}/scan.quality_control", timeout_s=180).payload)
    finally:
        station.shutdown()
        subscriber.close()
    assert quality["data"]["uuid"] == result.uuid and quality["data"]["inspectionreport"] is not None


def test_a_scan_whose_design_is_unknown_is_published_and_flagged_for_review(tmp_path: Path, broker: Broker) -> None:
    cfg = load_config(
        write_station(tmp_path, broker.port, {"mock": {"scene_pool": 1}, "inspection": {"enabled": True}})
    )
    subscriber = Subscriber(broker, [f"{PREFIX}/#"])
    station = build_station(cfg)
    unknown = "0" * 40 + "_SLS_PA12_GREY"
    try:
        station.start(RunOptions())
        result = station.loop.capture(Trigger(source="test", design_material=unknown))
        assert result.ok
        capture = json.loads(subscriber.next(topic=f"{PREFIX}/scan.capture").payload)["data"]
        assert capture["design_material"] == unknown
        with pytest.raises(LookupError, match="no design with design_material"):
            station.jobs.for_scan(station.events.record(result.uuid))  # type: ignore[arg-type]
        quality = json.loads(subscriber.next(topic=f"{PREFIX}/scan.quality_control").payload)["data"]
        assert quality["uuid"] == result.uuid
        assert [quality[k] for k in ("inspectionreport", "qc_machine", "qc_needs_review", "qc_pass", "qc_reasons")] == [
            None,
            None,
            True,
            None,
            ["insufficient_evidence"],
        ]
        assert station.panel.view().awaiting_decision == result.uuid
    finally:
        station.shutdown()
        subscriber.close()


def test_a_scan_directory_removed_by_hand_does_not_stop_the_station(tmp_path: Path, broker: Broker) -> None:
    import shutil

    from structlog.testing import capture_logs

    config = write_station(tmp_path, broker.port, {"mock": {"scene_pool": 1}})
    station = build_station(load_config(config))
    try:
        station.start(RunOptions())
        result = station.loop.capture(Trigger(source="test"))
        assert result.ok and result.uuid
    finally:
        station.shutdown()
    shutil.rmtree(station.store.scan_dir(result.uuid))

    station = build_station(load_config(write_station(tmp_path, broker.port, {"inspection": {"enabled": True}})))
    try:
        with capture_logs() as logs:
            station.start(RunOptions())
            decided = station.decisions.decide(result.uuid, False, source="mqtt", device="mqtt", at=datetime.now(UTC))
        assert decided.scan.qc_pass is False
        events = {entry["event"] for entry in logs}
        assert "uninspected scans whose directories are gone (moved or deleted by hand); not inspected" in events
        assert "scan.json not updated; the event is sent all the same" in events
        rows = station.db.connection().execute("SELECT event FROM outbox WHERE scan_uuid = ?", (result.uuid,))
        assert [row[0] for row in rows] == ["scan.capture", "scan.quality_control"]
    finally:
        station.shutdown()
