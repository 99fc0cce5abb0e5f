"""Disk space on the data root: pause capture before the disk is full, and age out backed-up scans.

A full disk fails a scan half-way (README: "disk full while writing …") and, worse, the
station database's writes; pausing capture at a threshold keeps the station able to record,
publish and be repaired. Pausing has hysteresis, as the outbox's BacklogGuard: once paused,
capture resumes only above a higher mark, so one scan's worth of space freed and taken again
does not make the station flap.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import structlog

from amflow_edge.storage.backup import discard_scan, is_scan_name, scan_created

log = structlog.get_logger(__name__)


def format_bytes(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(count) < 1024 or unit == "TiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    raise AssertionError("unreachable")


def mount_point(path: Path) -> Path:
    """The mount point of the file system holding `path`: the disk to clean up or enlarge when it is full.

    A data root is often its own disk (/srv/scans) or a directory on one (/data/amflow); naming the path's
    anchor ('/') would send the integrator to the wrong disk. Symbolic links are resolved first, so a data
    root linked onto another disk names that disk; a path that does not exist (yet) names the disk it
    would be created on.
    """
    current = Path(path).resolve()
    while not os.path.ismount(current) and current != current.parent:
        current = current.parent
    return current


def where_on_disk(path: Path) -> str:
    """`path` as a person looks for it on a full disk: the mount point, and the path itself when it lies below."""
    mount = mount_point(path)
    return str(mount) if mount == Path(path).resolve() else f"{mount} (the file system holding {path})"


def free_bytes(path: Path, statvfs: Callable[[Path], os.statvfs_result] = os.statvfs) -> int:
    """Space an unprivileged process may still use (f_bavail: the root-reserved blocks are not ours)."""
    st = statvfs(path)
    return st.f_bavail * st.f_frsize


class DiskGuard:
    def __init__(
        self,
        path: Path,
        min_free_bytes: int,
        resume_free_bytes: int,
        statvfs: Callable[[Path], os.statvfs_result] = os.statvfs,
    ) -> None:
        if resume_free_bytes < min_free_bytes:
            raise ValueError(
                f"resume_free_bytes ({resume_free_bytes}) must be at least min_free_bytes ({min_free_bytes})"
            )
        self.path = Path(path)
        self.min_free_bytes = min_free_bytes
        self.resume_free_bytes = resume_free_bytes
        self._statvfs = statvfs
        self._lock = threading.Lock()
        self._reason: str | None = None

    def free_bytes(self) -> int:
        return free_bytes(self.path, self._statvfs)

    def reason(self) -> str | None:
        """Why capture must wait now, or None; re-evaluated on every call, so capture resumes by itself."""
        try:
            free = self.free_bytes()
        except OSError as exc:
            return (
                f"cannot read the free space of {self.path}: {exc.strerror or exc}; "
                "check that station.data_root exists and its disk is mounted"
            )
        with self._lock:
            if self._reason is None:
                if free < self.min_free_bytes:
                    self._reason = self._explain(free)
                    log.error(
                        "capture paused: the data root is nearly full",
                        path=str(self.path),
                        free_bytes=free,
                        min_free_bytes=self.min_free_bytes,
                    )
            elif free > self.resume_free_bytes:
                log.info("capture resumed: space on the data root was freed", path=str(self.path), free_bytes=free)
                self._reason = None
            else:
                self._reason = self._explain(free)  # the figure in the reason stays current
            return self._reason

    def _explain(self, free: int) -> str:
        return (
            f"only {format_bytes(free)} free on {where_on_disk(self.path)} (capture pauses below "
            f"{format_bytes(self.min_free_bytes)} and resumes above {format_bytes(self.resume_free_bytes)}); "
            "move scans to the backup disk "
            "(backup.path), let old backed-up scans expire (disk.retention_days), or give the data root a bigger disk"
        )


class Retention:
    """Deletes scans older than the retention period, oldest first, and only those already backed up.

    Only canonical UUID directories directly in the scans directory are considered, so the
    half-written scans in .incoming, references and anything an integrator put there are
    never touched. A scan whose age cannot be read (no or broken scan.json) is kept.
    """

    def __init__(self, scans_dir: Path, retention_days: float, backed_up: Callable[[str], bool]) -> None:
        if retention_days <= 0:
            raise ValueError(f"retention_days must be positive (found {retention_days})")
        self.scans_dir = Path(scans_dir)
        self.retention = timedelta(days=retention_days)
        self._backed_up = backed_up
        self._undated: set[str] = set()

    def expired(self, now: datetime | None = None) -> list[str]:
        """Scans past the retention period, oldest first (whether backed up or not)."""
        now = now or datetime.now(UTC)
        dated: list[tuple[datetime, str]] = []
        try:
            entries = [p for p in self.scans_dir.iterdir() if is_scan_name(p.name) and p.is_dir()]
        except FileNotFoundError:
            return []
        for entry in entries:
            try:
                created = scan_created(entry)
            except ValueError as exc:
                if entry.name not in self._undated:
                    self._undated.add(entry.name)
                    log.warning("scan kept: its age is unknown", scan=entry.name, reason=str(exc))
                continue
            if now - created > self.retention:
                dated.append((created, entry.name))
        return [name for _, name in sorted(dated)]

    def run_once(self, now: datetime | None = None) -> list[str]:
        """Delete expired, backed-up scans; returns the uuids deleted, oldest first."""
        deleted: list[str] = []
        kept: list[str] = []
        for name in self.expired(now):
            if not self._backed_up(name):
                kept.append(name)
                continue
            try:
                discard_scan(self.scans_dir, name)
            except OSError as exc:
                log.error("expired scan could not be deleted", scan=name, error=str(exc))
                continue
            deleted.append(name)
        if deleted:
            log.info("expired scans deleted (they are backed up)", count=len(deleted), scans=deleted[:20])
        if kept:
            log.warning("expired scans kept because they are not backed up", count=len(kept), scans=kept[:20])
        return deleted
