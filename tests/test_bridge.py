"""Bridged layout: the station publishes to a mosquitto on its own PC, which bridges to the plant broker.

Both brokers run the shipped files, config/mosquitto/station-bridge.conf and plant-broker.conf with
plant.acl, with only what differs on a test machine replaced (`shipped`: addresses, ports, paths, the
station id, TLS files, the bridge's reconnect delay). The plant broker is TLS with passwords and ACLs, as
shipped, and the plant's MES is a subscriber with a persistent session. The station is the real daemon,
configured with config/station-bridged.example.toml. docs/plant-integration.md says what this shows.
"""

from __future__ import annotations

import json
import os
import queue
import re
import select
import signal
import socket
import sqlite3
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from amflow_edge.cli.main import main
from amflow_edge.config.loading import load_config, read_toml
from amflow_edge.config.station import MqttSettings, StationConfig
from amflow_edge.station.build import build_station
from amflow_edge.station.station import RunOptions, Station
from amflow_edge.storage.db import DB_FILE
from tests.mqtt_helpers import Broker, Received, Subscriber
from tests.polling import wait_for
from tests.station_files import write_station
from tests.test_tls import make_ca, make_server_cert

REPO = Path(__file__).resolve().parent.parent
MOSQUITTO = REPO / "config" / "mosquitto"
STATION = "test-station"
ROOT = f"amflow/{STATION}"
PASSWORDS = {STATION: "station-secret", "mes": "mes-secret"}
MES_TOPICS = [f"{ROOT}/event/#", f"{ROOT}/availability", f"{ROOT}/state", f"{ROOT}/response/#", "amflow/replies/mes/#"]


def shipped(name: str, replacements: dict[str, str]) -> str:
    """A shipped file with lines replaced; each must be there, so an edit of the file cannot go untested."""
    text = (MOSQUITTO / name).read_text()
    for old, new in replacements.items():
        assert old in text, f"{name} no longer contains {old!r}"
        text = text.replace(old, new)
    text = text.replace("amq-line1", STATION)
    return text + ("user root\n" if os.geteuid() == 0 else "")  # else mosquitto drops to its own user


class ShippedBroker(Broker):
    """A Broker (stop() and start() keep the port) running a shipped config instead of the helper's own."""

    def __init__(self, directory: Path, config: Callable[[Broker], str]) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        super().__init__(directory)
        self.conf.write_text(config(self))

    def snapshot(self) -> None:
        """What autosave does (SIGUSR1), waited for: the next 'Saving in-memory database' in the log."""
        saved = self.log.read_text().count("Saving in-memory database")
        assert self._proc is not None
        self._proc.send_signal(signal.SIGUSR1)
        assert wait_for(lambda: self.log.read_text().count("Saving in-memory database") > saved, 10)


class PlantClient(Subscriber):
    """A plant system on the plant broker: TLS, a user of plant.acl and, given a client id, a persistent session.
    Remembers the correlation data of what arrives, by topic."""

    def __init__(self, broker: Broker, topics: list[str], ca: Path, client_id: str = "", user: str = "mes") -> None:
        self.correlation: dict[str, bytes] = {}
        super().__init__(broker, topics, client_id, credentials=(user, PASSWORDS[user]), ca=ca)

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        correlation = getattr(msg.properties, "CorrelationData", None)
        if correlation is not None:
            self.correlation[msg.topic] = bytes(correlation)
        super()._on_message(client, userdata, msg)


class Link:
    """The network between the station and the plant: a TCP relay whose cut() resets every connection through
    it, and refuses new ones, until mend()."""

    def __init__(self, port: int) -> None:
        self._port = port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._lock = threading.Lock()
        self._cut = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                near, _ = self._listener.accept()
            except OSError:
                return  # closed
            try:
                if self._cut:
                    raise ConnectionRefusedError
                far = socket.create_connection(("127.0.0.1", self._port))
            except OSError:
                self._reset(near)
                continue
            with self._lock:
                self._pairs.append((near, far))
            threading.Thread(target=self._relay, args=(near, far), daemon=True).start()

    def _relay(self, near: socket.socket, far: socket.socket) -> None:
        try:
            while True:
                for ready in select.select([near, far], [], [], 0.5)[0]:
                    data = ready.recv(65536)
                    if not data:
                        raise ConnectionResetError
                    (far if ready is near else near).sendall(data)
        except (OSError, ValueError):
            self._reset(near)
            self._reset(far)

    @staticmethod
    def _reset(sock: socket.socket) -> None:
        """Close with RST, as a pulled cable looks to whoever writes next."""
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()
        except OSError:
            pass

    def cut(self) -> None:
        self._cut = True
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for near, far in pairs:
            self._reset(near)
            self._reset(far)

    def mend(self) -> None:
        self._cut = False

    def close(self) -> None:
        self._listener.close()
        self.cut()


