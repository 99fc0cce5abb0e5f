"""A plant on one machine: a fleet of station daemons, one plant broker, consumers into PostgreSQL, a webhook
receiver, and what checks that nothing was lost, duplicated or reordered. Used by tests/test_fleet.py (a short
run with every fault) and benchmarks/fleet.py (the issue's full-length run and its figures).

Each station is a real `amflow-edge run` in a network namespace of its own (tests/netlab.py), on the replay rig
(a small recording made once by the mock), so twenty fit on two cores. It reaches the plant through the lab:
MQTT through a DelayProxy to the plant mosquitto on the root namespace's loopback, webhooks to a receiver on the
lab's service address. An operator stand-in approves every scan over MQTT requests, so each scan has a
scan.capture and a scan.quality_control whose order matters.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import defaultdict
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import psycopg
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from amflow_edge.config.loading import load_config
from amflow_edge.station.build import build_station
from amflow_edge.station.capture import Trigger
from amflow_edge.station.station import RunOptions
from tests.delay_proxy import DelayProxy
from tests.mqtt_helpers import Broker
from tests.netlab import Host, NetLab
from tests.station_files import write_station
from tests.webhook_receiver import WebhookReceiver

REPO = Path(__file__).resolve().parent.parent
PYTHON = str(REPO / ".venv" / "bin" / "python")
RECORDED_SCANS = 3
PREFIX = "amflow"


def make_recording(root: Path) -> Path:
    """A mock station's data root with a few stored scans and its references: what every fleet station replays."""
    root.mkdir(parents=True, exist_ok=True)
    station = build_station(load_config(write_station(root, 1, {"mock": {"seed": 5, "scene_pool": 3}}, "recorder")))
    try:
        station.start(RunOptions(timer=False, http=False))
        for _ in range(RECORDED_SCANS):
            assert station.loop.capture(Trigger(source="recording")).ok
    finally:
        station.shutdown(flush_timeout_s=0.0)
    return root / "data"


def _env() -> dict[str, str]:
    return {"PATH": "/usr/sbin:/usr/bin:/bin", "PYTHONUNBUFFERED": "1", "HOME": os.environ.get("HOME", "/root")}


