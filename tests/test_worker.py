"""A worker that crashes or hangs cannot wedge the station (issue #25): its scan goes to review with the cause,
and the next scan is inspected by a new worker."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from amflow_edge.config.loading import load_config
from amflow_edge.station import inspector
from amflow_edge.station.build import build_station
from amflow_edge.station.capture import Trigger
from amflow_edge.station.inspector import Runner, run_job
from amflow_edge.station.station import RunOptions, Station
from tests.mqtt_helpers import Broker
from tests.polling import wait_for
from tests.station_files import write_station


def crash(job_json: str) -> str:
    os._exit(3)


def hang(job_json: str) -> str:
    time.sleep(3600)
    return ""


def _station(tmp_path: Path, broker: Broker) -> Station:
    cfg = load_config(
        write_station(
            tmp_path, broker.port, {"mock": {"scene_pool": 1}, "inspection": {"enabled": True, "deadline_s": 4.0}}
        )
    )
    station = build_station(cfg)
    station.start(RunOptions(supervise_interval_s=0.2))
    # Scans wait for the designs' processing before they reach the worker; the tests swap the worker's job.
    assert wait_for(station.processing.ready, timeout_s=120)
    return station


def _decided(station: Station, scan: str) -> bool:
    record = station.events.record(scan)
    return record is not None and (record.scan.qc_machine is not None or record.scan.qc_needs_review)


@pytest.mark.parametrize("fault", [crash, hang], ids=["crash", "hang"])
def test_a_failed_worker_costs_its_scan_a_review_and_the_scan_behind_it_is_inspected(
    tmp_path: Path, broker: Broker, fault: Runner
) -> None:
    station = _station(tmp_path, broker)
    try:
        assert station.inspector is not None
        station.inspector.runner = fault
        lost = station.loop.capture(Trigger(source="test")).uuid
        station.inspector.runner = run_job
        behind = station.loop.capture(Trigger(source="test")).uuid  # queued behind it, when it hangs
        assert lost is not None and behind is not None
        assert wait_for(lambda: _decided(station, lost), timeout_s=120), "the scan never reached a decision"
        station.inspector.deadline_s = 300  # the scan behind it now takes a new worker's start-up; let it
        record = station.events.record(lost)
        assert record is not None
        assert record.scan.qc_needs_review and record.scan.qc_reasons == ["insufficient_evidence"]
        assert wait_for(lambda: _decided(station, behind), timeout_s=180), "the next scan was never inspected"
        again = station.events.record(behind)
        assert again is not None and again.scan.inspectionreport is not None
    finally:
        station.shutdown()


def test_a_stop_does_not_wait_for_a_hung_worker(
    tmp_path: Path, broker: Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stop waits STOP_WAIT_S (40 s, within the unit's TimeoutStopSec of 60 s), not the job's deadline of an
    hour; shortened here so the test does not sit out the 40 s."""
    monkeypatch.setattr(inspector, "STOP_WAIT_S", 2.0)
    station = _station(tmp_path, broker)
    assert station.inspector is not None
    station.inspector.deadline_s = 3600
    station.inspector.runner = hang
    assert station.loop.capture(Trigger(source="test")).ok
    started = time.monotonic()
    station.shutdown()
    assert time.monotonic() - started < 30
