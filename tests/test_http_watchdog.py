"""The HTTP thread's event loop is one of the station's liveness checks: a handler that blocks it is a hang."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from amflow_edge.web import server
from tests.http_station import http_station
from tests.mqtt_helpers import Broker
from tests.polling import wait_for


def test_a_blocked_http_loop_fails_the_watchdog_and_a_stop_does_not(
    tmp_path: Path, broker: Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(server, "BEAT_S", 0.05)
    monkeypatch.setattr(server, "SILENT_S", 0.5)
    station = http_station(tmp_path, broker.port)
    try:
        station.start()
        watchdog = station.service.watchdog
        http = station.http
        assert isinstance(http, server.HttpServer) and http.loop is not None
        assert "http" not in watchdog.failures()

        async def blocking_handler() -> None:
            time.sleep(1.5)  # what a sync call inside an async route would do

        blocked = asyncio.run_coroutine_threadsafe(blocking_handler(), http.loop)
        assert wait_for(lambda: "http" in watchdog.failures(), timeout_s=5)
        blocked.result(timeout=5)
        assert wait_for(lambda: "http" not in watchdog.failures(), timeout_s=5)
    finally:
        station.shutdown()
    assert "http" not in station.service.watchdog.failures()  # a stopped server is not a hung one
