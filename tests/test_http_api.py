"""The HTTP API of a running station: what every event's URLs serve, the screen's reads, decisions over HTTP.

One station for the module (the mock on quarter resolution, inspection and identification on, the demo batch),
a real mosquitto, the real uvicorn server on a free loopback port, and a plain HTTP client.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
import pytest

from amflow_edge.cli.station import use_batch_file
from amflow_edge.station.capture import Trigger
from amflow_edge.station.station import RunOptions, Station
from tests.http_client import Api, EventStream
from tests.http_station import MES_TOKEN, PIN, base_url, http_station
from tests.mqtt_helpers import Broker, Subscriber
from tests.station_files import REPO

PREFIX = "amflow/test-station"
SCANS = 3
VOLATILE = {"modified"}


@dataclass
class Served:
    station: Station
    api: Api
    base: str
    subscriber: Subscriber
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    """(event name, envelope) in the order published."""
    uuids: list[str] = field(default_factory=list)

    def next_event(self, name: str, scan: str, timeout_s: float = 60.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while True:
            message = self.subscriber.next(timeout_s=max(0.1, deadline - time.monotonic()))
            event = message.topic.rsplit("/", 1)[-1]
            envelope = json.loads(message.payload)
            self.events.append((event, envelope))
            if event == name and envelope["data"]["uuid"] == scan:
                return envelope

    def last_data(self, scan: str) -> dict[str, Any]:
        return next(env["data"] for _, env in reversed(self.events) if env["data"]["uuid"] == scan)

    def login(self, operator: str = "anna") -> Api:
        answer = self.api.post("/api/login", {"operator": operator, "pin": PIN})
        assert answer.status == 200, answer.body
        return Api(self.base, token=answer.json()["token"])


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("http")
    broker = Broker(root)
    broker.start()
    subscriber = Subscriber(broker, [f"{PREFIX}/event/#"])
    station = http_station(
        root / "station",
        broker.port,
        {"mock": {"seed": 11, "scene_pool": 0}, "inspection": {"enabled": True}, "http": {"requests_per_minute": 1000}},
    )
    use_batch_file(station, REPO / "config" / "designs" / "demo_batch.toml")
    station.start(RunOptions())
    served = Served(station, Api(base_url(station)), base_url(station), subscriber)
    try:
        for _ in range(SCANS):
            result = station.loop.capture(Trigger(source="test"))
            assert result.ok and result.uuid, result.error
            served.uuids.append(result.uuid)
        for scan in served.uuids:
            served.next_event("scan.quality_control", scan, timeout_s=240)
        yield served
    finally:
        served.api.close()
        station.shutdown()
        subscriber.close()
        broker.stop()


def png_size(data: bytes) -> tuple[int, int]:
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert image is not None, "not a PNG"
    return image.shape[1], image.shape[0]


def test_every_url_of_every_event_serves_what_the_event_and_the_disk_hold(served: Served) -> None:
    seen = 0
    for _, envelope in served.events:
        data = envelope["data"]
        scan = served.api.get(data["url"])
        assert scan.status == 200 and scan.headers["content-type"] == "application/json"
        assert list(scan.json()) == list(data)  # the 19 keys in payload order
        assert scan.json() == served.last_data(data["uuid"])  # the scan as its last event carried it
        directory = served.station.store.scan_dir(data["uuid"])
        assert len(data["scan_urls"]) == len(data["scan_urls_full"]) == 5
        for number, (short, full) in enumerate(zip(data["scan_urls"], data["scan_urls_full"], strict=True), 1):
            stored = (directory / f"scan_cam{number:02d}.png").read_bytes()
            for url in (short, full):
                image = served.api.get(url)
                assert image.status == 200, (url, image.body[:200])
                assert image.headers["content-type"] == "image/png"
                assert image.body == stored, url
                assert image.headers["etag"] and image.headers["last-modified"]
                again = served.api.get(url, {"If-None-Match": image.headers["etag"]})
                assert again.status == 304 and again.body == b""
        seen += 1
    assert seen >= SCANS * 2  # scan.capture and the verdict of each scan, at least


def test_the_report_and_overlays_are_the_inspection_files(served: Served) -> None:
    for scan in served.uuids:
        data = served.last_data(scan)
        directory = served.station.store.scan_dir(scan)
        report = served.api.get(f"/api/scan/{scan}/report/")
        assert report.status == 200 and report.body == (directory / "inspection_report.json").read_bytes()
        assert report.json()["id"] == data["inspectionreport"]
        overlays = served.api.get(f"/api/scan/{scan}/overlays.png")
        assert overlays.status == 200 and overlays.body == (directory / "inspection_overlays.png").read_bytes()
        assert png_size(overlays.body) == (1920, 1064)  # as the route's description says


def test_the_detail_shows_identification_inspection_and_cameras(served: Served) -> None:
    session = served.station.sessions.current
    for scan in served.uuids:
        record = served.station.events.record(scan)
        assert record is not None
        detail = served.api.get(f"/api/scan/{scan}/detail/")
        assert detail.status == 200
        body = detail.json()
        assert body["scan"] == record.scan.model_dump(mode="json")
        station = body["station"]
        assert station["captured_at"] == record.scan.created
        assert station["trigger_source"] == "test"
        assert [c["camera"] for c in station["cameras"]] == [f"cam{i:02d}" for i in range(1, 6)]
        assert [c["url"] for c in station["cameras"]] == record.scan.scan_urls_full
        assert station["cameras"][0]["serial"] == record.station.cameras["cam01"].serial
        found = record.station.identification
        assert found is not None and station["identification"]["outcome"] == found.outcome
        parts = {p.design_material: p for p in session.parts}
        for candidate in station["identification"]["candidates"]:
            part = parts.get(candidate["design_material"])
            assert candidate["part_id"] == (part.part_id if part else None)
        inspection = station["inspection"]
        assert inspection["report"] == record.scan.inspectionreport
        assert inspection["qc_machine"] == record.scan.qc_machine
        assert station["overlays"] == f"/api/scan/{scan}/overlays.png"


def test_listing_pages_newest_first_and_filters(served: Served) -> None:
    newest_first = list(reversed(served.uuids))
    pages, cursor = [], None
    while True:
        page = served.api.get("/api/scans/?limit=1" + (f"&cursor={cursor}" if cursor else ""))
        assert page.status == 200, page.body
        pages.append([s["uuid"] for s in page.json()["items"]])
        cursor = page.json()["next_cursor"]
        if cursor is None:
            break
    assert [u for p in pages for u in p] == newest_first and all(len(p) == 1 for p in pages)
    everything = served.api.get("/api/scans/?limit=200").json()["items"]
    assert [s["uuid"] for s in everything] == newest_first
    assert everything[0] == json.loads(served.api.get(f"/api/scan/{newest_first[0]}/").body)

    def uuids(query: str) -> list[str]:
        answer = served.api.get(f"/api/scans/?{query}")
        assert answer.status == 200, (query, answer.body)
        return [s["uuid"] for s in answer.json()["items"]]

    scans = {s["uuid"]: s for s in everything}
    expected = {
        "qc=passed": [u for u in newest_first if scans[u]["qc_pass"] is True],
        "qc=failed": [u for u in newest_first if scans[u]["qc_pass"] is False],
        "qc=review": [u for u in newest_first if scans[u]["qc_needs_review"]],
        "qc=pending": [u for u in newest_first if scans[u]["qc_pass"] is None and not scans[u]["qc_needs_review"]],
        "needs_review=true": [u for u in newest_first if scans[u]["qc_needs_review"]],
        "needs_review=false": [u for u in newest_first if not scans[u]["qc_needs_review"]],
        "unassigned=true": [u for u in newest_first if scans[u]["assignment"] is None],
        "unassigned=false": [u for u in newest_first if scans[u]["assignment"] is not None],
        "batch=DEMO_BATCH_001": newest_first,
        "batch=OTHER": [],
        f"session={served.station.scan_session}": newest_first,
        "session=00000000-0000-4000-8000-000000000000": [],
    }
    for query, want in expected.items():
        assert uuids(query) == want, query
    middle = scans[served.uuids[1]]["created"]
    assert uuids(f"since={middle.replace('+', '%2B')}") == newest_first[:2]
    assert uuids(f"until={middle.replace('+', '%2B')}") == newest_first[2:]
    as_utc = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(0))  # long ago
    assert uuids(f"since={as_utc}Z") == newest_first
    for bad in ("limit=0", "limit=201", "qc=maybe", "cursor=bm9wZQ", "since=yesterday", "unassigned=perhaps"):
        answer = served.api.get(f"/api/scans/?{bad}")
        assert answer.status == 422 and answer.json()["error"], bad


def test_parts_list_the_batch_with_its_counts(served: Served) -> None:
    answer = served.api.get("/api/parts/")
    assert answer.status == 200
    body = answer.json()
    session = served.station.sessions.current
    assert body["batch"] == {"id": "DEMO_BATCH_001", "title": "demo batch"}
    assert body["scan_session"] == session.scan_session
    counts = served.station.state().copies_assigned
    assert {p["part_id"]: p["assigned"] for p in body["parts"]} == counts
    assert sum(counts.values()) == sum(1 for u in served.uuids if served.last_data(u)["assignment"] is not None)
    outputs = [p["output"]["id"] for p in body["parts"] if p["output"] is not None]
    assert outputs == sorted(outputs)  # grouped by output
    by_id = {p.part_id: p for p in session.parts}
    for part in body["parts"]:
        assert part["assignment"] == by_id[part["part_id"]].assignment
        assert part["copies"] == by_id[part["part_id"]].copies


def test_state_and_reasons(served: Served) -> None:
    state = served.api.get("/api/state/").json()
    assert state["station"] == "test-station" and state["mode"] == "running"
    assert state["scan_session"] == served.station.scan_session and state["last_scan"] == served.uuids[-1]
    reasons = served.api.get("/api/reasons/").json()
    catalogue = served.station.decisions._reasons
    assert [r["id"] for r in reasons["reasons"]] == [r.id for r in catalogue.reasons]
    assert {r["category"] for r in reasons["reasons"]} <= {c["id"] for c in reasons["categories"]}


def test_a_decision_over_http_is_the_same_event_as_over_mqtt(served: Served) -> None:
    scan = served.uuids[0]
    decision = {"pass": False, "reasons": ["warp"], "comment": "bent at the tab"}
    served.subscriber.publish(
        f"{PREFIX}/request/qc", json.dumps({"scan": scan, **decision, "operator": "anna"}).encode()
    )
    over_mqtt = served.next_event("scan.quality_control", scan)
    stream = EventStream(served.base)
    live = stream.events()
    assert next(live)[0] == "state"
    operator = served.login("anna")
    try:
        flipped = operator.post(f"/api/scan/{scan}/qc/", {"passed": True})
        assert flipped.status == 200 and flipped.json()["data"]["qc_operator"] is True
        assert served.next_event("scan.quality_control", scan)["data"]["qc_pass"] is True
        answer = operator.post(
            f"/api/scan/{scan}/qc/", {"passed": False, "reasons": ["warp"], "comment": "bent at the tab"}
        )
        over_http = served.next_event("scan.quality_control", scan)
    finally:
        operator.close()
    assert answer.status == 200, answer.body
    response = answer.json()
    assert response["status"] == "ok" and response["command"] == "qc" and response["data"] == over_http["data"]
    assert over_http["hook"] == over_mqtt["hook"]
    same = {k: v for k, v in over_http["data"].items() if k not in VOLATILE}
    assert same == {k: v for k, v in over_mqtt["data"].items() if k not in VOLATILE}
    assert over_http["data"]["qc_operator"] is False and over_http["data"]["qc_reasons"] == ["warp"]
    record = served.station.events.record(scan)
    assert record is not None
    assert [(d.source, d.device) for d in record.station.decisions[-3:]] == [
        ("mqtt", "mqtt:anna"),
        ("http", "http:anna"),
        ("http", "http:anna"),
    ]
    stream.close()


def test_the_event_stream_sends_the_state_first_then_every_scan_event(served: Served) -> None:
    stream = EventStream(served.base)
    try:
        assert stream.response.status == 200
        assert stream.response.getheader("content-type", "").startswith("text/event-stream")
        live = stream.events()
        event, data = next(live)
        assert event == "state" and json.loads(data)["station"] == "test-station"
        assert stream.retry is not None
        operator = Api(served.base, token=MES_TOKEN)  # the integration's static token
        scan = served.uuids[1]
        answer = operator.post(f"/api/scan/{scan}/qc/", {"passed": True, "comment": "fine"})
        assert answer.status == 200, answer.body
        published = served.next_event("scan.quality_control", scan)
        stream.settimeout(10)
        for event, data in live:
            if event == "scan":
                pushed = json.loads(data)
                break
        assert pushed == {"event": "scan.quality_control", "scan": published["data"]}
        record = served.station.events.record(scan)
        assert record is not None and record.station.decisions[-1].device == "http:mes"
        operator.close()
    finally:
        stream.close()


def test_assignments_over_http_go_through_the_station_rules(served: Served) -> None:
    operator = served.login("ben")
    try:
        scan = next(u for u in served.uuids if served.last_data(u)["assignment"] is not None)
        part = served.last_data(scan)["assignment"]["part_id"]
        again = operator.post(f"/api/scan/{scan}/assign/", {"part_id": part})
        assert again.status == 409 and "reassign" in again.json()["error"]
        unassigned = operator.post(f"/api/scan/{scan}/unassign/")
        assert unassigned.status == 200, unassigned.body
        event = served.next_event("scan.unassign", scan)
        assert event["data"] == unassigned.json()["data"] and event["data"]["assignment"] is None
        assigned = operator.post(f"/api/scan/{scan}/assign/", {"part_id": part})
        assert assigned.status == 200, assigned.body
        event = served.next_event("scan.assign", scan)
        assert event["data"]["assignment"]["part_id"] == part and event["data"]["assignment"]["manual"] is True
        unknown = operator.post("/api/scan/0f9e1c2a-0000-11f1-8000-000000000000/reject/", {"comment": "x"})
        assert unknown.status == 404 and "not known" in unknown.json()["error"]
        nobody = Api(served.base).post(f"/api/scan/{scan}/reject/", {"comment": "x"})
        assert nobody.status == 401
        other = next(p.part_id for p in served.station.sessions.current.parts if p.part_id != part)
        for path, body in [
            ("reassign", {"part_id": other}),
            ("reassign", {"part_id": part}),
            ("reject", {"comment": "a glove, not a part"}),
            ("assign", {"part_id": part}),
        ]:
            answer = operator.post(f"/api/scan/{scan}/{path}/", body)
            assert answer.status == 200, (path, answer.body)
        record = served.station.events.record(scan)
        assert record is not None
        who = [(c.change, c.part_id, c.source, c.device) for c in record.station.assignments]
        assert who == [  # every change names who asked for it, as qc decisions do
            ("unassign", None, "http", "http:ben"),
            ("assign", part, "http", "http:ben"),
            ("reassign", other, "http", "http:ben"),
            ("reassign", part, "http", "http:ben"),
            ("reject", None, "http", "http:ben"),
            ("assign", part, "http", "http:ben"),
        ]
        assert record.station.assignments[-2].comment == "a glove, not a part"
    finally:
        operator.close()


def test_thumbnails_are_downscaled_jpegs_cached_with_an_etag(served: Served) -> None:
    scan = served.uuids[0]
    path = f"/api/scan/{scan}/thumbnail/2/?w=480"
    thumb = served.api.get(path)
    assert thumb.status == 200 and thumb.headers["content-type"] == "image/jpeg", thumb.body[:200]
    image = cv2.imdecode(np.frombuffer(thumb.body, np.uint8), cv2.IMREAD_UNCHANGED)
    full = cv2.imdecode(np.frombuffer(served.api.get(f"/api/scan/{scan}/full_image/2/").body, np.uint8), -1)
    assert image is not None and full is not None
    assert image.shape[1] == 480 and abs(image.shape[0] - full.shape[0] * 480 / full.shape[1]) <= 1
    assert len(thumb.body) < len(served.api.get(f"/api/scan/{scan}/full_image/2/").body) / 4
    again = served.api.get(path, headers={"If-None-Match": thumb.headers["etag"]})
    assert again.status == 304
    assert served.api.get(f"/api/scan/{scan}/thumbnail/2/?w=100").status == 422
    assert served.api.get(f"/api/scan/{scan}/thumbnail/2/?w=2000").status == 422
    assert served.api.get(f"/api/scan/{scan}/thumbnail/6/").status == 404
