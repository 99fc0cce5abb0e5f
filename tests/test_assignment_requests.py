"""Assignments through a real broker: session start with parts, the scan events of AM-Vision 3.7 (assign, reassign,
unassign, reject) checked against the contract, hostile requests refused with nothing changed, and restarts.

Inspection is off in these stations, so every event a test waits for is one its own step caused.
"""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path
from typing import Any

from amflow_edge.config.loading import load_config
from amflow_edge.config.station import StationConfig
from amflow_edge.inspection.designs import design_material_id
from amflow_edge.station.assignments import Assignments
from amflow_edge.station.build import build_station
from amflow_edge.station.capture import Trigger
from amflow_edge.station.station import RunOptions, Station
from amflow_edge.storage.record import CandidateRecord, IdentificationRecord
from tests.mqtt_helpers import Broker, Subscriber
from tests.station_files import REPO, write_station
from tests.test_operator_panel import FakeButtons
from tests.test_payload import EXAMPLE, assert_same_shape
from tests.test_qc_workflow import PREFIX, SCAN_KEYS, next_event, outbox_rows, request

DESIGNS = REPO / "config" / "designs"
BLOCK = design_material_id(DESIGNS / "montageblok_mb80.stl", "SLS", "PA12", "GREY")
BRACKET = design_material_id(DESIGNS / "angle_bracket_ab60.stl", "SLS", "PAGF", "BLACK")
ASSIGNMENT_KEYS = list(EXAMPLE["data"]["assignment"])
BATCH = {"id": "PRTS_SRC_102_DAT_20260309_VER_A", "title": "20260309_02A"}


def station_config(tmp_path: Path, broker: Broker) -> StationConfig:
    meshes = tmp_path / "batch_meshes"
    meshes.mkdir(exist_ok=True)
    designs = {"library": str(DESIGNS / "designs.toml"), "batch_meshes": str(meshes)}
    return load_config(write_station(tmp_path, broker.port, {"mock": {"scene_pool": 1}, "designs": designs}))


def customer_mesh(cfg: StationConfig) -> tuple[str, str]:
    """A mesh the MES dropped into the batch folder: the design library does not have it."""
    assert cfg.designs.batch_meshes is not None
    target = cfg.designs.batch_meshes / "customer_part_7.stl"
    shutil.copyfile(DESIGNS / "pipe_clip_pc16.stl", target)
    return target.name, design_material_id(target, "MJF", "PA12", "BLACK")


def start_station(cfg: StationConfig) -> Station:
    station = build_station(cfg)
    station.start(RunOptions())
    assert station.mqtt.connected.wait(10)
    return station


def parts_session(customer: tuple[str, str], copies: int = 1) -> dict[str, Any]:
    mesh, customer_id = customer
    return {
        "action": "start",
        "batch": BATCH,
        "parts": [
            {
                "part_id": "2471584",
                "part_title": "montageblok groot step",
                "design_material": BLOCK,
                "copies": 1,
                "output": {"id": 2},
            },
            {"part_id": "2471585", "part_title": "hoeksteun", "design_material": BRACKET, "copies": copies},
            {
                "part_id": "2471586",
                "part_title": "klem",
                "design_material": customer_id,
                "copies": 1,
                "output": {"id": 4},
                "mesh": mesh,
            },
        ],
        "output": {"id": 3},
    }


def captured(station: Station, subscriber: Subscriber) -> dict[str, Any]:
    result = station.loop.capture(Trigger(source="test"))
    assert result.ok and result.uuid
    scan = next_event(subscriber, "scan.capture")
    assert scan["uuid"] == result.uuid
    return scan


def assignment(station: Station, part_id: str, manual: bool) -> dict[str, Any]:
    part = next(p for p in station.sessions.current.parts if p.part_id == part_id)
    return {
        "assignment": part.assignment,
        "part_id": part_id,
        "part_title": part.part_title,
        "copies": part.copies,
        "last_added_copies": 1,
        "manual": manual,
    }


def event_of(subscriber: Subscriber, name: str, answer: dict[str, Any] | None = None) -> dict[str, Any]:
    """The next `name` event, checked against the contract; a request's answer carries the same scan."""
    raw = json.loads(subscriber.next(topic=f"{PREFIX}/event/{name}", timeout_s=60).payload)
    assert list(raw) == ["hook", "data"] and raw["hook"]["event"] == name
    assert list(raw["data"]) == SCAN_KEYS
    assert_same_shape(raw, EXAMPLE)
    data: dict[str, Any] = raw["data"]
    if data["assignment"] is not None:
        assert list(data["assignment"]) == ASSIGNMENT_KEYS
    if answer is not None:
        assert answer["status"] == "ok", answer
        assert answer["data"] == data and answer["scan"] == data["uuid"]
    return data


