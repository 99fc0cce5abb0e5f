"""The quality-control workflow through a real broker: capture → machine verdict → button → MQTT decisions.

Each step's scan.quality_control is checked field by field against PAYLOAD.md's rules.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from amflow_edge.config.loading import load_config
from amflow_edge.qc.rules import final_decision
from amflow_edge.station.build import build_station
from amflow_edge.station.capture import Trigger
from amflow_edge.station.station import RunOptions, Station
from tests.conftest import EXAMPLE_PAYLOAD
from tests.mqtt_helpers import Broker, Subscriber
from tests.station_files import write_station
from tests.test_operator_panel import FakeButtons, RecordingLamps

PREFIX = "amflow/test-station"
SCAN_KEYS = list(json.loads(EXAMPLE_PAYLOAD.read_text())["data"])
QC_FIELDS = ("inspectionreport", "qc_machine", "qc_needs_review", "qc_operator", "qc_pass", "qc_comment", "qc_reasons")


def request(subscriber: Subscriber, command: str, body: Any) -> dict[str, Any]:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    subscriber.publish(f"{PREFIX}/request/{command}", raw)
    return json.loads(subscriber.next(topic=f"{PREFIX}/response/{command}", timeout_s=120).payload)


def next_event(subscriber: Subscriber, event: str) -> dict[str, Any]:
    message = json.loads(subscriber.next(topic=f"{PREFIX}/event/{event}", timeout_s=180).payload)
    assert list(message) == ["hook", "data"] and message["hook"]["event"] == event
    assert list(message["data"]) == SCAN_KEYS
    return message["data"]


def state_where(subscriber: Subscriber, wanted: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """The operator block of the first state message (in order of publication) that satisfies `wanted`."""
    while True:
        operator: dict[str, Any] = json.loads(subscriber.next(topic=f"{PREFIX}/state").payload)["operator"]
        if wanted(operator):
            return operator


def unchanged_except(before: dict[str, Any], after: dict[str, Any], *changed: str) -> None:
    assert {k: v for k, v in after.items() if k not in changed} == {k: v for k, v in before.items() if k not in changed}


def test_capture_inspection_button_and_mqtt_decisions_in_order(tmp_path: Path, broker: Broker) -> None:
    cfg = load_config(
        write_station(
            tmp_path,
            broker.port,
            {
                "mock": {"scene_pool": 1},
                "inspection": {"enabled": True},
                "qc": {"policy": "every", "lockout_s": 0},
            },
        )
    )
    subscriber = Subscriber(broker, [f"{PREFIX}/#"])
    buttons = FakeButtons()
    lamps = RecordingLamps()
    station = build_station(cfg, buttons=[buttons], lamps=lamps)
    try:
        station.start(RunOptions())
        assert station.mqtt.connected.wait(10)
        answer = request(subscriber, "capture", {})
        assert answer["status"] == "ok"
        captured = next_event(subscriber, "scan.capture")
        assert captured["uuid"] == answer["scan"]
        assert [captured[k] for k in QC_FIELDS] == [None, None, False, None, None, None, []]

        machine = next_event(subscriber, "scan.quality_control")
        # The station identified the part (no batch: among its library), so the verdict names the design too.
        assert machine["design_material"] is not None
        unchanged_except(captured, machine, "modified", "design_material", *QC_FIELDS)
        assert machine["inspectionreport"] is not None and isinstance(machine["qc_machine"], bool)
        assert machine["qc_operator"] is None and machine["qc_comment"] is None
        assert machine["qc_pass"] == final_decision(machine["qc_machine"], machine["qc_needs_review"], None)
        verdict = "review" if machine["qc_needs_review"] else ("pass" if machine["qc_machine"] else "fail")
        operator = state_where(subscriber, lambda o: o["qc_machine"] is not None)
        assert operator == {
            "signal": verdict,
            "latest_scan": captured["uuid"],
            "awaiting_decision": captured["uuid"],
            "qc_machine": machine["qc_machine"],
            "qc_needs_review": machine["qc_needs_review"],
            "qc_reasons": machine["qc_reasons"],
            "qc_pass": machine["qc_pass"],
        }
        assert lamps.shown == ["idle", "inspecting", verdict]

        assert buttons.ready.wait(5)
        buttons.press("approve")
        approved = next_event(subscriber, "scan.quality_control")
        unchanged_except(machine, approved, "modified", "qc_operator", "qc_needs_review", "qc_pass")
        assert (approved["qc_operator"], approved["qc_needs_review"], approved["qc_pass"]) == (True, False, True)
        assert approved["modified"] > machine["modified"]
        after_press = state_where(subscriber, lambda o: o["qc_pass"] is True)
        assert after_press["awaiting_decision"] is None and after_press["signal"] == "pass"
        assert lamps.shown[-1] == "pass"

        answer = request(subscriber, "reevaluate", {"scan": captured["uuid"], "profile": "strict"})
        assert answer["status"] == "ok", answer
        again = next_event(subscriber, "scan.quality_control")
        assert answer["data"] == again
        assert (again["qc_operator"], again["qc_pass"], again["qc_needs_review"]) == (True, True, False)
        assert again["inspectionreport"] != approved["inspectionreport"]

        answer = request(
            subscriber,
            "qc",
            {
                "scan": captured["uuid"],
                "pass": False,
                "comment": "layer shift at 12 mm",
                "reasons": ["dimensional_deviation"],
                "operator": "badge-0417",
            },
        )
        assert answer["status"] == "ok", answer
        rejected = next_event(subscriber, "scan.quality_control")
        assert answer["data"] == rejected
        assert (rejected["qc_operator"], rejected["qc_pass"]) == (False, False)
        assert (rejected["qc_comment"], rejected["qc_reasons"]) == ("layer shift at 12 mm", ["dimensional_deviation"])
        unchanged_except(again, rejected, "modified", "qc_operator", "qc_pass", "qc_comment", "qc_reasons")

        record = station.events.record(captured["uuid"])
        assert record is not None
        assert [(d.source, d.device, d.passed) for d in record.station.decisions] == [
            ("button", "fake:pedal", True),
            ("mqtt", "mqtt:badge-0417", False),
        ]
    finally:
        station.shutdown()
        subscriber.close()
    on_disk = json.loads((cfg.station.data_root / "scans" / captured["uuid"] / "scan.json").read_text())
    assert on_disk["scan"] == rejected


@pytest.fixture
def quiet_station(tmp_path: Path, broker: Broker) -> Iterator[tuple[Station, Subscriber, str]]:
    cfg = load_config(write_station(tmp_path, broker.port, {"mock": {"scene_pool": 1}}))
    subscriber = Subscriber(broker, [f"{PREFIX}/response/#"])
    station = build_station(cfg)
    station.start(RunOptions())
    assert station.mqtt.connected.wait(10)
    result = station.loop.capture(Trigger(source="test"))
    assert result.ok and result.uuid
    try:
        yield station, subscriber, result.uuid
    finally:
        station.shutdown()
        subscriber.close()


def outbox_rows(station: Station) -> int:
    return int(station.db.connection().execute("SELECT COUNT(*) FROM outbox").fetchone()[0])


STORED = "{stored}"
HOSTILE = [
    ("qc", {"scan": "../../etc", "pass": True}, "scan: Input should be a valid UUID"),
    ("qc", {"scan": STORED, "pass": "yes"}, "pass: Input should be a valid boolean"),
    ("qc", {"scan": STORED, "pass": 1}, "pass: Input should be a valid boolean"),
    ("qc", {"scan": "6a1f0d3e-31c6-11f1-9d2c-0242ac120002", "pass": True}, "is not known to this station"),
    ("qc", {"scan": STORED, "pass": False, "reasons": ["made_up"]}, "unknown QualityControlReason 'made_up'"),
    ("qc", {"scan": STORED, "pass": False, "reasons": ["../x"]}, "reasons.0: String should match pattern"),
    ("qc", {"scan": STORED, "pass": True, "sudo": True}, "sudo: Extra inputs are not permitted"),
    ("qc", {"scan": STORED, "pass": True, "comment": "x" * 5000}, "comment: String should have at most 2000"),
    ("qc", {"scan": STORED}, "pass: Field required"),
    ("qc", [], "Input should be an object"),
    ("qc", b"", "empty body"),
    ("qc", b'{"scan": ', "body is not valid JSON"),
    ("qc", b"{" + b" " * 70_000 + b"}", "larger than 65536"),
    ("reevaluate", {"scan": STORED, "profile": "../../etc/passwd"}, "profile: String should match pattern"),
    ("reevaluate", {"scan": STORED, "profile": "strict"}, "inspection is disabled on this station"),
    ("session", {"action": "launch"}, "does not match any of the expected tags"),
    ("session", {"action": "end"}, "no session is active"),
    (
        "session",
        {
            "action": "start",
            "batch": {"id": "B1", "title": "b"},
            "designs": [{"design_material": "0" * 40 + "_SLS_PA12_GREY", "mesh": "../../../etc/passwd"}],
        },
        "is outside the batch mesh folder",
    ),
    ("capture", {"design_material": "0" * 40 + "_SLS_PA12_GREY"}, "is unknown to this station"),
    ("capture", {"assignment": {"assignment": "x"}}, "assignment.part_id: Field required"),
]


@pytest.mark.parametrize(
    ("command", "body", "expected"), HOSTILE, ids=[f"{c}-{i}" for i, (c, _, _) in enumerate(HOSTILE)]
)
def test_malformed_and_hostile_requests_are_refused_and_change_nothing(
    quiet_station: tuple[Station, Subscriber, str], command: str, body: Any, expected: str
) -> None:
    station, subscriber, scan_uuid = quiet_station
    if isinstance(body, dict) and body.get("scan") == STORED:
        body = {**body, "scan": scan_uuid}
    scan_json = station.store.scan_dir(scan_uuid) / "scan.json"
    before = (scan_json.read_bytes(), outbox_rows(station), station.sessions.current, station.loop.scans_stored)
    answer = request(subscriber, command, body)
    assert answer["status"] == "error" and answer["command"] == command
    assert expected in answer["error"], answer["error"]
    after = (scan_json.read_bytes(), outbox_rows(station), station.sessions.current, station.loop.scans_stored)
    assert after == before
