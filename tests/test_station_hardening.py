"""A station short of disk space starts paused and says why; ticks while paused are quiet; a clean stop says
'stopped'. Each test here reproduces a defect found by hostile testing (issue #22)."""

from __future__ import annotations

import contextlib
import json
import logging
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from structlog.testing import capture_logs

from amflow_edge.config.loading import load_config
from amflow_edge.inspection.overlay import write_png
from amflow_edge.ops.log import configure_logging
from amflow_edge.station.build import build_station
from amflow_edge.station.capture import Trigger
from amflow_edge.station.inspector import worker_started
from amflow_edge.station.station import RunOptions, Station
from amflow_edge.storage.disk import free_bytes
from tests.mounts import tmpfs
from tests.mqtt_helpers import Broker, Subscriber
from tests.polling import wait_for
from tests.station_files import REPO, demo_env, write_station

MIB = 1024 * 1024


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    with tmpfs(tmp_path / "disk", "8m") as mount_point:
        yield mount_point


def _station_on(disk: Path, tmp_path: Path, broker: Broker) -> Station:
    config = write_station(
        tmp_path,
        broker.port,
        {
            "station": {"data_root": str(disk / "data")},
            "mock": {"scene_pool": 1},
            "inspection": {"enabled": True},
            "disk": {"min_free_bytes": 2 * MIB, "resume_free_bytes": 3 * MIB},
        },
    )
    return build_station(load_config(config))


def test_a_station_below_the_disk_guard_starts_paused_and_takes_its_references_when_there_is_room(
    small_disk: Path, tmp_path: Path, broker: Broker
) -> None:
    filler = small_disk / "filler"
    filler.write_bytes(b"\0" * (8 * MIB - 128 * 1024))  # a full disk: too little even for the references
    station = _station_on(small_disk, tmp_path, broker)
    station.start(RunOptions(supervise_interval_s=0.2))
    try:
        state = station.state()
        assert state.mode == "paused" and "disk" in (state.paused_reason or "")
        references = station.store.reference_dir(station.scan_session)
        assert not references.exists()
        filler.unlink()
        assert wait_for(references.is_dir, timeout_s=60), "references were not taken once the disk had room"
        assert wait_for(lambda: station.state().mode == "running")
    finally:
        station.shutdown()


def _paused_station(tmp_path: Path, broker: Broker) -> Station:
    """Started, and paused by a disk guard no disk can satisfy."""
    huge = 10**18
    sections = {"mock": {"scene_pool": 1}, "disk": {"min_free_bytes": huge, "resume_free_bytes": huge}}
    station = build_station(load_config(write_station(tmp_path, broker.port, sections)))
    station.start(RunOptions())
    return station


def test_timer_ticks_while_paused_are_skipped_quietly_and_the_pause_is_logged_once(
    tmp_path: Path, broker: Broker
) -> None:
    station = _paused_station(tmp_path, broker)
    try:
        with capture_logs() as logs:
            results = [station.loop.capture(Trigger(source="timer")) for _ in range(5)]
            station.state()
        assert not any(result.ok for result in results)
        assert station.loop.scans_failed == 0
        assert [e for e in logs if e["log_level"] in ("warning", "error")] == []
        with capture_logs() as logs:
            station.pause.disk.min_free_bytes = station.pause.disk.resume_free_bytes = 0
            for _ in range(3):
                station.pause.reason()
        assert [e["event"] for e in logs] == ["capture resumed: space on the data root was freed"]
    finally:
        station.shutdown()


