"""sd_notify and the watchdog against a real AF_UNIX datagram socket, as systemd listens on one."""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from amflow_edge.ops import sdnotify
from amflow_edge.ops.watchdog import Heartbeat, Watchdog

WAIT_S = 10.0  # generous: only ever waited for, never asserted as a speed


class NotifyServer:
    """What systemd does with NOTIFY_SOCKET: receive datagrams, one message each."""

    def __init__(self, address: str | bytes) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)

    def receive(self, timeout_s: float = WAIT_S) -> str | None:
        self.sock.settimeout(timeout_s)
        try:
            return self.sock.recv(4096).decode()
        except TimeoutError:
            return None

    def drain(self, quiet_s: float) -> list[str]:
        """Everything that arrives until the socket has been quiet for quiet_s."""
        messages = []
        while (message := self.receive(quiet_s)) is not None:
            messages.append(message)
        return messages

    def wait_for(self, predicate: object, timeout_s: float = WAIT_S) -> tuple[str, list[str]]:
        """The first message satisfying predicate, and every message before it."""
        deadline = time.monotonic() + timeout_s
        seen: list[str] = []
        while (left := deadline - time.monotonic()) > 0:
            message = self.receive(left)
            if message is None:
                break
            if predicate(message):  # type: ignore[operator]
                return message, seen
            seen.append(message)
        raise AssertionError(f"no matching notification within {timeout_s} s; got {seen}")

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def path_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[NotifyServer]:
    address = str(tmp_path / "notify.sock")
    if len(address) >= 100:
        pytest.skip(f"tmp path too long for an AF_UNIX socket address: {address}")
    server = NotifyServer(address)
    monkeypatch.setenv("NOTIFY_SOCKET", address)
    yield server
    server.close()


@pytest.fixture
def abstract_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[NotifyServer]:
    name = f"amflow-edge-test-{uuid.uuid4()}"
    server = NotifyServer(b"\0" + name.encode())
    monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
    yield server
    server.close()


@pytest.fixture(autouse=True)
def fresh_failure_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sdnotify, "_failure_logged", threading.Event())
    for name in ("WATCHDOG_USEC", "WATCHDOG_PID"):
        monkeypatch.delenv(name, raising=False)


def test_messages_arrive_in_order_on_a_path_socket(path_server: NotifyServer) -> None:
    assert sdnotify.ready("cameras open, references taken")
    assert sdnotify.status("running: 3 scans\nbacklog 0")
    assert sdnotify.watchdog()
    assert sdnotify.stopping("draining the outbox")
    assert path_server.drain(0.5) == [
        "READY=1\nSTATUS=cameras open, references taken",
        "STATUS=running: 3 scans backlog 0",  # one line: a newline would start a new assignment
        "WATCHDOG=1",
        "STOPPING=1\nSTATUS=draining the outbox",
    ]


def test_abstract_socket_address(abstract_server: NotifyServer) -> None:
    assert sdnotify.ready()
    assert sdnotify.watchdog()
    assert abstract_server.drain(0.5) == ["READY=1", "WATCHDOG=1"]


def test_without_notify_socket_every_call_is_a_quiet_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)

    def no_socket(*args: object, **kwargs: object) -> None:
        raise AssertionError("a socket was opened without NOTIFY_SOCKET")

    monkeypatch.setattr(socket, "socket", no_socket)
    with capture_logs() as logs:
        assert sdnotify.ready("x") is False
        assert sdnotify.status("x") is False
        assert sdnotify.watchdog() is False
        assert sdnotify.stopping() is False
    assert logs == []
    assert sdnotify.watchdog_interval_s() is None


@pytest.mark.parametrize("target", ["/nonexistent/dir/notify.sock", "vsock:2:1234", "@"])
def test_a_broken_socket_never_raises_and_is_logged_once(monkeypatch: pytest.MonkeyPatch, target: str) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", target)
    with capture_logs() as logs:
        for _ in range(5):
            assert sdnotify.watchdog() is False
        assert sdnotify.ready() is False
    warnings = [entry for entry in logs if entry["log_level"] == "warning"]
    assert len(warnings) == 1, logs
    assert warnings[0]["socket"] == target


