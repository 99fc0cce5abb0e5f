"""Five emulated Basler cameras at 2448×2048: trigger → frames in memory, trigger → scan.capture, scans per minute.

    .venv/bin/python benchmarks/pylon_capture.py [--scans 20] [--sustained-s 30]

pypylon's camera emulation (PYLON_CAMEMU=5) delivers a demo scan's real images (ImageFileMode),
so the station's path is the real one: pylon driver, checks, PNG encoding, fsync, rename,
database, relay, a local mosquitto on loopback. Emulated cameras have no exposure or link
time, so "frames in memory" is the driver's own cost; add exposure + width×height / link rate
for a real rig (about 58 ms on GigE at 100 MB/s per camera).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ["PYLON_CAMEMU"] = "5"

import numpy as np  # noqa: E402

from amflow_edge.config.station import StationConfig  # noqa: E402
from amflow_edge.drivers.pylon import PylonDriver  # noqa: E402
from amflow_edge.ops.log import configure_logging  # noqa: E402
from amflow_edge.station.build import build_station  # noqa: E402
from amflow_edge.station.capture import Trigger  # noqa: E402
from amflow_edge.station.station import RunOptions, Station  # noqa: E402
from tests.mqtt_helpers import Broker, Subscriber  # noqa: E402
from tests.pylon_rig import full_resolution_station  # noqa: E402


def frames_in_memory(cfg: StationConfig, scans: int) -> list[float]:
    driver = PylonDriver(cfg.cameras, cfg.pylon)
    driver.open()
    try:
        times = []
        for index in range(scans + 1):
            start = time.perf_counter()
            driver.trigger()
            driver.grab(5.0)
            if index:
                times.append((time.perf_counter() - start) * 1000)
        return times
    finally:
        driver.close()


def to_scan_capture(station: Station, subscriber: Subscriber, scans: int) -> list[float]:
    times = []
    for index in range(scans + 1):
        start = time.perf_counter()
        station.loop.submit(Trigger(source="benchmark"))
        subscriber.next(timeout_s=60)
        if index:
            times.append((time.perf_counter() - start) * 1000)
    return times


def sustained(station: Station, subscriber: Subscriber, seconds: float) -> float:
    """Back-to-back scans, the next triggered as soon as the last is announced."""
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        station.loop.submit(Trigger(source="benchmark"))
        subscriber.next(timeout_s=60)
        done += 1
    return done / (time.perf_counter() - start) * 60


def summary(label: str, values: list[float]) -> str:
    return (
        f"  {label}: median {statistics.median(values):.0f} ms   p95 {np.percentile(values, 95):.0f} ms   "
        f"max {max(values):.0f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scans", type=int, default=20)
    parser.add_argument("--sustained-s", type=float, default=30.0)
    args = parser.parse_args()
    configure_logging("warning", json=False)
    with tempfile.TemporaryDirectory(prefix="amflow-bench-") as tmp:
        workdir = Path(tmp)
        broker = Broker(workdir)
        broker.start()
        try:
            cfg = full_resolution_station(workdir, broker.port)
            configure_logging("warning", json=False)  # save-features set its own
            memory = frames_in_memory(cfg, args.scans)
            station = build_station(cfg)
            subscriber = Subscriber(broker, [cfg.topic("event", "scan.capture")])
            try:
                station.start(RunOptions())
                station.mqtt.connected.wait(10)
                announced = to_scan_capture(station, subscriber, args.scans)
                rate = sustained(station, subscriber, args.sustained_s)
            finally:
                subscriber.close()
                station.shutdown()
        finally:
            broker.stop()
    print(f"pylon driver, 5 emulated cameras at 2448×2048 Mono8, {args.scans} scans, PNG as configured")
    print(summary("trigger → all five frames in memory", memory))
    print(summary("trigger → scan.capture received    ", announced))
    print(f"  sustained: {rate:.0f} scans per minute over {args.sustained_s:.0f} s")


if __name__ == "__main__":
    main()