@dataclass(frozen=True)
class Tls:
    ca: Path
    cert: Path
    key: Path
    passwords: Path


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Tls:
    directory = tmp_path_factory.mktemp("plant-tls")
    ca_key, ca = make_ca(directory, "plant-ca")
    key, cert = make_server_cert(directory, ca_key, ca)  # for 127.0.0.1, the address the bridge checks
    passwords = directory / "passwd"
    passwords.write_text("")
    for user, password in PASSWORDS.items():
        subprocess.run(["mosquitto_passwd", "-b", str(passwords), user, password], check=True)
    os.chmod(passwords, 0o600)
    return Tls(ca, cert, key, passwords)


def plant_broker(directory: Path, tls: Tls) -> ShippedBroker:
    acl = directory / "plant.acl"
    directory.mkdir(parents=True)
    acl.write_text((MOSQUITTO / "plant.acl").read_text().replace("amq-line1", STATION))
    return ShippedBroker(
        directory,
        lambda broker: shipped(
            "plant-broker.conf",
            {
                "pid_file /run/mosquitto/mosquitto.pid\n": "",
                "log_dest file /var/log/mosquitto/mosquitto.log": f"log_dest file {broker.log}",
                "listener 8883\n": f"listener {broker.port} 127.0.0.1\n",
                "/etc/mosquitto/certs/plant-broker.pem": str(tls.cert),
                "/etc/mosquitto/certs/plant-broker.key": str(tls.key),
                "/etc/mosquitto/certs/plant-ca.pem": str(tls.ca),
                "password_file /etc/mosquitto/passwd": f"password_file {tls.passwords}",
                "acl_file /etc/mosquitto/plant.acl": f"acl_file {acl}",
                "persistence_location /var/lib/mosquitto/": f"persistence_location {directory}/",
            },
        ),
    )


def station_broker(directory: Path, plant_port: int, tls: Tls, changes: dict[str, str] | None = None) -> ShippedBroker:
    return ShippedBroker(
        directory,
        lambda broker: shipped(
            "station-bridge.conf",
            {
                "pid_file /run/mosquitto/mosquitto.pid\n": "",
                "log_dest file /var/log/mosquitto/mosquitto.log": f"log_dest file {broker.log}",
                "listener 1883 127.0.0.1": f"listener {broker.port} 127.0.0.1",
                "persistence_location /var/lib/mosquitto/": f"persistence_location {directory}/",
                "address mqtt.plant.local:8883": f"address 127.0.0.1:{plant_port}",
                "bridge_cafile /etc/mosquitto/certs/plant-ca.pem": f"bridge_cafile {tls.ca}",
                "remote_password change-me": f"remote_password {PASSWORDS[STATION]}",
                "restart_timeout 5 60": "restart_timeout 1 2",  # a test's outages last a second, not an hour
                **(changes or {}),
            },
        ),
    )


def wait_for_bridge(broker: Broker, state: bytes = b"1") -> None:
    """Until the bridge's retained notification on the station broker says it is connected ("1") or not ("0")."""
    watcher = Subscriber(broker, [f"{ROOT}/bridge"])
    last = [b""]

    def reached() -> bool:
        while not watcher.messages.empty():
            last[0] = watcher.messages.get().payload
        return last[0] == state

    try:
        assert wait_for(reached), f"the bridge's notification stayed {last[0]!r}, not {state!r}"
    finally:
        watcher.close()


@dataclass
class Site:
    root: Path
    plant: ShippedBroker
    local: ShippedBroker
    mes: PlantClient
    ca: Path
    link: Link


@contextmanager
def site_with(root: Path, tls: Tls, changes: dict[str, str] | None = None) -> Iterator[Site]:
    """Plant broker, station broker bridged to it over a Link, and the MES subscribed with its persistent
    session."""
    plant = plant_broker(root / "plant", tls)
    plant.start()
    link = Link(plant.port)
    local = station_broker(root / "station-broker", link.port, tls, changes)
    local.start()
    mes = PlantClient(plant, MES_TOPICS, tls.ca, client_id="mes-1")
    try:
        wait_for_bridge(local)
        yield Site(root, plant, local, mes, tls.ca, link)
    finally:
        mes.close()
        local.stop()
        link.close()
        plant.stop()


