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
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ["PYLON_CAMEMU"] = "5"

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from amflow_edge.config.loading import load_config  # noqa: E402
from amflow_edge.config.station import StationConfig  # noqa: E402
from amflow_edge.drivers.pylon import PylonDriver  # noqa: E402
from amflow_edge.ops.log import configure_logging  # noqa: E402
from amflow_edge.station.build import build_station  # noqa: E402
from amflow_edge.station.capture import Trigger  # noqa: E402
from amflow_edge.station.station import RunOptions, Station  # noqa: E402
from tests.mqtt_helpers import Broker, Subscriber  # noqa: E402
from tests.pylon_rig import point_at_image, save_features  # noqa: E402

SERIALS = [f"0815-000{i}" for i in range(5)]


def station_config(workdir: Path, port: int) -> StationConfig:
    """The demo station, with five emulated Basler cameras fed a rendered demo scan."""
    images = workdir / "images"
    images.mkdir()
    rng = np.random.default_rng(7)
    for serial in SERIALS:  # sensor-like noise around grey: PNG costs what it costs on real frames
        cv2.imwrite(str(images / f"{serial}.png"), np.clip(rng.normal(110, 12, (2048, 2448)), 0, 255).astype(np.uint8))
    text = (REPO / "config" / "demo.toml").read_text()
    for index, serial in enumerate(SERIALS, start=1):
        text = text.replace(f'serial = "4001230{index}"', f'serial = "{serial}"')
    text = text.replace('driver = "mock"', 'driver = "pylon"').replace("timer_interval_s = 3.0", "")
    text = text.replace('"designs/designs.toml"', f'"{REPO / "config" / "designs" / "designs.toml"}"')
    text = re.sub(r'calibration = "calibration/', f'calibration = "{REPO}/config/calibration/', text)
    text += f'\n[pylon]\nfeatures_dir = "{workdir / "features"}"\n'
    config = workdir / "station.toml"
    config.write_text(
        text.replace('"../run/data"', f'"{workdir / "data"}"').replace('"../run/state"', f'"{workdir / "state"}"')
    )
    save_features(config, workdir / "features")
    for serial in SERIALS:
        point_at_image(workdir / "features" / f"{serial}.pfs", images / f"{serial}.png")
    cfg = load_config(config)
    return cfg.model_copy(
        update={
            "mqtt": cfg.mqtt.model_copy(update={"port": port}),
            "inspection": cfg.inspection.model_copy(update={"enabled": False}),
        }
    )


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
            cfg = station_config(workdir, broker.port)
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
