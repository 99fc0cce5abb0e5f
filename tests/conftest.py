from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.mqtt_helpers import Broker

REPO = Path(__file__).resolve().parent.parent
EXAMPLE_PAYLOAD = REPO / "tests" / "data" / "scan.assign-3.7-example.json"


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    """A real mosquitto on a free loopback port; tests may stop() and start() it."""
    instance = Broker(tmp_path)
    instance.start()
    yield instance
    instance.stop()


def pytest_configure(config: pytest.Config) -> None:
    """Log as the daemon does (to stderr), so stdout stays for what commands print. Every station a test starts
    (in this process or a child) serves its HTTP API on a free port, never the real 8080: tests run in parallel,
    and a developer's station may hold it."""
    from amflow_edge.ops.log import configure_logging

    os.environ.setdefault("AMFLOW_HTTP__LISTEN", "127.0.0.1:0")

    configure_logging("info", json=False)


SLOWEST_FIRST = (
    "test_identification.py",
    "test_delivery.py",
    "test_daemon_identification.py",
    "test_shading.py",
    "test_calibration.py",
    "test_station_model.py",
    "test_fleet.py",
    "test_inspect.py",
    "test_daemon.py",
    "test_defect_detection.py",
    "test_webhooks.py",
    "test_inspection_looks.py",
    "test_bridge.py",
)
"""The files that take 30 s or more (scripts/test hands whole files to its two workers), longest first."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Hand out the longest files first: started last, one of them kept a worker busy for 40 s while the other
    had nothing left to do."""
    rank = {name: index for index, name in enumerate(SLOWEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))
