"""Disk guard on a real, size-limited file system, and retention of backed-up scans."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace

import pytest
from pydantic import ValidationError

from amflow_edge.config.service import GIB, BackupSettings, DiskSettings, WatchdogSettings
from amflow_edge.storage.disk import DiskGuard, Retention, format_bytes, free_bytes, mount_point
from amflow_edge.storage.store import ScanStore, StoreError
from tests.factories import make_images, make_record
from tests.mounts import tmpfs

MIB = 1024**2
NOW = datetime(2026, 3, 20, 12, 0, tzinfo=UTC)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    with tmpfs(tmp_path / "disk", "16m") as mount:
        yield mount


def fill(path: Path, size: int) -> None:
    with path.open("wb") as fh:
        fh.write(b"\0" * size)
        fh.flush()
        os.fsync(fh.fileno())


def test_guard_pauses_and_resumes_with_hysteresis_on_a_filling_disk(small_disk: Path) -> None:
    guard = DiskGuard(small_disk, min_free_bytes=6 * MIB, resume_free_bytes=10 * MIB)
    assert guard.free_bytes() > 15 * MIB
    assert guard.reason() is None

    ballast = small_disk / "ballast"
    fill(ballast, 12 * MIB)  # ~4 MiB left
    reason = guard.reason()
    assert reason is not None
    assert f"free on {small_disk}" in reason
    assert "capture pauses below 6.0 MiB" in reason and "resumes above 10.0 MiB" in reason
    assert "backup.path" in reason and "retention_days" in reason  # the fix

    os.truncate(ballast, 8 * MIB)  # ~8 MiB free: above the pause mark, below the resume mark
    assert 6 * MIB < guard.free_bytes() < 10 * MIB
    still = guard.reason()
    assert still is not None and still != reason  # still paused, with the current figure

    os.truncate(ballast, 2 * MIB)  # ~14 MiB free
    assert guard.reason() is None
    fill(ballast, 8 * MIB)  # ~8 MiB free: running, and between the marks it stays running
    assert guard.reason() is None


def test_guard_pauses_when_the_threshold_is_above_the_free_space(tmp_path: Path) -> None:
    free = free_bytes(tmp_path)
    guard = DiskGuard(tmp_path, min_free_bytes=free + GIB, resume_free_bytes=free + 2 * GIB)
    reason = guard.reason()
    assert reason is not None
    assert str(tmp_path) in reason and format_bytes(free + GIB) in reason
    assert DiskGuard(tmp_path, 0, 0).reason() is None


def test_guard_hysteresis_with_a_scripted_disk() -> None:
    frsize = 4096
    free = {"blocks": 10 * GIB // frsize}

    def statvfs(_path: object) -> os.statvfs_result:
        return SimpleNamespace(f_bavail=free["blocks"], f_frsize=frsize)  # type: ignore[return-value]

    guard = DiskGuard(Path("/data"), 2 * GIB, 3 * GIB, statvfs=statvfs)
    steps = [(10, None), (1.5, "paused"), (2.5, "paused"), (3.0, "paused"), (3.1, None), (2.5, None), (1.9, "paused")]
    for gib, expected in steps:
        free["blocks"] = int(gib * GIB) // frsize
        state = None if guard.reason() is None else "paused"
        assert state == expected, f"at {gib} GiB free"


def test_guard_reports_a_missing_data_root(tmp_path: Path) -> None:
    reason = DiskGuard(tmp_path / "not-mounted", 1, 1).reason()
    assert reason is not None and "cannot read the free space" in reason and "station.data_root" in reason
    with pytest.raises(ValueError, match="resume_free_bytes"):
        DiskGuard(tmp_path, 2, 1)


def test_guard_names_the_mount_point_of_a_data_root_below_it(small_disk: Path) -> None:
    """The disk to clean up or enlarge is the file system's, named by its mount point, not the data root's path."""
    root = small_disk / "srv" / "data"
    root.mkdir(parents=True)
    reason = DiskGuard(root, min_free_bytes=free_bytes(root) + GIB, resume_free_bytes=free_bytes(root) + GIB).reason()
    assert reason is not None
    assert f"free on {small_disk} (the file system holding {root})" in reason, reason


def test_mount_point_of_real_mounts_and_of_paths_below_them(tmp_path: Path) -> None:
    assert mount_point(Path("/")) == Path("/")
    assert mount_point(Path("/proc")) == Path("/proc")
    assert mount_point(Path("/proc/self/status")) == Path("/proc")  # /proc/self is a link to /proc/<pid>
    below = mount_point(tmp_path)
    assert os.path.ismount(below) and tmp_path.resolve().is_relative_to(below)
    assert mount_point(tmp_path / "not" / "yet") == below  # a data root still to be created


def test_mount_point_follows_links_onto_another_disk(small_disk: Path, tmp_path: Path) -> None:
    (small_disk / "scans").mkdir()
    link = tmp_path / "data"
    link.symlink_to(small_disk / "scans")
    assert mount_point(link) == small_disk
    assert mount_point(link / "scans" / ".incoming" / "x.png") == small_disk


def test_a_full_data_root_of_its_own_names_its_mount_point_not_the_root(small_disk: Path) -> None:
    store = ScanStore(small_disk)
    store.prepare()
    fill(small_disk / "ballast", free_bytes(small_disk) - 256 * 1024)
    with pytest.raises(StoreError) as caught:
        store.write_scan(make_record(), make_images(height=300, width=400, seed=3))  # ~600 kB of noise
    assert f"free space on {small_disk} " in str(caught.value), caught.value


def test_settings_defaults_and_validation() -> None:
    disk = DiskSettings()
    assert (disk.min_free_bytes, disk.resume_free_bytes, disk.retention_days) == (2 * GIB, 3 * GIB, None)
    with pytest.raises(ValidationError, match="resume_free_bytes"):
        DiskSettings(min_free_bytes=5 * GIB, resume_free_bytes=4 * GIB)
    with pytest.raises(ValidationError):
        DiskSettings(retention_days=0)
    with pytest.raises(ValidationError):
        DiskSettings(min_free_byte=1)  # a typo is an error, not a default
    assert BackupSettings().path is None
    assert WatchdogSettings().capture_silent_s > 60


def make_scan(scans: Path, created: datetime | None, name: str | None = None, record: bytes | None = None) -> str:
    name = name or str(uuid.uuid1())
    directory = scans / name
    directory.mkdir(parents=True)
    (directory / "scan_cam01.png").write_bytes(os.urandom(1000))
    if record is not None:
        (directory / "scan.json").write_bytes(record)
    elif created is not None:
        (directory / "scan.json").write_text(json.dumps({"scan": {"created": created.isoformat()}, "station": {}}))
    return name


def test_retention_deletes_only_expired_backed_up_scans_oldest_first(tmp_path: Path) -> None:
    scans = tmp_path / "scans"
    amsterdam = timezone(timedelta(hours=1))
    oldest = make_scan(scans, NOW - timedelta(days=40))
    old = make_scan(scans, (NOW - timedelta(days=31)).astimezone(amsterdam))
    old_not_backed_up = make_scan(scans, NOW - timedelta(days=35))
    young = make_scan(scans, NOW - timedelta(days=29))
    undated = make_scan(scans, None)
    naive = make_scan(scans, None, record=b'{"scan": {"created": "2020-01-01T00:00:00"}}')
    broken = make_scan(scans, None, record=b"{not json")
    in_flight = make_scan(scans / ".incoming", NOW - timedelta(days=400))  # a scan being written
    stranger = make_scan(scans, NOW - timedelta(days=400), name="lost+found")
    shouting = make_scan(scans, NOW - timedelta(days=400), name=str(uuid.uuid1()).upper())  # not canonical

    asked: list[str] = []

    def backed_up(name: str) -> bool:
        asked.append(name)
        return name != old_not_backed_up

    retention = Retention(scans, retention_days=30, backed_up=backed_up)
    assert retention.expired(NOW) == [oldest, old_not_backed_up, old]
    deleted = retention.run_once(NOW)
    assert deleted == [oldest, old]
    remaining = {p.name for p in scans.iterdir()}
    assert remaining == {old_not_backed_up, young, undated, naive, broken, ".incoming", stranger, shouting}
    assert (scans / ".incoming" / in_flight).is_dir()
    assert [p.name for p in (scans / ".incoming").iterdir()] == [in_flight]  # no trash left behind
    assert retention.run_once(NOW) == []
    with pytest.raises(ValueError):
        Retention(scans, 0, backed_up)