@dataclass
class FleetStation:
    """One station daemon in its own namespace."""

    index: int
    host: Host
    root: Path
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0

    @property
    def id(self) -> str:
        return f"station-{self.index:02d}"

    @property
    def data_root(self) -> Path:
        return self.root / "data"

    @property
    def db_path(self) -> Path:
        return self.root / "state" / "station.db"

    def config(self, capturing: bool) -> Path:
        return self.root / ("station.toml" if capturing else "drain.toml")

    def start(self, capturing: bool = True) -> None:
        log = (self.root / "daemon.log").open("ab")
        self.proc = self.host.run(
            [PYTHON, "-m", "amflow_edge.cli", "run", "--config", str(self.config(capturing))],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=_env(),
            cwd=str(REPO),
        )
        log.close()

    def stop(self, timeout_s: float = 60.0) -> None:
        """SIGTERM, as systemd stops it: the scan in progress finishes, the outbox keeps what is unsent."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def outbox(self) -> list[tuple[int, str, str, str | None, float]]:
        """(seq, event_id, event, scan_uuid, created) of every event this station ever queued."""
        with sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True, timeout=30) as conn:
            return list(conn.execute("SELECT seq, event_id, event, scan_uuid, created FROM outbox ORDER BY seq"))

    def backlog(self) -> tuple[int, int]:
        """Events not yet acknowledged by the broker, and not yet delivered to the webhook target."""
        with sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True, timeout=30) as conn:
            mqtt_backlog = conn.execute("SELECT COUNT(*) FROM outbox WHERE sent IS NULL").fetchone()[0]
            hook = conn.execute(
                "SELECT COUNT(*) FROM outbox WHERE seq > COALESCE((SELECT delivered_seq FROM webhook_targets "
                "WHERE hook_id = 1), 0)"
            ).fetchone()[0]
            dead = conn.execute("SELECT COUNT(*) FROM webhook_dead_letters").fetchone()[0]
        return int(mqtt_backlog), int(hook) + int(dead)

    def scans_on_disk(self) -> dict[str, str]:
        """uuid → modified of every stored scan, as its scan.json (the mirror of the last event) says."""
        found: dict[str, str] = {}
        scans = self.data_root / "scans"
        for directory in scans.iterdir() if scans.is_dir() else ():
            record = directory / "scan.json"
            if directory.name.startswith(".") or not record.is_file():
                continue
            scan = json.loads(record.read_text())["scan"]
            found[scan["uuid"]] = scan["modified"]
        return found


class OperatorStandIn:
    """Approves every captured scan over MQTT, as a plant's QC screen would: each scan then has a second event."""

    def __init__(self, broker: Broker) -> None:
        self.approved: set[str] = set()
        self._lock = threading.Lock()
        self._client = _client("fleet-operator")
        self._client.on_connect = lambda c, *_: c.subscribe(f"{PREFIX}/+/event/scan.capture", qos=1)
        self._client.on_message = self._on_message
        self.subscribed = _connect(self._client, broker)

    def _on_message(self, client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        station = message.topic.split("/")[1]
        scan = json.loads(message.payload)["data"]["uuid"]
        with self._lock:
            if scan in self.approved:
                return
            self.approved.add(scan)
        body = json.dumps({"scan": scan, "pass": True, "operator": "fleet"}).encode()
        client.publish(f"{PREFIX}/{station}/request/qc", body, qos=1)

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


class Monitor:
    """Every event as the plant broker delivered it, in arrival order: what 'in order per scan' is checked on."""

    def __init__(self, broker: Broker) -> None:
        self.arrivals: list[tuple[float, str, str, str]] = []
        """(arrival time, station, event_id, scan uuid)."""
        self.store_count_peak = 0
        self._lock = threading.Lock()
        self._client = _client("fleet-monitor")
        self._client.on_connect = lambda c, *_: c.subscribe(
            [(f"{PREFIX}/+/event/#", 1), ("$SYS/broker/store/messages/count", 0)]
        )
        self._client.on_message = self._on_message
        self.subscribed = _connect(self._client, broker)

    def _on_message(self, client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        if message.topic.startswith("$SYS"):
            self.store_count_peak = max(self.store_count_peak, int(message.payload))
            return
        props = dict(getattr(message.properties, "UserProperty", None) or [])
        scan = json.loads(message.payload)["data"]["uuid"]
        with self._lock:
            self.arrivals.append((time.time(), message.topic.split("/")[1], props.get("event_id", ""), scan))

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


def _client(client_id: str) -> mqtt.Client:
    client = mqtt.Client(
        callback_api_version=mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5
    )
    client.reconnect_delay_set(0.2, 2)  # type: ignore[arg-type]  # paho waits float seconds; its hint says int
    client.max_queued_messages_set(0)
    return client


def _connect(client: mqtt.Client, broker: Broker) -> threading.Event:
    """Set once the first subscription is acknowledged: a persistent session queues only from then on."""
    subscribed = threading.Event()
    client.on_subscribe = lambda *_: subscribed.set()
    properties = Properties(PacketTypes.CONNECT)
    properties.SessionExpiryInterval = 86400
    client.connect_async(broker.host, broker.port, clean_start=False, properties=properties)
    client.loop_start()
    return subscribed


@dataclass
class Consumers:
    """The plant's consumer processes (amflow-edge consume), one shared-subscription group."""

    broker: Broker
    dsn: str
    root: Path
    count: int = 2
    procs: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start(self, index: int) -> None:
        log = (self.root / f"consumer-{index}.log").open("ab")
        self.procs[index] = subprocess.Popen(
            [
                PYTHON,
                "-m",
                "amflow_edge.cli",
                "consume",
                "--broker",
                f"{self.broker.host}:{self.broker.port}",
                "--dsn",
                self.dsn,
                "--group",
                "plant",
                "--client-id",
                f"plant-consumer-{index}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=_env(),
            cwd=str(REPO),
        )
        log.close()

    def start_all(self) -> None:
        for index in range(self.count):
            self.start(index)

    def subscribed(self, index: int) -> bool:
        """The consumer logged that it consumes: its group's subscription exists, so the broker queues for it."""
        log = self.root / f"consumer-{index}.log"
        return log.is_file() and "consuming" in log.read_text(errors="replace")

    def kill(self, index: int) -> None:
        proc = self.procs.pop(index)
        proc.kill()
        proc.wait(timeout=10)

    def stop_all(self) -> None:
        for proc in self.procs.values():
            proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
        self.procs.clear()


@dataclass
class FleetReport:
    """What the run left, checked against every station's disk and outbox."""

    stations: int
    scans_on_disk: int
    scan_rows: int
    missing_rows: list[str]
    stale_rows: list[str]
    extra_rows: list[str]
    events_queued: int
    event_rows: int
    missing_events: list[str]
    extra_events: list[str]
    webhook_missing: list[str]
    webhook_out_of_order: list[str]
    mqtt_out_of_order: list[str]
    mqtt_missing: list[str]
    webhook_posts: int
    webhook_duplicates: int

    @property
    def clean(self) -> bool:
        return not (
            self.missing_rows
            or self.stale_rows
            or self.extra_rows
            or self.missing_events
            or self.extra_events
            or self.webhook_missing
            or self.webhook_out_of_order
            or self.mqtt_out_of_order
            or self.mqtt_missing
        )

    def summary(self) -> str:
        return (
            f"{self.stations} stations, {self.scans_on_disk} scans on disk, {self.scan_rows} scan rows, "
            f"{self.events_queued} events queued, {self.event_rows} event rows; missing rows {len(self.missing_rows)}, "
            f"stale {len(self.stale_rows)}, extra {len(self.extra_rows)}; missing events {len(self.missing_events)}, "
            f"extra {len(self.extra_events)}; webhook missing {len(self.webhook_missing)}, out of order "
            f"{len(self.webhook_out_of_order)}, posts {self.webhook_posts} ({self.webhook_duplicates} repeated); "
            f"MQTT missing {len(self.mqtt_missing)}, out of order {len(self.mqtt_out_of_order)}"
        )


def _in_order(sequence: list[str], rank: dict[str, int]) -> bool:
    """First arrivals of a scan's events follow the order the station queued them in."""
    seen: list[int] = []
    for event_id in sequence:
        position = rank.get(event_id)
        if position is not None and position not in seen:
            seen.append(position)
    return seen == sorted(seen)


class Fleet:
    """The whole plant; start(), then faults through its parts, then drain() and verify()."""

    def __init__(self, root: Path, recording: Path, dsn: str, stations: int, interval_s: float) -> None:
        self.root = root
        self.dsn = dsn
        self._plan = (recording, stations, interval_s)
        self._exits = ExitStack()
        self.stations: list[FleetStation] = []
        self.operator: OperatorStandIn | None = None
        self.monitor: Monitor | None = None

    def __enter__(self) -> Fleet:
        """Everything but the processes: a part that fails to come up takes down what came up before it."""
        recording, stations, interval_s = self._plan
        with ExitStack() as exits:
            self.lab = exits.enter_context(NetLab())
            (self.root / "broker").mkdir(parents=True)
            self.broker = Broker(self.root / "broker", persistence=True)
            with self.broker.conf.open("a") as conf:
                conf.write("sys_interval 1\n")  # the store's message count every second: the peak queue
                # Saved after every change, not every second: a broker killed outright must not forget what it
                # acknowledged (config/mosquitto/plant-broker.conf says why a plant wants the same).
                conf.write("autosave_on_changes true\n")
            self.broker.start()
            exits.callback(self.broker.stop, graceful=True)
            self.proxy = exits.enter_context(
                DelayProxy(listen=(self.lab.service_addr, 0), upstream=(self.broker.host, self.broker.port), delay_s=0)
            )
            self.receiver = WebhookReceiver(host=self.lab.service_addr)
            exits.callback(self.receiver.close)
            for index in range(stations):
                host = self.lab.add_host(f"s{index:02d}")
                station = FleetStation(index, host, self.root / f"station-{index:02d}")
                self._write_configs(station, recording, interval_s)
                self.stations.append(station)
            self.consumers = Consumers(self.broker, self.dsn, self.root)
            exits.callback(self._stop_processes)
            self._exits = exits.pop_all()
        return self

    def __exit__(self, *exc: object) -> None:
        self._exits.close()

    def _write_configs(self, station: FleetStation, recording: Path, interval_s: float) -> None:
        sections: dict[str, dict[str, Any]] = {
            "rig": {"driver": "replay", "grab_timeout_s": 30.0},
            "replay": {"source": str(recording), "preload": True},
            "mqtt": {"host": self.lab.service_addr, "port": self.proxy.address[1], "keepalive_s": 10},
            "http": {"enabled": False},
            "session": {"batch_id": "FLEET", "batch_title": "fleet"},
            "capture": {"timer_interval_s": interval_s, "encode_threads": 1},
        }
        station.root.mkdir(parents=True)
        config = write_station(station.root, self.proxy.address[1], sections, station.id)
        hook = (
            f'\n[[webhooks]]\nurl = "{self.receiver.url(f"/hooks/{station.id}")}"\nhook_id = 1\n'
            "max_backoff_s = 5\ntimeout_s = 5\n"
        )
        text = config.read_text() + hook
        station.config(True).write_text(text)
        station.config(False).write_text(text.replace(f"timer_interval_s = {interval_s}\n", ""))

    def start(self) -> None:
        """The plant first (a group or session queues only from its first subscription), then the stations."""
        self.monitor = Monitor(self.broker)
        self.operator = OperatorStandIn(self.broker)
        self.consumers.start_all()
        waited = time.monotonic() + 60
        ready = [self.monitor.subscribed, self.operator.subscribed]
        while not (all(e.is_set() for e in ready) and all(map(self.consumers.subscribed, range(self.consumers.count)))):
            if time.monotonic() > waited:
                raise RuntimeError("the plant's subscribers did not subscribe within 60 s:\n" + daemon_logs(self))
            time.sleep(0.1)
        for station in self.stations:
            station.start()

    def stop_capturing(self) -> None:
        """Every station stopped by systemd and started again without its trigger: the scans are now a fixed set,
        and what each outbox still holds goes out after the restart."""
        for station in self.stations:
            if station.proc is not None:
                station.proc.send_signal(signal.SIGTERM)
        for station in self.stations:
            station.stop()
            station.start(capturing=False)

    def drained(self) -> bool:
        """Every scan approved, every event out of every outbox, to the broker and the webhook, and in PostgreSQL."""
        queued = 0
        for station in self.stations:
            if station.backlog() != (0, 0):
                return False
            events = station.outbox()
            decided = sum(1 for e in events if e[2] == "scan.quality_control")
            if decided < len(station.scans_on_disk()):
                return False
            queued += len(events)
        return self.pg_event_count() >= queued

    def pg_event_count(self) -> int:
        try:
            with psycopg.connect(self.dsn) as conn:
                return int(conn.execute("SELECT COUNT(*) FROM amflow_scan_events").fetchone()[0])  # type: ignore[index]
        except psycopg.errors.UndefinedTable:
            return 0

    def verify(self) -> FleetReport:
        disk: dict[str, str] = {}
        queued: dict[str, tuple[str, str | None, int]] = {}
        rank_per_scan: dict[str, dict[str, int]] = defaultdict(dict)
        for station in self.stations:
            disk.update(station.scans_on_disk())
            for seq, event_id, _event, scan_uuid, _created in station.outbox():
                queued[event_id] = (station.id, scan_uuid, seq)
                if scan_uuid is not None:
                    rank_per_scan[scan_uuid][event_id] = seq
        with psycopg.connect(self.dsn) as conn:
            rows = {
                str(u): m for u, m in conn.execute("SELECT uuid, payload->>'modified' FROM amflow_scans").fetchall()
            }
            events = {str(e) for (e,) in conn.execute("SELECT event_id FROM amflow_scan_events").fetchall()}
        posts = self.receiver.accepted()
        posted_per_scan: dict[str, list[str]] = defaultdict(list)
        for post in posts:
            posted_per_scan[post.json["data"]["uuid"]].append(post.event_id)
        posted_ids = {post.event_id for post in posts}
        arrived_per_scan: dict[str, list[str]] = defaultdict(list)
        assert self.monitor is not None
        for _at, _station, event_id, scan in list(self.monitor.arrivals):
            arrived_per_scan[scan].append(event_id)
        arrived_ids = {a[2] for a in self.monitor.arrivals}
        return FleetReport(
            stations=len(self.stations),
            scans_on_disk=len(disk),
            scan_rows=len(rows),
            missing_rows=sorted(set(disk) - set(rows)),
            stale_rows=sorted(u for u, m in disk.items() if u in rows and rows[u] != m),
            extra_rows=sorted(set(rows) - set(disk)),
            events_queued=len(queued),
            event_rows=len(events),
            missing_events=sorted(set(queued) - events),
            extra_events=sorted(events - set(queued)),
            webhook_missing=sorted(set(queued) - posted_ids),
            webhook_out_of_order=sorted(
                s for s, ids in posted_per_scan.items() if not _in_order(ids, rank_per_scan[s])
            ),
            mqtt_out_of_order=sorted(s for s, ids in arrived_per_scan.items() if not _in_order(ids, rank_per_scan[s])),
            mqtt_missing=sorted(set(queued) - arrived_ids),
            webhook_posts=len(posts),
            webhook_duplicates=len(posts) - len(posted_ids),
        )

    def _stop_processes(self) -> None:
        for station in self.stations:
            station.stop(timeout_s=30)
        self.consumers.stop_all()
        for part in (self.operator, self.monitor):
            if part is not None:
                part.close()


def daemon_logs(fleet: Fleet, lines: int = 30) -> str:
    """The tail of every daemon's and consumer's log, for a failure message."""
    out = []
    for path in sorted(fleet.root.glob("*/daemon.log")) + sorted(fleet.root.glob("consumer-*.log")):
        text = path.read_text(errors="replace").splitlines()[-lines:]
        out.append(f"--- {path.relative_to(fleet.root)}\n" + "\n".join(text))
    return "\n".join(out)


if __name__ == "__main__":  # pragma: no cover - a manual smoke run: python -m tests.fleet DIR
    print(make_recording(Path(sys.argv[1])))