@pytest.fixture
def site(tmp_path: Path, tls: Tls) -> Iterator[Site]:
    with site_with(tmp_path, tls) as made:
        yield made


def bridged_config(site: Site, **capture: float) -> tuple[Path, StationConfig]:
    """A mock station whose [mqtt] is config/station-bridged.example.toml, on the test's station broker."""
    path = write_station(site.root / "station", site.local.port, {"capture": dict(capture)}, station_id=STATION)
    example = read_toml(REPO / "config" / "station-bridged.example.toml")["mqtt"]
    example["hook"]["target"] = example["hook"]["target"].replace("amq-line1", STATION)
    cfg = load_config(path)
    return path, cfg.model_copy(update={"mqtt": MqttSettings.model_validate({**example, "port": site.local.port})})


@contextmanager
def running(cfg: StationConfig, options: RunOptions) -> Iterator[Station]:
    station = build_station(cfg)
    station.start(options)
    try:
        assert station.mqtt.connected.wait(10)
        yield station
    finally:
        station.shutdown()


def acknowledged(cfg: StationConfig) -> list[tuple[str, str]]:
    """(topic, event_id) of every event the station broker acknowledged, in the outbox's order."""
    uri = f"file:{cfg.station.state_dir / DB_FILE}?mode=ro"
    with closing(sqlite3.connect(uri, uri=True)) as conn:
        return conn.execute("SELECT topic, event_id FROM outbox WHERE sent IS NOT NULL ORDER BY seq").fetchall()


def scanned_and_handed_over(station: Station, scans: int) -> None:
    """The station took its scans and the station broker acknowledged every event: the outbox is empty."""
    assert wait_for(station.stop_event.is_set, 60), "the station did not finish its scans"
    assert station.loop.scans_stored == scans
    assert wait_for(lambda: station.outbox.stats().backlog == 0)


def first_arrivals(client: Subscriber, until: Callable[[dict[str, Received]], bool]) -> dict[str, Received]:
    """The first copy of each message with an event_id, by event_id in order of arrival, until `until` holds."""
    arrived: dict[str, Received] = {}
    deadline = time.monotonic() + 60
    while not until(arrived):
        if time.monotonic() > deadline:
            raise AssertionError(f"only {len(arrived)} events reached the plant")
        try:
            message = client.messages.get(timeout=0.5)
        except queue.Empty:
            continue
        event_id = message.user_properties.get("event_id")
        if event_id is not None and event_id not in arrived:
            arrived[event_id] = message
    return arrived


def all_of(wanted: list[tuple[str, str]]) -> Callable[[dict[str, Received]], bool]:
    ids = {event_id for _, event_id in wanted}
    return lambda arrived: ids <= arrived.keys()


def assert_each_topic_in_order(arrived: dict[str, Received], sent: list[tuple[str, str]]) -> None:
    for topic in {topic for topic, _ in sent}:
        expected = [event_id for t, event_id in sent if t == topic]
        firsts = [event_id for event_id, message in arrived.items() if message.topic == topic]
        assert [e for e in firsts if e in set(expected)] == expected, f"{topic}: first arrivals out of order"


def with_event_id(event_id: str) -> Properties:
    properties = Properties(PacketTypes.PUBLISH)
    properties.UserProperty = [("event_id", event_id)]
    return properties


def test_a_station_behind_the_bridge_reaches_the_plant_with_event_ids_retained_state_and_answers(
    site: Site,
) -> None:
    _, cfg = bridged_config(site)
    with running(cfg, RunOptions()) as station:
        request = Properties(PacketTypes.PUBLISH)
        request.ResponseTopic = "amflow/replies/mes/7"
        request.CorrelationData = b"req-7"
        site.mes.publish(f"{ROOT}/request/capture", b"{}", request)  # plant -> bridge -> station broker -> daemon

        answer = json.loads(site.mes.next(topic=f"{ROOT}/response/capture").payload)
        assert answer["status"] == "ok"
        copy = site.mes.next(topic="amflow/replies/mes/7")  # the v5 response topic and correlation data crossed
        assert json.loads(copy.payload)["scan"] == answer["scan"]
        assert site.mes.correlation["amflow/replies/mes/7"] == b"req-7"

        event = site.mes.next(topic=f"{ROOT}/event/scan.capture")
        body = json.loads(event.payload)
        assert body["data"]["uuid"] == answer["scan"]
        outbox_row = (f"{ROOT}/event/scan.capture", event.user_properties["event_id"])
        assert wait_for(lambda: outbox_row in acknowledged(cfg))  # the id it was queued with, PUBACK or not yet
        assert body["hook"]["target"] == f"mqtt://mqtt.plant.local:8883/{ROOT}/event"  # the plant's, not 127.0.0.1

        late = PlantClient(site.plant, [f"{ROOT}/availability", f"{ROOT}/state"], site.ca)
        try:
            availability = late.next(topic=f"{ROOT}/availability")
            assert availability.payload == b"online" and availability.retain
            state = late.next(topic=f"{ROOT}/state")
            assert state.retain and json.loads(state.payload)["scan_session"] == station.scan_session
        finally:
            late.close()