def test_watchdog_interval_honours_watchdog_pid(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    assert sdnotify.watchdog_interval_s() == 30.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert sdnotify.watchdog_interval_s() == 30.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))  # a child that inherited the environment
    assert sdnotify.watchdog_interval_s() is None
    monkeypatch.setenv("WATCHDOG_PID", "not-a-pid")
    assert sdnotify.watchdog_interval_s() is None
    monkeypatch.delenv("WATCHDOG_PID")
    for bad in ("0", "-5", "thirty", ""):
        monkeypatch.setenv("WATCHDOG_USEC", bad)
        assert sdnotify.watchdog_interval_s() is None
    monkeypatch.setenv("WATCHDOG_USEC", "20000000")
    assert Watchdog().interval_s == 20.0
    assert Watchdog().period_s == 10.0


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_watchdog_pings_only_while_checks_pass(path_server: NotifyServer) -> None:
    clock = FakeClock()
    heartbeat = Heartbeat("capture loop", stale_after_s=60, clock=clock)
    dog = Watchdog(interval_s=30)
    dog.add_check("capture", heartbeat)
    dog.status("running: 0 scans")
    assert dog.tick() is True

    clock.now += 200  # the capture loop hangs in a driver call
    with capture_logs() as logs:
        assert dog.tick() is False
        clock.now += 15
        assert dog.tick() is False  # still failing: no second log line, no ping
        dog.status("running: 5 scans")  # the daemon's normal status must not hide the reason
    errors = [entry for entry in logs if entry["log_level"] == "error"]
    assert len(errors) == 1 and errors[0]["reason"] == "capture loop silent for 200 s (limit 60 s)"

    heartbeat.beat()
    assert dog.tick() is True
    assert dog.pings == 2
    assert path_server.drain(0.5) == [
        "STATUS=running: 0 scans",
        "WATCHDOG=1",
        "STATUS=unhealthy: capture: capture loop silent for 200 s (limit 60 s)",
        "STATUS=running: 5 scans",  # recovered: the held-back status comes back
        "WATCHDOG=1",
    ]


def test_a_check_that_raises_counts_as_failing(path_server: NotifyServer) -> None:
    locked = [True]

    def broken() -> str | None:
        if locked[0]:
            raise RuntimeError("database locked")
        return None

    dog = Watchdog(interval_s=30)
    dog.add_check("healthy", lambda: None)
    dog.add_check("broken", broken)
    with pytest.raises(ValueError, match="already registered"):
        dog.add_check("broken", lambda: None)
    assert dog.tick() is False
    assert path_server.drain(0.5) == ["STATUS=unhealthy: broken: liveness check raised RuntimeError: database locked"]
    locked[0] = False
    assert dog.tick() is True


def test_retired_heartbeat_is_healthy() -> None:
    clock = FakeClock()
    heartbeat = Heartbeat(stale_after_s=10, clock=clock)
    clock.now += 11
    assert heartbeat() == "capture loop silent for 11 s (limit 10 s)"
    heartbeat.retire()  # the loop ended because the station is stopping
    assert heartbeat() is None
    with pytest.raises(ValueError):
        Heartbeat(stale_after_s=0)


def test_watchdog_thread_stops_pinging_when_the_heartbeat_goes_stale(path_server: NotifyServer) -> None:
    """The real thing: a loop thread beating, the watchdog thread pinging, then the loop stalls."""
    heartbeat = Heartbeat("capture loop", stale_after_s=0.5)
    dog = Watchdog(interval_s=0.2)
    dog.add_check("capture", heartbeat)
    beating = threading.Event()
    beating.set()
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            if beating.is_set():
                heartbeat.beat()
            time.sleep(0.02)

    threads = [threading.Thread(target=loop), threading.Thread(target=dog.run, args=(stop,))]
    for thread in threads:
        thread.start()
    try:
        for _ in range(3):
            path_server.wait_for(lambda m: m == "WATCHDOG=1")
        beating.clear()  # the capture loop hangs
        unhealthy, _ = path_server.wait_for(lambda m: m.startswith("STATUS=unhealthy"))
        assert "capture loop silent for" in unhealthy
        # While it stays stale, not one ping more: five periods of silence.
        assert "WATCHDOG=1" not in path_server.drain(5 * dog.period_s)
        beating.set()
        path_server.wait_for(lambda m: m == "WATCHDOG=1")
    finally:
        stop.set()
        for thread in threads:
            thread.join(WAIT_S)
    assert not any(thread.is_alive() for thread in threads)
