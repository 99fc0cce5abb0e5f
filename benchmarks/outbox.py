"""Outbox throughput and cost, through a real local mosquitto.

    .venv/bin/python benchmarks/outbox.py [--backlog 10000] [--live 500]

1. Drain: a backlog of N scan.capture events built while the broker is down; the broker
   starts; time until a subscriber has them all (events/s).
2. Added cost while connected: per event, the transaction that records the scan and queues
   its event (synchronous=FULL), and the time from queueing to the subscriber receiving it.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from amflow_edge.config.loading import load_config  # noqa: E402
from amflow_edge.messaging.events import Events  # noqa: E402
from amflow_edge.messaging.mqtt import StationMqtt  # noqa: E402
from amflow_edge.messaging.relay import Relay  # noqa: E402
from amflow_edge.ops.log import configure_logging  # noqa: E402
from amflow_edge.storage.db import StationDb  # noqa: E402
from tests.factories import make_record  # noqa: E402
from tests.mqtt_helpers import Broker, Subscriber  # noqa: E402
from tests.station_files import write_station  # noqa: E402


def p95(values: list[float]) -> float:
    return float(np.percentile(values, 95))


def drain(workdir: Path, count: int) -> None:
    broker = Broker(workdir)
    cfg = load_config(write_station(workdir / "drain", broker.port))
    db = StationDb(cfg.station.state_dir / "station.db")
    events = Events(cfg, db)
    start = time.perf_counter()
    for _ in range(count):
        events.scan_stored(make_record())
    built = time.perf_counter() - start
    broker.start()
    # A C subscriber in its own process, so the figure is the station's, not a Python subscriber's.
    subscriber = subprocess.Popen(
        [
            "mosquitto_sub",
            "-h",
            broker.host,
            "-p",
            str(broker.port),
            "-V",
            "mqttv5",
            "-q",
            "1",
            "-t",
            cfg.topic("event", "#"),
            "-C",
            str(count),
        ],
        stdout=subprocess.DEVNULL,
    )
    time.sleep(0.5)
    mqtt = StationMqtt(cfg)
    relay = Relay(db, mqtt, cfg.mqtt.max_in_flight)
    try:
        relay.start()
        start = time.perf_counter()
        mqtt.start()
        subscriber.wait(timeout=300)
        elapsed = time.perf_counter() - start
    finally:
        subscriber.kill()
        relay.stop()
        mqtt.stop()
        broker.stop()
        db.close()
    print(f"drain: {count} queued events (queued at {count / built:.0f}/s while the broker was down)")
    print(
        f"  broker start → subscriber has all: {elapsed:.2f} s = {count / elapsed:.0f} events/s (includes connecting)"
    )


def live(workdir: Path, count: int) -> None:
    broker = Broker(workdir)
    broker.start()
    cfg = load_config(write_station(workdir / "live", broker.port))
    db = StationDb(cfg.station.state_dir / "station.db")
    mqtt = StationMqtt(cfg)
    relay = Relay(db, mqtt, cfg.mqtt.max_in_flight)
    events = Events(cfg, db, relay.wake)
    subscriber = Subscriber(broker, [cfg.topic("event", "#")])
    commit_ms, delivery_ms = [], []
    try:
        relay.start()
        mqtt.start()
        mqtt.connected.wait(10)
        records = [make_record() for _ in range(count)]
        for record in records:
            start = time.perf_counter()
            events.scan_stored(record)
            queued = time.perf_counter()
            subscriber.next(timeout_s=30)
            commit_ms.append((queued - start) * 1000)
            delivery_ms.append((time.perf_counter() - queued) * 1000)
    finally:
        relay.stop()
        mqtt.stop()
        subscriber.close()
        broker.stop()
        db.close()
    print(f"live: {count} events one at a time while connected")
    print(
        f"  record scan + queue event (one FULL-sync transaction): median {statistics.median(commit_ms):.2f} ms, "
        f"p95 {p95(commit_ms):.2f} ms"
    )
    print(
        f"  queued → received by a subscriber: median {statistics.median(delivery_ms):.2f} ms, "
        f"p95 {p95(delivery_ms):.2f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backlog", type=int, default=10_000)
    parser.add_argument("--live", type=int, default=500)
    parser.add_argument("-v", action="store_true", help="log the station's info lines")
    args = parser.parse_args()
    configure_logging("info" if "-v" in sys.argv else "error", json=False)
    with tempfile.TemporaryDirectory(prefix="amflow-outbox-") as tmp:
        drain(Path(tmp), args.backlog)
        live(Path(tmp), args.live)


if __name__ == "__main__":
    main()