def test_a_clean_stop_leaves_a_retained_stopped_state_with_its_time(tmp_path: Path, broker: Broker) -> None:
    cfg = load_config(write_station(tmp_path, broker.port, {"mock": {"scene_pool": 1}}))
    station = build_station(cfg)
    station.start(RunOptions())
    station.shutdown()
    watcher = Subscriber(broker, [cfg.topic("state")])
    try:
        state = json.loads(watcher.next(topic=cfg.topic("state")).payload)
    finally:
        watcher.close()
    assert state["mode"] == "stopped"
    assert state["at"].startswith("20") and state["at"][-6] in "+-"


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_the_inspection_worker_ends_when_its_daemon_is_killed(tmp_path: Path, broker: Broker) -> None:
    env = demo_env(
        tmp_path,
        broker,
        AMFLOW_INSPECTION__ENABLED="true",
        AMFLOW_CAPTURE__TIMER_INTERVAL_S="0.5",
        AMFLOW_MOCK__SCENE_POOL="1",
    )
    daemon = subprocess.Popen(
        [sys.executable, "-m", "amflow_edge.cli", "run", "--config", str(REPO / "config" / "demo.toml")],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert wait_for(lambda: len(_children(daemon.pid)) >= 2, timeout_s=120), "no inspection worker started"
        children = _children(daemon.pid)
    finally:
        daemon.kill()
        daemon.wait(timeout=30)
    try:
        assert wait_for(lambda: not any(_alive(pid) for pid in children), timeout_s=30), (
            f"left running after the daemon was killed: {[pid for pid in children if _alive(pid)]}"
        )
    finally:
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_library_log_records_are_json_lines_like_the_stations_own(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("info", json=True)
    logging.getLogger("paho.mqtt.client").error("Client is not connected. Socket: None)")
    [line] = capsys.readouterr().err.splitlines()
    record = json.loads(line)
    assert (record["event"], record["logger"], record["level"]) == (
        "Client is not connected. Socket: None)",
        "paho.mqtt.client",
        "error",
    )


def test_the_daemons_log_stays_json_through_a_broker_outage_and_a_stop(tmp_path: Path, broker: Broker) -> None:
    env = demo_env(tmp_path, broker, AMFLOW_MOCK__SCENE_POOL="1")
    daemon = subprocess.Popen(
        [sys.executable, "-m", "amflow_edge.cli", "--log-json", "run", "--config", str(REPO / "config" / "demo.toml")],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    try:
        assert daemon.stderr is not None
        for line in daemon.stderr:
            lines.append(line)
            if "connected to the MQTT broker" in line and "disconnected" not in line:
                break
        broker.stop()
        time.sleep(3)
        daemon.send_signal(signal.SIGTERM)
        _, rest = daemon.communicate(timeout=60)
        lines += rest.splitlines()
    finally:
        daemon.kill()
    assert any("disconnected" in line for line in lines)
    not_json = [line for line in lines if line.strip() and not line.lstrip().startswith("{")]
    assert not_json == []
    for line in lines:
        if line.strip():
            json.loads(line)


def test_an_overlay_that_does_not_fit_on_the_disk_says_the_disk_is_full(small_disk: Path) -> None:
    (small_disk / "filler").write_bytes(b"\0" * (8 * MIB - 64 * 1024))
    noise = np.random.default_rng(1).integers(0, 255, (512, 612, 3), dtype=np.uint8)
    with pytest.raises(OSError, match="could not write the overlay image .*: No space left on device"):
        write_png(small_disk / "overlay_cam01.png", noise)
    assert [p.name for p in small_disk.iterdir()] == ["filler"]


def test_a_record_stored_before_the_bounds_is_left_out_and_does_not_stop_the_start(
    tmp_path: Path, broker: Broker
) -> None:
    cfg = load_config(write_station(tmp_path, broker.port, {"mock": {"scene_pool": 1}}))
    station = build_station(cfg)
    station.start(RunOptions())
    try:
        uuid = station.loop.capture(Trigger(source="test")).uuid
        assert uuid is not None
        with station.db.transaction() as conn:
            [stored] = conn.execute("SELECT record FROM scans WHERE uuid = ?", (uuid,)).fetchone()
            record = json.loads(stored)
            record["scan"]["batch"]["title"] = "T" * 60000  # as the unbounded models let through
            conn.execute("UPDATE scans SET record = ? WHERE uuid = ?", (json.dumps(record), uuid))
    finally:
        station.shutdown()
    again = build_station(cfg)
    with capture_logs() as logs:
        again.start(RunOptions())
    try:
        assert again.events.record(uuid) is None
        assert [e["scan"] for e in logs if e["event"].startswith("a stored scan record no longer validates")] == [uuid]
    finally:
        again.shutdown()


def test_a_new_session_on_a_full_disk_uses_the_previous_sessions_references(
    small_disk: Path, tmp_path: Path, broker: Broker
) -> None:
    first = _station_on(small_disk, tmp_path, broker)
    first.start(RunOptions())
    previous = first.store.reference_dir(first.scan_session)
    first.shutdown()
    assert previous.is_dir()
    (small_disk / "filler").write_bytes(b"\0" * (free_bytes(small_disk) - 128 * 1024))
    station = _station_on(small_disk, tmp_path, broker)
    station.start(RunOptions())
    try:
        references = station.store.reference_dir(station.scan_session)
        assert station.scan_session != first.scan_session
        assert references.is_symlink() and references.resolve() == previous.resolve()
        assert "no empty-tray references" not in (station.state().paused_reason or "")
    finally:
        station.shutdown()


def _log_in_worker() -> None:
    logging.getLogger("trimesh").warning("face normals fixed")


def test_the_inspection_worker_logs_json_lines_like_the_daemon(capfd: pytest.CaptureFixture[str]) -> None:
    with ProcessPoolExecutor(
        max_workers=1,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=worker_started,
        initargs=(os.getpid(), "info", True),
    ) as pool:
        pool.submit(_log_in_worker).result(timeout=60)
    [line] = [line for line in capfd.readouterr().err.splitlines() if "face normals" in line]
    assert json.loads(line)["logger"] == "trimesh"


def test_a_flood_of_capture_requests_while_paused_is_answered_but_logged_a_few_times(
    tmp_path: Path, broker: Broker
) -> None:
    station = _paused_station(tmp_path, broker)
    try:
        with capture_logs() as logs:
            results = [station.loop.capture(Trigger(source="mqtt")) for _ in range(50)]
        assert all(not r.ok and (r.error or "").startswith("station paused") for r in results)
        assert len([e for e in logs if e["event"] == "capture refused: the station is paused"]) == 5
    finally:
        station.shutdown()


def test_under_journald_every_line_carries_its_syslog_priority(tmp_path: Path) -> None:
    """journald files unprefixed stderr lines as info, so `journalctl -p err` showed nothing (issue #25)."""
    stream = tmp_path / "journal-stream"
    code = (
        "import logging, structlog; from amflow_edge.ops.log import configure_logging\n"
        "configure_logging('info', json=True)\n"
        "structlog.get_logger('x').error('camera lost'); logging.getLogger('paho').warning('slow broker')\n"
        "structlog.get_logger('x').info('scan stored')\n"
    )
    with stream.open("w") as stderr:
        status = os.fstat(stderr.fileno())
        env = {**os.environ, "JOURNAL_STREAM": f"{status.st_dev}:{status.st_ino}"}
        subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, stderr=stderr, check=True, timeout=60)
    lines = stream.read_text().splitlines()
    assert [line[:3] for line in lines] == ["<3>", "<4>", "<6>"]
    assert [json.loads(line[3:])["event"] for line in lines] == ["camera lost", "slow broker", "scan stored"]
