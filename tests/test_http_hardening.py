"""The HTTP API's review findings, each with the attack or failure it closes: spoofed X-Forwarded-For, guessing a PIN
from many addresses, cookie-borne POSTs (CSRF), operator credentials on the read-only address, DNS rebinding, a
taken port, requests left waiting at a stop.

One station for the module (read token, read-only address, Secure cookie), started once; the rest is in-process.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from pydantic import ValidationError
from structlog.testing import capture_logs

from amflow_edge.config.http import HttpSettings
from amflow_edge.messaging.commands import Reply
from amflow_edge.station.station import RunOptions, Station
from amflow_edge.web import server
from amflow_edge.web.auth import EVERYONE, Credentials
from amflow_edge.web.deps import SECURE_COOKIE
from amflow_edge.web.requests import HttpRequests, StoppingError
from amflow_edge.web.stream import STREAMS_AT_ALL, STREAMS_PER_ADDRESS, Broadcaster
from tests.http_client import Api
from tests.http_station import MES_TOKEN, PIN, http_station
from tests.mqtt_helpers import Broker

READ_TOKEN = "plant-dashboard-read-token-0123456789"


@dataclass
class Hardened:
    station: Station
    base: str
    read_base: str

    def api(self, token: str | None = None, read_only: bool = False) -> Api:
        return Api(self.read_base if read_only else self.base, token=token)


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    running = Broker(tmp_path_factory.mktemp("broker"))
    running.start()
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def hardened(tmp_path_factory: pytest.TempPathFactory, broker: Broker) -> Iterator[Hardened]:
    station = http_station(
        tmp_path_factory.mktemp("hardened"),
        broker.port,
        {"http": {"read_token": READ_TOKEN, "read_listen": "127.0.0.1:0", "secure_cookie": True}},
    )
    station.start(RunOptions(timer=False))
    try:
        assert station.http is not None
        yield Hardened(station, station.http.addresses[0], station.http.addresses[1])
    finally:
        station.shutdown()


def test_failed_logins_are_limited_across_addresses_and_logged_sparingly() -> None:
    now = [0.0]
    credentials = Credentials(HttpSettings(pin=PIN, failed_logins_per_minute=20), "UTC", clock=lambda: now[0])
    with capture_logs() as logs:
        for n in range(20):
            assert credentials.login_wait_s(f"10.0.0.{n}") is None
            with pytest.raises(Exception, match="wrong PIN"):
                credentials.login("eve", "000000", f"10.0.0.{n}")
    assert credentials.login_wait_s("10.9.9.9") is not None  # a fresh address too: the station-wide limit holds
    assert credentials.failed_everywhere.wait_s(EVERYONE) is not None
    lines = [entry for entry in logs if entry["event"] == "failed HTTP API authentication"]
    assert len(lines) == 1 and lines[0]["client"] == "10.0.0.0"  # one line per 10 s, not one per guess
    assert credentials.login_wait_s("127.0.0.1") is None  # the station's own kiosk can still log in
    now[0] = 61.0
    assert credentials.login_wait_s("10.9.9.9") is None


@pytest.mark.parametrize("pin", ["1234", "12345", "1234567890123"])
def test_a_pin_shorter_than_six_digits_is_refused(pin: str) -> None:
    with pytest.raises(ValidationError, match="6 to 12 digits"):
        HttpSettings(pin=pin)


def test_the_cookie_authorises_reads_never_decisions(hardened: Hardened) -> None:
    login = hardened.api().post("/api/login", {"operator": "anna", "pin": PIN})
    assert login.status == 200, login.body
    cookie_header = login.headers["set-cookie"]
    assert cookie_header.startswith(f"{SECURE_COOKIE}=") and "secure" in cookie_header.lower()
    assert "httponly" in cookie_header.lower() and "samesite=strict" in cookie_header.lower()
    token = login.json()["token"]
    cookie = {"Cookie": f"{SECURE_COOKIE}={token}"}
    reads = hardened.api()
    assert reads.get("/api/state/", headers=cookie).status == 200
    assert reads.get("/api/state/").status == 401
    for path in ["/api/capture/", "/api/scan/0f9e1c2a-0000-11f1-8000-000000000000/unassign/"]:
        for headers in (cookie, {**cookie, "Content-Type": "text/plain"}):
            forged = reads.request("POST", path, b"", headers)
            assert forged.status == 401 and "Bearer" in forged.json()["error"], (path, headers, forged.body)
    plain = Api(hardened.base, token=MES_TOKEN).request(
        "POST", "/api/capture/", b'{"design_material": null}', {"Content-Type": "text/plain"}
    )
    assert plain.status == 415 and "application/json" in plain.json()["error"]
    assert Api(hardened.base, token=token).post("/api/logout").status == 204


def test_the_read_only_address_and_access_token_take_the_read_token_only(hardened: Hardened) -> None:
    assert hardened.api(READ_TOKEN, read_only=True).get("/api/state/").status == 200
    assert hardened.api(MES_TOKEN, read_only=True).get("/api/state/").status == 401
    assert hardened.api(read_only=True).get(f"/api/state/?access_token={READ_TOKEN}").status == 200
    assert hardened.api().get(f"/api/state/?access_token={MES_TOKEN}").status == 401
    assert hardened.api(MES_TOKEN).get("/api/state/").status == 200  # the full address takes an operator's token


def test_security_headers_and_the_host_check(hardened: Hardened) -> None:
    api = hardened.api(READ_TOKEN)
    screen = api.get("/")
    assert "frame-ancestors 'none'" in screen.headers["content-security-policy"]
    assert screen.headers["x-content-type-options"] == "nosniff"
    assert api.get("/screen.js").headers["cache-control"] == "no-cache"
    rebound = api.get("/api/state/", headers={"Host": "attacker.example:8080"})
    assert rebound.status == 400 and "allowed_hosts" in rebound.json()["error"]
    assert api.get("/api/state/", headers={"Host": "localhost"}).status == 200


def test_the_state_names_where_the_http_api_listens(hardened: Hardened) -> None:
    http = hardened.station.state().http
    assert http is not None and http.error is None and http.listening == [hardened.base, hardened.read_base]


def test_a_capture_is_refused_unless_the_station_runs(hardened: Hardened, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hardened.station, "_mode", "stopping")
    refused = hardened.api(MES_TOKEN).post("/api/capture/")
    assert refused.status == 503 and "stopping" in refused.json()["error"] and refused.headers["retry-after"]


def test_a_taken_port_leaves_the_station_scanning_without_http(
    tmp_path_factory: pytest.TempPathFactory, broker: Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        monkeypatch.setenv("AMFLOW_HTTP__LISTEN", f"127.0.0.1:{port}")  # conftest's free port would win otherwise
        monkeypatch.setattr(server, "SILENT_S", 0.1)  # a silent loop fails the watchdog's check after 0.1 s
        station = http_station(tmp_path_factory.mktemp("taken"), broker.port, {"http": {"listen": f"127.0.0.1:{port}"}})
        station.start(RunOptions(timer=False))  # does not raise: the capture goes on
        try:
            http = station.state().http
            assert http is not None and http.listening == [] and http.error is not None, (port, http)
            assert f"127.0.0.1:{port}" in http.error and "another process" in http.error
            assert station.state().mode == "running"
            # Nothing beats for a server that never started; its silence must not make the watchdog restart a
            # station that would only meet the taken port again.
            time.sleep(0.3)
            assert "http" not in station.service.watchdog.failures()
        finally:
            station.shutdown()


def test_requests_waiting_for_an_answer_are_released_when_the_server_stops() -> None:
    def never(_request: Any, _reply: Reply) -> None:
        """A capture queued behind others: no answer before the stop."""

    requests = HttpRequests({"unassign": never})
    outcome: list[object] = []

    def send() -> None:
        try:
            outcome.append(requests.send("unassign", {"scan": "0f9e1c2a-0000-11f1-8000-000000000000"}, 60.0))
        except StoppingError as exc:
            outcome.append(exc)

    waiting = threading.Thread(target=send)
    waiting.start()
    while not requests._waiting:  # the test waits until the request is under way
        threading.Event().wait(0.01)
    requests.close()
    waiting.join(2.0)
    assert not waiting.is_alive() and isinstance(outcome[0], StoppingError)
    with pytest.raises(StoppingError):
        requests.send("unassign", {"scan": "0f9e1c2a-0000-11f1-8000-000000000000"}, 60.0)


def test_a_spoofed_x_forwarded_for_does_not_escape_the_failed_login_limit(hardened: Hardened) -> None:
    """Last in the module: it uses up this address's failed logins."""
    client = hardened.api()
    statuses = [
        client.post(
            "/api/login", {"operator": "eve", "pin": "999999"}, headers={"X-Forwarded-For": f"203.0.113.{n}"}
        ).status
        for n in range(20)
    ]
    assert 429 in statuses[:13] and set(statuses) <= {401, 429}, statuses  # the TCP peer is counted, not the header


