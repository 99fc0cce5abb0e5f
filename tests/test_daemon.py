"""End to end through a real broker: trigger → five images on disk → scan.capture as AM-Vision sends it."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from amflow_edge.config.loading import load_config
from amflow_edge.config.station import StationConfig
from amflow_edge.station.build import build_station
from amflow_edge.station.capture import Trigger
from amflow_edge.station.station import RunOptions, Station
from amflow_edge.storage.record import ScanRecord
from tests.conftest import EXAMPLE_PAYLOAD
from tests.mqtt_helpers import Broker, Subscriber
from tests.station_files import demo_env
from tests.test_payload import assert_same_shape

REPO = Path(__file__).resolve().parent.parent
EXAMPLE: dict[str, Any] = json.loads(EXAMPLE_PAYLOAD.read_text())
PREFIX = "amflow/demo-station"


def configure(tmp_path: Path, broker: Broker, **mock: Any) -> StationConfig:
    cfg = load_config(REPO / "config" / "demo.toml")
    return cfg.model_copy(
        update={
            "station": cfg.station.model_copy(update={"data_root": tmp_path / "data", "state_dir": tmp_path / "state"}),
            "mqtt": cfg.mqtt.model_copy(update={"port": broker.port}),
            "mock": cfg.mock.model_copy(update={"scene_pool": 1, **mock}),
            "capture": cfg.capture.model_copy(update={"timer_interval_s": None}),
            "inspection": cfg.inspection.model_copy(update={"enabled": False}),
        }
    )


@pytest.fixture
def station(tmp_path: Path, broker: Broker) -> Iterator[Station]:
    instance = build_station(configure(tmp_path, broker))
    instance.start(RunOptions())
    assert instance.mqtt.connected.wait(10)
    yield instance
    instance.shutdown()


@pytest.fixture
def subscriber(broker: Broker) -> Iterator[Subscriber]:
    sub = Subscriber(broker, [f"{PREFIX}/#"])
    yield sub
    sub.close()


def test_availability_is_retained_so_late_subscribers_see_it(
    station: Station, subscriber: Subscriber, broker: Broker
) -> None:
    assert subscriber.next(topic=f"{PREFIX}/availability").payload == b"online"
    late = Subscriber(broker, [f"{PREFIX}/availability", f"{PREFIX}/state"])
    try:
        availability = late.next(topic=f"{PREFIX}/availability")
        assert availability.payload == b"online" and availability.retain
        state = late.next(topic=f"{PREFIX}/state")
        assert state.retain and json.loads(state.payload)["scan_session"] == station.scan_session
    finally:
        late.close()


def test_scan_capture_arrives_exactly_in_the_am_vision_shape(station: Station, subscriber: Subscriber) -> None:

    assert station.loop.submit(Trigger(source="test"))
    message = subscriber.next(topic=f"{PREFIX}/event/scan.capture")
    body = json.loads(message.payload)
    assert_same_shape(body, EXAMPLE)
    assert body["hook"] == {
        "id": 13,
        "event": "scan.capture",
        "target": f"mqtt://127.0.0.1:{station.cfg.mqtt.port}/{PREFIX}/event/scan.capture",
    }
    assert body["data"]["batch"] == {"id": "DEMO_BATCH_001", "title": "demo batch"}
    assert body["data"]["scan_session"] == station.scan_session
    assert len(message.user_properties["event_id"]) == 36

    # The directory existed before the event went out, whole: five readable PNGs of the configured size.
    scan_dir = station.cfg.station.data_root / "scans" / body["data"]["uuid"]
    for index, camera in enumerate(station.cfg.cameras, start=1):
        image = cv2.imread(str(scan_dir / f"scan_cam{index:02d}.png"), cv2.IMREAD_UNCHANGED)
        assert image is not None and image.shape == (camera.height, camera.width) and image.dtype == "uint8"
    record = ScanRecord.model_validate_json((scan_dir / "scan.json").read_bytes())
    assert record.scan.model_dump() == body["data"]
    assert record.station.cameras["cam03"].serial == "40012303"
    assert record.station.rig["mock_scene"]["design_material"]


def test_capture_request_over_mqtt_is_answered_with_the_scan(
    station: Station, subscriber: Subscriber, broker: Broker
) -> None:
    properties = Properties(PacketTypes.PUBLISH)
    properties.ResponseTopic = "plant/mes/replies"
    properties.CorrelationData = b"req-42"
    replies = Subscriber(broker, ["plant/mes/replies"])
    try:
        subscriber.publish(f"{PREFIX}/request/capture", b"{}", properties)
        response = json.loads(subscriber.next(topic=f"{PREFIX}/response/capture").payload)
        assert response["status"] == "ok"
        event = json.loads(subscriber.next(topic=f"{PREFIX}/event/scan.capture").payload)
        assert event["data"]["uuid"] == response["scan"]
        assert json.loads(replies.next().payload)["scan"] == response["scan"]
    finally:
        replies.close()


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"{not json", "not valid JSON"),
        (b'{"design_material": "../../etc/passwd"}', "design_material"),
        (b'{"surprise": 1}', "surprise: Extra inputs are not permitted"),
        (b"x" * 70_000, "larger than"),
    ],
)
def test_bad_capture_requests_get_an_error_answer_and_change_nothing(
    station: Station, subscriber: Subscriber, body: bytes, expected: str
) -> None:
    subscriber.publish(f"{PREFIX}/request/capture", body)
    response = json.loads(subscriber.next(topic=f"{PREFIX}/response/capture").payload)
    assert response["status"] == "error" and expected in response["error"]
    assert [p.name for p in (station.cfg.station.data_root / "scans").iterdir()] == [".incoming"]


def test_unknown_command_is_refused(station: Station, subscriber: Subscriber) -> None:
    subscriber.publish(f"{PREFIX}/request/selfdestruct", b"{}")
    response = json.loads(subscriber.next(topic=f"{PREFIX}/response/selfdestruct").payload)
    assert response == {
        "status": "error",
        "command": "selfdestruct",
        "scan": None,
        "scan_session": None,
        "data": None,
        "resent": None,
        "error": "unknown command 'selfdestruct'; known commands: "
        "assign, capture, qc, reassign, reevaluate, reject, resend, session, unassign",
    }


def test_failed_grab_stores_nothing_publishes_nothing_and_the_station_carries_on(
    tmp_path: Path, broker: Broker, subscriber: Subscriber
) -> None:
    station = build_station(configure(tmp_path, broker, fail_camera="cam04"))
    station.start(RunOptions())
    try:
        result = station.loop.capture(Trigger(source="test"))
        assert not result.ok and result.error is not None and "cam04" in result.error
        assert [p.name for p in (tmp_path / "data" / "scans").iterdir()] == [".incoming"]
        assert list((tmp_path / "data" / "scans" / ".incoming").iterdir()) == []
        assert station.loop.scans_failed == 1
        # The state on connect may say "starting" (for seconds on a loaded machine); the station must come to
        # "running" and stay there.
        states = [json.loads(subscriber.next(topic=f"{PREFIX}/state").payload)]
        while states[-1]["mode"] != "running":
            states.append(json.loads(subscriber.next(topic=f"{PREFIX}/state").payload))
        while True:
            try:
                states.append(json.loads(subscriber.next(timeout_s=1.0, topic=f"{PREFIX}/state").payload))
            except AssertionError:
                break
        assert states[-1]["mode"] == "running", [state["mode"] for state in states]
    finally:
        station.shutdown()
    with pytest.raises(AssertionError):
        subscriber.next(timeout_s=0.5, topic=f"{PREFIX}/event/scan.capture")


def test_clean_stop_says_offline(tmp_path: Path, broker: Broker, subscriber: Subscriber) -> None:
    station = build_station(configure(tmp_path, broker))
    station.start(RunOptions())
    assert subscriber.next(topic=f"{PREFIX}/availability").payload == b"online"
    station.shutdown()
    assert subscriber.next(topic=f"{PREFIX}/availability").payload == b"offline"


def test_the_daemon_command_runs_scans_and_exits(tmp_path: Path, broker: Broker, subscriber: Subscriber) -> None:
    """The demo's path: `amflow-edge run --scans 2` as a process, events seen by a plain subscriber. The timer is
    faster than a capture, and still no third scan is taken."""
    env = demo_env(tmp_path, broker, AMFLOW_CAPTURE__TIMER_INTERVAL_S="0.05", AMFLOW_MOCK__SCENE_POOL="2")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "amflow_edge.cli",
            "run",
            "--config",
            str(REPO / "config" / "demo.toml"),
            "--scans",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=REPO,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    uuids = [
        json.loads(subscriber.next(topic=f"{PREFIX}/event/scan.capture").payload)["data"]["uuid"] for _ in range(2)
    ]
    assert sorted(p.name for p in (tmp_path / "data" / "scans").iterdir() if p.name != ".incoming") == sorted(uuids)
    log_lines = [json.loads(line) for line in proc.stderr.splitlines() if line.startswith("{")]
    stored = [line for line in log_lines if line.get("event") == "scan stored"]
    assert sorted(line["scan"] for line in stored) == sorted(uuids)  # the scan uuid is bound to its log lines


def test_one_shot_capture_command_stores_and_publishes(tmp_path: Path, broker: Broker, subscriber: Subscriber) -> None:
    env = demo_env(tmp_path, broker, AMFLOW_MOCK__SCENE_POOL="1")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "amflow_edge.cli",
            "capture",
            "--config",
            str(REPO / "config" / "demo.toml"),
            "--design-material",
            "6d2e1b64c586b7a2dad9eb34a961cc4a513751b6_SLS_PA12_GREY",
        ],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=REPO,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    scan_dir = Path(proc.stdout.strip())
    event = json.loads(subscriber.next(topic=f"{PREFIX}/event/scan.capture").payload)
    assert scan_dir == tmp_path / "data" / "scans" / event["data"]["uuid"]
    assert event["data"]["design_material"] == "6d2e1b64c586b7a2dad9eb34a961cc4a513751b6_SLS_PA12_GREY"
    assert (scan_dir / "scan_cam05.png").is_file()


def test_schema_command_prints_the_envelope_schema(capsys: pytest.CaptureFixture[str]) -> None:
    from amflow_edge.cli.main import main

    assert main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert list(schema["properties"]) == ["hook", "data"]
    assert list(schema["$defs"]["Scan"]["properties"]) == list(EXAMPLE["data"])
    assert schema["additionalProperties"] is False
