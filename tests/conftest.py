from __future__ import annotations

import os
import tempfile
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
    and a developer's station may hold it. The cameras' pixel rays that renderers share through the disk
    (inspection.geometry.ray_store) are kept in the system's temp directory, not the user's cache."""
    from amflow_edge.inspection.geometry.ray_store import CACHE_ENV
    from amflow_edge.ops.log import configure_logging

    os.environ.setdefault("AMFLOW_HTTP__LISTEN", "127.0.0.1:0")
    os.environ.setdefault(CACHE_ENV, str(Path(tempfile.gettempdir()) / "amflow-edge-test-cache"))

    configure_logging("info", json=False)
