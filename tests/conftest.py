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
