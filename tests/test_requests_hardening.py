"""Station requests under hostile testing: what a client allowed to send requests must not be able to do.

It must not make the station write into its own topics (response-topic injection), fill the journal
(a flood of refusals), push unbounded values into every later event, or learn about the station's
file system from an error. One station serves the broker tests of this module; every request here is
refused or harmless, and each test checks that the refused ones changed nothing.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from collections.abc import Callable, Iterator, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from pydantic import ValidationError
from structlog.testing import capture_logs

from amflow_edge.config.loading import load_config
from amflow_edge.config.station import StationConfig
from amflow_edge.inspection.designs import design_material_id
from amflow_edge.messaging.asyncapi import build_asyncapi
from amflow_edge.messaging.commands import CommandHandler
from amflow_edge.messaging.mqtt import response_topic_problem
from amflow_edge.messaging.payload import MAX_SAFE_INTEGER, Assignment, Batch, Envelope, Output
from amflow_edge.ops.log_limit import FirstSeen, RateLimitedLog
from amflow_edge.station.build import build_station
from amflow_edge.station.capture import Trigger
from amflow_edge.station.station import RunOptions, Station
from tests.conftest import EXAMPLE_PAYLOAD
from tests.mqtt_helpers import Broker, Received, Subscriber
from tests.station_files import REPO, batch_station
from tests.test_qc_workflow import PREFIX

LogEntry = MutableMapping[str, Any]


@dataclass
class Rig:
    broker: Broker
    cfg: StationConfig
    station: Station
    scan: str
    meshes: Path


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    root = tmp_path_factory.mktemp("hardening")
    broker = Broker(root)
    broker.start()
    cfg = load_config(batch_station(root, broker.port))
    meshes = root / "batch_meshes"
    station = build_station(cfg)
    try:
        station.start(RunOptions())
        assert station.mqtt.connected.wait(10)
        result = station.loop.capture(Trigger(source="test"))
        assert result.ok and result.uuid
        yield Rig(broker, cfg, station, result.uuid, meshes)
    finally:
        station.shutdown()
        broker.stop()


@pytest.fixture
def subscriber(rig: Rig) -> Iterator[Subscriber]:
    instance = Subscriber(rig.broker, [f"{PREFIX}/#", "plant/#"])
    yield instance
    instance.close()


def send(
    subscriber: Subscriber, command: str, body: Any, response_topic: str | None = None, correlation: bytes = b"c-1"
) -> None:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    properties = None
    if response_topic is not None:
        properties = Properties(PacketTypes.PUBLISH)
        properties.ResponseTopic = response_topic
        properties.CorrelationData = correlation
    subscriber.publish(f"{PREFIX}/request/{command}", raw, properties)


def answer(subscriber: Subscriber, command: str) -> dict[str, Any]:
    return dict(json.loads(subscriber.next(topic=f"{PREFIX}/response/{command}", timeout_s=60).payload))


def ask(subscriber: Subscriber, command: str, body: Any) -> dict[str, Any]:
    send(subscriber, command, body)
    return answer(subscriber, command)


def taken(subscriber: Subscriber, topic: str) -> list[Received]:
    """Every message on `topic` received so far, without waiting for more."""
    found = []
    while True:
        try:
            found.append(subscriber.next(timeout_s=0, topic=topic))
        except AssertionError:
            return found


def unchanged(rig: Rig) -> tuple[object, ...]:
    record = rig.station.events.record(rig.scan)
    return rig.station.sessions.current, rig.station.loop.scans_stored, record.scan if record else None


# 1. Response-topic injection


def test_a_response_topic_in_the_station_tree_is_ignored_and_the_answer_goes_to_the_station_topic(
    rig: Rig, subscriber: Subscriber
) -> None:
    event_topic = f"{PREFIX}/event/scan.capture"
    with capture_logs() as logs:
        send(subscriber, "capture", b"{", response_topic=event_topic)  # the attack as reported
        refused = answer(subscriber, "capture")
        assert refused["status"] == "error" and "not valid JSON" in refused["error"]

        send(subscriber, "capture", {}, response_topic=f"{PREFIX}/availability")  # carried out on its own merits
        captured = answer(subscriber, "capture")
        assert captured["status"] == "ok" and captured["scan"]

        send(subscriber, "reevaluate", b"{", response_topic=f"{PREFIX}/response/reevaluate")
        assert answer(subscriber, "reevaluate")["status"] == "error"

        send(subscriber, "qc", b"{", response_topic="plant/replies/7")  # outside the tree: honoured
        honoured = json.loads(subscriber.next(topic="plant/replies/7", timeout_s=30).payload)
        assert honoured["status"] == "error" and honoured["command"] == "qc"
        assert answer(subscriber, "qc") == honoured

    # The station publishes in order, so by now anything injected earlier has arrived.
    assert [json.loads(m.payload) for m in taken(subscriber, event_topic) if "hook" not in json.loads(m.payload)] == []
    assert [m.payload for m in taken(subscriber, f"{PREFIX}/availability") if not m.retain] == []
    assert taken(subscriber, f"{PREFIX}/response/reevaluate") == []  # answered once, not twice
    warnings = [e for e in logs if e["log_level"] == "warning" and "response topic" in e["event"]]
    assert sorted(e["response_topic"] for e in warnings) == sorted(
        [event_topic, f"{PREFIX}/availability", f"{PREFIX}/response/reevaluate"]
    )
    assert all("station's own topic" in e["reason"] for e in warnings)
    assert not [e for e in logs if e["log_level"] in ("error", "critical")]


def test_a_wildcard_response_topic_is_ignored_with_one_warning_and_never_raises(
    rig: Rig, subscriber: Subscriber
) -> None:
    wildcards = ["plant/+/replies", "plant/replies/#"]
    with capture_logs() as logs:
        for _ in range(3):
            for topic in wildcards:
                send(subscriber, "qc", b"{", response_topic=topic)
                assert answer(subscriber, "qc")["status"] == "error"
    assert not [e for e in logs if e["log_level"] in ("error", "critical")], "paho raised on a wildcard topic"
    warnings = [e for e in logs if e["log_level"] == "warning" and "response topic" in e["event"]]
    assert sorted(e["response_topic"] for e in warnings) == sorted(wildcards)  # once per topic, not per request
    assert all("wildcard" in e["reason"] for e in warnings)
    assert [m.topic for m in taken(subscriber, "plant/#")] == []


@pytest.mark.parametrize(
    ("topic", "problem"),
    [
        ("plant/mes/replies", None),
        ("amflow/other-station/x", None),
        ("amflow/test-station-2/replies", None),
        ("amflow/test-station", "station's own topic"),
        ("amflow/test-station/", "station's own topic"),
        ("amflow/test-station/state", "station's own topic"),
        ("plant/#", "wildcard"),
        ("+", "wildcard"),
        ("a\x00b", "control character"),
        ("a\x1fb", "control character"),
        ("$SYS/broker", "reserved"),
        ("x" * 65536, "longer than"),
    ],
)
def test_response_topic_rule(topic: str, problem: str | None) -> None:
    found = response_topic_problem(topic, "amflow/test-station")
    if problem is None:
        assert found is None
    else:
        assert found is not None and problem in found


# 2. Refusals are logged with a rate limit and a count


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeTimers:
    def __init__(self) -> None:
        self.pending: list[tuple[float, Callable[[], None]]] = []

    def __call__(self, delay_s: float, action: Callable[[], None]) -> None:
        self.pending.append((delay_s, action))

    def fire(self) -> None:
        pending, self.pending = self.pending, []
        for _, action in pending:
            action()


class Emitted:
    def __init__(self) -> None:
        self.lines: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, event: str, **fields: Any) -> None:
        self.lines.append((event, fields))


def test_rate_limited_log_logs_a_burst_then_counts_and_summarises_once_per_period() -> None:
    clock, timers, emitted = FakeClock(), FakeTimers(), Emitted()
    limited = RateLimitedLog(emitted, "more refused", burst=3, period_s=60.0, clock=clock, schedule=timers)
    for index in range(10):
        limited("refused", key="qc" if index % 2 else "capture", index=index)
        clock.now += 1
    assert emitted.lines == [("refused", {"index": i}) for i in range(3)]
    assert [delay for delay, _ in timers.pending] == [57.0]  # one summary scheduled for the end of the window

    clock.now = 1000.0 + 60
    timers.fire()
    assert emitted.lines[3:] == [("more refused", {"count": 7, "by": {"capture": 3, "qc": 4}, "period_s": 60.0})]
    timers.fire()
    assert len(emitted.lines) == 4  # said once

    limited("refused", key="qc", index=99)  # a new window logs in full again
    assert emitted.lines[4:] == [("refused", {"index": 99})]


def test_rate_limited_log_summarises_on_the_next_call_and_waits_for_a_timer_that_fires_early() -> None:
    clock, timers, emitted = FakeClock(), FakeTimers(), Emitted()
    limited = RateLimitedLog(emitted, "more", burst=1, period_s=60.0, clock=clock, schedule=timers)
    limited("x", key="a")
    limited("x", key="a")
    clock.now += 30
    timers.fire()  # too early: nothing said yet, and it asks to be called again when due
    assert [event for event, _ in emitted.lines] == ["x"] and [d for d, _ in timers.pending] == [30.0]
    clock.now += 31
    limited("x", key="b")  # the next line after the window first says what the window suppressed
    assert emitted.lines[1:] == [("more", {"count": 1, "by": {"a": 1}, "period_s": 60.0}), ("x", {})]
    timers.fire()
    assert len(emitted.lines) == 3


def test_first_seen_is_true_once_per_key_and_remembers_a_bounded_number() -> None:
    seen = FirstSeen(capacity=2)
    assert [seen("a"), seen("a"), seen("b"), seen("a")] == [True, False, True, False]
    assert seen("c")  # forgets "b", the least recently seen
    assert seen("a") is False and seen("b")


def test_a_flood_of_malformed_requests_is_answered_every_time_but_logged_only_a_few_times() -> None:
    answers: list[bytes] = []
    handler = CommandHandler({"qc": lambda r, reply: None}, lambda c, p, props: answers.append(p))
    with capture_logs() as logs:
        for index in range(10_000):
            handler("qc" if index % 3 else "session", b"{", None)
    assert len(answers) == 10_000
    assert all(json.loads(a)["status"] == "error" for a in answers)
    assert 1 <= len(logs) <= 10, f"{len(logs)} log lines for 10,000 refusals"


def test_refusals_beyond_the_burst_are_counted_per_command() -> None:
    clock, timers, emitted = FakeClock(), FakeTimers(), Emitted()
    refusals = RateLimitedLog(emitted, "more requests refused", burst=5, period_s=60.0, clock=clock, schedule=timers)
    answers: list[bytes] = []
    handler = CommandHandler({"qc": lambda r, reply: None}, lambda c, p, props: answers.append(p), refusal_log=refusals)
    for index in range(10_000):
        handler("qc" if index % 4 else "nonsense", b"{", None)
    clock.now += 60
    timers.fire()
    assert len(answers) == 10_000
    assert [event for event, _ in emitted.lines] == ["request refused"] * 5 + ["more requests refused"]
    assert emitted.lines[0][1]["command"] == "nonsense" and "unknown command" in emitted.lines[0][1]["error"]
    assert emitted.lines[-1][1]["count"] == 9_995
    assert emitted.lines[-1][1]["by"] == {"(unknown command)": 2_500 - 2, "qc": 7_500 - 3}


# 3. Bounds on everything that goes into the payload


def session_start(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"action": "start", "batch": {"id": "B1", "title": "T"}, "designs": [], "output": {"id": 3}}
    body.update(changes)
    return body


ASSIGNMENT = {
    "assignment": "8801b334-7012-46e3-aeba-f2a2683a8f90",
    "part_id": "2471584",
    "part_title": "bracket",
    "copies": 4,
    "last_added_copies": 1,
    "manual": False,
}
LONG_DESIGN = "0" * 40 + "_SLS_" + "P" * 300 + "_GREY"
OUT_OF_BOUNDS = [
    ("session", session_start(batch={"id": "B1", "title": "T" * 60000}), "batch.title", "at most 255 characters"),
    ("session", session_start(batch={"id": "B" * 256, "title": "T"}), "batch.id", "at most 255 characters"),
    ("session", session_start(output={"id": 10**30}), "output.id", f"less than or equal to {MAX_SAFE_INTEGER}"),
    ("session", session_start(output={"id": 2**53}), "output.id", f"less than or equal to {MAX_SAFE_INTEGER}"),
    ("session", session_start(output={"id": -1}), "output.id", "greater than or equal to 0"),
    (
        "session",
        session_start(designs=[{"design_material": LONG_DESIGN, "mesh": "a.stl"}]),
        "designs.0.design_material",
        "at most 255 characters",
    ),
    (
        "capture",
        {"assignment": {**ASSIGNMENT, "part_id": "9" * 256}},
        "assignment.part_id",
        "at most 255 characters",
    ),
    (
        "capture",
        {"assignment": {**ASSIGNMENT, "part_title": "t" * 256}},
        "assignment.part_title",
        "at most 255 characters",
    ),
    (
        "capture",
        {"assignment": {**ASSIGNMENT, "assignment": "a" * 256}},
        "assignment.assignment",
        "at most 255 characters",
    ),
    (
        "capture",
        {"assignment": {**ASSIGNMENT, "copies": 2**63}},
        "assignment.copies",
        f"less than or equal to {MAX_SAFE_INTEGER}",
    ),
    (
        "capture",
        {"assignment": {**ASSIGNMENT, "last_added_copies": -1}},
        "assignment.last_added_copies",
        "greater than or equal to 0",
    ),
    ("capture", {"design_material": LONG_DESIGN}, "design_material", "at most 255 characters"),
    ("qc", {"scan": "{stored}", "pass": True, "comment": "c" * 2001}, "comment", "at most 2000 characters"),
    ("qc", {"scan": "{stored}", "pass": True, "operator": "o" * 256}, "operator", "at most"),
    ("qc", {"scan": "{stored}", "pass": False, "reasons": ["warp"] * 33}, "reasons", "at most 32 items"),
]


@pytest.mark.parametrize(
    ("command", "body", "field", "bound"), OUT_OF_BOUNDS, ids=[f"{c}-{f}" for c, _, f, _ in OUT_OF_BOUNDS]
)
def test_out_of_bound_values_are_refused_naming_field_and_bound_and_change_nothing(
    rig: Rig, subscriber: Subscriber, command: str, body: dict[str, Any], field: str, bound: str
) -> None:
    if body.get("scan") == "{stored}":
        body = {**body, "scan": rig.scan}
    before = unchanged(rig)
    refused = ask(subscriber, command, body)
    assert refused["status"] == "error", refused
    assert f"{field}: " in refused["error"] and bound in refused["error"], refused["error"]
    assert unchanged(rig) == before


def test_values_at_the_bounds_are_accepted() -> None:
    assert Output(id=MAX_SAFE_INTEGER).id == MAX_SAFE_INTEGER and Output(id=0).id == 0
    assert Batch(id="B" * 255, title="T" * 255).title == "T" * 255
    assert Assignment.model_validate({**ASSIGNMENT, "copies": MAX_SAFE_INTEGER, "last_added_copies": 0})
    Envelope.model_validate_json(EXAMPLE_PAYLOAD.read_text())


@pytest.mark.parametrize(
    ("field", "value"),
    [("qc_comment", "c" * 2001), ("qc_reasons", ["warp"] * 33), ("qc_reasons", ["Not An Id"])],
)
def test_a_scan_with_out_of_bound_quality_control_fields_is_not_published(field: str, value: Any) -> None:
    example = json.loads(EXAMPLE_PAYLOAD.read_text())
    example["data"][field] = value
    with pytest.raises(ValidationError):
        Envelope.model_validate(example)


def test_the_bounds_are_in_the_published_schemas() -> None:
    schemas = build_asyncapi()["components"]["schemas"]
    assert schemas["Output"]["properties"]["id"]["maximum"] == MAX_SAFE_INTEGER
    assert schemas["Output"]["properties"]["id"]["minimum"] == 0
    assert schemas["Batch"]["properties"]["title"]["maxLength"] == 255
    assert schemas["Assignment"]["properties"]["copies"]["maximum"] == MAX_SAFE_INTEGER
    assert schemas["Assignment"]["properties"]["part_id"]["maxLength"] == 255
    envelope = Envelope.model_json_schema()["$defs"]
    assert envelope["Scan"]["properties"]["qc_comment"]["anyOf"][0]["maxLength"] == 2000
    assert envelope["Scan"]["properties"]["qc_reasons"]["maxItems"] == 32
    assert envelope["Scan"]["properties"]["design_material"]["anyOf"][0]["maxLength"] == 255


# 4. Re-evaluation with an unknown profile


def test_an_unknown_profile_is_refused_with_the_known_names_and_no_path(rig: Rig, subscriber: Subscriber) -> None:
    before = unchanged(rig)
    refused = ask(subscriber, "reevaluate", {"scan": rig.scan, "profile": "nosuch"})
    assert refused["status"] == "error"
    assert "'nosuch'" in refused["error"] and "default, strict" in refused["error"], refused["error"]
    assert "path" not in refused["error"] and ".toml" not in refused["error"] and "/" not in refused["error"]
    assert unchanged(rig) == before


# 5. Batch designs: errors name the file as the request did, never a hash or an absolute path


def leaks(rig: Rig, error: str, *files: Path) -> list[str]:
    secrets = [str(rig.meshes), str(rig.meshes.resolve()), str(rig.cfg.station.state_dir.parent)]
    secrets += [hashlib.sha1(f.read_bytes()).hexdigest() for f in files]
    return [s for s in secrets if s in error]


def refused_session(rig: Rig, subscriber: Subscriber, mesh: str, design_material: str) -> str:
    before = unchanged(rig)
    body = session_start(designs=[{"design_material": design_material, "mesh": mesh}])
    refused = ask(subscriber, "session", body)
    assert refused["status"] == "error", refused
    assert unchanged(rig) == before
    return str(refused["error"])


def test_a_non_mesh_file_in_the_batch_folder_is_named_but_its_hash_and_the_folder_are_not(
    rig: Rig, subscriber: Subscriber
) -> None:
    notes = rig.meshes / "sub" / "notes.txt"
    notes.parent.mkdir(exist_ok=True)
    notes.write_text("the MES password is hunter2\n")
    error = refused_session(rig, subscriber, "sub/notes.txt", "0" * 40 + "_SLS_PA12_GREY")
    assert "'sub/notes.txt'" in error and "not a mesh file" in error and ".stl" in error, error
    assert leaks(rig, error, notes) == []
    assert not re.search(r"[0-9a-f]{40}", error.replace("0" * 40, "")), error


def test_a_mesh_that_does_not_match_its_id_is_named_without_its_hash(rig: Rig, subscriber: Subscriber) -> None:
    mesh = rig.meshes / "customer_part_9.stl"
    shutil.copyfile(REPO / "config" / "designs" / "angle_bracket_ab60.stl", mesh)
    right = design_material_id(mesh, "MJF", "PA12", "BLACK")
    error = refused_session(rig, subscriber, mesh.name, "f" * 40 + right[40:])
    assert "'customer_part_9.stl'" in error and "SHA-1" in error and "send the mesh file" in error, error
    assert leaks(rig, error, mesh) == []


@pytest.mark.parametrize(
    ("mesh", "expected"),
    [
        ("missing.stl", "'missing.stl' is not in the batch mesh folder"),
        ("../station.toml", "'../station.toml' is outside the batch mesh folder"),
        ("sub", "'sub' is not a file"),
        ("loop.stl", "'loop.stl' cannot be resolved"),
        ("nul\x00.stl", "'nul\\x00.stl' is not a usable file name"),
        ("é" * 200 + ".stl", "cannot be looked up (File name too long)"),
    ],
)
def test_missing_outside_and_folder_meshes_are_named_without_the_station_paths(
    rig: Rig, subscriber: Subscriber, mesh: str, expected: str
) -> None:
    (rig.meshes / "sub").mkdir(exist_ok=True)
    if not (rig.meshes / "loop.stl").is_symlink():
        (rig.meshes / "loop.stl").symlink_to("loop.stl")
    error = refused_session(rig, subscriber, mesh, "0" * 40 + "_SLS_PA12_GREY")
    assert expected in error, error
    assert leaks(rig, error) == []