def test_plant_broker_outages_lose_no_event_and_keep_each_topic_in_order(site: Site) -> None:
    _, cfg = bridged_config(site, timer_interval_s=0.05)
    outages = 0
    with running(cfg, RunOptions(max_scans=60)) as station:
        while not station.stop_event.is_set():
            time.sleep(0.4)
            site.plant.stop(graceful=True)
            outages += 1
            time.sleep(0.6)  # scans go on while the plant is away
            # ... and the station broker takes their events: the outbox does not back up.
            assert wait_for(lambda: station.outbox.stats().backlog == 0)
            site.plant.start()
        scanned_and_handed_over(station, 60)
        sent = acknowledged(cfg)
        arrived = first_arrivals(site.mes, all_of(sent))
    assert outages >= 2
    assert_each_topic_in_order(arrived, sent)
    assert all(len(event_id) == 36 for event_id in arrived)


def test_a_dense_stream_keeps_its_order_across_cuts_of_the_plant_link(site: Site) -> None:
    """Hundreds of events a second, as when a station empties a backlog: the bridge's queue and live events
    meet at every reconnect. With notifications sent to the plant (notifications_local_only false) mosquitto
    2.0.11 lets a live event overtake the queue at some of them (station-bridge.conf says why)."""
    publisher = Subscriber(site.local, [f"{ROOT}/bridge"], client_id="dense-publisher")
    sent: list[str] = []
    stop = threading.Event()

    def publish() -> None:
        while not stop.is_set():
            event_id = f"{len(sent):06d}"
            publisher.publish(f"{ROOT}/event/scan.capture", b"{}", with_event_id(event_id))
            sent.append(event_id)
            time.sleep(0.002)  # a few hundred a second: the MES drains them in a second or two

    thread = threading.Thread(target=publish)
    thread.start()
    try:
        for _ in range(3):
            time.sleep(0.7)
            site.link.cut()
            time.sleep(0.5)
            site.link.mend()
        time.sleep(0.5)
    finally:
        stop.set()
        thread.join()
        publisher.close()
    arrived = first_arrivals(site.mes, lambda arrived: set(sent) <= arrived.keys())
    assert list(arrived) == sent


def test_the_station_broker_restarted_while_the_plant_is_away_keeps_its_queue(site: Site) -> None:
    site.plant.stop(graceful=True)
    _, cfg = bridged_config(site, timer_interval_s=0.05)
    with running(cfg, RunOptions(max_scans=15)) as station:
        scanned_and_handed_over(station, 15)
        site.local.stop(graceful=True)  # systemctl restart mosquitto: it saves its queue, and reloads it
        site.local.start()
        site.plant.start()
        sent = acknowledged(cfg)
        arrived = first_arrivals(site.mes, all_of(sent))
    assert_each_topic_in_order(arrived, sent)


def test_a_power_cut_loses_what_the_last_snapshot_missed_and_outbox_replay_sends_it_again(site: Site) -> None:
    site.plant.stop(graceful=True)
    path, cfg = bridged_config(site, timer_interval_s=0.05)
    with running(cfg, RunOptions(max_scans=6)) as station:
        scanned_and_handed_over(station, 6)
    saved = {event_id for _, event_id in acknowledged(cfg)}
    site.local.snapshot()  # the last autosave before the cut
    with running(cfg, RunOptions(max_scans=6)) as station:
        scanned_and_handed_over(station, 6)
        site.local.stop()  # the power cut: kill -9, no snapshot
    unsaved = {event_id for _, event_id in acknowledged(cfg)} - saved
    assert unsaved

    site.local.start()
    site.plant.start()
    marker = Subscriber(site.local, [f"{ROOT}/bridge"])  # a publisher, here
    try:  # queued behind whatever the station broker reloaded, so once it arrives, all of that has
        marker.publish(f"{ROOT}/event/marker", b"", with_event_id("marker"))
    finally:
        marker.close()
    arrived = first_arrivals(site.mes, lambda arrived: "marker" in arrived)
    assert saved <= arrived.keys()  # in the snapshot: delivered
    assert not unsaved & arrived.keys()  # acknowledged after it: lost with the station broker's memory

    assert main(["outbox", "replay", "--config", str(path), "--since", "1h"]) == 0  # docs/plant-integration.md
    with running(cfg, RunOptions(timer=False)):
        first_arrivals(site.mes, lambda arrived: unsaved <= arrived.keys())


