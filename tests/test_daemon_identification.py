"""In the daemon: a batch's parts identified on the tray, assigned and inspected, nobody telling the station which.

The mock places a design of the session's batch; its truth is in the scan record for this test
to read, and nothing in the station reads it (tests/test_structure.py). Every event is checked
against the contract: 19 keys, the assignment object exactly as PAYLOAD.md shows it.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from amflow_edge.cli.station import use_batch_file
from amflow_edge.config.loading import load_config
from amflow_edge.station.build import build_station
from amflow_edge.station.capture import Trigger
from amflow_edge.station.station import RunOptions, Station
from tests.mqtt_helpers import Broker, Subscriber
from tests.station_files import DESIGN_CACHE, REPO, demo_env, write_station
from tests.test_qc_workflow import PREFIX, next_event, request

DESIGNS = REPO / "config" / "designs"
VORON = REPO / "tests" / "data" / "meshes" / "voron2"
ASSIGNMENT_KEYS = ["assignment", "part_id", "part_title", "copies", "last_added_copies", "manual"]
PARTS = {
    "MB-80": ("montageblok_mb80.stl", "6d2e1b64c586b7a2dad9eb34a961cc4a513751b6_SLS_PA12_GREY", 2, 1),
    "AB-60": ("angle_bracket_ab60.stl", "01f87beefab9b60c8931f10194d0ae6b6c2093c2_SLS_PAGF_BLACK", 3, 2),
    "SG-20-25": ("spur_gear_z20m25.stl", "e5c7faa428baee4e5878e8470b3ca3d31cba4873_SLS_PAGF_GREY", 2, 3),
}
PIPE_CLIP = "698302001b2fb9a02c927b32933df628b0b86a96_SLS_PA12_WHITE"


def batch_file(folder: Path, parts: dict[str, tuple[str, str, int, int]] = PARTS) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    entries = []
    for part_id, (mesh, design_material, copies, output) in parts.items():
        source = DESIGNS / mesh if (DESIGNS / mesh).is_file() else VORON / mesh
        shutil.copyfile(source, folder / source.name)
        entries.append(
            {
                "part_id": part_id,
                "part_title": f"title of {part_id}",
                "design_material": design_material,
                "copies": copies,
                "output": {"id": output},
                "mesh": source.name,
            }
        )
    path = folder / "batch.json"
    path.write_text(json.dumps({"batch": {"id": "ID_BATCH", "title": "identification"}, "parts": entries}))
    return path


def station_with_batch(tmp_path: Path, broker: Broker, sections: dict[str, dict[str, Any]], batch: Path) -> Station:
    base: dict[str, dict[str, Any]] = {"mock": {"scene_pool": 0, "seed": 11}, "inspection": {"enabled": True}}
    for name, values in sections.items():
        base.setdefault(name, {}).update(values)
    station = build_station(load_config(write_station(tmp_path / "station", broker.port, base)))
    use_batch_file(station, batch)
    return station


def test_each_part_of_the_batch_is_identified_assigned_and_inspected(tmp_path: Path, broker: Broker) -> None:
    subscriber = Subscriber(broker, [f"{PREFIX}/#"])
    station = station_with_batch(tmp_path, broker, {}, batch_file(tmp_path / "batch"))
    parts = {p.part_id: p for p in station.sessions.current.parts}
    try:
        station.start(RunOptions())
        uuids = []
        for _ in range(4):
            result = station.loop.capture(Trigger(source="test"))
            assert result.ok and result.uuid, result.error
            uuids.append(result.uuid)
        assigned: dict[str, dict[str, Any]] = {}
        inspected: dict[str, dict[str, Any]] = {}
        while len(assigned) < 4 or len(inspected) < 4:
            message = subscriber.next(timeout_s=300)
            if message.topic == f"{PREFIX}/event/scan.assign":
                data = json.loads(message.payload)["data"]
                assert data["uuid"] not in inspected  # the assignment goes out before the verdict
                assigned[data["uuid"]] = data
            elif message.topic == f"{PREFIX}/event/scan.quality_control":
                data = json.loads(message.payload)["data"]
                inspected[data["uuid"]] = data
        state = station.state()
    finally:
        station.shutdown()
        subscriber.close()
    counts: dict[str, int] = {}
    for scan_uuid in uuids:
        record = station.events.record(scan_uuid)
        assert record is not None
        truth = record.station.rig["mock_scene"]["design_material"]
        event = assigned[scan_uuid]
        assert event["design_material"] == truth
        assert list(event["assignment"]) == ASSIGNMENT_KEYS
        part = next(p for p in parts.values() if p.design_material == truth)
        assert event["assignment"] == {
            "assignment": part.assignment,
            "part_id": part.part_id,
            "part_title": part.part_title,
            "copies": part.copies,
            "last_added_copies": 1,
            "manual": False,
        }
        assert part.output is not None and event["output"] == {"id": part.output.id}
        assert inspected[scan_uuid]["design_material"] == truth
        assert inspected[scan_uuid]["assignment"] == event["assignment"]
        assert inspected[scan_uuid]["inspectionreport"] is not None
        report = json.loads((station.store.directory_of(record) / "inspection_report.json").read_text())
        assert report["design_material"] == truth
        assert record.station.identification is not None and record.station.identification.outcome == "identified"
        counts[part.part_id] = counts.get(part.part_id, 0) + 1
    assert state.design_processing.state == "ready" and state.design_processing.failed == []
    assert state.over_counted == [pid for pid, n in counts.items() if n > parts[pid].copies]


def _one_unidentified(station: Station, subscriber: Subscriber) -> tuple[dict[str, Any], Any]:
    try:
        station.start(RunOptions())
        result = station.loop.capture(Trigger(source="test"))
        assert result.ok and result.uuid
        verdict = next_event(subscriber, "scan.quality_control")
        state = station.state()
        record = station.events.record(result.uuid)
    finally:
        station.shutdown()  # every queued event is sent by now
    try:
        assigned = _next_or_none(subscriber, f"{PREFIX}/event/scan.assign")
    finally:
        subscriber.close()
    assert assigned is None
    assert verdict["uuid"] == result.uuid
    assert verdict["design_material"] is None and verdict["assignment"] is None
    assert verdict["qc_needs_review"] is True and verdict["qc_pass"] is None
    assert [a.scan for a in state.awaiting_identification] == [result.uuid]
    assert record is not None and record.station.identification is not None
    return verdict, record.station.identification


def _next_or_none(subscriber: Subscriber, topic: str) -> Any:
    try:
        return subscriber.next(timeout_s=1.0, topic=topic)
    except AssertionError:
        return None


def test_an_empty_tray_is_never_assigned(tmp_path: Path, broker: Broker) -> None:
    subscriber = Subscriber(broker, [f"{PREFIX}/#"])
    station = station_with_batch(tmp_path, broker, {"mock": {"empty_tray": True}}, batch_file(tmp_path / "batch"))
    verdict, identification = _one_unidentified(station, subscriber)
    assert identification.outcome == "empty_tray" and "no camera sees a part" in identification.reason
    assert verdict["qc_reasons"] == ["insufficient_evidence"]


def test_a_part_not_in_the_batch_is_never_assigned(tmp_path: Path, broker: Broker) -> None:
    subscriber = Subscriber(broker, [f"{PREFIX}/#"])
    station = station_with_batch(tmp_path, broker, {"mock": {"designs": [PIPE_CLIP]}}, batch_file(tmp_path / "batch"))
    verdict, identification = _one_unidentified(station, subscriber)
    assert identification.outcome == "not_in_batch", identification.reason
    assert verdict["qc_reasons"] == ["wrong_part"]


PROCESSED_LATER = [
    "Gantry__z_chain_guide.stl",
    "Panel_Mounting__Front_Doors__latch_x2.stl",
    "Panel_Mounting__bottom_panel_clip_x4.stl",
    "Electronics_Bay__pcb_din_clip_x3.stl",
    "Gantry__z_chain_bottom_anchor.stl",
    "Skirts__[a]_belt_guard_a_x2.stl",
    "Tools__pulley_jig.stl",
    "Z_Endstop__nozzle_probe.stl",
]


def test_processing_a_batch_never_holds_up_capture(tmp_path: Path, broker: Broker) -> None:
    """A new batch's designs are processed in the background (here from a cold cache of its own): the first part
    is captured and announced at once, and identified once the batch is processed."""
    parts = {
        f"V-{index}": (name, f"{hashlib.sha1((VORON / name).read_bytes()).hexdigest()}_SLS_PA12_GREY", 1, index)
        for index, name in enumerate(PROCESSED_LATER, start=1)
    }
    subscriber = Subscriber(broker, [f"{PREFIX}/#"])
    sections = {"designs": {"cache_dir": str(tmp_path / "cold_cache")}}
    station = station_with_batch(tmp_path, broker, sections, batch_file(tmp_path / "batch", parts))
    try:
        station.start(RunOptions())
        result = station.loop.capture(Trigger(source="test"))
        assert result.ok and result.uuid, result.error
        while_processing = station.state().design_processing
        captured = next_event(subscriber, "scan.capture")
        verdict = next_event(subscriber, "scan.quality_control")
        after = station.state().design_processing
    finally:
        station.shutdown()
        subscriber.close()
    assert captured["uuid"] == verdict["uuid"] == result.uuid
    assert while_processing.state == "processing" and while_processing.done < len(parts)
    assert after.state == "ready" and after.done == after.total == len(parts) and after.failed == []
    assert sorted(p.name for p in (tmp_path / "cold_cache").iterdir())  # the work landed in the cache


def test_the_demo_command_identifies_assigns_and_inspects(tmp_path: Path, broker: Broker) -> None:
    """The README's main job as a process: `amflow-edge run --batch` on the demo config and its batch."""
    subscriber = Subscriber(broker, ["amflow/demo-station/event/#"])
    env = demo_env(
        tmp_path,
        broker,
        AMFLOW_CAPTURE__TIMER_INTERVAL_S="0.5",
        AMFLOW_MOCK__SCENE_POOL="2",
        AMFLOW_INSPECTION__ENABLED="true",
        AMFLOW_DESIGNS__CACHE_DIR=str(DESIGN_CACHE),
    )
    command = [sys.executable, "-m", "amflow_edge.cli", "run", "--config", str(REPO / "config" / "demo.toml")]
    batch = ["--batch", str(DESIGNS / "demo_batch.toml"), "--scans", "2"]
    try:
        proc = subprocess.run([*command, *batch], capture_output=True, text=True, timeout=400, cwd=REPO, env=env)
        assert proc.returncode == 0, proc.stderr[-3000:]
        events: dict[str, dict[str, dict[str, Any]]] = {}
        while sum(len(e) for e in events.values()) < 6:
            message = subscriber.next(timeout_s=30)
            data = json.loads(message.payload)["data"]
            events.setdefault(data["uuid"], {})[message.topic.rsplit("/", 1)[1]] = data
    finally:
        subscriber.close()
    assert len(events) == 2
    for scan_uuid, by_event in events.items():
        assert sorted(by_event) == ["scan.assign", "scan.capture", "scan.quality_control"]
        record = json.loads((tmp_path / "data" / "scans" / scan_uuid / "scan.json").read_text())
        truth = record["station"]["rig"]["mock_scene"]["design_material"]
        assert by_event["scan.assign"]["design_material"] == truth
        assert by_event["scan.quality_control"]["assignment"] == by_event["scan.assign"]["assignment"]
        assert by_event["scan.quality_control"]["inspectionreport"] is not None