def changed_only(before: dict[str, Any], after: dict[str, Any], *keys: str) -> None:
    assert {k: v for k, v in after.items() if k not in keys} == {k: v for k, v in before.items() if k not in keys}
    assert after["modified"] > before["modified"]


def test_a_session_start_with_parts_gives_each_its_assignment_kept_across_a_restart(
    tmp_path: Path, broker: Broker
) -> None:
    cfg = station_config(tmp_path, broker)
    customer = customer_mesh(cfg)
    subscriber = Subscriber(broker, [f"{PREFIX}/#"])
    station = start_station(cfg)
    try:
        before = station.sessions.current
        unknown = "0" * 40 + "_SLS_PA12_GREY"
        body = parts_session(customer)
        body["parts"].append({"part_id": "9", "part_title": "x", "design_material": unknown, "copies": 1})
        refused = request(subscriber, "session", body)
        assert refused["status"] == "error", refused
        assert f"design_material {unknown} is not in the station's design library" in refused["error"]
        assert "send its mesh" in refused["error"]
        assert station.sessions.current == before

        started = request(subscriber, "session", parts_session(customer))
        assert started["status"] == "ok", started
        session = station.sessions.current
        assert session.scan_session == started["scan_session"]
        assert [p.part_id for p in session.parts] == ["2471584", "2471585", "2471586"]
        uuids = [p.assignment for p in session.parts]
        assert len(set(uuids)) == 3 and all(str(uuid.UUID(u)) == u for u in uuids)
        assert [p.output.id if p.output else None for p in session.parts] == [2, 3, 4]  # none named: the session's
        assert customer[1] in station.designs() and BLOCK in station.designs()
    finally:
        station.shutdown()

    station = start_station(cfg)
    try:
        assert station.sessions.current == session  # the same parts, the same assignment UUIDs
        assert customer[1] in station.designs()
    finally:
        station.shutdown()
        subscriber.close()


def test_the_assignment_lifecycle_over_mqtt(tmp_path: Path, broker: Broker) -> None:
    cfg = station_config(tmp_path, broker)
    customer = customer_mesh(cfg)
    subscriber = Subscriber(broker, [f"{PREFIX}/#"])
    station = start_station(cfg)
    try:
        assert request(subscriber, "session", parts_session(customer))["status"] == "ok"
        automatic = Assignments(station.events, station.db, station.sessions, cfg.station.timezone)
        first, second, third = (captured(station, subscriber) for _ in range(3))
        assert first["output"] == {"id": 3} and first["batch"] == BATCH

        # the station identifies the first scan: scan.assign, as AM-Vision's example
        automatic.identified(first["uuid"], BLOCK)
        assigned = event_of(subscriber, "scan.assign")
        changed_only(first, assigned, "modified", "design_material", "assignment", "output")
        assert assigned["assignment"] == assignment(station, "2471584", manual=False)
        assert (assigned["design_material"], assigned["output"]) == (BLOCK, {"id": 2})

        # one more of the same design than the batch ordered: no assignment, review, the part reported
        automatic.identified(third["uuid"], BLOCK)
        extra = event_of(subscriber, "scan.quality_control")
        changed_only(third, extra, "modified", "design_material", "qc_needs_review")
        assert (extra["assignment"], extra["qc_needs_review"], extra["qc_pass"]) == (None, True, None)
        assert station.state().over_counted == ["2471584"]

        # an operator (through the MES) assigns, reassigns, unassigns, rejects and takes the reject back
        answer = request(subscriber, "assign", {"scan": second["uuid"], "part_id": "2471585"})
        manual = event_of(subscriber, "scan.assign", answer)
        changed_only(second, manual, "modified", "design_material", "assignment", "output")
        assert manual["assignment"] == assignment(station, "2471585", manual=True)
        assert (manual["design_material"], manual["output"]) == (BRACKET, {"id": 3})

        answer = request(subscriber, "reassign", {"scan": second["uuid"], "part_id": "2471586", "operator": "bob"})
        moved = event_of(subscriber, "scan.reassign", answer)
        changed_only(manual, moved, "modified", "design_material", "assignment", "output")
        assert moved["assignment"] == assignment(station, "2471586", manual=True)
        assert (moved["design_material"], moved["output"]) == (customer[1], {"id": 4})

        answer = request(subscriber, "unassign", {"scan": second["uuid"]})
        loose = event_of(subscriber, "scan.unassign", answer)
        changed_only(moved, loose, "modified", "design_material", "assignment", "output")
        assert (loose["design_material"], loose["assignment"], loose["output"]) == (None, None, {"id": 3})

        answer = request(subscriber, "reject", {"scan": second["uuid"], "comment": "a part of batch 20260309_01B"})
        rejected = event_of(subscriber, "scan.reject", answer)
        changed_only(loose, rejected, "modified", "output", "qc_comment")
        assert (rejected["output"], rejected["qc_comment"]) == (None, "a part of batch 20260309_01B")

        answer = request(subscriber, "assign", {"scan": second["uuid"], "part_id": "2471585"})
        back = event_of(subscriber, "scan.assign", answer)
        assert back["assignment"] == assignment(station, "2471585", manual=True)
        assert automatic.copies_assigned() == {"2471584": 1, "2471585": 1, "2471586": 0}

        # the extra scan goes to the part it really is: the over-count is resolved
        answer = request(subscriber, "assign", {"scan": third["uuid"], "part_id": "2471586"})
        resolved = event_of(subscriber, "scan.assign", answer)
        assert resolved["design_material"] == customer[1] and resolved["qc_needs_review"] is False
        assert station.state().over_counted == []
    finally:
        station.shutdown()
        subscriber.close()
    on_disk = json.loads((cfg.station.data_root / "scans" / second["uuid"] / "scan.json").read_text())
    assert on_disk["scan"] == back  # scan.json mirrors the row and the last event
    who = [(c["change"], c["source"], c["device"]) for c in on_disk["station"]["assignments"]]
    assert who == [
        ("assign", "mqtt", "mqtt"),
        ("reassign", "mqtt", "mqtt:bob"),  # the operator the request names
        ("unassign", "mqtt", "mqtt"),
        ("reject", "mqtt", "mqtt"),
        ("assign", "mqtt", "mqtt"),
    ]


