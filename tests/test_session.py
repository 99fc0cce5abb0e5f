"""Scanning sessions over MQTT: a batch's scans carry it, its designs are inspected against, and it survives a restart."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from amflow_edge.config.loading import load_config
from amflow_edge.config.station import StationConfig
from amflow_edge.inspection.designs import design_material_id
from amflow_edge.station.build import build_station
from amflow_edge.station.session import SESSION_FILE
from amflow_edge.station.station import RunOptions, Station
from tests.mqtt_helpers import Broker, Subscriber
from tests.station_files import REPO, batch_station
from tests.test_qc_workflow import PREFIX, next_event, request

LIBRARY_DESIGN = REPO / "config" / "designs" / "montageblok_mb80.stl"
ASSIGNMENT = {
    "assignment": "8801b334-7012-46e3-aeba-f2a2683a8f90",
    "part_id": "2471584",
    "part_title": "bracket",
    "copies": 4,
    "last_added_copies": 1,
    "manual": False,
}


def station_config(tmp_path: Path, broker: Broker) -> StationConfig:
    return load_config(batch_station(tmp_path, broker.port))


def batch_mesh(cfg: StationConfig) -> tuple[str, str]:
    """A customer mesh the MES dropped into the batch folder (a copy of a demo part under another name)."""
    assert cfg.designs.batch_meshes is not None
    target = cfg.designs.batch_meshes / "customer_part_7.stl"
    shutil.copyfile(REPO / "config" / "designs" / "angle_bracket_ab60.stl", target)
    return target.name, design_material_id(target, "MJF", "PA12", "BLACK")


def start_station(cfg: StationConfig) -> Station:
    station = build_station(cfg)
    station.start(RunOptions())
    assert station.mqtt.connected.wait(10)
    return station


def test_a_session_stamps_its_scans_survives_a_restart_and_ends(tmp_path: Path, broker: Broker) -> None:
    cfg = station_config(tmp_path, broker)
    mesh, customer_id = batch_mesh(cfg)
    library_id = design_material_id(LIBRARY_DESIGN, "SLS", "PA12", "GREY")
    subscriber = Subscriber(broker, [f"{PREFIX}/#"])
    station = start_station(cfg)
    try:
        started = request(
            subscriber,
            "session",
            {
                "action": "start",
                "batch": {"id": "PRTS_SRC_102_DAT_20260309_VER_A", "title": "20260309_02A"},
                "designs": [
                    {"design_material": library_id},
                    {"design_material": customer_id, "mesh": mesh, "title": "P7"},
                ],
                "output": {"id": 3},
            },
        )
        assert started["status"] == "ok", started
        session = started["scan_session"]
        assert station.store.reference_dir(session).is_dir()  # empty-tray references of the new session

        again = request(subscriber, "session", {"action": "start", "batch": {"id": "OTHER", "title": "x"}})
        assert again["status"] == "error" and "is active; end it first" in again["error"]

        answer = request(subscriber, "capture", {"design_material": customer_id, "assignment": ASSIGNMENT})
        assert answer["status"] == "ok", answer
        scan = next_event(subscriber, "scan.capture")
        assert scan["scan_session"] == session and scan["design_material"] == customer_id
        assert scan["batch"] == {"id": "PRTS_SRC_102_DAT_20260309_VER_A", "title": "20260309_02A"}
        assert scan["output"] == {"id": 3} and scan["assignment"] == ASSIGNMENT
        assert list(scan["assignment"]) == list(ASSIGNMENT)
        inspected = next_event(subscriber, "scan.quality_control")  # inspected against the batch's own mesh
        assert inspected["inspectionreport"] is not None
    finally:
        station.shutdown()

    assert (cfg.station.state_dir / SESSION_FILE).is_file()
    station = start_station(cfg)
    try:
        assert station.scan_session == session and customer_id in station.designs()
        answer = request(subscriber, "capture", {"design_material": customer_id})
        assert answer["status"] == "ok", answer
        assert next_event(subscriber, "scan.capture")["scan_session"] == session

        ended = request(subscriber, "session", {"action": "end"})
        assert ended["status"] == "ok" and ended["scan_session"] != session
        after = request(subscriber, "capture", {})
        assert after["status"] == "ok"
        scan = next_event(subscriber, "scan.capture")
        assert scan["scan_session"] == ended["scan_session"] and scan["output"] is None
        assert scan["batch"] == {"id": "TEST_BATCH", "title": "test batch"}  # the station's default session
        refused = request(subscriber, "capture", {"design_material": customer_id})
        assert refused["status"] == "error" and "unknown to this station" in refused["error"]
    finally:
        station.shutdown()
        subscriber.close()
    assert not (cfg.station.state_dir / SESSION_FILE).exists()


def test_a_batch_mesh_that_does_not_match_its_id_is_refused(tmp_path: Path, broker: Broker) -> None:
    cfg = station_config(tmp_path, broker)
    mesh, customer_id = batch_mesh(cfg)
    wrong_id = "f" * 40 + customer_id[40:]
    subscriber = Subscriber(broker, [f"{PREFIX}/response/#"])
    station = start_station(cfg)
    try:
        before = station.sessions.current
        answer = request(
            subscriber,
            "session",
            {
                "action": "start",
                "batch": {"id": "B", "title": "b"},
                "designs": [{"design_material": wrong_id, "mesh": mesh}],
            },
        )
        assert answer["status"] == "error" and "SHA-1" in answer["error"] and mesh in answer["error"]
        missing = request(
            subscriber,
            "session",
            {"action": "start", "batch": {"id": "B", "title": "b"}, "designs": [{"design_material": customer_id}]},
        )
        assert missing["status"] == "error" and "send its mesh" in missing["error"]
        assert station.sessions.current == before
    finally:
        station.shutdown()
        subscriber.close()
    assert not (cfg.station.state_dir / SESSION_FILE).exists()


def test_two_session_starts_at_once_give_one_session_and_one_refusal(tmp_path: Path, broker: Broker) -> None:
    cfg = station_config(tmp_path, broker)
    subscriber = Subscriber(broker, [f"{PREFIX}/response/#"])
    station = start_station(cfg)
    try:
        for batch in ("BATCH_A", "BATCH_B"):  # both sent before either is carried out
            subscriber.publish(
                f"{PREFIX}/request/session",
                json.dumps({"action": "start", "batch": {"id": batch, "title": batch}}).encode(),
            )
        answers = [
            json.loads(subscriber.next(topic=f"{PREFIX}/response/session", timeout_s=60).payload) for _ in range(2)
        ]
        assert sorted(a["status"] for a in answers) == ["error", "ok"], answers
        refused = next(a for a in answers if a["status"] == "error")
        assert "is active; end it first" in refused["error"]
        started = next(a for a in answers if a["status"] == "ok")
        assert station.sessions.current.scan_session == started["scan_session"]
    finally:
        station.shutdown()
        subscriber.close()


def test_a_batch_mesh_gone_after_a_restart_is_named_when_its_scans_cannot_be_inspected(
    tmp_path: Path, broker: Broker
) -> None:
    cfg = station_config(tmp_path, broker)
    mesh, customer_id = batch_mesh(cfg)
    subscriber = Subscriber(broker, [f"{PREFIX}/#"])
    station = start_station(cfg)
    try:
        started = request(
            subscriber,
            "session",
            {
                "action": "start",
                "batch": {"id": "B", "title": "b"},
                "designs": [{"design_material": customer_id, "mesh": mesh}],
            },
        )
        assert started["status"] == "ok", started
        answer = request(subscriber, "capture", {"design_material": customer_id})
        assert answer["status"] == "ok", answer
    finally:
        station.shutdown()
    assert cfg.designs.batch_meshes is not None
    (cfg.designs.batch_meshes / mesh).unlink()
    station = start_station(cfg)
    try:
        record = station.events.record(answer["scan"])
        assert record is not None
        with pytest.raises(LookupError, match=f"design {customer_id} of session .* could not be loaded at start"):
            station.jobs.for_scan(record)
    finally:
        station.shutdown()
        subscriber.close()
