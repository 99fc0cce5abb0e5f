"""A real mosquitto for tests, and a subscriber that records what it receives.

Tests talk to a real broker on loopback because the contract we promise (QoS 1, retained
availability, v5 user properties) is the broker's behaviour, not something a fake can show.
"""

from __future__ import annotations

import os
import queue
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Broker:
    """mosquitto on 127.0.0.1 at a free port; stop() and start() keep the port, as a broker outage would."""

    def __init__(
        self,
        directory: Path,
        persistence: bool = False,
        password_file: Path | None = None,
        tls: dict[str, Path] | None = None,
    ) -> None:
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        if not Path(binary).exists():
            raise RuntimeError("mosquitto is not installed: run scripts/setup (it installs the mosquitto package)")
        self.binary = binary
        self.port = free_port()
        self.host = "127.0.0.1"
        self.conf = directory / "mosquitto.conf"
        self.log = directory / "mosquitto.log"
        # A plant broker serving subscribers that must not miss events needs a queue longer than mosquitto's 1000.
        lines = [f"listener {self.port} 127.0.0.1", f"log_dest file {self.log}", "max_queued_messages 100000"]
        if os.geteuid() == 0:
            lines.append("user root")  # else mosquitto drops to its own user and cannot use the test's private dirs
        if password_file is not None:
            lines += ["allow_anonymous false", f"password_file {password_file}"]
        else:
            lines.append("allow_anonymous true")
        if tls is not None:
            lines += [f"cafile {tls['cafile']}", f"certfile {tls['certfile']}", f"keyfile {tls['keyfile']}"]
        if persistence:
            (directory / "broker-db").mkdir(exist_ok=True)
            lines += ["persistence true", f"persistence_location {directory / 'broker-db'}/", "autosave_interval 1"]
        else:
            lines.append("persistence false")
        self.conf.write_text("\n".join(lines) + "\n")
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 10.0) -> None:
        self._proc = subprocess.Popen(
            [self.binary, "-c", str(self.conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(
                    f"mosquitto exited: {self._proc.stderr.read().decode() if self._proc.stderr else ''}"
                )
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError(f"mosquitto did not listen on {self.host}:{self.port} within {timeout_s} s")

    def stop(self, graceful: bool = False) -> None:
        """Kill the broker (an outage); graceful=True lets a persistent broker save its sessions first."""
        if self._proc is not None and self._proc.poll() is None:
            if graceful:
                self._proc.terminate()
            else:
                self._proc.kill()
            self._proc.wait(timeout=10)
        self._proc = None


@dataclass(frozen=True)
class Received:
    topic: str
    payload: bytes
    retain: bool
    user_properties: dict[str, str]


class Subscriber:
    """A plant subscriber. With a client_id it keeps a persistent session, as an MES that must not miss events would."""

    def __init__(
        self,
        broker: Broker,
        topics: list[str],
        client_id: str = "",
        credentials: tuple[str, str] | None = None,
        ca: Path | None = None,
    ) -> None:
        """`credentials` (user, password) and `ca` (the broker's CA, for TLS): a plant client on a secured broker."""
        self.messages: queue.Queue[Received] = queue.Queue()
        self._backlog: list[Received] = []
        self._subscribed = queue.Queue[int]()
        self._client = mqtt.Client(
            callback_api_version=mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5
        )
        self._topics = topics
        if credentials is not None:
            self._client.username_pw_set(*credentials)
        if ca is not None:
            self._client.tls_set(ca_certs=str(ca))
        self._client.on_connect = self._on_connect
        self._client.on_message = self._on_message
        self._client.on_subscribe = lambda *a: self._subscribed.put(1)
        self._client.reconnect_delay_set(0.1, 1)  # type: ignore[arg-type]  # paho waits float seconds; its hint says int
        properties = None
        if client_id:
            properties = Properties(PacketTypes.CONNECT)
            properties.SessionExpiryInterval = 3600
        self._client.connect(broker.host, broker.port, clean_start=not client_id, properties=properties)
        self._client.loop_start()
        self._subscribed.get(timeout=10)

    def _on_connect(self, client: mqtt.Client, userdata: object, flags: object, rc: object, props: object) -> None:
        client.subscribe([(t, 1) for t in self._topics])

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        props = getattr(msg.properties, "UserProperty", None) or []
        self.messages.put(Received(msg.topic, bytes(msg.payload), bool(msg.retain), dict(props)))

    def next(self, timeout_s: float = 30.0, topic: str | None = None) -> Received:
        """The oldest message not yet taken (on `topic`, if given; others stay for later) or AssertionError."""
        deadline = time.monotonic() + timeout_s
        while True:
            while True:
                try:
                    self._backlog.append(self.messages.get_nowait())
                except queue.Empty:
                    break
            for index, message in enumerate(self._backlog):
                if topic is None or message.topic == topic:
                    return self._backlog.pop(index)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no message on {topic or self._topics} within {timeout_s} s")
            try:
                self._backlog.append(self.messages.get(timeout=remaining))
            except queue.Empty:
                continue

    def publish(self, topic: str, payload: bytes, properties: Properties | None = None) -> None:
        self._client.publish(topic, payload, qos=1, properties=properties).wait_for_publish(5)

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


def password_broker(directory: Path, user: str, password: str) -> Broker:
    """A started broker that lets only `user` in, with `password` (a mosquitto_passwd file)."""
    passwords = directory / "passwd"
    passwords.write_text("")
    subprocess.run(["mosquitto_passwd", "-b", str(passwords), user, password], check=True)
    os.chmod(passwords, 0o600)
    broker = Broker(directory, password_file=passwords)
    broker.start()
    return broker