def test_hostile_and_out_of_place_requests_are_refused_and_change_nothing(tmp_path: Path, broker: Broker) -> None:
    cfg = station_config(tmp_path, broker)
    customer = customer_mesh(cfg)
    subscriber = Subscriber(broker, [f"{PREFIX}/#"])
    station = start_station(cfg)
    try:
        old = captured(station, subscriber)["uuid"]  # of the default session, before the batch's
        assert request(subscriber, "session", parts_session(customer))["status"] == "ok"
        fresh, on_block, rejected = (captured(station, subscriber)["uuid"] for _ in range(3))
        assert request(subscriber, "assign", {"scan": on_block, "part_id": "2471584"})["status"] == "ok"
        assert request(subscriber, "reject", {"scan": rejected, "comment": "foreign object"})["status"] == "ok"
        hostile: list[tuple[str, Any, str]] = [
            ("assign", {"scan": fresh, "part_id": "P404"}, "part_id 'P404' is not a part of the active session"),
            ("assign", {"scan": on_block, "part_id": "2471585"}, "send reassign"),
            ("assign", {"scan": fresh, "part_id": "2471584"}, "all 1 copies of part 2471584 are assigned"),
            ("assign", {"scan": old, "part_id": "2471585"}, "not to the active session"),
            ("assign", {"scan": "../../etc", "part_id": "2471585"}, "scan: Input should be a valid UUID"),
            ("assign", {"scan": fresh, "part_id": ""}, "part_id: String should have at least 1 character"),
            ("assign", {"scan": fresh, "part_id": 2471585}, "part_id: Input should be a valid string"),
            ("assign", {"scan": fresh, "part_id": "x" * 256}, "part_id: String should have at most 255"),
            (
                "assign",
                {"scan": fresh, "part_id": "2471585", "manual": False},
                "manual: Extra inputs are not permitted",
            ),
            ("assign", {"scan": fresh}, "part_id: Field required"),
            ("reassign", {"scan": fresh, "part_id": "2471585"}, "is not assigned; send assign"),
            ("reassign", {"scan": on_block, "part_id": "2471584"}, "is already assigned to part 2471584"),
            ("reassign", {"scan": rejected, "part_id": "2471585"}, "only a manual assign takes the reject back"),
            ("unassign", {"scan": fresh}, "nothing to unassign"),
            ("unassign", {"scan": rejected}, "only a manual assign takes the reject back"),
            ("unassign", {"scan": "6a1f0d3e-31c6-11f1-9d2c-0242ac120002"}, "is not known to this station"),
            ("unassign", {"scan": old}, "not to the active session"),
            ("reject", {"scan": fresh}, "comment: Field required"),
            ("reject", {"scan": fresh, "comment": ""}, "comment: String should have at least 1 character"),
            ("reject", {"scan": fresh, "comment": "x" * 2001}, "comment: String should have at most 2000"),
            ("reject", {"scan": rejected, "comment": "again"}, "already rejected"),
            ("reject", {"scan": old, "comment": "x"}, "not to the active session"),
            ("reject", b"", "empty body"),
            ("unassign", b'{"scan": ', "body is not valid JSON"),
        ]

        def snapshot() -> tuple[object, ...]:
            files = [(station.store.scan_dir(u) / "scan.json").read_bytes() for u in (old, fresh, on_block, rejected)]
            rows = station.db.connection().execute("SELECT * FROM scans ORDER BY uuid").fetchall()
            marks = station.db.connection().execute("SELECT * FROM scan_rejections").fetchall()
            return files, rows, marks, outbox_rows(station), station.sessions.current

        before = snapshot()
        for command, body, expected in hostile:
            answer = request(subscriber, command, body)
            assert answer["status"] == "error" and answer["command"] == command, (command, body, answer)
            assert expected in answer["error"], (command, body, answer["error"])
            assert snapshot() == before, (command, body)
    finally:
        station.shutdown()
        subscriber.close()