def test_the_state_follows_an_operators_assignment_of_an_earlier_scan(tmp_path: Path, broker: Broker) -> None:
    """The panel publishes the state when the scan on the tray changes; an assignment of an earlier scan changes the
    batch's counts and the awaiting list, and a dashboard must not wait for the next scan to see it."""
    subscriber = Subscriber(broker, [f"{PREFIX}/#"])
    station = station_with_batch(tmp_path, broker, {"mock": {"designs": [PIPE_CLIP]}}, batch_file(tmp_path / "batch"))
    try:
        station.start(RunOptions())
        first = station.loop.capture(Trigger(source="test"))
        assert first.ok and first.uuid
        next_event(subscriber, "scan.quality_control")
        second = station.loop.capture(Trigger(source="test"))  # the tray has moved on
        assert second.ok and second.uuid
        next_event(subscriber, "scan.quality_control")
        assert [a.scan for a in station.state().awaiting_identification] == [first.uuid, second.uuid]
        assert request(subscriber, "assign", {"scan": first.uuid, "part_id": "MB-80"})["status"] == "ok"
        while True:
            state = json.loads(subscriber.next(topic=f"{PREFIX}/state", timeout_s=10).payload)  # the periodic one: 30 s
            # A state another thread publishes between the assignment's commit and its event may show the new
            # count with the scan still awaiting; the one the event publishes shows both.
            awaiting = [a["scan"] for a in state["awaiting_identification"]]
            if state["copies_assigned"].get("MB-80") == 1 and first.uuid not in awaiting:
                break
    finally:
        station.shutdown()
        subscriber.close()
    assert [a["scan"] for a in state["awaiting_identification"]] == [second.uuid]
