"""The HTTP API against the wrong people and the wrong requests: credentials, read-only address, hostile input.

Every refusal is a clean 4xx JSON error and changes nothing: the scan record stays as it was and no event is
published. One station for the module, with a read token and a read-only second address.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydantic import ValidationError

from amflow_edge.config.http import HttpSettings
from amflow_edge.station.capture import Trigger
from amflow_edge.station.state import StationState
from amflow_edge.station.station import RunOptions, Station
from amflow_edge.web.auth import Credentials, RateLimiter
from amflow_edge.web.bind import HttpServerError, bind
from amflow_edge.web.files import CAPTURE_WAIT_S, after_capture
from amflow_edge.web.stream import QUEUE_SIZE, Broadcaster
from tests.http_client import Api, raw_request, status_of
from tests.http_station import MES_TOKEN, PIN, base_url, http_station
from tests.mqtt_helpers import Broker, Subscriber, free_port

PREFIX = "amflow/test-station"
READ_TOKEN = "plant-dashboard-read-token-0123456789"
RATE = 30


@dataclass
class Guarded:
    station: Station
    base: str
    read_base: str
    scan: str
    subscriber: Subscriber

    def api(self, token: str | None = READ_TOKEN) -> Api:
        return Api(self.base, token=token)


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Guarded]:
    root = tmp_path_factory.mktemp("guarded")
    broker = Broker(root)
    broker.start()
    station = http_station(
        root / "station",
        broker.port,
        {"http": {"read_token": READ_TOKEN, "read_listen": "127.0.0.1:0", "requests_per_minute": RATE}},
    )
    station.start(RunOptions())
    subscriber = Subscriber(broker, [f"{PREFIX}/event/#"])
    try:
        result = station.loop.capture(Trigger(source="test"))
        assert result.ok and result.uuid
        subscriber.next(topic=f"{PREFIX}/event/scan.capture")
        assert station.http is not None
        yield Guarded(station, base_url(station), station.http.addresses[1], result.uuid, subscriber)
    finally:
        station.shutdown()
        subscriber.close()
        broker.stop()


def unchanged(guarded: Guarded, before: str) -> None:
    record = guarded.station.events.record(guarded.scan)
    assert record is not None and record.model_dump_json() == before
    with pytest.raises(AssertionError):
        guarded.subscriber.next(timeout_s=0.3)


def snapshot(guarded: Guarded) -> str:
    record = guarded.station.events.record(guarded.scan)
    assert record is not None
    return record.model_dump_json()


def test_reads_need_the_read_token_or_an_operator(guarded: Guarded) -> None:
    path = f"/api/scan/{guarded.scan}/"
    assert guarded.api(None).get(path).status == 401
    assert guarded.api("wrong-token-wrong-token-wrong").get(path).status == 401
    assert guarded.api(None).get(path, {"Authorization": "Basic YWRtaW46YWRtaW4="}).status == 401
    assert guarded.api().get(path).status == 200
    assert guarded.api(MES_TOKEN).get(path).status == 200
    assert guarded.api(None).get(f"{path}?access_token={READ_TOKEN}").status == 200  # img src, EventSource
    image = guarded.api(None).get(f"/data/scans/{guarded.scan}/scan_cam01.png")
    assert image.status == 401 and image.headers["www-authenticate"] == "Bearer"
    login = guarded.api(None).post("/api/login", {"operator": "anna", "pin": PIN})
    assert login.status == 200
    cookie = login.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
    session = cookie.split(";", 1)[0]
    assert guarded.api(None).get(path, {"Cookie": session}).status == 200  # the screen's images and stream
    assert guarded.api(None).get("/api/openapi.json").status == 200  # the contract is public, the data is not


def test_login_pin_tokens_and_logout(guarded: Guarded) -> None:
    before = snapshot(guarded)
    client = guarded.api(None)
    wrong = client.post("/api/login", {"operator": "anna", "pin": "000000"})
    assert wrong.status == 401 and "PIN" in wrong.json()["error"] and PIN not in wrong.body.decode()
    assert client.post("/api/login", {"operator": "anna\n", "pin": PIN}).status == 422
    assert client.post("/api/login", {"operator": "anna", "pin": PIN, "admin": True}).status == 422
    token = client.post("/api/login", {"operator": "anna", "pin": PIN}).json()["token"]
    operator = guarded.api(token)
    refused = operator.post(f"/api/scan/{guarded.scan}/qc/", {"passed": True, "reasons": ["no_such_reason"]})
    assert refused.status == 409 and "no_such_reason" in refused.json()["error"]
    assert operator.post("/api/logout").status == 204
    assert operator.post(f"/api/scan/{guarded.scan}/qc/", {"passed": True}).status == 401
    unchanged(guarded, before)


def test_failed_logins_are_limited_per_address(guarded: Guarded) -> None:
    client = guarded.api(None)
    statuses = [client.post("/api/login", {"operator": "eve", "pin": "999999"}).status for _ in range(8)]
    first = statuses.index(429)  # five wrong PINs a minute per address (one came from the test above)
    assert 4 <= first <= 5 and set(statuses[:first]) == {401} and set(statuses[first:]) == {429}, statuses
    limited = client.post("/api/login", {"operator": "anna", "pin": PIN})  # even the right PIN, for now
    assert limited.status == 429 and int(limited.headers["retry-after"]) >= 1
    credentials = Credentials(HttpSettings(pin=PIN), "UTC")
    assert credentials.login("anna", PIN, "10.0.0.2").operator == "anna"


def test_tokens_expire_and_limits_slide() -> None:
    now = [0.0]
    credentials = Credentials(HttpSettings(pin=PIN, session_hours=1), "UTC", clock=lambda: now[0])
    token = credentials.login("anna", PIN, "10.0.0.1").token
    assert credentials.operator(token) == "anna"
    now[0] = 3599.0
    assert credentials.operator(token) == "anna"
    now[0] = 3601.0
    assert credentials.operator(token) is None
    limiter = RateLimiter(2, clock=lambda: now[0])
    assert limiter.hit("a") is None and limiter.hit("a") is None and limiter.hit("a") is not None
    assert limiter.hit("b") is None  # per client
    now[0] += 61
    assert limiter.hit("a") is None


def test_the_read_only_address_serves_reads_and_refuses_every_change(guarded: Guarded) -> None:
    before = snapshot(guarded)
    reader = Api(guarded.read_base, token=READ_TOKEN)
    assert reader.get(f"/api/scan/{guarded.scan}/").status == 200
    assert reader.get("/api/state/").status == 200
    assert reader.get("/").status == 200
    for path, body in (
        ("/api/login", {"operator": "anna", "pin": PIN}),
        (f"/api/scan/{guarded.scan}/qc/", {"passed": False}),
        ("/api/capture/", {}),
    ):
        answer = Api(guarded.read_base, token=MES_TOKEN).post(path, body)
        assert answer.status == 403 and "read" in answer.json()["error"], path
    unchanged(guarded, before)


HOSTILE_PATHS = [
    "/data/scans/../../etc/passwd",
    "/data/scans/..%2f..%2fetc%2fpasswd",
    "/data/scans/%2e%2e/%2e%2e/etc/passwd",
    "/static/../../../../etc/passwd",
    "/static/..%2f..%2f..%2fetc%2fpasswd",
    "/%2e%2e/%2e%2e/etc/passwd",
    "/data/scans/{scan}/../scan.json",
    "/data/scans/{scan}/scan_cam06.png",
    "/data/scans/{scan}/scan_cam00.png",
    "/data/scans/{scan}/scan_cam1%2f..%2f..%2fpasswd.png",
    "/api/scan/{scan}/full_image/0/",
    "/api/scan/{scan}/full_image/6/",
    "/api/scan/{scan}/full_image/-1/",
    "/api/scan/..%2f..%2fetc/",
    "/api/scan/not-a-uuid/",
    "/api/scan/0f9e1c2a-0000-11f1-8000-000000000000/",
    "/api/scan/0f9e1c2a-0000-11f1-8000-000000000000/full_image/1/",
]


def test_hostile_paths_get_clean_errors_and_never_a_file_outside(guarded: Guarded) -> None:
    host, port = guarded.base.removeprefix("http://").split(":")
    for template in HOSTILE_PATHS:
        path = template.format(scan=guarded.scan)
        answer = raw_request(
            host,
            int(port),
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {READ_TOKEN}\r\n\r\n".encode(),
        )
        status = status_of(answer)
        head, _, body = answer.partition(b"\r\n\r\n")
        assert 400 <= status < 500, (path, answer[:300])
        assert b"root:" not in answer and b'"station"' not in body, path
        assert json.loads(body)["error"], path


def test_hostile_bodies_are_refused_and_change_nothing(guarded: Guarded) -> None:
    before = snapshot(guarded)
    operator = guarded.api(MES_TOKEN)
    qc = f"/api/scan/{guarded.scan}/qc/"
    cases: list[tuple[bytes, dict[str, str], int]] = [
        (b"{not json", {}, 422),
        (b"", {}, 422),
        (b"[]", {}, 422),
        (json.dumps({"passed": "yes"}).encode(), {}, 422),
        (json.dumps({"passed": 1}).encode(), {}, 422),
        (json.dumps({"passed": True, "scan": "x"}).encode(), {}, 422),
        (json.dumps({"passed": True, "reasons": ["Bad Id"]}).encode(), {}, 422),
        (json.dumps({"passed": True, "reasons": ["warp"] * 33}).encode(), {}, 422),
        (json.dumps({"passed": True, "comment": "x" * 2001}).encode(), {}, 422),
        (json.dumps({"passed": True}).encode(), {"Content-Type": "text/plain"}, 415),  # no cross-site form posts
        (json.dumps({"passed": True, "comment": "x" * 70_000}).encode(), {}, 413),
        (b"{}", {"Content-Length": "-5"}, 400),
    ]
    for body, headers, status in cases:
        answer = operator.request("POST", qc, body, {"Content-Type": "application/json", **headers})
        assert answer.status == status, (body[:60], headers, answer.body[:300])
        if status != 400:  # a negative length is refused by uvicorn's HTTP parser itself, in plain text
            assert answer.json()["error"], body[:60]
        operator.close()
    assert operator.post("/api/scan/not-a-uuid/qc/", {"passed": True}).status == 422
    assert operator.post(f"/api/scan/{guarded.scan}/assign/", {"part_id": ""}).status == 422
    assert operator.post(f"/api/scan/{guarded.scan}/reject/", {"comment": ""}).status == 422
    host, port = guarded.base.removeprefix("http://").split(":")
    chunk = b"x" * 50_000
    chunked = (
        (
            f"POST {qc} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {MES_TOKEN}\r\nContent-Type: application/json\r\n"
            "Transfer-Encoding: chunked\r\n\r\n"
        ).encode()
        + b"".join(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n" for _ in range(3))
        + b"0\r\n\r\n"
    )
    assert status_of(raw_request(host, int(port), chunked)) == 413
    unchanged(guarded, before)


def test_a_flood_of_unauthenticated_decisions_is_limited_but_operators_still_decide(guarded: Guarded) -> None:
    before = snapshot(guarded)
    stranger = guarded.api(None)
    statuses = [stranger.post(f"/api/scan/{guarded.scan}/qc/", {"passed": False}).status for _ in range(RATE + 5)]
    assert 429 in statuses and set(statuses) <= {401, 429}
    limited = stranger.post(f"/api/scan/{guarded.scan}/qc/", {"passed": True})
    assert limited.status == 429 and limited.json()["error"].startswith("too many requests")
    operator = guarded.api(MES_TOKEN)  # same address, but authenticated: not counted, not blocked
    assert {operator.post(f"/api/scan/{guarded.scan}/qc/", {"passed": "no"}).status for _ in range(5)} == {422}
    unchanged(guarded, before)
    assert guarded.api().get("/api/state/").status == 200  # reads are not limited with decisions


def test_a_taken_port_fails_the_start_in_words() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        with pytest.raises(HttpServerError, match=r"\[http\] listen = '127.0.0.1:\d+'.*another process"):
            bind(f"127.0.0.1:{port}", "listen")
    free = bind(f"127.0.0.1:{free_port()}", "listen")
    free.close()


@pytest.mark.parametrize(
    ("settings", "problem"),
    [
        ({"listen": "localhost"}, "host:port"),
        ({"listen": "127.0.0.1:70000"}, "65535"),
        ({"pin": "12ab"}, "6 to 12 digits"),
        ({"read_token": "short"}, "openssl rand"),
        ({"operators": [{"name": "mes"}]}, "no token"),
        ({"operators": [{"name": "mes", "token": "x" * 8}]}, "shorter than"),
        ({"read_listen": "127.0.0.1:8080"}, "same address"),
        ({"port": 8080}, "Extra inputs"),
    ],
)
def test_bad_http_settings_are_named(settings: dict[str, object], problem: str) -> None:
    with pytest.raises(ValidationError, match=problem):
        HttpSettings.model_validate(settings)


def test_the_pin_comes_from_the_systemd_credential(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "http_pin").write_text("975310\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    settings = HttpSettings()
    assert settings.pin is not None and settings.pin.get_secret_value() == "975310"
    (tmp_path / "http_pin").write_text("")  # as scripts/install leaves it: the station starts, nobody logs in yet
    assert HttpSettings().pin is None


def test_a_client_that_falls_behind_is_dropped_and_the_station_never_waits() -> None:
    def never() -> StationState:
        raise AssertionError("the stream reached the state before this test read it")

    async def scenario() -> tuple[int, int]:
        broadcaster = Broadcaster()
        broadcaster.attach(asyncio.get_running_loop())
        stream = broadcaster.stream(never)
        assert (await anext(stream)).startswith("retry:")  # connected; now it reads nothing more
        connected = broadcaster.clients
        for _ in range(QUEUE_SIZE + 10):  # the station goes on publishing, never blocked
            broadcaster._send("event: state\ndata: {}\n\n")
        await asyncio.sleep(0.05)
        dropped = broadcaster.clients
        await stream.aclose()
        return connected, dropped

    assert asyncio.run(scenario()) == (1, 0)


def test_image_downloads_start_between_captures() -> None:
    """A screen never competes with a capture for the cores: a download waits for it, but never for ever."""
    capturing = [True]

    async def scenario() -> tuple[float, float]:
        async def end_capture() -> None:
            await asyncio.sleep(0.1)
            capturing[0] = False

        started = time.monotonic()
        ending = asyncio.create_task(end_capture())
        await after_capture(lambda: capturing[0])
        waited = time.monotonic() - started
        await ending
        capturing[0] = True  # a capture that never ends (a hung camera) holds a download only so long
        started = time.monotonic()
        await after_capture(lambda: capturing[0])
        return waited, time.monotonic() - started

    waited, bounded = asyncio.run(scenario())
    assert 0.09 <= waited < 0.5
    assert CAPTURE_WAIT_S - 0.05 <= bounded < CAPTURE_WAIT_S + 0.5