def test_without_mqtt_v5_on_the_bridge_the_event_id_is_lost(tmp_path: Path, tls: Tls) -> None:
    """Why station-bridge.conf says bridge_protocol_version mqttv50: mosquitto's default strips user properties."""
    v311 = {"bridge_protocol_version mqttv50": "bridge_protocol_version mqttv311"}
    with site_with(tmp_path, tls, v311) as bridged:
        publisher = Subscriber(bridged.local, [f"{ROOT}/bridge"])
        try:
            publisher.publish(f"{ROOT}/event/scan.capture", b"{}", with_event_id("marker"))
        finally:
            publisher.close()
        received = bridged.mes.next(topic=f"{ROOT}/event/scan.capture")
    assert received.user_properties == {}


def test_requests_sent_while_the_plant_link_is_down_are_not_kept_for_the_station(site: Site) -> None:
    """What station-bridge.conf warns of: mosquitto 2.0's bridge gives the plant broker no session expiry."""
    daemon = Subscriber(site.local, [f"{ROOT}/request/+"], client_id=f"amflow-edge-{STATION}")
    try:
        site.link.cut()
        wait_for_bridge(site.local, b"0")
        site.mes.publish(f"{ROOT}/request/capture", b"sent while down")
        site.link.mend()
        wait_for_bridge(site.local)

        def probe_arrived() -> bool:
            site.mes.publish(f"{ROOT}/request/capture", b"probe")
            return wait_for(lambda: not daemon.messages.empty(), 0.5)

        assert wait_for(probe_arrived)  # the bridge subscribes again at the plant
        first = daemon.next()
    finally:
        daemon.close()
    assert first.payload == b"probe"  # a kept request would have come first


@pytest.mark.parametrize("layout", ["direct", "bridged"])
def test_the_example_mqtt_sections_load_in_the_example_station_config(
    layout: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(REPO / "tests" / "data"))
    snippet = read_toml(REPO / "config" / f"station-{layout}.example.toml")
    assert list(snippet) == ["mqtt"]  # it replaces [mqtt] of station.example.toml and nothing else
    cfg = StationConfig(**{**read_toml(REPO / "config" / "station.example.toml"), **snippet})
    bridge = (MOSQUITTO / "station-bridge.conf").read_text()
    if layout == "direct":
        assert cfg.mqtt.tls is not None and cfg.mqtt.username == cfg.station.id and cfg.mqtt.hook.target is None
        assert f"address {cfg.mqtt.host}:{cfg.mqtt.port}\n" in bridge  # the same plant broker either way
    else:
        assert cfg.mqtt.tls is None and cfg.mqtt.username is None
        assert f"listener {cfg.mqtt.port} {cfg.mqtt.host}\n" in bridge
        assert cfg.mqtt.hook.target == f"mqtt://mqtt.plant.local:8883/{cfg.topic('event')}"


def test_the_bridge_carries_every_topic_of_the_contract_each_in_its_direction() -> None:
    rules = re.findall(r"^topic (\S+) (in|out) ([01])$", (MOSQUITTO / "station-bridge.conf").read_text(), re.M)
    root = "amflow/amq-line1"

    def crossing(topic: str) -> list[tuple[str, str]]:
        return [(direction, qos) for pattern, direction, qos in rules if mqtt.topic_matches_sub(pattern, topic)]

    for topic in [f"{root}/event/scan.capture", f"{root}/event/scan.reject", f"{root}/availability"]:
        assert crossing(topic) == [("out", "1")], topic
    assert crossing(f"{root}/response/qc") == [("out", "1")]
    assert crossing(f"{root}/state") == [("out", "0")]  # newest-only, not queued
    assert crossing("amflow/replies/mes/7") == [("out", "1")]
    assert crossing(f"{root}/request/capture") == [("in", "1")]  # and only in: a request is never sent back
    assert crossing(f"{root}/bridge") == []  # the notification stays on the station broker
