"""The daemon as a systemd service: READY/STATUS/STOPPING and watchdog pings on a real datagram socket,
the disk guard pausing capture, and the backup mover taking scans off the data root."""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from amflow_edge.config.loading import load_config
from amflow_edge.station.build import build_station
from amflow_edge.station.capture import CameraTask, Trigger
from amflow_edge.station.station import RunOptions
from tests.factories import make_record
from tests.mqtt_helpers import Broker
from tests.polling import wait_for
from tests.station_files import write_station


class NotifySocket:
    """What systemd's notify socket would receive from the daemon."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: list[str] = []

    def until(self, wanted: Callable[[str], bool], timeout_s: float = 30.0) -> str:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                message = self.sock.recv(4096).decode()
            except TimeoutError:
                continue
            self.messages.append(message)
            if wanted(message):
                return message
        raise AssertionError(f"no such notification within {timeout_s} s; got {self.messages[-5:]}")

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def notify(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[NotifySocket]:
    path = tmp_path / "notify.sock"
    receiver = NotifySocket(path)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    yield receiver
    receiver.close()


def test_ready_status_and_stopping_in_order(tmp_path: Path, broker: Broker, notify: NotifySocket) -> None:
    station = build_station(load_config(write_station(tmp_path, broker.port, {"mock": {"scene_pool": 1}})))
    station.start(RunOptions(supervise_interval_s=0.2))
    try:
        ready = notify.until(lambda m: "READY=1" in m)
        assert "STATUS=running; 0 scans" in ready
        assert station.loop.capture(Trigger(source="test")).ok
        notify.until(lambda m: m.startswith("STATUS=running; 1 scans"))
    finally:
        station.shutdown()
    stopping = notify.until(lambda m: "STOPPING=1" in m)
    kinds = [m.split("=", 1)[0] for m in notify.messages]
    assert kinds.index("READY") < kinds.index("STOPPING") and "finishing the scan in progress" in stopping


def test_watchdog_pings_stop_while_the_capture_loop_is_wedged(
    tmp_path: Path, broker: Broker, notify: NotifySocket, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "600000")  # pings every 0.3 s
    cfg = load_config(
        write_station(tmp_path, broker.port, {"mock": {"scene_pool": 1}, "watchdog": {"capture_silent_s": 1.0}})
    )
    station = build_station(cfg)
    station.start(RunOptions(supervise_interval_s=0.2))
    release = threading.Event()
    try:
        notify.until(lambda m: m == "WATCHDOG=1")
        station.loop.submit_task(CameraTask(name="wedged camera call", run=lambda: release.wait(60)))
        unhealthy = notify.until(lambda m: m.startswith("STATUS=unhealthy"))
        assert "capture: capture loop silent for" in unhealthy
        pings_before = notify.messages.count("WATCHDOG=1")
        with pytest.raises(AssertionError, match="no such notification"):
            notify.until(lambda m: m == "WATCHDOG=1", timeout_s=1.5)  # wedged: not one ping
        assert notify.messages.count("WATCHDOG=1") == pings_before
        release.set()
        notify.until(lambda m: m == "WATCHDOG=1")  # the loop runs again: pings resume
    finally:
        release.set()
        station.shutdown()


def test_capture_pauses_when_the_disk_is_nearly_full_and_says_so(tmp_path: Path, broker: Broker) -> None:
    huge = 10**18
    cfg = load_config(
        write_station(
            tmp_path,
            broker.port,
            {"mock": {"scene_pool": 1}, "disk": {"min_free_bytes": huge, "resume_free_bytes": huge}},
        )
    )
    station = build_station(cfg)
    station.start(RunOptions())
    try:
        result = station.loop.capture(Trigger(source="test"))
        assert not result.ok and (result.error or "").startswith("station paused: only ")
        state = station.state()
        assert state.mode == "paused" and "disk" in (state.paused_reason or "")
        assert not [p for p in station.store.scans_dir.iterdir() if not p.name.startswith(".")]
    finally:
        station.shutdown()


def test_the_backup_mover_moves_done_scans_and_later_changes_follow_them(tmp_path: Path, broker: Broker) -> None:
    backup = tmp_path / "backup"
    backup.mkdir()
    cfg = load_config(
        write_station(
            tmp_path,
            broker.port,
            {
                "mock": {"scene_pool": 1},
                "backup": {"path": str(backup), "after_s": 0, "interval_s": 0.2},
            },
        )
    )
    station = build_station(cfg)
    station.start(RunOptions())
    try:
        first = station.loop.capture(Trigger(source="test")).uuid
        second = station.loop.capture(Trigger(source="test")).uuid
        assert first and second
        assert wait_for(lambda: (backup / first).is_dir() and not station.store.scan_dir(first).exists())
        record = station.events.record(first)
        assert record is not None and record.station.is_backed_up and record.station.backup_path == str(backup / first)
        assert sorted(p.name for p in (backup / first).iterdir())[-1] == "scan_cam05.png"
        assert station.store.scan_dir(second).is_dir()  # the part still on the tray stays
        station.decisions.decide(first, False, source="mqtt", device="mqtt", at=datetime.now(UTC))
        moved = json.loads((backup / first / "scan.json").read_text())
        assert moved["scan"]["qc_operator"] is False and moved["station"]["is_backed_up"] is True
    finally:
        station.shutdown()


def test_the_daemon_process_says_ready_and_on_sigterm_stopping_then_exits_cleanly(
    tmp_path: Path, broker: Broker, notify: NotifySocket
) -> None:
    import os
    import signal
    import subprocess
    import sys

    from tests.station_files import REPO

    config = write_station(tmp_path, broker.port, {"mock": {"scene_pool": 1}})
    env = {**os.environ, "NOTIFY_SOCKET": str(tmp_path / "notify.sock")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "amflow_edge.cli", "run", "--config", str(config)],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        notify.until(lambda m: "READY=1" in m, timeout_s=120)
        proc.send_signal(signal.SIGTERM)
        notify.until(lambda m: "STOPPING=1" in m)
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, stderr[-2000:]
    assert '"event": "station stopped"' in stderr


def test_a_decision_during_the_move_reaches_the_backup_copy(tmp_path: Path, broker: Broker) -> None:
    backup = tmp_path / "backup"
    backup.mkdir()
    cfg = load_config(
        write_station(
            tmp_path,
            broker.port,
            {
                "mock": {"scene_pool": 1},
                "backup": {"path": str(backup), "after_s": 0, "interval_s": 0.2},
            },
        )
    )
    station = build_station(cfg)
    deciding: list[threading.Thread] = []

    def decide_while_renamed(step: str, scan: str) -> None:
        if step == "renamed":  # the copy is in place, the original not yet gone: the operator presses now
            thread = threading.Thread(
                target=station.decisions.decide,
                args=(scan, False),
                kwargs={"source": "mqtt", "device": "mqtt", "at": datetime.now(UTC)},
            )
            thread.start()
            deciding.append(thread)
            time.sleep(0.3)

    assert station.service.backup is not None
    station.service.backup._on_step = decide_while_renamed
    station.start(RunOptions())
    try:
        first = station.loop.capture(Trigger(source="test")).uuid
        assert first and station.loop.capture(Trigger(source="test")).ok
        assert wait_for(lambda: bool(deciding) and not station.store.scan_dir(first).exists())
        deciding[0].join(10)
        moved = json.loads((backup / first / "scan.json").read_text())
        assert moved["scan"]["qc_operator"] is False and len(moved["station"]["decisions"]) == 1
    finally:
        station.shutdown()


def test_retention_deletes_what_the_station_moved_and_records_it(tmp_path: Path, broker: Broker) -> None:
    backup = tmp_path / "backup"
    stranger = backup / str(uuid.uuid1())  # put there by hand: not this station's to delete
    stranger.mkdir(parents=True)
    (stranger / "scan.json").write_text(json.dumps({"scan": {"created": "2020-01-01T00:00:00.000000+01:00"}}))
    cfg = load_config(
        write_station(
            tmp_path,
            broker.port,
            {
                "mock": {"scene_pool": 1},
                "backup": {"path": str(backup), "after_s": 0, "interval_s": 0.2},
                "disk": {"retention_days": 1e-6},
            },
        )
    )
    station = build_station(cfg)
    station.start(RunOptions())
    try:
        first = station.loop.capture(Trigger(source="test")).uuid
        assert first and station.loop.capture(Trigger(source="test")).ok
        assert wait_for(lambda: (station.events.record(first) or make_record()).station.deleted_at is not None)
        assert not (backup / first).exists() and not station.store.scan_dir(first).exists()
        assert stranger.is_dir()
        with pytest.raises(LookupError, match="deleted by retention"):
            station.jobs.for_scan(station.events.record(first))  # type: ignore[arg-type]
    finally:
        station.shutdown()