def test_copies_assigned_before_a_restart_count_after_it(tmp_path: Path, broker: Broker) -> None:
    cfg = station_config(tmp_path, broker)
    customer = customer_mesh(cfg)
    subscriber = Subscriber(broker, [f"{PREFIX}/#"])
    station = start_station(cfg)
    try:
        assert request(subscriber, "session", parts_session(customer, copies=2))["status"] == "ok"
        scans = [captured(station, subscriber)["uuid"] for _ in range(3)]
        assert request(subscriber, "assign", {"scan": scans[0], "part_id": "2471585"})["status"] == "ok"
        event_of(subscriber, "scan.assign")
    finally:
        station.shutdown()

    station = start_station(cfg)
    try:
        automatic = Assignments(station.events, station.db, station.sessions, cfg.station.timezone)
        assert automatic.copies_assigned() == {"2471584": 0, "2471585": 1, "2471586": 0}
        automatic.identified(scans[1], BRACKET)
        second = event_of(subscriber, "scan.assign")
        assert second["assignment"] == assignment(station, "2471585", manual=False)
        refused = request(subscriber, "assign", {"scan": scans[2], "part_id": "2471585"})
        assert refused["status"] == "error" and "all 2 copies of part 2471585 are assigned" in refused["error"]
    finally:
        station.shutdown()
        subscriber.close()


def test_the_button_confirms_the_best_candidate_on_a_station_configured_for_it(tmp_path: Path, broker: Broker) -> None:
    cfg = station_config(tmp_path, broker)
    cfg = cfg.model_copy(
        update={
            "assignment": cfg.assignment.model_copy(update={"button_confirms_identification": True}),
            "qc": cfg.qc.model_copy(update={"policy": "every", "lockout_s": 0.0}),
        }
    )
    customer = customer_mesh(cfg)
    subscriber = Subscriber(broker, [f"{PREFIX}/#"])
    buttons = FakeButtons()
    station = build_station(cfg, buttons=[buttons])
    station.start(RunOptions())
    try:
        assert station.mqtt.connected.wait(10)
        assert request(subscriber, "session", parts_session(customer))["status"] == "ok"
        scan = captured(station, subscriber)
        found = IdentificationRecord(
            outcome="material_ambiguous",
            design_material=None,
            candidates=[
                CandidateRecord(design_material=BRACKET, score=0.7),
                CandidateRecord(design_material=BLOCK, score=0.68),
            ],
            reason="same geometry in two materials that look alike on this tray",
            at=scan["created"],
        )
        station.events.annotate(
            scan["uuid"],
            lambda r: r.model_copy(update={"station": r.station.model_copy(update={"identification": found})}),
        )
        assert buttons.ready.wait(5)
        buttons.press("approve")
        confirmed = event_of(subscriber, "scan.assign")
        changed_only(scan, confirmed, "modified", "design_material", "assignment", "output")
        assert confirmed["assignment"] == assignment(station, "2471585", manual=True)
        assert confirmed["qc_operator"] is None

        buttons.press("approve")  # identified now: this press decides quality
        approved = event_of(subscriber, "scan.quality_control")
        assert (approved["qc_operator"], approved["qc_pass"]) == (True, True)
        assert approved["assignment"] == confirmed["assignment"]
    finally:
        station.shutdown()
        subscriber.close()
