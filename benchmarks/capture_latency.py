"""Trigger → scan.capture received, through the real store and a real local mosquitto.

    .venv/bin/python benchmarks/capture_latency.py [--scans 20] [--png-options]

Five mock cameras at 2448×2048 Mono8. The mock renders its scenes ahead (scene_pool), as a
real camera's exposure happens before its frame arrives, so the figure is the station's own
cost: grab hand-over, checks, PNG encoding, fsync, rename, publish, broker round trip.
With --png-options it also measures the PNG settings on the rendered frames, which is how
the default in amflow_edge/config/station.py was chosen.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from amflow_edge.config.loading import load_config  # noqa: E402
from amflow_edge.ops.log import configure_logging  # noqa: E402
from amflow_edge.station.build import build_station  # noqa: E402
from amflow_edge.station.capture import Trigger  # noqa: E402
from amflow_edge.station.station import RunOptions, Station  # noqa: E402
from amflow_edge.storage.store import PNG_FILTERS, PNG_STRATEGIES  # noqa: E402
from tests.mqtt_helpers import Broker, Subscriber  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def measure_latency(
    workdir: Path, scans: int, level: int, strategy: str, png_filter: str, threads: int, inspect: bool
) -> tuple[list[float], Station]:
    broker = Broker(workdir)
    broker.start()
    cfg = load_config(REPO / "config" / "demo.toml")
    cfg = cfg.model_copy(
        update={
            "station": cfg.station.model_copy(update={"data_root": workdir / "data", "state_dir": workdir / "state"}),
            "mqtt": cfg.mqtt.model_copy(update={"port": broker.port}),
            "mock": cfg.mock.model_copy(update={"scene_pool": 3}),
            "inspection": cfg.inspection.model_copy(update={"enabled": inspect}),
            "capture": cfg.capture.model_copy(
                update={
                    "timer_interval_s": None,
                    "png_compression": level,
                    "png_strategy": strategy,
                    "png_filter": png_filter,
                    "encode_threads": threads,
                }
            ),
        }
    )
    station = build_station(cfg)
    subscriber = Subscriber(broker, [cfg.topic("event", "scan.capture")])
    try:
        station.start(RunOptions())
        station.mqtt.connected.wait(10)
        latencies = []
        for index in range(scans + 1):
            start = time.perf_counter()
            station.loop.submit(Trigger(source="benchmark"))
            subscriber.next(timeout_s=60)
            if index > 0:  # the first scan warms up the encoder threads and the page cache
                latencies.append((time.perf_counter() - start) * 1000)
        return latencies, station
    finally:
        subscriber.close()
        station.shutdown()
        broker.stop()


def read_png(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise SystemExit(f"{path}: not a readable PNG")
    return image


def png_options(frames: dict[str, np.ndarray], threads: int) -> None:
    print("\nPNG settings on the five rendered frames (encode only, parallel threads):")
    print(f"{'level':>5} {'strategy':>13} {'filter':>6} {'five images ms':>15} {'MB per scan':>12}")
    pool = ThreadPoolExecutor(threads)
    for level in (0, 1, 3):
        for strategy in ("default", "huffman_only", "rle"):
            for png_filter in ("none", "sub", "fast"):
                params = [
                    cv2.IMWRITE_PNG_COMPRESSION,
                    level,
                    cv2.IMWRITE_PNG_STRATEGY,
                    PNG_STRATEGIES[strategy],
                    cv2.IMWRITE_PNG_FILTER,
                    PNG_FILTERS[png_filter],
                ]
                runs = []
                for _ in range(3):
                    start = time.perf_counter()
                    encoded = list(
                        pool.map(lambda image, params=params: cv2.imencode(".png", image, params)[1], frames.values())
                    )
                    runs.append((time.perf_counter() - start) * 1000)
                size = sum(e.size for e in encoded) / 1e6
                print(f"{level:>5} {strategy:>13} {png_filter:>6} {min(runs):>15.0f} {size:>12.1f}")
    pool.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scans", type=int, default=20)
    parser.add_argument("--level", type=int, default=None, help="PNG level (default: the config's)")
    parser.add_argument("--strategy", default=None, choices=sorted(PNG_STRATEGIES))
    parser.add_argument("--filter", default=None, choices=sorted(PNG_FILTERS))
    parser.add_argument("--threads", type=int, default=None, help="PNG encoder threads (default: the config's)")
    parser.add_argument(
        "--with-inspection",
        action="store_true",
        help="inspect every scan in the worker meanwhile (competes for the 2 cores)",
    )
    parser.add_argument("--png-options", action="store_true", help="also compare PNG settings on rendered frames")
    args = parser.parse_args()
    configure_logging("warning", json=False)

    defaults = load_config(REPO / "config" / "demo.toml").capture
    level = defaults.png_compression if args.level is None else args.level
    strategy = args.strategy or defaults.png_strategy
    png_filter = args.filter or defaults.png_filter
    threads = args.threads or defaults.encode_threads
    with tempfile.TemporaryDirectory(prefix="amflow-bench-") as tmp:
        latencies, station = measure_latency(
            Path(tmp), args.scans, level, strategy, png_filter, threads, args.with_inspection
        )
        scans_dir = Path(tmp) / "data" / "scans"
        sizes = [sum(f.stat().st_size for f in d.glob("*.png")) for d in scans_dir.iterdir() if d.name != ".incoming"]
        print(
            f"capture latency, trigger → scan.capture received, {len(latencies)} scans, 5 × 2448×2048 Mono8"
            + (", inspection running alongside" if args.with_inspection else "")
        )
        print(
            f"  PNG level {level}, strategy {strategy}, filter {png_filter}, {threads} encoder threads; "
            f"{statistics.mean(sizes) / 1e6:.1f} MB per scan"
        )
        print(
            f"  median {statistics.median(latencies):.0f} ms   p95 {percentile(latencies, 95):.0f} ms   "
            f"min {min(latencies):.0f} ms   max {max(latencies):.0f} ms"
        )
        if args.png_options:
            shot_dir = next(d for d in scans_dir.iterdir() if d.name != ".incoming")
            frames = {p.stem: read_png(p) for p in sorted(shot_dir.glob("*.png"))}
            png_options(frames, station.cfg.capture.encode_threads)


if __name__ == "__main__":
    main()