def test_event_streams_are_capped_per_address_and_in_total() -> None:
    broadcaster = Broadcaster()
    assert all(broadcaster.admit("10.0.0.1") is None for _ in range(STREAMS_PER_ADDRESS))
    refused = broadcaster.admit("10.0.0.1")
    assert refused is not None and "10.0.0.1" in refused
    others = [f"10.0.1.{n}" for n in range(STREAMS_AT_ALL - STREAMS_PER_ADDRESS)]
    assert all(broadcaster.admit(address) is None for address in others)
    full = broadcaster.admit("10.0.2.1")
    assert full is not None and str(STREAMS_AT_ALL) in full

    async def one_stream() -> None:
        stream = broadcaster.stream(lambda: pytest.fail("the state is not read once closed"), "10.0.0.1")
        assert (await anext(stream)).startswith("retry:")
        await stream.aclose()  # the client went away: its place is free again

    asyncio.run(one_stream())
    assert broadcaster.admit("10.0.2.1") is None


def test_the_cookie_is_secure_behind_a_trusted_proxy_and_proxies_are_addresses() -> None:
    assert HttpSettings().cookie_secure is False
    assert HttpSettings(trusted_proxies=["127.0.0.1"]).cookie_secure is True
    assert HttpSettings(trusted_proxies=["127.0.0.1"], secure_cookie=False).cookie_secure is False
    with pytest.raises(ValidationError, match="not an IP address or network"):
        HttpSettings(trusted_proxies=["proxy.local"])
    assert {"localhost", "127.0.0.1", "10.0.5.20"} <= set(HttpSettings(read_listen="10.0.5.20:8081").hosts)


def test_a_wildcard_address_needs_the_host_names_clients_use() -> None:
    """The Host check answers only allowed_hosts; '0.0.0.0' is no name a client sends, so it would refuse them all."""
    with pytest.raises(ValidationError, match="read_listen = '0.0.0.0:8081' listens on every address"):
        HttpSettings(read_listen="0.0.0.0:8081")
    settings = HttpSettings(read_listen="0.0.0.0:8081", allowed_hosts=["10.0.5.20", "station-7.plant", "localhost"])
    assert "station-7.plant" in settings.hosts
