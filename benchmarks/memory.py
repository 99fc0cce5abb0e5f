"""Resident memory of the daemon, mock and pylon stations, and where it goes.

    .venv/bin/python benchmarks/memory.py [--driver mock|pylon|both] [--scans 10] [--inspection]

Runs `amflow-edge run` as its own process (five emulated Basler cameras at 2448×2048 for pylon,
the demo rig for the mock), takes --scans scans, then reads /proc/<pid>/smaps_rollup and
/proc/<pid>/smaps: resident set, anonymous memory, and the largest shared libraries mapped.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.mqtt_helpers import Broker, Subscriber
from tests.pylon_rig import full_resolution_station

REPO = Path(__file__).resolve().parents[1]


def rollup(pid: int) -> dict[str, int]:
    values = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        key, value = line.split(":", 1)
        values[key] = int(value.split()[0]) * 1024
    return values


def by_mapping(pid: int, top: int = 8) -> list[tuple[str, int]]:
    sizes: collections.Counter[str] = collections.Counter()
    current = "[anon]"
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        header = re.match(r"^[0-9a-f]+-[0-9a-f]+ \S+ \S+ \S+ \S+\s*(.*)$", line)
        if header:
            name = header.group(1) or "[anon]"
            current = name.split("/site-packages/")[-1].split("/")[0] if "site-packages" in name else name
        elif line.startswith("Rss:"):
            sizes[current] += int(line.split()[1]) * 1024
    return sizes.most_common(top)


def measure(driver: str, scans: int, inspection: bool, workdir: Path, broker: Broker, repo: Path) -> None:
    env = {
        **os.environ,
        "AMFLOW_MQTT__PORT": str(broker.port),
        "AMFLOW_INSPECTION__ENABLED": str(inspection).lower(),
        "PYTHONPATH": str(repo),
    }
    if driver == "pylon":
        env["PYLON_CAMEMU"] = "5"
        os.environ["PYLON_CAMEMU"] = "5"
        config = workdir / "station.toml"
        full_resolution_station(workdir, broker.port)
    else:
        config = REPO / "config" / "demo.toml"
        env.update(
            AMFLOW_STATION__DATA_ROOT=str(workdir / "data"),
            AMFLOW_STATION__STATE_DIR=str(workdir / "state"),
            AMFLOW_CAPTURE__TIMER_INTERVAL_S="1000000",
        )
    daemon = subprocess.Popen(
        [sys.executable, "-m", "amflow_edge.cli", "run", "--config", str(config)],
        cwd=repo,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=(workdir / "daemon.log").open("w"),
    )
    subscriber = Subscriber(broker, ["amflow/+/event/scan.capture", "amflow/+/availability"])
    try:
        station_id = "demo-station"
        subscriber.next(timeout_s=120, topic=f"amflow/{station_id}/availability")  # 'online': it takes requests
        time.sleep(1)
        idle = rollup(daemon.pid)["Rss"]
        for _ in range(scans):
            subscriber.publish(f"amflow/{station_id}/request/capture", b"{}")
            subscriber.next(timeout_s=120, topic=f"amflow/{station_id}/event/scan.capture")
        time.sleep(2)
        after = rollup(daemon.pid)
        print(f"{driver} station, inspection {'on' if inspection else 'off'} ({repo}):")
        print(
            f"  resident after start {idle / 2**20:.0f} MB; after {scans} scans {after['Rss'] / 2**20:.0f} MB "
            f"(anonymous {after['Anonymous'] / 2**20:.0f} MB)"
        )
        for name, size in by_mapping(daemon.pid):
            print(f"    {size / 2**20:7.1f} MB  {name}")
    except AssertionError:
        print((workdir / "daemon.log").read_text()[-3000:])
        raise
    finally:
        subscriber.close()
        daemon.terminate()
        daemon.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--driver", choices=["mock", "pylon", "both"], default="both")
    parser.add_argument("--scans", type=int, default=10)
    parser.add_argument("--inspection", action="store_true", help="inspect the scans (the worker is not counted)")
    parser.add_argument("--repo", type=Path, default=REPO, help="run the daemon of another checkout (a comparison)")
    args = parser.parse_args()
    for driver in ("mock", "pylon") if args.driver == "both" else (args.driver,):
        with tempfile.TemporaryDirectory(prefix="amflow-memory-") as tmp:
            broker = Broker(Path(tmp))
            broker.start()
            try:
                measure(driver, args.scans, args.inspection, Path(tmp), broker, args.repo)
            finally:
                broker.stop()


if __name__ == "__main__":
    main()
