"""A fleet of stations on one plant broker through real network faults: nothing lost, duplicated or reordered.

Station daemons in network namespaces of their own publish to one plant mosquitto; two consumers in one
shared-subscription group write every scan into PostgreSQL; every station posts webhooks to one receiver.
During the run: 200 ms of added delay and 5 % packet loss on every station's link, a partition of five
stations, the webhook receiver answering 500, a consumer killed mid-batch, the broker killed (SIGKILL) and started again.
The faults are shorter than the issue's (benchmarks/fleet.py runs those at full length, 20 stations) so the
suite keeps its 10 minutes; what is checked afterwards is the same.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tests.fleet import Fleet, daemon_logs, make_recording
from tests.netlab import is_available
from tests.polling import wait_for
from tests.postgres import fresh_database

STATIONS = 6
INTERVAL_S = 2.0
FAULT_S = 20.0

_missing = is_available()
pytestmark = pytest.mark.skipif(
    _missing is not None and not os.environ.get("CI"), reason=f"no network lab on this machine: {_missing}"
)


@pytest.mark.timeout(900)
def test_every_scan_of_every_station_reaches_postgresql_and_the_webhook_once_in_order_through_faults(
    tmp_path: Path,
) -> None:
    recording = make_recording(tmp_path / "recording")
    with fresh_database() as dsn, Fleet(tmp_path / "plant", recording, dsn, STATIONS, INTERVAL_S) as fleet:
        fleet.start()
        assert wait_for(lambda: all(len(s.scans_on_disk()) >= 2 for s in fleet.stations), 120), daemon_logs(fleet)
        assert wait_for(lambda: fleet.pg_event_count() >= STATIONS, 60), daemon_logs(fleet)

        fleet.proxy.set_delay(0.2)
        for station in fleet.stations:
            station.host.set_loss(5)
        partitioned = fleet.stations[: min(5, STATIONS - 1)]
        for station in partitioned:
            station.host.partition()
        fleet.receiver.answer = 500
        fleet.consumers.kill(0)  # mid-batch: whatever it had not acknowledged is redelivered
        time.sleep(FAULT_S / 2)
        fleet.broker.stop()  # killed outright (SIGKILL), not asked to save first
        time.sleep(3)
        fleet.broker.start()
        fleet.consumers.start(0)
        time.sleep(FAULT_S / 2)
        for station in partitioned:
            station.host.heal()
        fleet.receiver.answer = 200
        for station in fleet.stations:
            station.host.set_loss(0)
        fleet.proxy.set_delay(0.0)
        assert all(s.alive() for s in fleet.stations), daemon_logs(fleet)

        fleet.stop_capturing()
        assert wait_for(fleet.drained, 300), daemon_logs(fleet)
        report = fleet.verify()
    print(report.summary())
    assert report.clean, report.summary()
    assert report.scans_on_disk >= STATIONS * 4 and report.scan_rows == report.scans_on_disk
    assert report.event_rows == report.events_queued >= 2 * report.scans_on_disk
    # The receiver answered 500 for a while: every event was still posted, some more than once is allowed.
    assert report.webhook_posts >= report.events_queued
